"""Latent-space operations on a trained flow: interpolation and attribute
manipulation.

A flow's latent `z = f(x)` is where images are mixed: RealNVP (Dinh et al.
2017, section 4.2) and Glow (Kingma & Dhariwal 2018, section 5) show paths
between the latents of two images decoded back to images, and Glow (section
5.3) moves images along an attribute direction, the mean latent of images
with the attribute minus the mean latent of those without.

- `interpolate(model, x1, x2, n, path)`: decode `n` points on the linear or
  spherical (slerp) path from `f(x1)` to `f(x2)`.
- `attribute_direction(model, x, labels, target=None)`: that mean difference.
- `manipulate(model, x, direction, alpha)`: decode `f(x) + alpha * direction`.

All take a `FlowModel` and its images (or vectors) as the model takes them,
and a context for conditional models.
"""

import numpy as np
from keras import ops

__all__ = ["interpolate", "slerp", "attribute_direction", "manipulate"]


def _batch(model, x, name):
    x = np.asarray(x)
    if x.shape == tuple(model.data_shape):
        return x[None], True
    if x.ndim == len(model.data_shape) + 1 and x.shape[1:] == tuple(model.data_shape):
        return x, False
    raise ValueError(f"{name} must be one example of shape {tuple(model.data_shape)} or a batch "
                     f"(batch, {', '.join(map(str, model.data_shape))}); got shape {x.shape}.")


def _encode(model, x, context):
    return np.asarray(ops.convert_to_numpy(model.encode(x.astype(model.compute_dtype), context=context)),
                      dtype="float64")


def _decode(model, z, context):
    return np.asarray(ops.convert_to_numpy(model.decode(z.astype(model.compute_dtype), context=context)))


def slerp(z1, z2, t):
    """Spherical interpolation of the rows of `z1` and `z2` `(batch, D)` at
    fractions `t` `(n,)`: `(n, batch, D)`. Where the two are (anti)parallel
    the angle is 0 and it is the linear path. The norm is interpolated
    along with the angle, so equal norms stay equal (Shoemake 1985; the
    path used for Glow's figures)."""
    z1, z2, t = np.asarray(z1, "float64"), np.asarray(z2, "float64"), np.asarray(t, "float64")
    n1, n2 = np.linalg.norm(z1, axis=1, keepdims=True), np.linalg.norm(z2, axis=1, keepdims=True)
    u1, u2 = z1 / np.maximum(n1, 1e-12), z2 / np.maximum(n2, 1e-12)
    omega = np.arccos(np.clip(np.sum(u1 * u2, axis=1, keepdims=True), -1.0, 1.0))
    sin = np.sin(omega)
    out = []
    for s in t:
        linear = (1 - s) * u1 + s * u2
        with np.errstate(invalid="ignore", divide="ignore"):
            spherical = (np.sin((1 - s) * omega) * u1 + np.sin(s * omega) * u2) / sin
        direction = np.where(sin > 1e-6, spherical, linear)
        out.append(direction * ((1 - s) * n1 + s * n2))
    return np.stack(out)


def interpolate(model, x1, x2, n=8, path="linear", context=None):
    """`n` images on the latent path from `x1` to `x2`, both ends included.

    Args:
        model: a trained `FlowModel` with both directions.
        x1, x2: one example each (`model.data_shape`) or equal batches.
        n: points on the path (>= 2); the first decodes to `x1`, the last to
            `x2` (up to the flow's round-trip error).
        path: `"linear"`, `(1 - t) z1 + t z2`, or `"slerp"` (see `slerp`).
        context: for a conditional model, one row per example (or one
            example's row), used for both ends.

    Returns:
        numpy `(n,) + data_shape` for single examples, `(batch, n) +
        data_shape` for batches.
    """
    if path not in ("linear", "slerp"):
        raise ValueError(f"interpolate: path must be 'linear' or 'slerp'. Received: path={path!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"interpolate needs an integer n >= 2 (both ends included). Received: n={n!r}")
    a, single = _batch(model, x1, "x1")
    b, _ = _batch(model, x2, "x2")
    if a.shape != b.shape:
        raise ValueError(f"interpolate: x1 and x2 must have the same shape; got {np.shape(x1)} and {np.shape(x2)}.")
    za, zb = _encode(model, a, context), _encode(model, b, context)
    t = np.linspace(0.0, 1.0, int(n))
    if path == "linear":
        zs = (1 - t)[:, None, None] * za[None] + t[:, None, None] * zb[None]
    else:
        zs = slerp(za, zb, t)
    batch = a.shape[0]
    ctx = None if context is None else np.repeat(np.asarray(context)[None], int(n), axis=0).reshape(
        (int(n) * batch,) + np.shape(context)[1:])
    images = _decode(model, zs.reshape((int(n) * batch, -1)), ctx).reshape((int(n), batch) + tuple(model.data_shape))
    images = np.swapaxes(images, 0, 1)  # (batch, n, ...)
    return images[0] if single else images


def attribute_direction(model, x, labels, target=None, context=None):
    """Glow's attribute direction: mean latent of the examples that have the
    attribute minus the mean latent of those that do not.

    Args:
        x: a batch of examples.
        labels: `(batch,)`: booleans or 0/1 (the attribute itself), or
            integer classes with `target` (has the attribute: `labels ==
            target`).
        target: the class that has the attribute, for integer labels.

    Returns:
        numpy `(D,)`, in the flat latent space `encode` returns.
    """
    x, _ = _batch(model, x, "x")
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"attribute_direction needs one label per example: {x.shape[0]} examples, labels of "
                         f"shape {labels.shape}.")
    if target is not None:
        has = labels == target
    elif labels.dtype == bool or set(np.unique(labels).tolist()) <= {0, 1}:
        has = labels.astype(bool)
    else:
        raise ValueError("attribute_direction: integer class labels need target= (the class with the attribute); "
                         "or pass booleans / 0-1 labels.")
    if has.all() or not has.any():
        raise ValueError(f"attribute_direction needs examples with and without the attribute; got {int(has.sum())} "
                         f"with and {int((~has).sum())} without.")
    z = _encode(model, x, context).reshape((x.shape[0], -1))
    return z[has].mean(axis=0) - z[~has].mean(axis=0)


def manipulate(model, x, direction, alpha, context=None):
    """Decodes `encode(x) + alpha * direction` (Glow section 5.3).

    Args:
        x: one example or a batch.
        direction: `(D,)`, e.g. from `attribute_direction`.
        alpha: a scalar, or a sequence of scalars for a row of edits.

    Returns:
        numpy, the shape of `x` for a scalar `alpha`; with a sequence of
        `k` alphas, `(k,) + x.shape`.
    """
    xb, single = _batch(model, x, "x")
    z = _encode(model, xb, context).reshape((xb.shape[0], -1))
    direction = np.asarray(direction, "float64").reshape(-1)
    if direction.shape != (z.shape[1],):
        raise ValueError(f"manipulate: direction must have the latent's size {z.shape[1]}; got shape "
                         f"{np.shape(direction)}.")
    alphas = np.atleast_1d(np.asarray(alpha, "float64"))
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)):
        raise ValueError(f"manipulate needs finite scalar alpha(s). Received: alpha={alpha!r}")
    out = []
    for a in alphas:
        y = _decode(model, z + a * direction, context)
        out.append(y[0] if single else y)
    out = np.stack(out)
    return out if np.ndim(alpha) else out[0]
