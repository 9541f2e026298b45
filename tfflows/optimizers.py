"""`Adam`: Keras' Adam, with one fused update op per variable on TensorFlow.

Same update, same variables, same config as `keras.optimizers.Adam`
(Kingma & Ba 2015): with `alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`,

    m <- m + (g - m)(1 - beta_1);  v <- v + (g^2 - v)(1 - beta_2)
    w <- w - alpha * m / (sqrt(v) + epsilon)

Keras writes that as about twenty graph ops per variable, each built in
Python while the train step is traced; for a flow with a few hundred
variables that building was most of the first step's time (issue #49:
about 9 of the 19 s of the main job's model on a 2-core Xeon). On the
TensorFlow backend, outside a `tf.distribute` strategy, this class issues
TensorFlow's own `ResourceApplyAdam` kernel instead, one op per variable
(`tfflows.tf_optimizers`); everywhere else (JAX, a strategy, `amsgrad`,
sparse gradients) it is Keras' Adam unchanged. `tests/test_optimizers.py`
holds the two to the same weights after several steps.
"""

import contextlib

import keras

__all__ = ["Adam", "build_before_tracing"]


def build_before_tracing(model, scope=None):
    """Builds `model.optimizer` for `model.trainable_variables` now, unless
    the model has none yet (not built) or the optimizer is built.

    Keras 3 on TensorFlow, with no strategy set, creates the optimizer's
    variables inside the first traced train step, and a `tf.function` that
    creates variables is traced twice; calling this before `fit` halves the
    first step (issue #49). `scope`: the distribution strategy's scope the
    variables must be created in, if any.
    """
    optimizer = getattr(model, "optimizer", None)
    if model.built and optimizer is not None and not optimizer.built:
        with scope if scope is not None else contextlib.nullcontext():
            optimizer.build(model.trainable_variables)


@keras.saving.register_keras_serializable(package="tfflows")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with a fused update on TensorFlow (see the module)."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "tensorflow" and not self.amsgrad:
            from tfflows import tf_optimizers

            slots = [(self._momentums[i], self._velocities[i])
                     for i in (self._get_variable_index(v) for v in trainable_variables)]
            hyper = (self.iterations, self.beta_1, self.beta_2, self.epsilon, learning_rate)
            if tf_optimizers.fused_adam_update(grads, trainable_variables, slots, hyper):
                return
        return super()._backend_update_step(grads, trainable_variables, learning_rate)
