"""Flows made for variational inference: `Planar`, `Radial` and `Sylvester`.

These flows were designed to push a simple density through a cheap map
towards a posterior (Rezende & Mohamed 2015; van den Berg et al. 2018).
Each is written as the *generative* map `x = f(z)` (latent -> data), one
pass with an exact log-det, and that is tfflows' `inverse`; `forward`
(data -> latent) undoes it where that can be done:

| layer | `inverse` (latent -> data) | `forward` (data -> latent) |
| --- | --- | --- |
| `Planar` | `x = z + u_hat h(w^T z + b)`, analytic | a 1-D solve for `w^T z`, `"iterative"` |
| `Radial` | `x = z + beta h(alpha, r) (z - z0)`, analytic | closed form (a quadratic in `r`), analytic |
| `Sylvester` | `x = z + Q R h(R~ Q^T z + b)`, analytic | not available (`None`) |

So `FlowModel.sample_and_log_prob`, the reparameterised ELBO's one call,
runs the analytic direction of each.

Parameters are either free (trainable weights of the layer) or amortised:
with `context_shape=(k,)` one `Dense` layer maps the flattened context to
all of the layer's parameters, per example, as the amortised flows of the
Sylvester paper's VAE take theirs from the encoder (the context is the
encoder's output). The invertibility constraints (planar `w^T u_hat > -1`,
radial `beta > -alpha`, Sylvester `|diag(R) diag(R~)| < 1`) hold for any
value of the raw parameters, free or amortised.
"""

import keras
import numpy as np
from keras import ops

from tfflows.layers.base import FlowLayer, concrete_value, event_size, register
from tfflows.transforms import accurate_tanh as _tanh

#: The Sylvester flow variants: O-SNF, H-SNF and T-SNF.
SYLVESTER_KINDS = ("orthogonal", "householder", "triangular")
#: Steps of the orthogonalisation `Q <- Q (I + (I - Q^T Q) / 2)` in O-SNF.
ORTHOGONAL_ITERATIONS = 30


# ----------------------------------------------------------------- helpers


def _seeded_rng(seed):
    """numpy Generator for `seed`; `None` draws one from numpy's global state
    (which `keras.utils.set_random_seed` seeds), as the linear layers do."""
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    return np.random.default_rng(seed)


def _constant(value):
    """A Keras initializer returning numpy `value` in the variable's dtype."""
    def init(shape, dtype=None):
        return np.asarray(value, dtype=dtype or "float32")
    return init


def _default_tolerance(dtype):
    return 1e-12 if keras.backend.standardize_dtype(dtype) == "float64" else 1e-6


