"""tfflows: normalizing flows for Keras 3 and TensorFlow.

`FlowModel`, `layers`, `transforms` and `distributions` use keras.ops only and
run on the TensorFlow and JAX backends; `as_bijector`, `export`,
`distribute` and `zoo.data` are TensorFlow only. Every name loads on first
use, so `import tfflows` (and the `tfflows` command's `--help` and `list`)
import neither Keras nor TensorFlow.

Training under `tf.distribute` needs `tfflows.distribute` imported (it
plugs the strategy-aware `fit` and data-dependent init into `FlowModel`);
`tfflows.distribute.get_strategy(...)` does that.
"""

import importlib

from tfflows.version import __version__  # noqa: F401

_LAZY = {
    "FlowModel": ("tfflows.models", "FlowModel"),
    "StopOnNaN": ("tfflows.models", "StopOnNaN"),
    "TrainingDivergedError": ("tfflows.models", "TrainingDivergedError"),
    "default_optimizer": ("tfflows.models", "default_optimizer"),
    "layers": ("tfflows.layers", None),
    "transforms": ("tfflows.transforms", None),
    "distributions": ("tfflows.distributions", None),
    "datasets": ("tfflows.datasets", None),
    "vi": ("tfflows.vi", None),
    "apps": ("tfflows.apps", None),
    "optimizers": ("tfflows.optimizers", None),
    "images": ("tfflows.images", None),
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


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
