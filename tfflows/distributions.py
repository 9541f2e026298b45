"""Base distributions for flows, as weightless (or lightly weighted) Keras layers.

Each has `log_prob(z, context=None) -> (batch,)` summed over the event and
`sample(shape, context=None, temperature=1.0, seed=None)`. A sample is a
map of standard noise: `noise` names the noise (`"normal"`: N(0, 1);
`"uniform"`: U[0, 1)) and `from_noise(eps, context, temperature)` maps it,
so an exporter can draw the noise with its own (stateless) generator and
still sample any base (`tfflows.export` does). Temperature scales the
distribution's spread around its mode (Glow's reduced-temperature
sampling), either one scalar or one value per row of the batch.
"""

import math

import keras
from keras import ops

from tfflows.layers.base import event_size

NOISES = ("normal", "uniform")


def scale_rows(z, temperature):
    """`z * temperature`, with a scalar or one temperature per row of `z`."""
    t = ops.convert_to_tensor(temperature, dtype=z.dtype)
    if len(t.shape) == 1:
        t = ops.reshape(t, (-1,) + (1,) * (len(z.shape) - 1))
    return z * t


def _sum_event(v):
    return ops.sum(ops.reshape(v, (ops.shape(v)[0], -1)), axis=1)


class Distribution(keras.layers.Layer):
    """Base class of tfflows base distributions.

    Subclasses set `noise` and implement `log_prob(z, context=None)` and
    `from_noise(eps, context=None, temperature=1.0)`.
    """

    #: The standard noise `from_noise` maps: `"normal"` or `"uniform"`.
    noise = "normal"

    def log_prob(self, z, context=None):
        raise NotImplementedError(f"{type(self).__name__} must implement log_prob")

    def from_noise(self, eps, context=None, temperature=1.0):
        raise NotImplementedError(f"{type(self).__name__} must implement from_noise")

    def draw_noise(self, shape, seed=None, dtype="float32"):
        """Standard noise of this distribution's `noise` kind (Keras RNG)."""
        if self.noise == "uniform":
            return keras.random.uniform(shape, seed=seed, dtype=dtype)
        return keras.random.normal(shape, seed=seed, dtype=dtype)

    def sample(self, shape, context=None, temperature=1.0, seed=None):
        """`shape` (batch axis first) samples at `temperature`."""
        return self.from_noise(self.draw_noise(shape, seed=seed), context=context, temperature=temperature)

    def call(self, z, context=None):
        return self.log_prob(z, context=context)


@keras.saving.register_keras_serializable(package="tfflows")
class Normal(Distribution):
    """The standard normal `N(0, I)` over the latent.

    `log_prob(z) = -0.5 * sum(z^2) - D/2 * log(2 pi)`; a sample at
    temperature T is `T * eps`, `eps ~ N(0, I)`. The mode is 0.
    """

    noise = "normal"

    def log_prob(self, z, context=None):
        return -0.5 * _sum_event(ops.square(z)) - 0.5 * event_size(z.shape) * math.log(2 * math.pi)

    def from_noise(self, eps, context=None, temperature=1.0):
        return scale_rows(eps, temperature)


@keras.saving.register_keras_serializable(package="tfflows")
class Logistic(Distribution):
    """The standard logistic distribution per dimension (NICE's prior).

    `log p(z) = sum -(z + 2 softplus(-z))`; sampling inverts the CDF of a
    uniform `u` squeezed into `[1e-6, 1 - 1e-6)`, `z = log u - log(1 - u)`,
    then scales by `temperature`. The mode is 0.
    """

    noise = "uniform"
    _LOW, _HIGH = 1e-6, 1.0 - 1e-6

    def log_prob(self, z, context=None):
        return _sum_event(-(z + 2.0 * ops.softplus(-z)))

    def from_noise(self, eps, context=None, temperature=1.0):
        # The same float32 arithmetic as tf.random.stateless_uniform(minval,
        # maxval): u * (high - low) + low.
        low = ops.convert_to_tensor(self._LOW, dtype=eps.dtype)
        high = ops.convert_to_tensor(self._HIGH, dtype=eps.dtype)
        u = eps * (high - low) + low
        return scale_rows(ops.log(u) - ops.log1p(-u), temperature)