def _check_int(name, value, low, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{what} needs an integer {name} >= {low}. Received: {name}={value!r}")
    return int(value)


def _rowmul(x, a):
    """`x @ a` per example: `a` is `(n, m)` (shared) or `(batch, n, m)`."""
    if len(a.shape) == 2:
        return ops.matmul(x, a)
    return ops.einsum("bi,bij->bj", x, a)


def _flat_context(context):
    return ops.reshape(context, (ops.shape(context)[0], -1))


def _split_last(h, sizes):
    """Splits `h` on its last axis into pieces of the given sizes."""
    cuts = list(np.cumsum(sizes)[:-1])
    return ops.split(h, [int(c) for c in cuts], axis=-1) if cuts else [h]


def _planar_constrained(u, w):
    """`(u_hat, softplus(w^T u))`: see `planar_u_hat`."""
    wu = ops.sum(w * u, axis=-1, keepdims=True)
    # softplus underflows to 0 in float32 below w^T u = -104; the floor
    # keeps w^T u_hat = softplus - 1 strictly above -1 (log-det >= -69).
    sp = ops.maximum(ops.softplus(wu), 1e-30)
    return u + (sp - 1.0 - wu) * w / ops.sum(ops.square(w), axis=-1, keepdims=True), sp[..., 0]


def planar_u_hat(u, w):
    """Rezende & Mohamed's (appendix A) constrained `u`:
    `u_hat = u + (m(w^T u) - w^T u) w / |w|^2` with `m(a) = -1 + softplus(a)`,
    so that `w^T u_hat = m(w^T u) > -1` and the planar map is invertible
    (`softplus` is floored at 1e-30, where float32 would round it to 0).
    `u`, `w`: `(..., D)`."""
    return _planar_constrained(u, w)[0]


def solve_planar(s, c, b, tolerance, max_iterations=50):
    """Solves `g(a) = a + c tanh(a + b) - s = 0` for `a`, element-wise.

    The planar map's forward (data -> latent) reduces to this scalar
    equation for `a = w^T z` (with `s = w^T x`, `c = w^T u_hat >= -1`). `g`
    is increasing and the root lies in `[s - |c|, s + |c|]` (`|tanh| <= 1`).
    The iteration is Newton's, safeguarded as in Numerical Recipes'
    `rtsafe`: it keeps a bracket of the root and bisects it whenever a
    Newton step would leave the bracket or is more than half the previous
    step (so it cannot cycle, as plain Newton does on tanh-shaped `g`),
    which converges from any start. It stops when
    `|g(a)| <= tolerance * (1 + |s| + |c|)` for every element (the scale of
    the terms of `g`, so float rounding cannot stall it) or after
    `max_iterations` steps.

    Args:
        s, c, b: tensors of one shape, e.g. `(batch,)`.
        tolerance: the relative residual to reach.
        max_iterations: the most Newton/bisection steps.

    Returns:
        `(a, residual, iterations)`: the root, `g(a)` and the steps taken.
    """
    half = ops.abs(c)
    lo, hi = s - half, s + half
    scale = tolerance * (1.0 + ops.abs(s) + half)
    a = ops.clip(s - c * _tanh(s + b), lo, hi)  # one fixed-point step as the start

    def residual(a):
        return a + c * _tanh(a + b) - s

    def cond(i, a, lo, hi, last_step):
        return ops.logical_and(i < max_iterations, ops.any(ops.abs(residual(a)) > scale))

    def body(i, a, lo, hi, last_step):
        t = _tanh(a + b)
        g = a + c * t - s
        slope = ops.square(t) + (1.0 + c) * (1.0 - ops.square(t))  # 1 + c (1 - t^2), from terms >= 0
        lo = ops.where(g < 0, a, lo)
        hi = ops.where(g > 0, a, hi)
        step = g / ops.maximum(slope, 1e-30)
        newton = a - step
        ok = ops.logical_and(ops.logical_and(newton >= lo, newton <= hi), 2.0 * ops.abs(step) <= last_step)
        return (i + 1, ops.where(ok, newton, 0.5 * (lo + hi)), lo, hi,
                ops.where(ok, ops.abs(step), 0.5 * (hi - lo)))

    iterations, a, _, _, _ = ops.while_loop(cond, body, (0, a, lo, hi, hi - lo))
    return a, residual(a), iterations


def radial_radius(rho, alpha, sp):
    """The latent radius `r >= 0` of the radial map for a data radius `rho`.

    `rho = r (sp + r) / (alpha + r)` (with `sp = alpha + beta > 0`) is the
    quadratic `r^2 + (sp - rho) r - rho alpha = 0`, whose one non-negative
    root this returns in the cancellation-free form of each sign of
    `B = sp - rho`: `2 rho alpha / (B + q)` or `(q - B) / 2`,
    `q = sqrt(B^2 + 4 rho alpha)`.
    """
    bb = sp - rho
    q = ops.sqrt(ops.square(bb) + 4.0 * rho * alpha)
    return ops.where(bb >= 0, 2.0 * rho * alpha / (bb + q), 0.5 * (q - bb))


def orthogonalize(a, iterations=ORTHOGONAL_ITERATIONS):
    """Orthonormal columns from `a` `(..., D, M)` (M <= D) by the iteration
    of the Sylvester paper (Bjorck & Bowie 1971):
    `Q <- Q (I + (I - Q^T Q) / 2)`, at most `iterations` times.

    It converges to the orthogonal polar factor of `a` when every singular
    value of the start lies in `(0, sqrt(3))`; the start is
    `a / ||a^T a||_F^(1/2)`, whose singular values are at most 1 (the paper
    divides by `||a||_F`, which shrinks them further and needs more steps).
    Each step multiplies a small singular value by about 1.5 and then
    converges quadratically: 30 steps reach float precision for `a` with a
    condition number up to about 1e4.

    On TensorFlow the loop stops early once `max |Q^T Q - I|` is below
    1e-6 (float32) or 1e-13 (float64), as the paper's code does (a
    `while_loop` with `maximum_iterations`, which differentiates under XLA
    too); on JAX it runs all `iterations` steps (`fori_loop`: JAX cannot
    differentiate a loop of data-dependent length). Both give `Q` to float
    precision.
    """
    ata = ops.matmul(ops.swapaxes(a, -1, -2), a)
    norm = ops.sqrt(ops.sqrt(ops.sum(ops.square(ata), axis=(-2, -1), keepdims=True)))
    eye = ops.eye(a.shape[-1], dtype=a.dtype)
    iterations = int(iterations)

    def step(q):
        return ops.matmul(q, 1.5 * eye - 0.5 * ops.matmul(ops.swapaxes(q, -1, -2), q))

    if keras.backend.backend() != "tensorflow":
        return ops.fori_loop(0, iterations, lambda _, q: step(q), a / norm)
    tolerance = 1e-13 if keras.backend.standardize_dtype(a.dtype) == "float64" else 1e-6

    def cond(i, q):
        error = ops.max(ops.abs(ops.matmul(ops.swapaxes(q, -1, -2), q) - eye))
        return ops.logical_and(i < iterations, error > tolerance)

    return ops.while_loop(cond, lambda i, q: (i + 1, step(q)), (0, a / norm), maximum_iterations=iterations)[1]


def householder_matrix(vectors):
    """`Q = H_1 H_2 ... H_K` `(..., D, D)` from the rows of `vectors`
    `(..., K, D)`, `H_k = I - 2 v_k v_k^T / |v_k|^2`: orthogonal, for shared
    `(K, D)` or per-example `(batch, K, D)` vectors."""
    v = vectors / ops.sqrt(ops.sum(ops.square(vectors), axis=-1, keepdims=True))
    d = vectors.shape[-1]
    eye = ops.eye(d, dtype=vectors.dtype)
    q = eye - 2.0 * v[..., 0, :, None] * v[..., 0, None, :]
    for k in range(1, vectors.shape[-2]):
        vk = v[..., k, :]
        qv = ops.sum(q * vk[..., None, :], axis=-1)  # q @ v_k
        q = q - 2.0 * qv[..., :, None] * vk[..., None, :]
    return q


# -------------------------------------------------------------- the layers


class _AmortisedFlow(FlowLayer):
    """Shared plumbing: free parameters as weights, or one `Dense` from the
    context giving them per example. Subclasses list their parameters in
    `_param_shapes(d)` (name -> shape, without the batch axis) and their
    free initial values in `_initial_values(d, rng)`."""

    input_ranks = (2,)
    accepts_context = True

    def __init__(self, seed=None, context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        self.seed = seed

    def _param_shapes(self, d):
        raise NotImplementedError

    def _initial_values(self, d, rng):
        raise NotImplementedError

    def _check_dim(self, input_shape):
        self._check_rank(input_shape)
        d = input_shape[-1]
        if d is None or d < 1:
            raise ValueError(f"{type(self).__name__} '{self.name}' needs a known feature count, got input "
                             f"shape {tuple(input_shape)}.")
        return int(d)

    def build(self, input_shape):
        d = self._check_dim(input_shape)
        self._shapes = self._param_shapes(d)
        if self.context_shape is None:
            values = self._initial_values(d, _seeded_rng(self.seed))
            self._free = {name: self.add_weight(shape=shape, initializer=_constant(values[name]), name=name)
                          for name, shape in self._shapes.items()}
        else:
            sizes = [int(np.prod(s)) for s in self._shapes.values()]
            # The amortisation net: one linear map from the context (the
            # encoder's output) to every parameter, as in the Sylvester VAE.
            # Its bias starts at the free layer's initial values, so a zero
            # context gives a well-defined layer (a zero bias would give the
            # planar w, the O-SNF Q and the reflection vectors all zero, and
            # they are normalised by their norm).
            values = self._initial_values(d, _seeded_rng(self.seed))
            bias = np.concatenate([np.reshape(values[name], (-1,)) for name in self._shapes])
            self.params = keras.layers.Dense(sum(sizes), name="params", dtype=self.dtype_policy,
                                             bias_initializer=_constant(bias))
            self.params.build((None, event_size((None,) + self.context_shape)))

    def _raw(self, context, like):
        """The raw parameters, `dict` name -> tensor: `(1, *shape)` when free,
        `(batch, *shape)` when amortised."""
        if self.context_shape is None:
            return {name: ops.cast(w, like.dtype)[None] for name, w in self._free.items()}
        h = ops.cast(self.params(_flat_context(context)), like.dtype)
        sizes = [int(np.prod(s)) for s in self._shapes.values()]
        parts = _split_last(h, sizes)
        return {name: ops.reshape(p, (-1,) + tuple(shape))
                for (name, shape), p in zip(self._shapes.items(), parts)}

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


@register
class Planar(_AmortisedFlow):
    """The planar flow: a single-unit residual map, invertible by construction.

    Inverse (latent -> data, the generative map, one pass):
    `x = z + u_hat tanh(w^T z + b)`, `u_hat = u + (m(w^T u) - w^T u) w / |w|^2`,
    `m(a) = -1 + softplus(a)`, so `w^T u_hat > -1`; log-det
    `log(1 + w^T u_hat (1 - tanh^2(w^T z + b))) -> (batch,)`, computed as
    `log(t^2 + softplus(w^T u) (1 - t^2))`, `t = tanh(w^T z + b)`, whose
    terms are never negative, so it stays finite in float32 even where
    `w^T u_hat` rounds to -1.

    Forward (data -> latent, `"iterative"`): `w^T x = a + w^T u_hat tanh(a + b)`
    with `a = w^T z` is one increasing scalar equation, solved per example
    by `solve_planar` (Newton safeguarded by bisection on the bracket
    `[w^T x - |w^T u_hat|, w^T x + |w^T u_hat|]`) until its residual is at
    most `tolerance * (1 + |w^T x| + |w^T u_hat|)`; then
    `z = x - u_hat tanh(a + b)`, so the round trip error is at most
    `|u_hat|` times that residual. One more Newton step, outside the loop
    and differentiable, gives the exact implicit-function gradient (it also
    squares the error); log-det the negative of the inverse's at `z`.

    With the constraint the map is onto `R^D`, so every point has a
    pre-image; a forward whose solve misses the tolerance after
    `max_iterations` steps (a non-finite input, or a point beyond float
    range) raises `ValueError` when the values are known (eager), and
    returns the unconverged value while tracing.

    Args:
        tolerance: relative residual of the 1-D solve. Defaults to `None`:
            1e-6 for float32 inputs, 1e-12 for float64.
        max_iterations: most solver steps. Defaults to 50.
        seed: seed of the free parameters' initial values
            (`U(-1/sqrt(D), 1/sqrt(D))`, as in pyro).
        context_shape: event shape of a context that gives `u`, `w`, `b`
            per example through one `Dense` layer (amortised), or `None`
            for free parameters.

    Input shape: `(batch, D)`; output shape the same.

    Raises:
        ValueError: from `forward`, when the solve does not converge
            (naming the rows).

    References: Rezende & Mohamed, Variational Inference with Normalizing
    Flows, https://arxiv.org/abs/1505.05770 (section 4.1, appendix A)

    >>> import numpy as np
    >>> layer = Planar(seed=0)
    >>> z = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
    >>> x, ld = layer.inverse(z)
    >>> z2, ld2 = layer.forward(x)
    >>> bool(np.allclose(z2, z, atol=1e-5)), bool(np.allclose(ld + ld2, 0, atol=1e-5))
    (True, True)
    """

    forward_mode = "iterative"
    inverse_mode = "analytic"

    def __init__(self, tolerance=None, max_iterations=50, seed=None, context_shape=None, **kwargs):
        super().__init__(seed=seed, context_shape=context_shape, **kwargs)
        if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
            raise ValueError(f"Planar tolerance must be in (0, 1) or None. Received: tolerance={tolerance!r}")
        self.tolerance = None if tolerance is None else float(tolerance)
        self.max_iterations = _check_int("max_iterations", max_iterations, 1, "Planar")

    def _param_shapes(self, d):
        return {"u": (d,), "w": (d,), "b": (1,)}

    def _initial_values(self, d, rng):
        # Wide enough that every layer starts visibly nonlinear (normflows'
        # ranges): u ~ U(-sqrt 2, sqrt 2), w ~ U(-sqrt(2/D), sqrt(2/D)), b = 0.
        # The narrower U(-1/sqrt D, 1/sqrt D) of pyro fitted U1-U4 worse.
        lim_w = np.sqrt(2.0 / d)
        return {"u": rng.uniform(-np.sqrt(2.0), np.sqrt(2.0), size=(d,)), "w": rng.uniform(-lim_w, lim_w, size=(d,)),
                "b": np.zeros((1,))}

    def _planar_params(self, context, like):
        """`(u_hat, w, b, c, sp)`: `c = w^T u_hat = sp - 1`, `sp = softplus(w^T u) > 0`."""
        p = self._raw(context, like)
        u_hat, sp = _planar_constrained(p["u"], p["w"])
        return u_hat, p["w"], p["b"][:, 0], sp - 1.0, sp

    @staticmethod
    def _slope(t, sp):
        # 1 + c h'(.) = t^2 + sp (1 - t^2), a sum of terms >= 0: no
        # cancellation when c is near -1 (where 1 + c would lose sp).
        t2 = ops.square(t)
        return t2 + sp * (1.0 - t2)

    def _inverse(self, z, context=None, training=False):
        u_hat, w, b, _, sp = self._planar_params(context, z)
        t = _tanh(ops.sum(w * z, axis=-1) + b)
        return z + u_hat * t[:, None], ops.log(self._slope(t, sp))

    def _forward(self, x, context=None, training=False):
        u_hat, w, b, c, sp = self._planar_params(context, x)
        s = ops.sum(w * x, axis=-1)
        c = c + ops.zeros_like(s)
        b = b + ops.zeros_like(s)
        tolerance = self.tolerance or _default_tolerance(x.dtype)
        s0, c0 = ops.stop_gradient(s), ops.stop_gradient(c)
        a, res, iterations = solve_planar(s0, c0, ops.stop_gradient(b), tolerance, self.max_iterations)
        self._raise_if_unsolved(s0, c0, res, iterations, tolerance)
        # One differentiable Newton step from the (constant) root: its value
        # is the root to within the squared error, and its gradient is the
        # implicit function theorem's, da/dx = w / g'(a).
        a = ops.stop_gradient(a)
        t = _tanh(a + b)
        a = a - (a + c * t - s) / self._slope(t, sp)
        t = _tanh(a + b)
        return x - u_hat * t[:, None], -ops.log(self._slope(t, sp))

    def _raise_if_unsolved(self, s, c, res, iterations, tolerance):
        res, s, c, iterations = (concrete_value(v) for v in (res, s, c, iterations))
        if res is None or s is None or c is None or iterations is None:
            return  # traced: values cannot be inspected
        scale = tolerance * (1.0 + np.abs(s) + np.abs(c))
        bad = np.flatnonzero(~(np.abs(res) <= scale))
        if not len(bad):
            return
        rows = ", ".join(str(int(r)) for r in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise ValueError(
            f"Planar '{self.name}' forward found no pre-image within tolerance {tolerance:g} after "
            f"{int(iterations)} iterations for {len(bad)} of {res.shape[0]} rows (rows "
            f"[{rows}]): these points are outside the map's range in floating point (NaN or infinite "
            f"input, or |w^T x| beyond float range), or the solve needs more than "
            f"max_iterations={self.max_iterations} steps."
        )

    def get_config(self):
        config = super().get_config()
        config.update(tolerance=self.tolerance, max_iterations=self.max_iterations)
        return config


@register
class Radial(_AmortisedFlow):
    """The radial flow: a contraction or expansion around a point `z0`.

    Inverse (latent -> data, the generative map, one pass):
    `x = z + beta / (alpha + r) (z - z0)`, `r = |z - z0|`, with
    `alpha = softplus(alpha_raw) > 0` and `beta = -alpha + softplus(beta_raw)`,
    so `beta > -alpha` and the map is invertible; log-det
    `(D - 1) log(1 + beta / (alpha + r)) + log(1 + alpha beta / (alpha + r)^2)
    -> (batch,)`, computed from positive terms only
    (`1 + beta / (alpha + r) = (softplus(beta_raw) + r) / (alpha + r)`).

    Forward (data -> latent, closed form, so `"analytic"`): `x - z0` is
    parallel to `z - z0` and `|x - z0| = r (alpha + beta + r) / (alpha + r)`
    is a quadratic in `r` with one non-negative root (`radial_radius`, in
    its cancellation-free form); then
    `z = z0 + (x - z0) (alpha + r) / (alpha + beta + r)`. Log-det the
    negative of the inverse's at `z`. No iteration, so no tolerance: the
    round trip is exact to float rounding.

    Args:
        seed: seed of the free parameters' initial values
            (`U(-1/sqrt(D), 1/sqrt(D))`, as in pyro).
        context_shape: event shape of a context that gives `z0`, `alpha`,
            `beta` per example through one `Dense` layer, or `None`.

    Input shape: `(batch, D)`; output shape the same.

    References: Rezende & Mohamed, Variational Inference with Normalizing
    Flows, https://arxiv.org/abs/1505.05770 (section 4.1, appendix A)

    >>> import numpy as np
    >>> layer = Radial(seed=0)
    >>> z = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    >>> x, ld = layer.inverse(z)
    >>> bool(np.allclose(layer.forward(x)[0], z, atol=1e-5))
    True
    """

    forward_mode = "analytic"
    inverse_mode = "analytic"

    def _param_shapes(self, d):
        return {"z0": (d,), "alpha": (1,), "beta": (1,)}

    def _initial_values(self, d, rng):
        # Centres z0 ~ N(0, I) spread over the base's mass, alpha = |U(-1/D, 1/D)|
        # (floored at 1e-3) and softplus(beta raw) with beta raw ~ U(-1 - 1/D, -1 + 1/D):
        # normflows' ranges. Centres near the origin (U(-1/sqrt D, 1/sqrt D))
        # fitted the ring U1 worse.
        alpha = np.maximum(np.abs(rng.uniform(-1.0 / d, 1.0 / d, size=(1,))), 1e-3)
        return {"z0": rng.standard_normal((d,)), "alpha": np.log(np.expm1(alpha)),
                "beta": rng.uniform(-1.0 - 1.0 / d, -1.0 + 1.0 / d, size=(1,))}

    def _radial_params(self, context, like):
        p = self._raw(context, like)
        alpha = ops.softplus(p["alpha"][:, 0])
        sp = ops.softplus(p["beta"][:, 0])  # alpha + beta > 0
        return p["z0"], alpha, sp

    def _log_det(self, r, alpha, sp, d):
        ar = alpha + r
        return ((d - 1) * (ops.log(sp + r) - ops.log(ar))
                + ops.log(ops.square(r) + 2.0 * alpha * r + alpha * sp) - 2.0 * ops.log(ar))

    def _inverse(self, z, context=None, training=False):
        z0, alpha, sp = self._radial_params(context, z)
        diff = z - z0
        r = ops.sqrt(ops.sum(ops.square(diff), axis=-1))
        gain = (sp + r) / (alpha + r)  # 1 + beta / (alpha + r)
        return z0 + diff * gain[:, None], self._log_det(r, alpha, sp, z.shape[-1])

    def _forward(self, x, context=None, training=False):
        z0, alpha, sp = self._radial_params(context, x)
        diff = x - z0
        r = radial_radius(ops.sqrt(ops.sum(ops.square(diff), axis=-1)), alpha, sp)
        z = z0 + diff * ((alpha + r) / (sp + r))[:, None]
        return z, -self._log_det(r, alpha, sp, x.shape[-1])


@register
class Sylvester(_AmortisedFlow):
    """The Sylvester flow: a residual map with an `M`-unit hidden layer whose
    Jacobian determinant is a product of `M` scalars.

    Inverse (latent -> data, the generative map, one pass):
    `x = z + Q R tanh(R~ Q^T z + b)`, `Q` `(D, M)` with orthonormal columns,
    `R`, `R~` `(M, M)` upper triangular; by Sylvester's determinant
    identity the log-det is
    `sum_i log(1 + R_ii R~_ii (1 - tanh^2((R~ Q^T z + b)_i))) -> (batch,)`.
    The diagonals are `tanh` of free values, so `|R_ii R~_ii| < 1` and the
    map is invertible. As in the paper's code, the strictly upper parts of
    `R` and `R~` come from one `(M, M)` matrix (its upper and its
    transposed lower triangle). Forward (data -> latent): not available
    (no closed form or cheap solve); calling it raises
    `NotImplementedError`.

    `Q` by `kind`:

    - `"orthogonal"` (O-SNF): the orthonormalised columns of a free (or
      amortised) `(D, M)` matrix, by the paper's iteration
      `Q <- Q (I + (I - Q^T Q) / 2)` (`orthogonalize`, 30 steps);
    - `"householder"` (H-SNF): the first `M` columns of a product of
      `n_reflections` Householder reflections;
    - `"triangular"` (T-SNF): the first `M` columns of the identity or,
      with `reverse=True`, of the reversal permutation (stacks alternate
      the two so that every coordinate sees every other).

    Args:
        kind: one of `SYLVESTER_KINDS`. Defaults to `"orthogonal"`.
        m: `M`, the number of orthonormal columns, `1 <= M <= D`. Defaults
            to `None`: `D`.
        n_reflections: reflections in `Q` (`"householder"` only).
            Defaults to `None`: `D`.
        reverse: use the reversal permutation (`"triangular"` only).
            Defaults to `False`.
        seed: seed of the free parameters' initial values.
        context_shape: event shape of a context that gives every parameter
            per example through one `Dense` layer (the amortised flows of
            the paper's VAE), or `None`.

    Input shape: `(batch, D)`; output shape the same.

    Raises:
        ValueError: an unknown `kind`, `m < 1`, `m > D` (at build, naming
            both), or an argument that does not apply to the `kind`.

    References: van den Berg, Hasenclever, Tomczak & Welling, Sylvester
    Normalizing Flows for Variational Inference,
    https://arxiv.org/abs/1803.05649

    >>> import numpy as np
    >>> layer = Sylvester("orthogonal", m=2, seed=0)
    >>> x, ld = layer.inverse(np.zeros((3, 4), "float32"))
    >>> tuple(x.shape), tuple(ld.shape), layer.forward_mode
    ((3, 4), (3,), None)
    """

    forward_mode = None
    inverse_mode = "analytic"

    def __init__(self, kind="orthogonal", m=None, n_reflections=None, reverse=False, seed=None, context_shape=None,
                 **kwargs):
        super().__init__(seed=seed, context_shape=context_shape, **kwargs)
        if kind not in SYLVESTER_KINDS:
            raise ValueError(f"Sylvester kind must be one of {SYLVESTER_KINDS}. Received: kind={kind!r}")
        if n_reflections is not None and kind != "householder":
            raise ValueError(f"Sylvester n_reflections applies to kind='householder' only. "
                             f"Received: kind={kind!r}, n_reflections={n_reflections!r}")
        if reverse and kind != "triangular":
            raise ValueError(f"Sylvester reverse=True applies to kind='triangular' only. Received: kind={kind!r}")
        self.kind = kind
        self.m = None if m is None else _check_int("m", m, 1, "Sylvester")
        self.n_reflections = None if n_reflections is None else _check_int(
            "n_reflections", n_reflections, 1, "Sylvester")
        self.reverse = bool(reverse)

    def _sizes(self, d):
        m = d if self.m is None else self.m
        if m > d:
            raise ValueError(f"Sylvester '{self.name}' needs m <= D (at most as many orthonormal columns as "
                             f"features). Received: m={m} for inputs of D={d} features.")
        return m, (d if self.n_reflections is None else self.n_reflections)

    def _param_shapes(self, d):
        m, k = self._sizes(d)
        shapes = {}
        if m > 1:
            shapes["full"] = (m, m)  # strict upper -> R, strict lower (transposed) -> R~
        shapes.update(diag1=(m,), diag2=(m,), bias=(m,))
        if self.kind == "orthogonal":
            shapes["q"] = (d, m)
        elif self.kind == "householder":
            shapes["vectors"] = (k, d)
        return shapes

    def _initial_values(self, d, rng):
        m, _ = self._sizes(d)
        lim = 1.0 / np.sqrt(m)
        values = {}
        for name, shape in self._param_shapes(d).items():
            gaussian = name in ("q", "vectors")
            values[name] = rng.standard_normal(shape) if gaussian else rng.uniform(-lim, lim, size=shape)
        return values

    def build(self, input_shape):
        d = self._check_dim(input_shape)
        self._m, _ = self._sizes(d)
        if self.kind == "triangular":
            perm = np.eye(d)[:, ::-1] if self.reverse else np.eye(d)
            self._permutation = perm[:, : self._m]
        super().build(input_shape)

    def _q(self, p, like):
        if self.kind == "triangular":
            return ops.convert_to_tensor(self._permutation.astype(keras.backend.standardize_dtype(like.dtype)))
        if self.kind == "orthogonal":
            q = orthogonalize(p["q"])
        else:
            q = householder_matrix(p["vectors"])[..., : self._m]
        return q[0] if self.context_shape is None else q

    def _triangles(self, p):
        m = self._m
        d1, d2 = _tanh(p["diag1"]), _tanh(p["diag2"])
        eye = ops.eye(m, dtype=d1.dtype)
        r1 = d1[..., :, None] * eye
        r2 = d2[..., :, None] * eye
        if m > 1:
            upper = ops.triu(ops.ones((m, m), dtype=d1.dtype), 1)
            r1 = r1 + p["full"] * upper
            r2 = r2 + ops.swapaxes(p["full"], -1, -2) * upper
        if self.context_shape is None:
            r1, r2, d1, d2 = r1[0], r2[0], d1[0], d2[0]
        return r1, r2, d1 * d2

    def _inverse(self, z, context=None, training=False):
        p = self._raw(context, z)
        q = self._q(p, z)
        r1, r2, diag = self._triangles(p)
        bias = p["bias"][0] if self.context_shape is None else p["bias"]
        v = _rowmul(_rowmul(z, q), ops.swapaxes(r2, -1, -2)) + bias  # R~ Q^T z + b, as rows
        t = _tanh(v)
        x = z + _rowmul(_rowmul(t, ops.swapaxes(r1, -1, -2)), ops.swapaxes(q, -1, -2))  # + Q R t
        return x, ops.sum(ops.log1p(diag * (1.0 - ops.square(t))), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, m=self.m, n_reflections=self.n_reflections, reverse=self.reverse)
        return config
