"""Inpainting with a trained flow: fill masked pixels from the rest.

A flow gives `log p(x)` exactly, so the missing part `x_H` of an image can be
filled given the observed part `x_O`:

- `method="map"`: maximise `log p(x_O, x_H)` over `x_H` (the mode of
  `p(x_H | x_O)`) by projected gradient ascent, as in NICE (Dinh et al.
  2015, section 5.2, Fig. 3). The ascent is Adam-preconditioned and each
  step is projected back onto the data domain, `[0, 1)` for images.
- `method="sample"`: draw from `p(x_H | x_O)` by Langevin dynamics on the
  same log-density, `x_H += (eps / 2) * grad log p + sqrt(eps) * noise`
  (unadjusted: its bias shrinks with `eps`), projected likewise.

Observed entries are returned unchanged.
"""

import numpy as np

from tfflows.apps._grad import value_and_grad

__all__ = ["inpaint"]


def inpaint(model, x, mask, method="map", steps=300, step_size=None, context=None, seed=0, init="noise",
            return_log_prob=False):
    """Fills the entries of `x` where `mask` is true.

    Args:
        model: a `FlowModel` (images or vectors) with its forward direction.
        x: one example or a batch, as the model takes it. Masked entries
            are ignored (overwritten by the initial fill).
        mask: boolean or 0/1, the shape of `x` or of one example (then the
            same for every row): true marks the entries to fill in.
        method: `"map"` (mode, projected gradient ascent) or `"sample"`
            (Langevin dynamics).
        steps: ascent or Langevin steps.
        step_size: Adam's learning rate for `"map"` (default 0.02 for
            images, 0.05 for vectors), `eps` for `"sample"` (default 1e-5
            for images, 1e-2 for vectors).
        context: for a conditional model, one row per example.
        seed: seeds the initial fill and the Langevin noise.
        init: `"noise"` (uniform in [0, 1) for images, standard normal for
            vectors), `"mean"` (0.5 / 0: a flat start), or an array the
            shape of `x` whose masked entries start the fill (e.g. a MAP
            fill, to start Langevin chains near the mode).
        return_log_prob: also return the final `log p(x)` per example (nats).

    Returns:
        numpy, the shape of `x` (and `log p`, `(batch,)`, if asked).
    """
    if method not in ("map", "sample"):
        raise ValueError(f"inpaint: method must be 'map' or 'sample'. Received: method={method!r}")
    if not isinstance(init, str):
        init = np.asarray(init, dtype="float64")
    elif init not in ("noise", "mean"):
        raise ValueError(f"inpaint: init must be 'noise', 'mean' or an array of starting values. "
                         f"Received: init={init!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"inpaint needs an integer steps >= 0. Received: steps={steps!r}")
    if getattr(model, "dequantizer", None) is not None:
        model.check_continuous_density("inpaint")
    shape = tuple(model.data_shape)
    x = np.asarray(x, dtype="float64")
    single = x.shape == shape
    if single:
        x = x[None]
    if x.shape[1:] != shape or x.shape[0] == 0:
        raise ValueError(f"inpaint: x must be one example of shape {shape} or a non-empty batch of them; got "
                         f"shape {np.shape(x)}.")
    mask = np.asarray(mask)
    if mask.shape == shape:
        mask = np.broadcast_to(mask, x.shape)
    if mask.shape != x.shape:
        raise ValueError(f"inpaint: mask must have the shape of x {x.shape} or of one example {shape}; got "
                         f"{np.shape(mask)}.")
    if mask.dtype != bool:
        if not np.all(np.isin(mask, (0, 1))):
            raise ValueError("inpaint: mask must be boolean or 0/1 (1 marks the entries to fill).")
        mask = mask.astype(bool)
    observed = np.where(mask, 0.0, x)
    if not np.all(np.isfinite(observed)):
        raise ValueError("inpaint got NaN or infinite values in the observed (unmasked) entries of x.")
    images = model.n_bits is not None
    lo, hi = (0.0, 1.0 - 1e-6) if images else (-np.inf, np.inf)
    if images and (observed[~mask].min(initial=0.0) < 0.0 or observed[~mask].max(initial=0.0) > 1.0):
        raise ValueError("inpaint: an image model takes images in [0, 1) (dequantized); the observed pixels "
                         "are outside it.")
    if step_size is None:
        step_size = (0.02 if images else 0.05) if method == "map" else (1e-5 if images else 1e-2)
    if not np.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"inpaint needs a positive finite step_size. Received: step_size={step_size!r}")
    rng = np.random.default_rng(seed)
    if not isinstance(init, str):
        start = init[None] if single and init.shape == shape else init
        if start.shape != x.shape or not np.all(np.isfinite(start)):
            raise ValueError(f"inpaint: an init array must be finite and have the shape of x {np.shape(x)}; got "
                             f"{np.shape(init)}.")
    elif init == "noise":
        start = rng.uniform(size=x.shape) if images else rng.standard_normal(x.shape)
    else:
        start = np.full(x.shape, 0.5 if images else 0.0)
    current = np.where(mask, start, observed)
    if context is not None:
        context = np.asarray(context)
        context = context if context.shape[0] == x.shape[0] else np.broadcast_to(
            context, (x.shape[0],) + context.shape[1:])

    def log_p(v):
        return model.log_prob(v, context=context)

    dtype = model.compute_dtype
    grad_fn = value_and_grad(log_p)
    m, v = np.zeros_like(current), np.zeros_like(current)
    for step in range(1, int(steps) + 1):
        _, grad = grad_fn(current.astype(dtype))
        grad = np.where(mask, np.asarray(grad, "float64"), 0.0)
        if not np.all(np.isfinite(grad)):
            raise FloatingPointError(f"inpaint: the gradient of log p became NaN or infinite at step {step}; "
                                     f"lower step_size.")
        if method == "map":  # Adam ascent
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            update = step_size * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
        else:  # Langevin
            update = 0.5 * step_size * grad + np.sqrt(step_size) * rng.standard_normal(x.shape)
        current = np.where(mask, np.clip(current + update, lo, hi), observed)
    out = current[0] if single else current
    if return_log_prob:
        lp = np.asarray(grad_fn(current.astype(dtype))[0], "float64")
        return out, lp
    return out
