"""What users build on a trained flow (DESIGN.md, apps/): latent
interpolation and attribute manipulation (`tfflows.apps.latent`),
inpainting (`tfflows.apps.inpainting`) and out-of-distribution scores
(`tfflows.apps.ood`). Names load on first use."""

import importlib

_LAZY = {
    "interpolate": "latent", "slerp": "latent", "attribute_direction": "latent", "manipulate": "latent",
    "inpaint": "inpainting",
    "ood_score": "ood", "complexity_bits": "ood", "auroc": "ood", "perturb": "ood",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"tfflows.apps.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfflows.apps' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
