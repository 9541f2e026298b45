"""Model zoo: `nice()`, `realnvp()`, `glow()` for images with presets and
shipped weights (`pretrained=True`); `maf()`, `iaf()`, `nsf()` (and
`realnvp(data_shape=(dim,))`) for vectors; `planar()`, `radial()`,
`sylvester()`, `householder()` as variational families; `resflow()`,
`ffjord()` (residual and continuous flows, vectors or images); `vae()`, VAEs with
flow posteriors (`tfflows.vae`); tf.data pipelines
(`tfflows.zoo.data`). Names load on first use (`tfflows.zoo.presets`, the
presets table, needs no Keras)."""

import importlib

_LAZY = {
    "glow": "builders", "realnvp": "builders", "nice": "builders", "build": "builders",
    "maf": "vectors", "iaf": "vectors", "nsf": "vectors",
    "planar": "vi", "radial": "vi", "sylvester": "vi", "householder": "vi",
    "vae": "vae",
    "resflow": "freeform", "ffjord": "freeform",
    "PRESETS": "presets", "WeightsError": "presets", "list_models": "presets", "read_presets": "presets",
    "verified_weights_path": "presets",
    "builders": None, "vectors": None, "presets": None, "data": None, "grow": None,
    "vi": None, "freeform": None,
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"tfflows.zoo.{_LAZY[name] or name}")
        value = module if _LAZY[name] is None else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfflows.zoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(k for k in _LAZY if k != "grow")
