"""ActNorm (Glow) and DiagonalScaling (NICE).

Why no BatchNormFlow: a batch-norm flow's map depends on the batch it sees
(batch statistics in training, moving averages at test time), so `log_prob`
of one image changes with its batch-mates and the `training` flag changes
which map is computed. ActNorm gives the same conditioning benefit with a
data-dependent *initialisation* and a fixed map afterwards (Glow, section 3.1).
"""

from keras import ops

from tfflows.layers.base import FlowLayer, constant_log_det, event_size, register


@register
class ActNorm(FlowLayer):
    """Per-channel affine normalisation with data-dependent initialisation.

    Forward: `y = (x + loc) * exp(log_scale)`;
    log-det `H * W * sum_C log_scale -> (batch,)` (for vectors, `sum log_scale`).
    Inverse: `x = y * exp(-log_scale) - loc`.

    Initialisation is explicit: `initialize(x)` sets `loc = -mean(x)` and
    `log_scale = -log(std(x) + eps)` per channel from batch `x`, so the
    output has zero mean and unit variance per channel, and sets the
    `initialized` flag. It is plain variable assignment, so it runs eagerly,
    inside `tf.function` and under `jit_compile`. `FlowModel.initialize`
    (also called on the first `fit` batch) drives it.

    Args:
        eps: added to the std before the log. Defaults to 1e-6.

    Input shape: `(batch, ..., C)`; output shape the same.

    References: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039

    >>> import numpy as np
    >>> layer = ActNorm()
    >>> x = (3 + 2 * np.random.randn(64, 4, 4, 2)).astype("float32")
    >>> y, _ = layer.initialize(x)
    >>> bool(abs(float(np.mean(y))) < 1e-4 and abs(float(np.std(y)) - 1) < 1e-3)
    True
    """

    input_ranks = (2, 3, 4, 5)
    local_log_det = True

    def __init__(self, eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not eps > 0:
            raise ValueError(f"ActNorm eps must be positive. Received: eps={eps}")
        self.eps = float(eps)

    def build(self, input_shape):
        self._check_rank(input_shape)
        c = input_shape[-1]
        self.loc = self.add_weight(shape=(c,), initializer="zeros", name="loc")
        self.log_scale = self.add_weight(shape=(c,), initializer="zeros", name="log_scale")
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="initialized"
        )

    def initial_values(self, x):
        """`(loc, log_scale)` that normalise batch `x` per channel."""
        axes = tuple(range(len(x.shape) - 1))
        mean = ops.mean(x, axis=axes)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=axes))
        return -mean, -ops.log(std + self.eps)

    @property
    def needs_initialization(self):
        """True until `initialize` has run (or initialised weights were loaded)."""
        return not self.built or float(ops.convert_to_numpy(self.initialized)) == 0.0

    def initialize(self, x, context=None):
        x = ops.convert_to_tensor(x)
        self._check_input(x, "initialize")
        self._ensure_built(x.shape, "forward")
        loc, log_scale = self.initial_values(x)
        self.loc.assign(ops.cast(loc, self.loc.dtype))
        self.log_scale.assign(ops.cast(log_scale, self.log_scale.dtype))
        self.initialized.assign(1.0)
        return self.forward(x, context=context)

    def _log_det(self, x):
        # Every position of a channel shares its scale: prod(shape[1:-1]).
        return constant_log_det(x, event_size(x.shape[:-1]) * ops.sum(self.log_scale))

    def _forward(self, x, context=None, training=False):
        return (x + self.loc) * ops.exp(self.log_scale), self._log_det(x)

    def _inverse(self, y, context=None, training=False):
        return y * ops.exp(-self.log_scale) - self.loc, -self._log_det(y)

    def get_config(self):
        config = super().get_config()
        config["eps"] = self.eps
        return config


@register
class DiagonalScaling(FlowLayer):
    """NICE's diagonal scaling: one learned log-scale per input element.

    Forward: `y = x * exp(log_scale)`; log-det `sum log_scale -> (batch,)`.
    Inverse: `x = y * exp(-log_scale)`.

    Input shape: `(batch, ...)`; `log_scale` has the event shape.

    References: Dinh et al., NICE, https://arxiv.org/abs/1410.8516

    >>> import numpy as np
    >>> layer = DiagonalScaling()
    >>> y, ld = layer.forward(np.ones((3, 5), "float32"))
    >>> tuple(ld.shape)
    (3,)
    """

    input_ranks = (2, 3, 4)

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.log_scale = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="zeros", name="log_scale"
        )

    def _log_det(self, x):
        return constant_log_det(x, ops.sum(self.log_scale))

    def _forward(self, x, context=None, training=False):
        return x * ops.exp(self.log_scale), self._log_det(x)

    def _inverse(self, y, context=None, training=False):
        return y * ops.exp(-self.log_scale), -self._log_det(y)
