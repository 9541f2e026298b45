"""`value_and_grad` of a scalar-per-example function of a batch, compiled
once, on the TensorFlow and JAX backends (Keras 3 has no backend-neutral
gradient), and `compiled`, the same compilation without the gradient."""

import keras
import numpy as np


def value_and_grad(fn):
    """A compiled callable `x -> (fn(x), d sum(fn(x)) / dx)` returning numpy;
    `fn` maps a batch to `(batch,)` and must not change any variable (the
    model's weights are read as they are when it is traced).

    The rows are independent, so the gradient of the sum is each row's own
    gradient. Compiled with `tf.function` / `jax.jit`: an eager gradient
    through a Glow costs seconds per call, the compiled one a fraction.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True, autograph=False)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
                total = tf.reduce_sum(value)
            return value, tape.gradient(total, x)

        def call(x):
            value, grad = step(tf.convert_to_tensor(x))
            return np.asarray(value), np.asarray(grad)

        return call
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(v):
            out = fn(v)
            return jnp.sum(out), out

        step = jax.jit(jax.value_and_grad(total, has_aux=True))

        def call(x):
            (_, value), grad = step(jnp.asarray(x))
            return np.asarray(value), np.asarray(grad)

        return call
    raise NotImplementedError(f"tfflows.apps needs gradients on the tensorflow or jax backend, not {backend!r}.")


def compiled(fn):
    """`fn` (a batch -> tensor function reading a model's weights) compiled
    with `tf.function` / `jax.jit`, returning numpy. Like `value_and_grad`,
    the weights are read as they are when it is traced on JAX: compile
    again after training."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(fn, reduce_retracing=True, autograph=False)
        return lambda x: np.asarray(step(tf.convert_to_tensor(x)))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        step = jax.jit(fn)
        return lambda x: np.asarray(step(jnp.asarray(x)))
    raise NotImplementedError(f"tfflows.apps compiles on the tensorflow or jax backend, not {backend!r}.")
