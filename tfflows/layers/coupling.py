"""Coupling layers: NICE's additive and RealNVP/Glow's affine coupling."""

import keras
import numpy as np
from keras import ops

from tfflows.layers.base import FlowLayer, register, split_channels, sum_except_batch, zeros_log_det
from tfflows.layers.nets import default_net

MASKS = ("channel", "checkerboard")
SCALES = ("sigmoid", "exp")


def checkerboard_mask(shape, parity=0):
    """A 0/1 float mask over the event `shape` (batch axis excluded).

    For images `(H, W, C)` the mask is `(h + w + parity) % 2` broadcast over
    channels; for vectors `(D,)` it is `(i + parity) % 2`. Ones mark the
    conditioning half (kept unchanged).
    """
    if len(shape) == 3:
        h, w, _ = shape
        grid = (np.arange(h)[:, None] + np.arange(w)[None, :] + parity) % 2
        return grid[:, :, None].astype("float32")
    (d,) = shape
    return ((np.arange(d) + parity) % 2).astype("float32")


class _Coupling(FlowLayer):
    """Shared machinery: masks, the conditioner and its checks."""

    input_ranks = (2, 4)

    def __init__(self, mask="channel", reverse=False, net=None, hidden=64, **kwargs):
        super().__init__(**kwargs)
        if mask not in MASKS:
            raise ValueError(
                f"{type(self).__name__} mask must be one of {MASKS}. Received: mask={mask!r}"
            )
        if isinstance(net, dict):
            net = keras.saving.deserialize_keras_object(net)
        if net is not None and not isinstance(net, keras.layers.Layer):
            raise TypeError(
                f"{type(self).__name__} net must be a keras Layer (or None for the "
                f"built-in conditioner). Received: net of type {type(net).__name__}"
            )
        if int(hidden) < 1:
            raise ValueError(f"{type(self).__name__} hidden must be positive. Received: hidden={hidden}")
        self.mask = mask
        self.reverse = bool(reverse)
        self.hidden = int(hidden)
        self.net = net
        self._user_net = net is not None

    def _params_per_channel(self):
        raise NotImplementedError

    def build(self, input_shape):
        self._check_rank(input_shape)
        c = input_shape[-1]
        name = type(self).__name__
        if self.mask == "channel":
            if c is None or c < 2:
                raise ValueError(
                    f"{name} '{self.name}' with a channel mask needs at least 2 "
                    f"channels (features), got {c}."
                )
            self._c_a = c // 2 if not self.reverse else c - c // 2
            c_in, c_out = self._c_a, (c - self._c_a) * self._params_per_channel()
            in_shape = tuple(input_shape[:-1]) + (c_in,)
        else:
            event = tuple(input_shape[1:])
            size = int(np.prod(event[:-1])) if len(event) == 3 else event[0]
            if size < 2:
                raise ValueError(
                    f"{name} '{self.name}' with a checkerboard mask needs at least 2 "
                    f"positions to alternate over, got event shape {event}."
                )
            self._mask = ops.convert_to_tensor(checkerboard_mask(event, int(self.reverse)))
            c_in, c_out = c, c * self._params_per_channel()
            in_shape = tuple(input_shape)
        if self.net is None:
            self.net = default_net(len(input_shape), self.hidden, c_out, name="net")
        if not self.net.built:  # a deserialized user net may arrive built
            self.net.build(in_shape)
        got = tuple(self.net.compute_output_shape(in_shape))
        want = tuple(in_shape[:-1]) + (c_out,)
        if got[1:] != want[1:]:
            raise ValueError(
                f"{name} '{self.name}': its net maps {in_shape[1:]} to {got[1:]}, but "
                f"this coupling needs output shape {want[1:]} "
                f"({self._params_per_channel()} value(s) per transformed channel)."
            )

    def _split(self, x):
        """Returns (conditioner input, transformed part, mask or None)."""
        if self.mask == "channel":
            if self.reverse:
                x_b, x_a = split_channels(x, x.shape[-1] - self._c_a)
                return x_a, x_b
            return split_channels(x, self._c_a)
        return x * self._mask, x

    def _join(self, x_a, y_b):
        if self.reverse:
            return ops.concatenate([y_b, x_a], axis=-1)
        return ops.concatenate([x_a, y_b], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            mask=self.mask, reverse=self.reverse, hidden=self.hidden,
            net=keras.saving.serialize_keras_object(self.net) if self._user_net else None,
        )
        return config


@register
class AdditiveCoupling(_Coupling):
    """NICE's additive coupling: volume preserving.

    Forward: `y_a = x_a`, `y_b = x_b + t(x_a)`; log-det `0 -> (batch,)`.
    Inverse: `x_b = y_b - t(y_a)`.

    With `mask="channel"` the last axis is split in halves (`reverse=True`
    transforms the first half instead of the second); with
    `mask="checkerboard"` positions alternate (pixels for images, features
    for vectors) and `reverse` flips the parity.

    Args:
        mask: `"channel"` or `"checkerboard"`. Defaults to `"channel"`.
        reverse: swap the roles of the two halves. Defaults to `False`.
        net: a keras Layer mapping the conditioning part to the shift
            (`C_b` channels, or `C` with a checkerboard mask), or `None` for
            the built-in zero-initialised net (`ConvNet` for images,
            `DenseNet` for vectors).
        hidden: width of the built-in net. Defaults to 64.

    Input shape: `(batch, D)` or `(batch, H, W, C)`; output shape the same.

    References: Dinh et al., NICE, https://arxiv.org/abs/1410.8516

    >>> import numpy as np
    >>> layer = AdditiveCoupling(hidden=8)
    >>> x = np.random.randn(2, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-6)), tuple(ld.shape)
    (True, (2,))
    """

    def _params_per_channel(self):
        return 1

    def _forward(self, x, training=False):
        x_a, x_b = self._split(x)
        t = ops.cast(self.net(x_a), x.dtype)
        if self.mask == "channel":
            return self._join(x_a, x_b + t), zeros_log_det(x)
        return x + (1.0 - self._mask) * t, zeros_log_det(x)

    def _inverse(self, y, training=False):
        y_a, y_b = self._split(y)
        t = ops.cast(self.net(y_a), y.dtype)
        if self.mask == "channel":
            return self._join(y_a, y_b - t), zeros_log_det(y)
        return y - (1.0 - self._mask) * t, zeros_log_det(y)


