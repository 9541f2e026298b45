"""Autoregressive flows: the MADE conditioner and `MaskedAutoregressive`
(MAF and IAF, affine or spline).

In an autoregressive map each output `y_i` is an element-wise transform of
`x_i` whose parameters depend only on the elements before it in an order,
`h_i = MADE(x_{<i})`. The Jacobian is triangular, so the log-det is the sum
of the element-wise log-derivatives. One MADE pass gives every `h_i` from a
known input, so the map in the direction whose input is known is one pass;
the other direction recovers the elements one at a time, `D` passes (exact,
declared `"sequential"`).

- MAF (Papamakarios et al. 2017): the density direction (data -> latent) is
  one pass, sampling takes `D` passes.
- IAF (Kingma et al. 2016): the sampling direction (latent -> data) is one
  pass, the density takes `D` passes.
"""

import keras
import numpy as np
from keras import layers as kl
from keras import ops

from tfflows import transforms
from tfflows.layers.base import FlowLayer, register, sum_except_batch
from tfflows.layers.nets import context_channels

ORDERS = ("natural", "reverse", "random")
DIRECTIONS = ("maf", "iaf")


def input_degrees(features, order="natural", seed=None):
    """The autoregressive degree `1..D` of each input feature.

    `"natural"`: feature `i` has degree `i + 1`; `"reverse"`: `D - i`;
    `"random"`: a seeded permutation; or an explicit permutation of `1..D`
    (or of `0..D-1`, shifted by one).
    """
    d = int(features)
    if isinstance(order, str):
        if order not in ORDERS:
            raise ValueError(f"MADE order must be one of {ORDERS} or a permutation. Received: order={order!r}")
        if order == "natural":
            return np.arange(1, d + 1)
        if order == "reverse":
            return np.arange(d, 0, -1)
        return np.random.default_rng(seed).permutation(d) + 1
    degrees = np.asarray(order, dtype=int).ravel()
    if sorted(degrees.tolist()) == list(range(d)):
        degrees = degrees + 1
    if sorted(degrees.tolist()) != list(range(1, d + 1)):
        raise ValueError(f"MADE order must be a permutation of 1..{d} (or 0..{d - 1}). Received: order={order!r}")
    return degrees


def hidden_degrees(units, features, rng=None):
    """Degrees of `units` hidden units for `features` inputs: spread evenly
    over `1..D-1` (or drawn uniformly with `rng`); all 0 when `D == 1`."""
    top = max(int(features) - 1, 0)
    if top == 0:
        return np.zeros(units, dtype=int)
    if rng is not None:
        return rng.integers(1, top + 1, size=units)
    return np.arange(units) % top + 1


def made_masks(degrees_in, hidden, params_per_dim, order_rng=None):
    """The 0/1 kernel masks of a MADE with hidden widths `hidden`.

    A hidden unit of degree `k` sees inputs of degree `<= k`; output `i`
    (every one of its `params_per_dim` copies, laid out parameter-major:
    unit `p * D + i`) sees hidden units of degree `< degree(i)`. So output
    `i` depends only on inputs of lower degree (Germain et al. 2015).
    Returns `(masks, hidden degrees)`.
    """
    d = len(degrees_in)
    masks, prev = [], np.asarray(degrees_in)
    degrees = []
    for units in hidden:
        deg = hidden_degrees(units, d, order_rng)
        masks.append((deg[None, :] >= prev[:, None]).astype("float32"))
        degrees.append(deg)
        prev = deg
    out = np.tile(np.asarray(degrees_in), params_per_dim)
    masks.append((out[None, :] > prev[:, None]).astype("float32"))
    return masks, degrees


