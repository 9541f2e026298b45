"""What users build on a trained flow (DESIGN.md, apps/): class-conditional
generation and the Bayes classifier (`tfflows.apps.classes`), latent
interpolation and attribute manipulation (`tfflows.apps.latent`),
inpainting (`tfflows.apps.inpainting`), out-of-distribution scores
(`tfflows.apps.ood`) and FastFlow anomaly detection (`tfflows.apps.anomaly`). Names load on first use."""

import importlib

_LAZY = {
    "interpolate": "latent", "slerp": "latent", "attribute_direction": "latent", "manipulate": "latent",
    "inpaint": "inpainting",
    "fit_class_prior": "classes", "class_log_probs": "classes", "classify": "classes",
    "class_samples": "classes",
    "fastflow": "anomaly", "FastFlow": "anomaly", "mnist_backbone": "anomaly",
    "synthetic_defects": "anomaly", "reduce_map": "anomaly", "train_mnist_backbone": "anomaly",
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
