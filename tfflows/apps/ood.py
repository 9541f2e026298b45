"""Out-of-distribution scores from a trained flow: one score per example,
higher meaning more anomalous.

Likelihood alone fails in one direction: a flow trained on one image set
can give a simpler set higher likelihood than its own test images
(Nalisnick et al. 2019, "Do deep generative models know what they don't
know?": a Glow trained on Fashion-MNIST scores MNIST higher). The other
methods correct for that:

- `"log_prob"`: the negative log-likelihood, bits/dim for images
  (`-log p` in nats for vectors).
- `"typicality"`: `|NLL(x) - mean NLL(reference)|`, the distance from the
  typical set estimated on in-distribution `reference` data (Nalisnick et
  al. 2019b, "Detecting out-of-distribution inputs to deep generative models
  using typicality", with one example per test).
- `"likelihood_ratio"`: `NLL_model(x) - NLL_background(x)` (Ren et al. 2019):
  the `background` model, trained on perturbed in-distribution data, takes
  up the population-level statistics (smoothness, background pixels) both
  models share, leaving the semantic part.
- `"complexity"`: `NLL(x) - L(x)` in bits/dim (Serrà et al. 2020), with `L`
  the length of `x` under a generic lossless compressor (here PNG's DEFLATE
  on the 8-bit pixels, `complexity_bits`): simple inputs are likely under
  any model, so their likelihood is discounted by how compressible they are.

`auroc(in_scores, out_scores)` rates a score (scikit-learn's
`roc_auc_score`; 1.0 separates perfectly, 0.5 is chance, below 0.5 is the
failure above).
"""

import zlib

import numpy as np
from keras import ops

__all__ = ["ood_score", "complexity_bits", "auroc", "perturb"]

METHODS = ("log_prob", "typicality", "likelihood_ratio", "complexity")


def _nll(model, x, context=None, batch_size=256):
    """Bits/dim (images) or `-log p` nats (vectors) per example, in batches."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        cb = None if context is None else context[i:i + batch_size]
        if model.n_bits is None:
            out.append(-np.asarray(ops.convert_to_numpy(model.log_prob(xb, context=cb)), "float64"))
        else:
            out.append(np.asarray(ops.convert_to_numpy(model.bits_per_dim(xb, context=cb)), "float64"))
    return np.concatenate(out)


def complexity_bits(x, n_bits=8):
    """Compressed length per dimension, in bits, of each image in `x` (floats
    in [0, 1), dequantized, or uint8): DEFLATE (zlib level 9, the
    compressor inside PNG) of the quantised pixels, row by row as PNG stores
    them. `(batch,)`."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = np.clip(np.floor(np.asarray(x, "float64") * 2 ** n_bits), 0, 2 ** n_bits - 1).astype(np.uint8)
    dims = int(np.prod(x.shape[1:]))
    rows = x.reshape((x.shape[0], x.shape[1], -1)) if x.ndim > 2 else x[:, None, :]
    return np.array([8.0 * len(zlib.compress(b"".join(b"\x00" + r.tobytes() for r in img), 9)) / dims
                     for img in rows])


def ood_score(model, x, method="log_prob", reference=None, background=None, context=None, batch_size=256):
    """One out-of-distribution score per example of `x`; higher is more anomalous.

    Args:
        model: the `FlowModel` trained on the in-distribution data.
        x: a batch as `model` takes it (images: floats in [0, 1)).
        method: one of `"log_prob"`, `"typicality"`, `"likelihood_ratio"`,
            `"complexity"` (see the module docstring).
        reference: for `"typicality"`: in-distribution examples (held out
            from training if you can), or their mean NLL as a number.
        background: for `"likelihood_ratio"`: a `FlowModel` on the same data
            shape, trained on perturbed in-distribution data.
        context: for a conditional model, one row per example.

    Returns:
        numpy `(batch,)`.
    """
    if getattr(model, "dequantizer", None) is not None:
        model.check_continuous_density("ood_score")
    if method not in METHODS:
        raise ValueError(f"ood_score: method must be one of {METHODS}. Received: method={method!r}")
    x = np.asarray(x)
    if x.ndim != len(model.data_shape) + 1 or x.shape[1:] != tuple(model.data_shape) or not len(x):
        raise ValueError(f"ood_score takes a non-empty batch of shape (batch, "
                         f"{', '.join(map(str, model.data_shape))}); got {x.shape}.")
    if method == "complexity" and model.n_bits is None:
        raise ValueError("ood_score(method='complexity') needs an image model (n_bits set): the complexity is a "
                         "compressed length of pixels.")
    nll = _nll(model, x, context, batch_size)
    if method == "log_prob":
        return nll
    if method == "typicality":
        if reference is None:
            raise ValueError("ood_score(method='typicality') needs reference= in-distribution examples (or their "
                             "mean NLL).")
        ref = float(reference) if np.ndim(reference) == 0 else float(np.mean(_nll(model, np.asarray(reference),
                                                                                    None, batch_size)))
        return np.abs(nll - ref)
    if method == "likelihood_ratio":
        if background is None:
            raise ValueError("ood_score(method='likelihood_ratio') needs background=, a FlowModel trained on "
                             "perturbed in-distribution data (Ren et al. 2019).")
        if tuple(background.data_shape) != tuple(model.data_shape) or background.n_bits != model.n_bits:
            raise ValueError(f"ood_score: the background model must take the same data as the model: data_shape "
                             f"{tuple(background.data_shape)} vs {tuple(model.data_shape)}, n_bits "
                             f"{background.n_bits} vs {model.n_bits}.")
        bg_context = context if background.context_shape is not None else None
        with np.errstate(invalid="ignore"):
            ratio = nll - _nll(background, x, bg_context, batch_size)
        return np.where(np.isposinf(nll), np.inf, ratio)  # zero density under the model: as anomalous as it gets
    return nll - complexity_bits(x, model.n_bits)


def auroc(in_scores, out_scores):
    """Area under the ROC curve of telling `out_scores` (positives) from
    `in_scores` by score (higher = out), via scikit-learn."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(in_scores, "float64").ravel(), np.asarray(out_scores, "float64").ravel()
    if not len(a) or not len(b):
        raise ValueError("auroc needs at least one in- and one out-of-distribution score.")
    scores = np.r_[a, b]
    if np.isnan(scores).any():
        raise ValueError(f"auroc got {int(np.isnan(scores).sum())} NaN score(s).")
    # Infinite scores (zero density under float32) keep their order: the
    # AUROC depends on the ranks only.
    finite = scores[np.isfinite(scores)]
    top, bottom = (finite.max(), finite.min()) if len(finite) else (0.0, 0.0)
    scores = np.where(np.isposinf(scores), top + 1.0, np.where(np.isneginf(scores), bottom - 1.0, scores))
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], scores))


def perturb(x, rate, seed=0, n_bits=8):
    """Ren et al. 2019's input perturbation for training a likelihood-ratio
    background model: each pixel, with probability `rate`, is replaced by a
    uniformly random value (for uint8 input a random level; for floats in
    [0, 1) a random value there). Returns an array like `x`."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"perturb needs a rate in [0, 1]. Received: rate={rate!r}")
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    hit = rng.uniform(size=x.shape) < float(rate)
    if x.dtype == np.uint8:
        return np.where(hit, rng.integers(0, 2 ** n_bits, size=x.shape), x).astype(np.uint8)
    return np.where(hit, rng.uniform(size=x.shape), x).astype(x.dtype)