@keras.saving.register_keras_serializable(package="tfflows")
class MaskedDense(kl.Dense):
    """A `Dense` layer whose kernel is multiplied by a fixed 0/1 `mask`
    `(in, out)` (MADE's masked weight matrices).

    Args:
        units: output size.
        mask: a `(in, out)` array of 0/1.
        **kwargs: `keras.layers.Dense` arguments.
    """

    def __init__(self, units, mask, **kwargs):
        super().__init__(units, **kwargs)
        self.mask = np.asarray(mask, dtype="float32")
        if self.mask.ndim != 2 or self.mask.shape[1] != int(units):
            raise ValueError(f"MaskedDense mask must have shape (in, {units}). Received: mask shape {self.mask.shape}")

    def build(self, input_shape):
        if input_shape[-1] != self.mask.shape[0]:
            raise ValueError(f"MaskedDense '{self.name}' has a mask for {self.mask.shape[0]} inputs, got "
                             f"{input_shape[-1]}.")
        super().build(input_shape)

    def call(self, inputs):
        kernel = ops.cast(self.kernel, self.compute_dtype) * ops.convert_to_tensor(self.mask, self.compute_dtype)
        y = ops.matmul(ops.cast(inputs, self.compute_dtype), kernel)
        if self.use_bias:
            y = y + ops.cast(self.bias, self.compute_dtype)
        return self.activation(y) if self.activation is not None else y

    def get_config(self):
        config = super().get_config()
        config["mask"] = self.mask.astype(int).tolist()
        return config


