"""Element-wise flows with learned parameters: `ElementwiseSpline` (rational
quadratic) and `PiecewiseLinear`.

Each element of the event gets its own monotone map, with its own learned
parameters (and, given a context, parameters shifted by a zero-initialised
dense map of the context). They are the element-wise counterparts of the
spline couplings: a flexible per-dimension marginal warp, often put first or
last in a vector flow.
"""

import keras
from keras import ops

from tfflows import transforms
from tfflows.layers.base import FlowLayer, event_size, register, sum_except_batch
from tfflows.layers.nets import context_channels


class _Elementwise(FlowLayer):
    """Shared machinery: per-element parameters, optional context."""

    accepts_context = True

    def _transform(self):
        raise NotImplementedError

    def build(self, input_shape):
        self._check_rank(input_shape)
        event = tuple(input_shape[1:])
        self.transform = self._transform()
        p = self.transform.params_per_dim
        # Parameter-major along the last axis, as the transforms read it.
        self.params = self.add_weight(shape=event[:-1] + (p * event[-1],), initializer="zeros", name="params")
        self.context_dense = None
        if self.context_shape is not None:
            self.context_dense = keras.layers.Dense(
                p * event_size(input_shape), kernel_initializer="zeros", name="context", dtype=self.dtype_policy)
            self.context_dense.build((None, context_channels(2, self.context_shape)))
        self.transform.build(self, event[-1])
        self._event = event

    def _h(self, x, context):
        h = ops.cast(self.params, x.dtype)[None]
        if self.context_dense is not None:
            flat = ops.reshape(ops.cast(context, x.dtype), (ops.shape(context)[0], -1))
            shift = ops.cast(self.context_dense(flat), x.dtype)
            h = h + ops.reshape(shift, (-1,) + tuple(self.params.shape))
        return ops.broadcast_to(h, (ops.shape(x)[0],) + tuple(self.params.shape))

    def _forward(self, x, context=None, training=False):
        y, ladj = self.transform.forward(x, self._h(x, context))
        return y, sum_except_batch(ladj)

    def _inverse(self, y, context=None, training=False):
        x, ladj = self.transform.inverse(y, self._h(y, context))
        return x, sum_except_batch(ladj)


@register
class ElementwiseSpline(_Elementwise):
    """A rational-quadratic spline per element, learned (Durkan et al. 2019).

    Forward: `y_i = RQS(x_i; theta_i)` on `[-bound, bound]` with identity
    (linear) tails outside; log-det `sum_i log RQS'(x_i) -> (batch,)`.
    Inverse: the spline's quadratic-root inverse; log-det the negative.
    `theta_i` are per-element parameters (plus, with a context, a
    zero-initialised dense map of it), zero-initialised so the layer starts
    as the identity.

    Args:
        bins: spline bins (at least 2). Defaults to 8.
        bound: half-width of the spline's interval. Defaults to 3.
        context_shape: event shape of the context, or `None`.

    Input shape: `(batch, ...)`; output shape the same.

    References: Durkan et al., Neural Spline Flows, https://arxiv.org/abs/1906.04032

    >>> import numpy as np
    >>> layer = ElementwiseSpline(bins=4)
    >>> x = np.random.randn(2, 3).astype("float32")
    >>> bool(np.allclose(layer.inverse(layer.forward(x)[0])[0], x, atol=1e-5))
    True
    """

    def __init__(self, bins=8, bound=3.0, context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        self.bins = int(bins)
        self.bound = float(bound)
        self._transform()  # checks the arguments now, naming them

    def _transform(self):
        return transforms.get({"name": "spline", "bins": self.bins, "bound": self.bound})

    def get_config(self):
        config = super().get_config()
        config.update(bins=self.bins, bound=self.bound)
        return config


@register
class PiecewiseLinear(_Elementwise):
    """A monotone piecewise-linear map per element, learned (Müller et al. 2019).

    Forward: `y_i = PL(x_i; q_i)`, `K` equal-width bins on `[-bound, bound]`
    whose heights are `softmax(q_i)`, identity outside; log-det
    `sum_i log PL'(x_i) -> (batch,)`. Inverse: the piecewise-linear inverse;
    log-det the negative. Zero-initialised parameters give the identity.

    Args:
        bins: bins (at least 2). Defaults to 8.
        bound: half-width of the interval. Defaults to 1.
        context_shape: event shape of the context, or `None`.

    References: Müller et al., Neural Importance Sampling,
    https://arxiv.org/abs/1808.03856

    >>> import numpy as np
    >>> layer = PiecewiseLinear(bins=4)
    >>> x = np.random.uniform(-1, 1, (2, 3)).astype("float32")
    >>> bool(np.allclose(layer.inverse(layer.forward(x)[0])[0], x, atol=1e-5))
    True
    """

    def __init__(self, bins=8, bound=1.0, context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        self.bins = int(bins)
        self.bound = float(bound)
        self._transform()

    def _transform(self):
        return transforms.get({"name": "piecewise_linear", "bins": self.bins, "bound": self.bound})

    def get_config(self):
        config = super().get_config()
        config.update(bins=self.bins, bound=self.bound)
        return config
