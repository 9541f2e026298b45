"""Variational dequantization (Flow++, Ho et al. 2019): a learned noise
distribution `q(u | x)` for discrete images.

Sampling (one pass): `eps ~ N(0, I)`, `v = f(eps; h(x))` through conditional
affine couplings whose nets see features `h(x)` of the image and a learned
element-wise affine `a * v + b`, `u = sigmoid(v)` in `(0, 1)^D`. Density:
`log q(u | x) = log N(eps) - log|det df/deps| - sum log sigmoid'(v)`.
The affine starts at the scale that makes `v = 1.702 eps` at init, so that
`u = sigmoid(1.702 eps)`, the logistic approximation of the normal CDF
`Phi(eps)`, is close to uniform (KL(q || U) = 0.010 nats per dimension,
by quadrature; the best scale, 1.749, gives 0.0095): `q` starts near
uniform dequantization, not from a narrower noise that a flow trained on
uniform noise would score worse. A flow model `p` on `[0, 1)^D` then bounds
the discrete likelihood of `n_bits`-bit images from below:

    log P(x) >= E_q[ log p((x + u) / 2^n) - D n ln 2 - log q(u | x) ],

which is uniform dequantization's bound when `q` is uniform (`log q = 0`);
training `q` with `p` tightens it. `FlowModel(..., dequantizer=...)` uses
this layer: it takes integer pixels in `log_prob`, `bits_per_dim` and `fit`
and returns the bound.

Reference: Ho et al., Flow++, https://arxiv.org/abs/1902.00275 (section 3.1).
"""

import math

import keras
import numpy as np
from keras import ops

from tfflows.layers.base import FlowSequence, sum_except_batch
from tfflows.layers.coupling import AffineCoupling

LOG_2PI = math.log(2.0 * math.pi)


@keras.saving.register_keras_serializable(package="tfflows")
class VariationalDequantizer(keras.layers.Layer):
    """`q(u | x)` over dequantization noise `u in (0, 1)^D` for images `x`.

    `call(x, training=False)` takes integer pixel values `(batch, H, W, C)`
    as floats in `[0, 2^n_bits)` and returns `(u, log_q)`: one draw `u`
    (same shape) and `log q(u | x)` per example `(batch,)`, in nats.

    Args:
        data_shape: `(H, W, C)` of the images.
        n_bits: bits per pixel. Defaults to 8.
        couplings: conditional affine couplings from `eps` to `v` (masks:
            checkerboard, alternating parity; with 2+ channels every other
            pair uses channel halves). Defaults to 4.
        hidden: width of the feature net and of the couplings' nets.
            Defaults to 32.
        features: channels of `h(x)`, the couplings' image context.
            Defaults to 8.
        seed: seed of the noise draws (a `keras.random.SeedGenerator`).
    """

    def __init__(self, data_shape, n_bits=8, couplings=4, hidden=32, features=8, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        shape = tuple(int(d) for d in data_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"VariationalDequantizer takes images: data_shape=(H, W, C). "
                             f"Received: data_shape={data_shape!r}")
        for name, value, low in (("n_bits", n_bits, 1), ("couplings", couplings, 1), ("hidden", hidden, 1),
                                 ("features", features, 1)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"VariationalDequantizer {name} must be an integer >= {low}. "
                                 f"Received: {name}={value!r}")
        self.data_shape = shape
        self.n_bits = int(n_bits)
        self.couplings = int(couplings)
        self.hidden = int(hidden)
        self.features = int(features)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.feature_net = [
            keras.layers.Conv2D(self.hidden, 3, padding="same", activation="relu", name="features_0"),
            keras.layers.Conv2D(self.features, 3, padding="same", name="features_1"),
        ]
        context_shape = shape[:2] + (self.features,)
        layers = []
        for k in range(self.couplings):
            channel = shape[2] >= 2 and k % 4 >= 2
            layers.append(AffineCoupling(mask="channel" if channel else "checkerboard", reverse=bool(k % 2),
                                         hidden=self.hidden, context_shape=context_shape, name=f"coupling{k}"))
        self.noise_flow = FlowSequence(layers, name="noise_flow")

    def build(self, input_shape=None):
        h = (None,) + self.data_shape
        for layer in self.feature_net:
            layer.build(h)
            h = layer.compute_output_shape(h)
        self.noise_flow.build((None,) + self.data_shape)
        # At init the couplings' nets are zero, so f is a fixed diagonal
        # scaling: sigmoid(2) per coupling that moves an element (Glow's
        # scale). Undo it and scale by 1.702, making u = sigmoid(1.702 eps)
        # ~ Phi(eps). Counted from the masks in numpy, so building inside a
        # trace (jit, symbolic calls) works too.
        moved = np.zeros(self.data_shape, dtype="float64")
        for layer in self.noise_flow.flow_layers:
            moved = moved + layer.transformed_mask(self.data_shape[-1])
        init = math.log(1.702) - moved * math.log(1.0 / (1.0 + math.exp(-2.0)))
        self.log_scale = self.add_weight(shape=self.data_shape, name="log_scale",
                                         initializer=keras.initializers.Constant(init.astype("float32")))
        self.shift = self.add_weight(shape=self.data_shape, name="shift", initializer="zeros")
        self.built = True

    def _features(self, x):
        h = x / float(2 ** self.n_bits) - 0.5
        for layer in self.feature_net:
            h = layer(h)
        return h

    def log_q(self, x, eps):
        """`(u, log q(u | x))` for given standard-normal draws `eps` (tests,
        importance sampling with fixed draws)."""
        x = ops.cast(x, self.compute_dtype)
        h = self._features(x)
        v, log_det = self.noise_flow.forward(eps, context=h)
        v = v * ops.exp(self.log_scale) + self.shift
        log_det = log_det + ops.sum(self.log_scale)
        log_n = -0.5 * sum_except_batch(ops.square(eps)) - 0.5 * LOG_2PI * math.prod(self.data_shape)
        # log sigmoid'(v) = log sigmoid(v) + log sigmoid(-v) = -softplus(-v) - softplus(v)
        log_sig_grad = -sum_except_batch(ops.softplus(-v) + ops.softplus(v))
        return ops.sigmoid(v), log_n - log_det - log_sig_grad

    def call(self, x, training=False):
        eps = keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=self.compute_dtype)
        return self.log_q(x, eps)

    def get_config(self):
        config = super().get_config()
        config.update(data_shape=list(self.data_shape), n_bits=self.n_bits, couplings=self.couplings,
                      hidden=self.hidden, features=self.features, seed=self.seed)
        return config
