"""Residual flows: `ResidualBlock`, `y = x + g(x)` with `Lip(g) < 1`.

- forward (data -> latent, one pass, `"analytic"`): `y = x + g(x)`.
- inverse (latent -> data, `"iterative"`): the fixed point `x = y - g(x)`,
  iterated from `x = y` until the residual `|x + g(x) - y|` is at most
  `tolerance * (1 + |y|)` everywhere. Banach's theorem makes it converge,
  since `Lip(g) < 1` (i-ResNet, Behrmann et al. 2019, section 2).
- log-det: `log|det(I + J_g(x))| = sum_{k >= 1} (-1)^(k+1) tr(J_g^k) / k`,
  a series that converges because `||J_g|| < 1`. Three ways to compute it
  (`log_det=`):
  - `"exact"`: the `D x D` Jacobian from `D` vector-Jacobian products and
    its `slogdet`, for small `D` (tests, 2-D toys);
  - `"series"`: i-ResNet's estimator: the series truncated after
    `n_terms`, each trace by Hutchinson's `v^T J^k v` (`v` standard normal
    or Rademacher); biased by the truncation, differentiated term by term;
  - `"roulette"`: Residual Flows' unbiased estimator (Chen et al. 2019,
    "Residual Flows for Invertible Generative Modeling", section 3): the
    first `n_exact_terms` terms always, each later term `k` with
    probability `P(N >= k) = q^(k - n_exact_terms)` (`q = 1 -
    stop_probability`) and weighted by `1 / P(N >= k)`; its gradient is the
    Neumann-series estimator of `tr((I + J)^-1 dJ)` (their eq. 8), so the
    power series is never backpropagated through.
  Estimates draw from the layer's `keras.random.SeedGenerator(seed)`.

`g` is a Lipschitz net: dense layers for vectors `(batch, D)`, "same"
convolutions for images `(batch, H, W, C)` (kernel sizes 3-1-3 by default,
as Residual Flows), with LipSwish activations `z sigmoid(beta z) / 1.1`
(1-Lipschitz for every `beta > 0`; Chen et al. 2019, section 4) between
them. Every kernel is spectrally normalised (Miyato et al. 2018):
`W / max(1, sigma(W) / lipschitz)`, `sigma` by power iteration on the map
itself (for convolutions, the convolution operator on the layer's image
size, not the reshaped kernel), `power_iterations` steps per training call
from a stored vector that training updates, `eval_power_iterations` steps
(not stored) otherwise. So `Lip(g) <= lipschitz < 1` up to the power
iteration's accuracy. A context, if any, adds a learned bias to the first
hidden layer: `g` stays contractive in `x` for every context.
"""

import keras
import numpy as np
from keras import ops

from tfflows.layers.base import FlowLayer, concrete_value, event_size, register

ESTIMATORS = ("exact", "series", "roulette")
HUTCHINSON = ("normal", "rademacher")


def lipswish(z, beta):
    """LipSwish (Chen et al. 2019): `z sigmoid(beta z) / 1.1`, 1-Lipschitz."""
    return z * ops.sigmoid(beta * z) / 1.1


def lipswish_derivative(z, beta):
    s = ops.sigmoid(beta * z)
    return (s + beta * z * s * (1.0 - s)) / 1.1


def _default_tolerance(dtype):
    return 1e-12 if keras.backend.standardize_dtype(dtype) == "float64" else 1e-6


def _np_correlate_same(x, k, top, left):
    """numpy stride-1 correlation keeping the size: `x (N, H, W, Ci)`, `k (kh,
    kw, Ci, Co)`, padded by `top`/`left` before and the rest after."""
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (k.shape[3],), dtype=np.float64)
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("nhwc,cd->nhwd", xp[:, dy:dy + h, dx:dx + w], k[dy, dx])
    return out


