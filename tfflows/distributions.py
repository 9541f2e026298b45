"""Base distributions for flows, as weightless (or lightly weighted) Keras layers.

Each has `log_prob(z) -> (batch,)` summed over the event, and
`sample(shape, temperature=1.0, seed=None)`. Temperature scales the
distribution's spread (Glow's reduced-temperature sampling), either one
scalar or one value per row of the batch.
"""

import math

import keras
from keras import ops


def _scale_rows(z, temperature):
    t = ops.convert_to_tensor(temperature, dtype=z.dtype)
    if len(t.shape) == 1:
        t = ops.reshape(t, (-1,) + (1,) * (len(z.shape) - 1))
    return z * t


def _sum_event(v):
    return ops.sum(ops.reshape(v, (ops.shape(v)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package="tfflows")
class Normal(keras.layers.Layer):
    """The standard normal `N(0, I)` over the latent.

    `log_prob(z) = -0.5 * sum(z^2) - D/2 * log(2 pi)`; `sample` draws
    `temperature * eps`, `eps ~ N(0, I)`. The mode is 0.
    """

    def log_prob(self, z):
        d = 1
        for s in z.shape[1:]:
            d *= s
        return -0.5 * _sum_event(ops.square(z)) - 0.5 * d * math.log(2 * math.pi)

    def sample(self, shape, temperature=1.0, seed=None):
        return _scale_rows(keras.random.normal(shape, seed=seed), temperature)

    def call(self, z):
        return self.log_prob(z)


@keras.saving.register_keras_serializable(package="tfflows")
class Logistic(keras.layers.Layer):
    """The standard logistic distribution per dimension (NICE's prior).

    `log p(z) = sum -(z + 2 softplus(-z))`; sampling inverts the CDF,
    `z = log u - log(1 - u)`, then scales by `temperature`. The mode is 0.
    """

    def log_prob(self, z):
        return _sum_event(-(z + 2.0 * ops.softplus(-z)))

    def sample(self, shape, temperature=1.0, seed=None):
        u = keras.random.uniform(shape, minval=1e-6, maxval=1.0 - 1e-6, seed=seed)
        return _scale_rows(ops.log(u) - ops.log1p(-u), temperature)

    def call(self, z):
        return self.log_prob(z)


BASES = {"normal": Normal, "logistic": Logistic}


def get(base):
    """Resolves `"normal"`, `"logistic"`, a config dict or a layer instance."""
    if isinstance(base, str):
        if base not in BASES:
            raise ValueError(f"Unknown base distribution {base!r}; choose one of {sorted(BASES)}.")
        return BASES[base]()
    if isinstance(base, dict):
        return keras.saving.deserialize_keras_object(base)
    if not (hasattr(base, "log_prob") and hasattr(base, "sample")):
        raise TypeError(
            f"base must be 'normal', 'logistic' or a layer with log_prob and sample; "
            f"got {type(base).__name__}."
        )
    return base
