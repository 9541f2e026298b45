"""Bijective preprocessing with exact log-dets: Rescale, LogitTransform."""

import math

from keras import ops

from tfflows.layers.base import FlowLayer, concrete_value, constant_log_det, event_size, register


@register
class Rescale(FlowLayer):
    """A fixed affine map `y = x * scale + shift`, e.g. `[0, 1) -> [-0.5, 0.5)`.

    Forward log-det `D * log|scale| -> (batch,)` for `D` event elements;
    inverse `x = (y - shift) / scale`.

    Args:
        scale: nonzero float. Defaults to 1.
        shift: float. Defaults to 0.

    >>> import numpy as np
    >>> y, ld = Rescale(2.0, -1.0).forward(np.full((1, 3), 0.5, "float32"))
    >>> np.asarray(y).tolist(), round(float(ld[0]), 4)
    ([[0.0, 0.0, 0.0]], 2.0794)
    """

    def __init__(self, scale=1.0, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        if not math.isfinite(scale) or scale == 0:
            raise ValueError(f"Rescale scale must be finite and nonzero. Received: scale={scale}")
        if not math.isfinite(shift):
            raise ValueError(f"Rescale shift must be finite. Received: shift={shift}")
        self.scale = float(scale)
        self.shift = float(shift)

    def _log_det(self, x):
        return constant_log_det(x, event_size(x.shape) * math.log(abs(self.scale)))

    def _forward(self, x, context=None, training=False):
        return x * self.scale + self.shift, self._log_det(x)

    def _inverse(self, y, context=None, training=False):
        return (y - self.shift) / self.scale, -self._log_det(y)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, shift=self.shift)
        return config


@register
class LogitTransform(FlowLayer):
    """RealNVP's logit preprocessing with alpha squashing.

    Forward (on `x` in [0, 1]): `p = alpha + (1 - 2 alpha) x`,
    `y = log p - log(1 - p)`; log-det
    `sum [log(1 - 2 alpha) + softplus(-y) + softplus(y)] -> (batch,)`.
    Inverse: `x = (sigmoid(y) - alpha) / (1 - 2 alpha)`; log-det the negative.

    Args:
        alpha: squashing in [0, 0.5). Defaults to 0.05 (RealNVP's value).

    References: Dinh et al., RealNVP, https://arxiv.org/abs/1605.08803

    >>> import numpy as np
    >>> layer = LogitTransform()
    >>> x = np.array([[0.1, 0.5, 0.9]], "float32")
    >>> bool(np.allclose(layer.inverse(layer.forward(x)[0])[0], x, atol=1e-6))
    True
    """

    def __init__(self, alpha=0.05, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"LogitTransform alpha must be in [0, 0.5). Received: alpha={alpha}")
        self.alpha = float(alpha)

    def _log_det_from_y(self, y):
        per = math.log(1.0 - 2.0 * self.alpha) + ops.softplus(-y) + ops.softplus(y)
        return ops.sum(ops.reshape(per, (ops.shape(y)[0], -1)), axis=1)

    def _forward(self, x, context=None, training=False):
        value = concrete_value(x)  # known values only (not while tracing)
        if value is not None and value.size and (value.min() < 0.0 or value.max() > 1.0):
            raise ValueError(
                f"LogitTransform '{self.name}' maps data in [0, 1] (dequantized images); got values in "
                f"[{float(value.min()):g}, {float(value.max()):g}]."
            )
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x
        y = ops.log(p) - ops.log1p(-p)
        return y, self._log_det_from_y(y)

    def _inverse(self, y, context=None, training=False):
        x = (ops.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)
        return x, -self._log_det_from_y(y)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