def _np_conv_same(x, k):
    """numpy "same" stride-1 convolution (cross-correlation, as Keras)."""
    return _np_correlate_same(x, k, k.shape[0] // 2, k.shape[1] // 2)


def _np_conv_same_transpose(a, k):
    """The adjoint of `_np_conv_same` (same kernel): `(N, H, W, Co) -> (N, H, W, Ci)`:
    the "same" correlation with the flipped, transposed kernel, padded on the
    other side for even sizes."""
    kh, kw = k.shape[:2]
    return _np_correlate_same(a, np.transpose(k[::-1, ::-1], (0, 1, 3, 2)), kh - 1 - kh // 2, kw - 1 - kw // 2)


@register
class ResidualBlock(FlowLayer):
    """An invertible residual block `y = x + g(x)` (i-ResNet, Residual Flows).

    Forward (data -> latent): `y = x + g(x)`, one pass. Inverse: the fixed
    point `x = y - g(x)` (`"iterative"`, to `tolerance`). Log-det:
    `log|det(I + J_g)|`, exact (small `D`) or estimated (i-ResNet's
    truncated series, or Residual Flows' unbiased Russian roulette); see the
    module docstring. Behrmann et al. 2019, "Invertible Residual Networks";
    Chen et al. 2019, "Residual Flows for Invertible Generative Modeling".

    Args:
        hidden: widths of `g`'s hidden layers (channels for images).
        kernel_sizes: for images, the kernel size of each of `g`'s
            `len(hidden) + 1` convolutions (default 3, 1, 3).
        lipschitz: the spectral-norm coefficient `c` in (0, 1): every kernel
            has operator norm at most `c`, so `Lip(g) <= c`.
        log_det: `"exact"`, `"series"` or `"roulette"` (the default).
        n_terms: terms of the truncated series (`"series"`).
        n_exact_terms: terms the roulette always computes.
        stop_probability: the roulette's chance of stopping after each later
            term (geometric, as Residual Flows: 0.5).
        max_terms: a cap on the roulette's terms (the neglected tail has
            probability `q^(max_terms - n_exact_terms)`).
        hutchinson: `"normal"` or `"rademacher"` probe vectors.
        power_iterations: power-iteration steps per training call.
        eval_power_iterations: steps per call outside training.
        tolerance: relative residual of the inverse's fixed-point iteration;
            `None`: 1e-6 (float32), 1e-12 (float64).
        max_iterations: a cap on the fixed-point iterations.
        seed: initial weights and the estimators' random draws.
        context_shape: event shape of an optional context.
    """

    input_ranks = (2, 4)
    forward_mode = "analytic"
    inverse_mode = "iterative"
    accepts_context = True

    def __init__(self, hidden=(32, 32), kernel_sizes=None, lipschitz=0.97, log_det="roulette", n_terms=8,
                 n_exact_terms=2, stop_probability=0.5, max_terms=50, hutchinson="normal", power_iterations=1,
                 eval_power_iterations=20, tolerance=None, max_iterations=500, seed=None, context_shape=None,
                 **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        name = f"ResidualBlock '{self.name}'"
        hidden = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"{name} needs one or more positive hidden widths. Received: hidden={hidden!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.kernel_sizes = None if kernel_sizes is None else tuple(int(k) for k in kernel_sizes)
        if self.kernel_sizes is not None and (len(self.kernel_sizes) != len(self.hidden) + 1
                                              or min(self.kernel_sizes) < 1):
            raise ValueError(f"{name} needs len(hidden) + 1 = {len(self.hidden) + 1} positive kernel sizes. "
                             f"Received: kernel_sizes={kernel_sizes!r}")
        if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)) or not 0 < lipschitz < 1:
            raise ValueError(
                f"{name} needs a Lipschitz coefficient in (0, 1): x + g(x) is invertible only when g is a "
                f"contraction (Lip(g) < 1). Received: lipschitz={lipschitz!r}")
        self.lipschitz = float(lipschitz)
        if log_det not in ESTIMATORS:
            raise ValueError(f"{name} log_det must be one of {ESTIMATORS}. Received: log_det={log_det!r}")
        self.log_det = log_det
        if hutchinson not in HUTCHINSON:
            raise ValueError(f"{name} hutchinson must be one of {HUTCHINSON}. Received: hutchinson={hutchinson!r}")
        self.hutchinson = hutchinson
        for arg, value, low in (("n_terms", n_terms, 1), ("n_exact_terms", n_exact_terms, 0),
                                ("max_terms", max_terms, 1), ("power_iterations", power_iterations, 1),
                                ("eval_power_iterations", eval_power_iterations, 1),
                                ("max_iterations", max_iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} needs an integer {arg} >= {low}. Received: {arg}={value!r}")
        if max_terms <= n_exact_terms:
            raise ValueError(f"{name} needs max_terms > n_exact_terms. Received: max_terms={max_terms}, "
                             f"n_exact_terms={n_exact_terms}")
        if not 0 < stop_probability < 1:
            raise ValueError(f"{name} needs stop_probability in (0, 1). Received: {stop_probability!r}")
        if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
            raise ValueError(f"{name} tolerance must be in (0, 1) or None. Received: tolerance={tolerance!r}")
        self.n_terms, self.n_exact_terms, self.max_terms = int(n_terms), int(n_exact_terms), int(max_terms)
        self.stop_probability = float(stop_probability)
        self.power_iterations, self.eval_power_iterations = int(power_iterations), int(eval_power_iterations)
        self.tolerance = None if tolerance is None else float(tolerance)
        self.max_iterations = int(max_iterations)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def log_det_kind(self):
        return "exact" if self.log_det == "exact" else "estimate"

    # -- weights ---------------------------------------------------------------
    def build(self, input_shape):
        self._check_rank(input_shape)
        input_shape = tuple(input_shape)
        self._image = len(input_shape) == 4
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"ResidualBlock '{self.name}' needs a fully known event shape (its spectral norm "
                             f"runs on the map at that size); got {input_shape}.")
        channels = int(input_shape[-1])
        kernel_sizes = self.kernel_sizes or ((3,) + (1,) * (len(self.hidden) - 1) + (3,))
        if len(kernel_sizes) != len(self.hidden) + 1:
            kernel_sizes = (3,) * (len(self.hidden) + 1)
        rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)) if self.seed is None else self.seed)
        widths = list(self.hidden) + [channels]
        self._kernels, self._biases, self._vectors = [], [], []
        prev = channels
        for i, width in enumerate(widths):
            if self._image:
                k = kernel_sizes[i]
                shape = (k, k, prev, width)
                fan_in = k * k * prev
            else:
                shape = (prev, width)
                fan_in = prev
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
            if i == len(widths) - 1:
                value = 0.1 * value  # start near the identity
            self._kernels.append(self.add_weight(shape=shape, initializer=_constant(value), name=f"kernel_{i}"))
            self._biases.append(self.add_weight(shape=(width,), initializer="zeros", name=f"bias_{i}"))
            v_shape = ((1,) + tuple(input_shape[1:3]) + (prev,)) if self._image else (1, prev)
            v = _top_right_vector(value, v_shape, rng, self._image)
            self._vectors.append(self.add_weight(shape=v_shape, initializer=_constant(v), trainable=False,
                                                 name=f"power_vector_{i}"))
            prev = width
        self._betas = self.add_weight(shape=(len(self.hidden),), initializer=_constant(np.full(len(self.hidden), 0.5)),
                                      name="lipswish_beta")
        if self.context_shape is not None:
            self._context_dense = keras.layers.Dense(self.hidden[0], name="context", dtype=self.dtype_policy)
            self._context_dense.build((None, event_size((None,) + self.context_shape)))

    # -- the net's linear maps and their adjoints -------------------------------------
    def _lin(self, t, k):
        return ops.conv(t, k, padding="same") if self._image else ops.matmul(t, k)

    def _lin_t(self, t, k):
        if self._image:
            return ops.conv_transpose(t, k, strides=1, padding="same")
        return ops.matmul(t, ops.transpose(k))

    def _normalized_kernels(self, dtype, training):
        """Each kernel over `max(1, sigma / lipschitz)`, `sigma` by power
        iteration (stored vectors updated while training)."""
        iterations = self.power_iterations if training else self.eval_power_iterations
        out = []
        for kernel, store in zip(self._kernels, self._vectors):
            k = ops.cast(kernel, dtype)
            k_fixed = ops.stop_gradient(k)
            v = ops.cast(ops.stop_gradient(store), dtype)
            for _ in range(iterations):
                v = _unit(self._lin_t(_unit(self._lin(v, k_fixed), None), k_fixed), v)
            v = ops.stop_gradient(v)
            if training:
                store.assign(ops.cast(v, store.dtype))
            sigma = ops.sqrt(ops.sum(ops.square(self._lin(v, k))))
            out.append(k / ops.maximum(1.0, sigma / self.lipschitz))
        return out

    def _context_bias(self, context, dtype):
        if context is None or self.context_shape is None:
            return None
        flat = ops.reshape(context, (ops.shape(context)[0], -1))
        bias = ops.cast(self._context_dense(flat), dtype)
        return ops.reshape(bias, (-1, 1, 1, self.hidden[0])) if self._image else bias

    def _net(self, x, kernels, context_bias):
        """`g(x)` and the activations' derivatives at `x` (for the Jacobian)."""
        h = x
        slopes = []
        betas = ops.softplus(ops.cast(self._betas, x.dtype))
        for i in range(len(self.hidden)):
            z = self._lin(h, kernels[i]) + ops.cast(self._biases[i], x.dtype)
            if i == 0 and context_bias is not None:
                z = z + context_bias
            slopes.append(lipswish_derivative(z, betas[i]))
            h = lipswish(z, betas[i])
        return self._lin(h, kernels[-1]) + ops.cast(self._biases[-1], x.dtype), slopes

    def _vjp(self, w, kernels, slopes, r):
        """`w^T J_g` for `r` covectors per example: `w` is `(batch * r, ...)`."""
        for i in range(len(self.hidden), 0, -1):
            w = self._lin_t(w, kernels[i]) * _repeat(slopes[i - 1], r)
        return self._lin_t(w, kernels[0])

    def _jvp(self, v, kernels, slopes, r):
        """`J_g v` for `r` vectors per example."""
        for i in range(len(self.hidden)):
            v = self._lin(v, kernels[i]) * _repeat(slopes[i], r)
        return self._lin(v, kernels[-1])

    # -- log-dets ----------------------------------------------------------------
    def _probe(self, x):
        v = keras.random.normal(ops.shape(x), dtype=x.dtype, seed=self.seed_generator)
        return ops.sign(v) if self.hutchinson == "rademacher" else v

    def _exact_log_det(self, x, kernels, slopes):
        batch, d = ops.shape(x)[0], event_size(x.shape)
        eye = ops.eye(d, dtype=x.dtype)
        basis = ops.reshape(ops.tile(eye[None], (batch, 1, 1)), (-1,) + tuple(x.shape[1:]))
        rows = ops.reshape(self._vjp(basis, kernels, slopes, d), (batch, d, d))
        return ops.slogdet(eye[None] + rows)[1]

    def _series_log_det(self, x, kernels, slopes):
        v = self._probe(x)
        w, total = v, 0.0
        for k in range(1, self.n_terms + 1):
            w = self._vjp(w, kernels, slopes, 1)
            total = total + ((-1.0) ** (k + 1) / k) * _dot(w, v)
        return total

    def _roulette_log_det(self, x, kernels, slopes):
        v = self._probe(x)
        q = 1.0 - self.stop_probability
        # The number of extra terms M, drawn with exact probabilities
        # P(M = m) = q^m (1 - q) for m < cap and P(M = cap) = q^cap, so that
        # P(M >= m) = q^m is the weight's inverse for every m <= cap (a float32
        # uniform's log would put the far tail on a coarse grid).
        cap = self.max_terms - self.n_exact_terms
        probs = np.array([q ** m * (1.0 - q) for m in range(cap)] + [q ** cap])
        logits = ops.convert_to_tensor(np.log(probs)[None].astype("float32"))
        extra = keras.random.categorical(logits, 1, seed=self.seed_generator)[0, 0]
        n = ops.cast(extra, "int32") + self.n_exact_terms
        fixed_kernels = [ops.stop_gradient(k) for k in kernels]
        fixed_slopes = [ops.stop_gradient(s) for s in slopes]
        v_fixed = ops.stop_gradient(v)
        dtype = x.dtype
        n_exact = float(self.n_exact_terms)
        log_q = float(np.log(q))

        def weight(k):  # 1 / P(N >= k)
            return ops.exp(-ops.maximum(ops.cast(k, dtype) - n_exact, 0.0) * log_q)

        def sign(k):  # (-1)^k
            return 1.0 - 2.0 * ops.cast(k % 2, dtype)

        def cond(k, w, estimate, neumann):
            return k < n

        def body(k, w, estimate, neumann):
            # neumann gathers sum_{j < N} (-1)^j w_j / P(N >= j + 1), w_j = v^T J^j:
            # term j of d log det = sum_j (-1)^j tr(J^j dJ) comes from series term
            # k = j + 1, so it is kept, and reweighted, exactly when term k is.
            neumann = neumann + (sign(k) * weight(k + 1)) * w
            k = k + 1
            w = self._vjp(w, fixed_kernels, fixed_slopes, 1)
            estimate = estimate - (sign(k) * weight(k) / ops.cast(k, dtype)) * _dot(w, v_fixed)
            return k, w, estimate, neumann

        zero = ops.zeros((ops.shape(x)[0],), dtype=dtype)
        _, _, estimate, neumann = ops.while_loop(
            cond, body, (ops.convert_to_tensor(0, "int32"), v_fixed, zero, ops.zeros_like(v_fixed)),
            maximum_iterations=self.max_terms)
        estimate, neumann = ops.stop_gradient(estimate), ops.stop_gradient(neumann)
        surrogate = _dot(neumann, self._jvp(v, kernels, slopes, 1))  # its gradient: the Neumann series
        return estimate + surrogate - ops.stop_gradient(surrogate)

    def _log_det(self, x, kernels, slopes):
        if self.log_det == "exact":
            return self._exact_log_det(x, kernels, slopes)
        if self.log_det == "series":
            return self._series_log_det(x, kernels, slopes)
        return self._roulette_log_det(x, kernels, slopes)

    # -- exact values for checking the estimators ---------------------------------------
    def _prepared(self, x, context):
        x = ops.convert_to_tensor(x)
        self._check_input(x, "forward")
        self._ensure_built(x.shape, "forward")
        context = self._check_context(context, x)
        kernels = self._normalized_kernels(x.dtype, False)
        _, slopes = self._net(x, kernels, self._context_bias(context, x.dtype))
        return x, kernels, slopes

    def exact_log_det(self, x, context=None):
        """The forward log-det `log|det(I + J_g(x))|` computed exactly (the
        `D x D` Jacobian's `slogdet`), whatever `log_det` is: for small `D`,
        to check an estimator or to evaluate a small model exactly."""
        x, kernels, slopes = self._prepared(x, context)
        return self._exact_log_det(x, kernels, slopes)

    def log_det_bias_bound(self, x, context=None):
        """A bound on the bias of this layer's log-det estimator at `x`:
        0 for `"exact"`; for `"series"`, the truncated tail
        `sum_{k > n} |tr(J^k)| / k <= sum_i (-log(1 - s_i) - sum_{k <= n} s_i^k / k)`,
        `s_i` the singular values of `J_g(x)` (Weyl's majorant theorem);
        for `"roulette"`, the same tail beyond `max_terms`. Small `D` only
        (it needs the Jacobian)."""
        x, kernels, slopes = self._prepared(x, context)
        if self.log_det == "exact":
            return ops.zeros((ops.shape(x)[0],), dtype=x.dtype)
        batch, d = ops.shape(x)[0], event_size(x.shape)
        basis = ops.reshape(ops.tile(ops.eye(d, dtype=x.dtype)[None], (batch, 1, 1)), (-1,) + tuple(x.shape[1:]))
        jac = ops.reshape(self._vjp(basis, kernels, slopes, d), (batch, d, d))
        s = ops.minimum(ops.svd(jac, compute_uv=False), 1.0 - 1e-12)
        n = self.n_terms if self.log_det == "series" else self.max_terms
        head = sum(s ** k / k for k in range(1, n + 1))
        return ops.sum(-ops.log1p(-s) - head, axis=-1)

    # -- the two directions -----------------------------------------------------------
    def _forward(self, x, context=None, training=False):
        kernels = self._normalized_kernels(x.dtype, training)
        gx, slopes = self._net(x, kernels, self._context_bias(context, x.dtype))
        return x + gx, self._log_det(x, kernels, slopes)

    def _inverse(self, y, context=None, training=False):
        kernels = self._normalized_kernels(y.dtype, training)
        bias = self._context_bias(context, y.dtype)
        tolerance = self.tolerance or _default_tolerance(y.dtype)
        scale = 1.0 + ops.abs(y)
        axes = tuple(range(1, len(y.shape)))

        def cond(i, x, res):
            # NaN rows (NaN input) compare False: they neither stop nor hold up the others.
            return ops.logical_and(i < self.max_iterations, ops.any(res > tolerance))

        def body(i, x, res):
            # x_next - x is minus the residual x + g(x) - y at x, per example
            # max |.| / (1 + |y|); x_next's own residual is smaller still (Lip(g) < 1).
            x_next = y - self._net(x, kernels, bias)[0]
            return i + 1, x_next, ops.max(ops.abs(x_next - x) / scale, axis=axes)

        inf = ops.full((ops.shape(y)[0],), float("inf"), dtype=y.dtype)
        iterations, x, res = ops.while_loop(
            cond, body, (ops.convert_to_tensor(0, "int32"), y, inf), maximum_iterations=self.max_iterations)
        self._raise_if_unsolved(res, iterations, tolerance)
        # Rows that missed the tolerance (seen only while tracing) become NaN
        # rather than a silently wrong pre-image.
        ok = ops.reshape(res <= tolerance, (-1,) + (1,) * (len(y.shape) - 1))
        x = ops.where(ok, x, ops.full_like(x, float("nan")))
        _, slopes = self._net(x, kernels, bias)
        return x, -self._log_det(x, kernels, slopes)

    def _raise_if_unsolved(self, res, iterations, tolerance):
        res, iterations = concrete_value(res), concrete_value(iterations)
        if res is None or iterations is None:
            return
        bad = np.flatnonzero(~(res <= tolerance))
        if not len(bad):
            return
        finite = res[np.isfinite(res)]
        rows = ", ".join(str(int(r)) for r in bad[:8]) + (", ..." if len(bad) > 8 else "")
        nan_rows = int(np.sum(np.isnan(res)))
        worst = f"{finite.max():.3g}" if finite.size else "NaN"
        raise ValueError(
            f"ResidualBlock '{self.name}' inverse did not converge: after {int(iterations)} fixed-point "
            f"iterations the residual max|x + g(x) - y| / (1 + |y|) is still above the tolerance {tolerance:g} "
            f"for {len(bad)} of {res.shape[0]} rows (rows [{rows}]; largest finite residual {worst}, "
            f"{nan_rows} rows NaN). NaN or Inf input, or g not contractive enough (lipschitz="
            f"{self.lipschitz}) for max_iterations={self.max_iterations}.")

    def get_config(self):
        config = super().get_config()
        config.update(hidden=list(self.hidden), kernel_sizes=None if self.kernel_sizes is None else list(self.kernel_sizes),
                      lipschitz=self.lipschitz, log_det=self.log_det, n_terms=self.n_terms,
                      n_exact_terms=self.n_exact_terms, stop_probability=self.stop_probability,
                      max_terms=self.max_terms, hutchinson=self.hutchinson, power_iterations=self.power_iterations,
                      eval_power_iterations=self.eval_power_iterations, tolerance=self.tolerance,
                      max_iterations=self.max_iterations, seed=self.seed)
        return config


