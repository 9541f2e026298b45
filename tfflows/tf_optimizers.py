"""TensorFlow-only kernels for `tfflows.optimizers` (imported only on that backend)."""

import tensorflow as tf


def fused_adam_update(grads, variables, slots, hyper):
    """Adam's update of `variables` by `grads` with one `ResourceApplyAdam` op
    each; `slots` holds each variable's `(momentum, velocity)`, `hyper` is
    `(iterations, beta_1, beta_2, epsilon, learning_rate)`. Returns False,
    having done nothing, where that kernel does not apply: under a `tf.distribute` strategy (Keras' per-replica update path
    is needed there), for sparse (`IndexedSlices`) gradients, or for
    variables that are not plain resource variables."""
    if tf.distribute.has_strategy():
        return False
    handles = []
    for g, v in zip(grads, variables):
        value = getattr(v, "value", v)
        if isinstance(g, tf.IndexedSlices) or not hasattr(value, "handle"):
            return False
        handles.append(value.handle)
    iterations, beta_1, beta_2, epsilon, learning_rate = hyper
    scalars = {}

    def scalars_for(dtype):  # computed in the variable's dtype, as Keras' Adam does
        if dtype not in scalars:
            step = tf.cast(iterations + 1, dtype)
            b1, b2 = tf.constant(beta_1, dtype), tf.constant(beta_2, dtype)
            scalars[dtype] = (tf.pow(b1, step), tf.pow(b2, step), tf.cast(learning_rate, dtype), b1, b2,
                              tf.constant(epsilon, dtype))
        return scalars[dtype]

    for g, v, handle, (m, vel) in zip(grads, variables, handles, slots):
        dtype = v.dtype if isinstance(v.dtype, tf.DType) else tf.as_dtype(v.dtype)
        b1p, b2p, lr, b1, b2, eps = scalars_for(dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=handle, m=m.value.handle, v=vel.value.handle,
            beta1_power=b1p, beta2_power=b2p, lr=lr, beta1=b1, beta2=b2, epsilon=eps,
            grad=tf.cast(g, dtype), use_locking=False)
    return True
