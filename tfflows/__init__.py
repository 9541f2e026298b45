"""tfflows: normalizing flows for Keras 3 and TensorFlow.

`FlowModel`, `layers` and `distributions` use keras.ops only and run on the
TensorFlow and JAX backends. The TF-only parts (`as_bijector`, `export`,
`distribute`, `zoo.data`) load lazily on first use.
"""

import importlib

from tfflows import distributions, layers
from tfflows.models import FlowModel, StopOnNaN, TrainingDivergedError, default_optimizer

__version__ = "0.1.0"

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
    "layers", "distributions", "as_bijector", "zoo", "export", "distribute",
]
