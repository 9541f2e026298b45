"""`value_and_grad` of a scalar-per-example function of a batch, on the
TensorFlow and JAX backends (Keras 3 has no backend-neutral gradient)."""

import keras
import numpy as np


def value_and_grad(fn, x):
    """`(fn(x), d sum(fn(x)) / dx)` as numpy arrays; `fn` maps a batch to `(batch,)`.

    The rows are independent, so the gradient of the sum is each row's own
    gradient.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = tf.reduce_sum(value)
        return np.asarray(value), np.asarray(tape.gradient(total, x))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(v):
            out = fn(v)
            return jnp.sum(out), out

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(x))
        return np.asarray(value), np.asarray(grad)
    raise NotImplementedError(f"tfflows.apps needs gradients on the tensorflow or jax backend, not {backend!r}.")