@register
class AffineCoupling(_Coupling):
    """RealNVP / Glow affine coupling.

    The conditioner maps the kept part to a shift `t` and a raw scale `h`.

    With `scale="sigmoid"` (Glow's choice; the default):
    Forward: `y_b = (x_b + t(x_a)) * sigmoid(h(x_a) + 2)`;
    log-det `sum_{H,W,C_b} log_sigmoid(h + 2) -> (batch,)`.
    Inverse: `x_b = y_b / sigmoid(h(y_a) + 2) - t(y_a)`.

    With `scale="exp"` (RealNVP): `s = g * tanh(h)` with a learned per-channel
    `g` (initialised to 1), `y_b = x_b * exp(s) + t`; log-det `sum s`;
    inverse `x_b = (y_b - t) * exp(-s)`.

    Both keep the scale bounded: the sigmoid in (0, 1), so the forward map
    never expands and starts near the identity (sigmoid(2) = 0.88 with a
    zero-initialised net); the tanh bounds |s| by |g|. We default to the
    sigmoid because it cannot overflow at any learning rate.

    Masks as in `AdditiveCoupling` (`"channel"` or `"checkerboard"`, vector or
    image inputs).

    Args:
        mask: `"channel"` or `"checkerboard"`. Defaults to `"channel"`.
        reverse: swap the roles of the two halves. Defaults to `False`.
        scale: `"sigmoid"` or `"exp"`. Defaults to `"sigmoid"`.
        net: a keras Layer mapping the kept part to `2 * C_b` channels
            (shift first, raw scale second; `2 * C` with a checkerboard mask),
            or `None` for the built-in zero-initialised net.
        hidden: width of the built-in net. Defaults to 64.

    Input shape: `(batch, D)` or `(batch, H, W, C)`; output shape the same.

    References: Dinh et al., RealNVP, https://arxiv.org/abs/1605.08803;
    Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039

    >>> import numpy as np
    >>> layer = AffineCoupling(mask="checkerboard", hidden=8)
    >>> x = np.random.randn(2, 4, 4, 2).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-5)), tuple(ld.shape)
    (True, (2,))
    """

    def __init__(self, mask="channel", reverse=False, scale="sigmoid", net=None, hidden=64, **kwargs):
        super().__init__(mask=mask, reverse=reverse, net=net, hidden=hidden, **kwargs)
        if scale not in SCALES:
            raise ValueError(f"AffineCoupling scale must be one of {SCALES}. Received: scale={scale!r}")
        self.scale = scale

    def _params_per_channel(self):
        return 2

    def build(self, input_shape):
        super().build(input_shape)
        if self.scale == "exp":
            c_b = input_shape[-1] - self._c_a if self.mask == "channel" else input_shape[-1]
            self.scale_factor = self.add_weight(
                shape=(c_b,), initializer="ones", name="scale_factor"
            )

    def _shift_and_log_scale(self, cond):
        # The net may compute in bfloat16/float16 (mixed precision); the
        # coupling's arithmetic and log-det stay in the input's dtype.
        h = ops.cast(self.net(cond), cond.dtype)
        t, raw = split_channels(h, h.shape[-1] // 2)
        if self.scale == "sigmoid":
            return t, ops.log_sigmoid(raw + 2.0)
        return t, self.scale_factor * ops.tanh(raw)

    def _forward(self, x, training=False):
        x_a, x_b = self._split(x)
        t, log_s = self._shift_and_log_scale(x_a)
        if self.mask == "checkerboard":
            m = 1.0 - self._mask
            log_s = log_s * m
            if self.scale == "sigmoid":
                y_b = (x_b + t * m) * ops.exp(log_s)
            else:
                y_b = x_b * ops.exp(log_s) + t * m
            return y_b, sum_except_batch(log_s)
        if self.scale == "sigmoid":
            y_b = (x_b + t) * ops.exp(log_s)
        else:
            y_b = x_b * ops.exp(log_s) + t
        return self._join(x_a, y_b), sum_except_batch(log_s)

    def _inverse(self, y, training=False):
        y_a, y_b = self._split(y)
        t, log_s = self._shift_and_log_scale(y_a)
        if self.mask == "checkerboard":
            m = 1.0 - self._mask
            log_s = log_s * m
            t = t * m
        if self.scale == "sigmoid":
            x_b = y_b * ops.exp(-log_s) - t
        else:
            x_b = (y_b - t) * ops.exp(-log_s)
        if self.mask == "checkerboard":
            return x_b, -sum_except_batch(log_s)
        return self._join(y_a, x_b), -sum_except_batch(log_s)

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config