@keras.saving.register_keras_serializable(package="tfflows")
class MADE(keras.layers.Layer):
    """MADE: a masked MLP whose output `i` depends only on the inputs before
    `i` in the autoregressive order (and on the context, if any).

    `h = MADE(x, context)`, `(batch, D) -> (batch, P * D)` laid out
    parameter-major (output `p * D + i` is parameter `p` of feature `i`),
    with `h[..., i]` a function of `{x_j : degree(j) < degree(i)}` only. A
    context enters the first hidden layer unmasked (every hidden unit sees
    it). The last layer is zero-initialised, so a flow built on MADE starts
    near its transform's zero-parameter map.

    Args:
        features: `D`.
        params_per_dim: `P`, parameters per feature.
        hidden: widths of the hidden layers. Defaults to `(64, 64)`.
        order: `"natural"`, `"reverse"`, `"random"` or a permutation.
        context_shape: event shape of the context, or `None`.
        activation: hidden activation. Defaults to `"relu"`.
        random_degrees: draw the hidden units' degrees at random (seeded)
            instead of spreading them evenly. Defaults to `False`.
        seed: seed of a random order and random degrees.

    References: Germain et al., MADE, https://arxiv.org/abs/1502.03509

    >>> import numpy as np
    >>> made = MADE(3, params_per_dim=2, hidden=(8,), zero_init=False)
    >>> x = np.random.randn(4, 3).astype("float32")
    >>> tuple(made(x).shape)
    (4, 6)
    """

    def __init__(self, features, params_per_dim=1, hidden=(64, 64), order="natural", context_shape=None,
                 activation="relu", random_degrees=False, seed=None, zero_init=True, **kwargs):
        super().__init__(**kwargs)
        if int(features) < 1 or int(params_per_dim) < 1:
            raise ValueError(f"MADE needs positive features and params_per_dim. Received: features={features}, "
                             f"params_per_dim={params_per_dim}")
        hidden = [int(h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"MADE needs at least one positive hidden width. Received: hidden={hidden}")
        if seed is None and (random_degrees or isinstance(order, str) and order == "random"):
            # Drawn once and kept in the config, so a reloaded MADE has the same masks.
            seed = int(np.random.randint(0, 2**31 - 1))
        self.features = int(features)
        self.params_per_dim = int(params_per_dim)
        self.hidden = hidden
        self.order = order if isinstance(order, str) else [int(o) for o in np.asarray(order).ravel()]
        self.context_shape = None if context_shape is None else tuple(int(d) for d in context_shape)
        self.activation = activation
        self.random_degrees = bool(random_degrees)
        self.seed = seed
        self.zero_init = bool(zero_init)
        self.degrees = input_degrees(self.features, order, seed)
        rng = np.random.default_rng(None if seed is None else seed + 1) if self.random_degrees else None
        masks, _ = made_masks(self.degrees, hidden, self.params_per_dim, rng)
        dtype = self.dtype_policy
        # With one feature nothing may feed the first hidden layer: it is a
        # learned constant (plus the context), not a kernel masked to zero.
        self.masked = [MaskedDense(h, m, activation=None, name=f"masked{i}", dtype=dtype)
                       for i, (h, m) in enumerate(zip(hidden, masks[:-1])) if i > 0 or self.features > 1]
        self.out = MaskedDense(self.params_per_dim * self.features, masks[-1], name="masked_out", dtype=dtype,
                               kernel_initializer="zeros" if self.zero_init else "glorot_uniform")
        self.act = keras.activations.get(activation)
        self.context_dense = None
        if self.context_shape is not None:
            self.context_dense = kl.Dense(hidden[0], use_bias=False, name="context", dtype=dtype)

    def build(self, input_shape):
        if input_shape[-1] != self.features:
            raise ValueError(f"MADE '{self.name}' has {self.features} features, got input shape "
                             f"{tuple(input_shape)}.")
        shape = (None, self.features)
        if self.features == 1:
            self.first_bias = self.add_weight(shape=(self.hidden[0],), initializer="zeros", name="first_bias")
            shape = (None, self.hidden[0])
        for layer in self.masked:
            layer.build(shape)
            shape = (None, layer.units)
        self.out.build(shape)
        if self.context_dense is not None:
            self.context_dense.build((None, context_channels(2, self.context_shape)))

    def call(self, x, context=None):
        if self.features == 1:
            h = ops.broadcast_to(ops.cast(self.first_bias, x.dtype), (ops.shape(x)[0], self.hidden[0]))
            rest = self.masked
        else:
            h, rest = self.masked[0](x), self.masked[1:]
        if self.context_dense is not None:
            if context is None:
                raise ValueError(f"MADE '{self.name}' is conditional (context_shape={self.context_shape}) and "
                                 f"needs a context; got none.")
            flat = ops.reshape(context, (ops.shape(context)[0], -1))
            h = h + self.context_dense(flat)
        h = self.act(h)
        for layer in rest:
            h = self.act(layer(h))
        return self.out(h)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.params_per_dim * self.features,)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, params_per_dim=self.params_per_dim, hidden=list(self.hidden),
                      order=self.order, context_shape=None if self.context_shape is None else list(self.context_shape),
                      activation=self.activation, random_degrees=self.random_degrees, seed=self.seed,
                      zero_init=self.zero_init)
        return config


