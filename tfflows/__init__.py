"""tfflows: normalizing flows for Keras 3 and TensorFlow.

`FlowModel`, `layers`, `transforms` and `distributions` use keras.ops only and
run on the TensorFlow and JAX backends. The TF-only parts (`as_bijector`,
`export`, `zoo.data`) load lazily on first use; on the TensorFlow backend
`tfflows.distribute` loads with the package, so that `FlowModel.fit` knows
about `tf.distribute` strategies.
"""

import importlib

import keras

from tfflows import distributions, layers, transforms
from tfflows.models import FlowModel, StopOnNaN, TrainingDivergedError, default_optimizer

from tfflows.version import __version__  # noqa: F401

if keras.backend.backend() == "tensorflow":
    from tfflows import distribute  # noqa: F401  (registers FlowModel's tf.distribute hooks)

_LAZY = {
    "as_bijector": ("tfflows.bijectors", "as_bijector"),
    "zoo": ("tfflows.zoo", None),
    "export": ("tfflows.export", None),
    "distribute": ("tfflows.distribute", None),
}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfflows' has no attribute {name!r}")


__all__ = [
    "FlowModel", "StopOnNaN", "TrainingDivergedError", "default_optimizer",
    "layers", "transforms", "distributions", "as_bijector", "zoo", "export", "distribute",
]