@keras.saving.register_keras_serializable(package="tfflows")
class ConditionalNormal(Distribution):
    """A diagonal normal whose mean and log-std are learned functions of a
    context: `p(z | c) = N(z; mu(c), diag(sigma(c)^2))`.

    `mu` and `log sigma` come from one zero-initialised dense layer on the
    flattened context, so the base starts as `N(0, I)` (Glow's
    class-conditional prior, with a one-hot class as the context).
    `log_prob(z, c) = sum log N(z; mu(c), sigma(c))`; a sample at
    temperature T is `mu(c) + T * sigma(c) * eps`, so T = 0 gives the mode
    `mu(c)`.

    Args:
        context_shape: event shape of the context, e.g. `(10,)`.

    References: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039
    (section 5, class-conditional prior)

    >>> import numpy as np
    >>> base = ConditionalNormal((3,))
    >>> base.build((None, 4))
    >>> tuple(base.log_prob(np.zeros((2, 4), "float32"), np.ones((2, 3), "float32")).shape)
    (2,)
    """

    noise = "normal"

    def __init__(self, context_shape, **kwargs):
        super().__init__(**kwargs)
        if context_shape is None:
            raise ValueError("ConditionalNormal needs a context_shape, e.g. (10,).")
        self.context_shape = tuple(int(d) for d in context_shape)

    def build(self, latent_shape):
        self.latent_shape = tuple(latent_shape[1:])
        size = event_size(latent_shape)
        self.dense = keras.layers.Dense(2 * size, kernel_initializer="zeros", name="params", dtype=self.dtype_policy)
        self.dense.build((None, event_size((None,) + self.context_shape)))

    def _params(self, context, like):
        if context is None:
            raise ValueError(f"ConditionalNormal '{self.name}' needs a context; got none.")
        flat = ops.reshape(ops.cast(context, like.dtype), (ops.shape(context)[0], -1))
        h = ops.cast(self.dense(flat), like.dtype)
        mu, log_sigma = ops.split(h, 2, axis=-1)
        shape = (ops.shape(context)[0],) + self.latent_shape
        return ops.reshape(mu, shape), ops.reshape(log_sigma, shape)

    def log_prob(self, z, context=None):
        mu, log_sigma = self._params(context, z)
        u = (z - mu) * ops.exp(-log_sigma)
        return _sum_event(-0.5 * ops.square(u) - log_sigma) - 0.5 * event_size(z.shape) * math.log(2 * math.pi)

    def from_noise(self, eps, context=None, temperature=1.0):
        mu, log_sigma = self._params(context, eps)
        return mu + scale_rows(eps * ops.exp(log_sigma), temperature)

    def get_config(self):
        config = super().get_config()
        config["context_shape"] = list(self.context_shape)
        return config


BASES = {"normal": Normal, "logistic": Logistic}


def get(base):
    """Resolves `"normal"`, `"logistic"`, a config dict or a layer instance."""
    if isinstance(base, str):
        if base not in BASES:
            raise ValueError(f"Unknown base distribution {base!r}; choose one of {sorted(BASES)}.")
        return BASES[base]()
    if isinstance(base, dict):
        return keras.saving.deserialize_keras_object(base)
    if not isinstance(base, Distribution):
        raise TypeError(
            f"base must be 'normal', 'logistic' or a tfflows.distributions.Distribution; "
            f"got {type(base).__name__}."
        )
    if base.noise not in NOISES:
        raise TypeError(f"{type(base).__name__}.noise must be one of {NOISES}, got {base.noise!r}.")
    return base