@register
class MaskedAutoregressive(FlowLayer):
    """A masked autoregressive flow layer (MAF or IAF), affine or spline.

    With `h = MADE(u)` (parameters of feature `i` from `u_{<i}`) and `T` an
    element-wise transform (`tfflows.transforms`):

    `direction="maf"`: Forward (data -> latent, one MADE pass):
    `y = T^-1(x; MADE(x))`; log-det `sum_i log|dT^-1/dx_i|`. Inverse
    (latent -> data, sequential, `D` passes): `x = T(y; MADE(x))`, solved
    one feature at a time in the MADE order.

    `direction="iaf"`: Inverse (latent -> data, one pass):
    `x = T(z; MADE(z))`; Forward (data -> latent, sequential, `D` passes):
    `z = T^-1(x; MADE(z))`.

    So MAF evaluates densities in one pass and IAF samples in one pass; IAF
    is MAF with the directions swapped. Log-dets are exact in both.

    `T` is `"affine"` (`x = z * exp(s) + t` with `s = g * tanh(h_s)` bounded
    by a learned per-feature `g`, RealNVP's form), `"spline"` (rational
    quadratic, `transforms.Spline`) or any transform name, config or
    `Transform`. `T` maps the latent side to the data side, as in both
    papers.

    Args:
        transform: `"affine"` (default), `"spline"`, a transform config or
            a `Transform`.
        direction: `"maf"` (default) or `"iaf"`.
        hidden: MADE hidden widths. Defaults to `(64, 64)`.
        order: MADE order: `"natural"` (default), `"reverse"`, `"random"`
            or a permutation.
        seed: seed of a random order.
        context_shape: event shape of the context, or `None`.

    Input shape: `(batch, D)`; output shape the same.

    References: Papamakarios et al., MAF, https://arxiv.org/abs/1705.07057;
    Kingma et al., IAF, https://arxiv.org/abs/1606.04934; Durkan et al.,
    Neural Spline Flows, https://arxiv.org/abs/1906.04032

    >>> import numpy as np
    >>> layer = MaskedAutoregressive(hidden=(16,))
    >>> x = np.random.randn(3, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-5)), layer.inverse_mode
    (True, 'sequential')
    """

    input_ranks = (2,)
    accepts_context = True

    def __init__(self, transform="affine", direction="maf", hidden=(64, 64), order="natural", seed=None,
                 context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        if direction not in DIRECTIONS:
            raise ValueError(f"MaskedAutoregressive direction must be one of {DIRECTIONS}. "
                             f"Received: direction={direction!r}")
        if isinstance(transform, str) and transform == "affine":
            transform = {"name": "affine", "scale": "exp"}
        self.transform = transforms.get(transform)
        self.direction = direction
        self.hidden = [int(h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
        self.order = order if isinstance(order, str) else [int(o) for o in np.asarray(order).ravel()]
        if seed is None and self.order == "random":
            seed = int(np.random.randint(0, 2**31 - 1))  # kept in the config: a reload has the same order
        self.seed = seed
        self.made = None

    @property
    def forward_mode(self):
        return "analytic" if self.direction == "maf" else "sequential"

    @property
    def inverse_mode(self):
        return "sequential" if self.direction == "maf" else "analytic"

    def build(self, input_shape):
        self._check_rank(input_shape)
        d = input_shape[-1]
        if d is None or d < 1:
            raise ValueError(f"MaskedAutoregressive '{self.name}' needs a known feature count, got "
                             f"input shape {tuple(input_shape)}.")
        self.made = MADE(d, self.transform.params_per_dim, hidden=self.hidden, order=self.order,
                         context_shape=self.context_shape, seed=self.seed, name="made", dtype=self.dtype_policy)
        self.made.build((None, d))
        self.transform.build(self, d)

    def _params(self, u, context):
        # The net may compute in bfloat16 (mixed precision); the map stays in u's dtype.
        return ops.cast(self.made(u, context=context), u.dtype)

    def _one_pass(self, u, context, step):
        out, ladj = step(u, self._params(u, context))
        return out, sum_except_batch(ladj)

    def _sequential(self, v, context, step):
        """Solves `u = step(v; MADE(u))` one feature per MADE pass, in the
        MADE order: after pass `k` the `k` lowest-degree features are exact."""
        d = v.shape[-1]

        def body(_, u):
            return step(v, self._params(u, context))[0]

        u = ops.fori_loop(0, d, body, ops.zeros_like(v))
        out, ladj = step(v, self._params(u, context))
        return out, sum_except_batch(ladj)

    def _forward(self, x, context=None, training=False):
        if self.direction == "maf":
            return self._one_pass(x, context, self.transform.inverse)
        return self._sequential(x, context, self.transform.inverse)

    def _inverse(self, y, context=None, training=False):
        if self.direction == "maf":
            return self._sequential(y, context, self.transform.forward)
        return self._one_pass(y, context, self.transform.forward)

    def get_config(self):
        config = super().get_config()
        config.update(transform=self.transform.get_config(), direction=self.direction, hidden=list(self.hidden),
                      order=self.order, seed=self.seed)
        return config
