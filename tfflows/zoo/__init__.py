"""Model zoo: `nice()`, `realnvp()`, `glow()` for images with presets and
shipped weights (`pretrained=True`); `maf()`, `iaf()`, `nsf()` (and
`realnvp(data_shape=(dim,))`) for vectors; tf.data pipelines
(`tfflows.zoo.data`)."""

import importlib

from tfflows.zoo.builders import (PRESETS, WeightsError, glow, list_models, nice, realnvp,
                                  verified_weights_path)
from tfflows.zoo.vectors import iaf, maf, nsf

__all__ = ["PRESETS", "WeightsError", "glow", "list_models", "nice", "realnvp", "maf", "iaf", "nsf",
           "verified_weights_path", "data"]


def __getattr__(name):
    if name == "data":  # TF-only: loaded on first use
        module = importlib.import_module("tfflows.zoo.data")
        globals()["data"] = module
        return module
    raise AttributeError(f"module 'tfflows.zoo' has no attribute {name!r}")