# ----------------------------------------------------------------- helpers


def _constant(value):
    def init(shape, dtype=None):
        return np.asarray(value, dtype=dtype or "float32")
    return init


def _unit(t, fallback):
    """`t / |t|` over all of `t`; `fallback` (or `t`) where `|t| = 0`."""
    norm = ops.sqrt(ops.sum(ops.square(t)))
    unit = t / ops.maximum(norm, 1e-30)
    if fallback is None:
        return unit
    return ops.where(norm > 0, unit, fallback)


def _repeat(t, r):
    return t if r == 1 else ops.repeat(t, r, axis=0)


def _dot(a, b):
    """Per-example inner product of `(batch, ...)` tensors: `(batch,)`."""
    return ops.sum(ops.reshape(a * b, (ops.shape(a)[0], -1)), axis=1)


def _top_right_vector(kernel, v_shape, rng, image, iterations=50):
    """The power iteration's starting vector: the kernel map's top right
    singular vector (numpy, at build), so the first calls already see its
    operator norm."""
    v = rng.standard_normal(v_shape)
    v /= np.linalg.norm(v)
    for _ in range(iterations):
        a = _np_conv_same(v, kernel) if image else v @ kernel
        n = np.linalg.norm(a)
        if n == 0:
            break
        b = _np_conv_same_transpose(a / n, kernel) if image else (a / n) @ kernel.T
        v = b / np.linalg.norm(b)
    return v
