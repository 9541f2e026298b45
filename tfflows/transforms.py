"""Element-wise transforms: pure `keras.ops` maps that return `(y, ladj)`.

`ladj` is the element-wise log|dy/dx| (same shape as `y`); a layer sums it
over the event. Each map has its inverse, whose `ladj` is that of the
inverse map (the negative of the forward one at the same point).

The functions are what the flow layers compute; the small `Transform`
classes bind them to a conditioner's output `h` so one `Coupling` (and, in
later families, an autoregressive layer) can carry any of them:
`Additive` (NICE), `Affine` in the two scale forms in use (Glow's
`sigmoid(h + 2)` with the shift first, RealNVP's `g * tanh(h)`), `Spline`
(rational-quadratic, Durkan et al.) and `PiecewiseLinear` (Müller et al.).

The spline and piecewise-linear maps act on `[-bound, bound]` and are the
identity outside it. They give finite values and gradients for every finite
input: the spline branch is only ever evaluated at an input clamped into the
interval (an out-of-interval input evaluated there and then masked by
`where` still sends NaN or Inf through the gradient), and the inverse's
discriminant is computed as a sum of non-negative terms, so round-off cannot
make it negative.

The conditioner output is laid out parameter-major: for `C` transformed
channels and `P` parameters per channel, `h` has `P * C` channels and
parameter `p` of channel `c` is `h[..., p * C + c]` (an affine coupling's
net gives all shifts, then all raw scales).
"""

import math
import operator

from keras import ops


# -- pure maps --------------------------------------------------------------------
def split_channels(x, c):
    """`(x[..., :c], x[..., c:])` as one `split` op.

    Its gradient is a concatenation; the gradient of a strided slice
    (`StridedSliceGrad` on TensorFlow) costs about 10 % of a Glow train step
    on CPU. Equal halves use `split(x, 2)`, one op: Keras' TF `split` by
    index adds about a dozen shape ops (and as many to trace) per call.
    """
    c = int(c)
    if x.shape[-1] is not None and 2 * c == x.shape[-1]:
        return tuple(ops.split(x, 2, axis=-1))
    return tuple(ops.split(x, [c], axis=-1))


def accurate_tanh(x):
    """`tanh(x)` as `expm1(2x) / (expm1(2x) + 2)`, `x` clipped to [-20, 20]
    (where tanh is +-1 to float64 precision), accurate to a few ulp.

    Not `keras.ops.tanh`: on JAX with float64 enabled it computes in float32
    (Keras 3.15's `result_type("float64", float)` is float32 there), which
    would cap the float64 accuracy of a flow at 1e-7.
    """
    e = ops.expm1(2.0 * ops.clip(x, -20.0, 20.0))
    return e / (e + 2.0)


def additive(x, shift):
    """`y = x + shift`; `ladj = 0`."""
    return x + shift, ops.zeros_like(x)


def additive_inverse(y, shift):
    """`x = y - shift`; `ladj = 0`."""
    return y - shift, ops.zeros_like(y)


def affine(x, shift, log_scale, shift_first=False):
    """`y = x * exp(log_scale) + shift`, or with `shift_first`
    `y = (x + shift) * exp(log_scale)` (Glow's order); `ladj = log_scale`."""
    if shift_first:
        return (x + shift) * ops.exp(log_scale), log_scale
    return x * ops.exp(log_scale) + shift, log_scale


def affine_inverse(y, shift, log_scale, shift_first=False):
    """The inverse of `affine`: `x = y * exp(-log_scale) - shift` (with
    `shift_first`) or `x = (y - shift) * exp(-log_scale)`; `ladj = -log_scale`."""
    if shift_first:
        return y * ops.exp(-log_scale) - shift, -log_scale
    return (y - shift) * ops.exp(-log_scale), -log_scale


def _check_bins_and_bound(owner, bins, bound):
    try:
        count = None if isinstance(bins, bool) else operator.index(bins)
    except TypeError:
        count = None
    if count is None:
        raise ValueError(f"{owner} needs an integer number of bins (at least 2). Received: bins={bins!r}")
    if count < 2:
        raise ValueError(f"{owner} needs at least 2 bins. Received: bins={bins!r}")
    _check_positive(owner, "bound", bound)


def _check_positive(owner, name, value):
    try:
        ok = not isinstance(value, bool) and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{owner} needs a finite {name} > 0. Received: {name}={value!r}")


def _check_min_size(owner, name, value, bins):
    _check_positive(owner, name, value)
    if bins is not None and int(bins) * float(value) >= 1.0:
        raise ValueError(f"{owner} needs bins * {name} < 1 (the minimum bins must leave room for the rest). "
                         f"Received: {name}={value!r} with bins={bins!r}")


def _check_last_dim(owner, name, tensor, expected):
    got = tensor.shape[-1] if len(tensor.shape) else None
    if got is not None and expected is not None and got != expected:
        raise ValueError(f"{owner} needs {name} with last dimension {expected}. "
                         f"Received: {name} of shape {tuple(tensor.shape)}")


def _pick(onehot, values):
    """`values[..., k]` at the bin `k` marked by `onehot` (a sum, so the
    gradient reaches `values` with no gather)."""
    return ops.sum(onehot * values, axis=-1)


def _bin_of(z, interior_knots, bins):
    """One-hot `(..., K)` of the bin holding `z`: bin `k` is the count of
    interior knots `<= z`, so a knot belongs to the bin above it and
    `z = bound` to the last one. Comparisons carry no gradient, unlike
    `searchsorted` and `gather` chains."""
    count = ops.sum(ops.cast(ops.expand_dims(z, -1) >= interior_knots, "int32"), axis=-1)
    return ops.one_hot(count, bins, dtype=z.dtype)


def _clamped(z, bound):
    """`(inside, z_in)`: whether `|z| <= bound`, and `z` clamped into the
    interval. `where` keeps the gradient of `z` whole at `|z| = bound` (JAX's
    `clip` gives half of it to the bound there)."""
    inside = ops.logical_and(z >= -bound, z <= bound)
    return inside, ops.where(inside, z, ops.clip(z, -bound, bound))


def _knots(unnormalized, bound, min_size):
    """Knots `(..., K + 1)` from `-bound` to `bound` (exactly) with gaps
    `2 * bound * (min_size + (1 - K * min_size) * softmax(unnormalized))`."""
    k = unnormalized.shape[-1]
    sizes = min_size + (1.0 - k * min_size) * ops.softmax(unnormalized, axis=-1)
    inner = 2.0 * bound * ops.cumsum(sizes[..., :-1], axis=-1) - bound
    edge = ops.zeros_like(sizes[..., :1])
    return ops.concatenate([edge - bound, inner, edge + bound], axis=-1)


def _spline_params(z, widths, heights, derivatives, bound, min_bin_width, min_bin_height, min_derivative,
                   owner):
    _check_positive(owner, "bound", bound)
    widths, heights, derivatives = (ops.convert_to_tensor(p) for p in (widths, heights, derivatives))
    k = widths.shape[-1]
    if k is not None and k < 2:
        raise ValueError(f"{owner} needs at least 2 bins. Received: widths of shape {tuple(widths.shape)}")
    _check_last_dim(owner, "heights", heights, k)
    _check_last_dim(owner, "derivatives", derivatives, None if k is None else k - 1)
    _check_min_size(owner, "min_bin_width", min_bin_width, k)
    _check_min_size(owner, "min_bin_height", min_bin_height, k)
    _check_positive(owner, "min_derivative", min_derivative)
    dtype = z.dtype
    xk = _knots(ops.cast(widths, dtype), bound, min_bin_width)
    yk = _knots(ops.cast(heights, dtype), bound, min_bin_height)
    # Shifted so that zero parameters give slope 1 at every knot: with equal
    # bins that is the identity map, the start a zero-initialised net wants.
    shift = math.log(math.expm1(1.0 - min_derivative))
    inner_d = min_derivative + ops.softplus(ops.cast(derivatives, dtype) + shift)
    one = ops.ones_like(inner_d[..., :1])
    # Slope 1 at both ends: the spline joins the identity tails with a
    # continuous derivative.
    dk = ops.concatenate([one, inner_d, one], axis=-1)
    return xk, yk, dk


def _spline_bin(onehot, xk, yk, dk):
    x0, x1 = _pick(onehot, xk[..., :-1]), _pick(onehot, xk[..., 1:])
    y0, y1 = _pick(onehot, yk[..., :-1]), _pick(onehot, yk[..., 1:])
    d0, d1 = _pick(onehot, dk[..., :-1]), _pick(onehot, dk[..., 1:])
    return x0, x1, y0, y1, d0, d1


def _rq_log_slope(theta, omt, s, d0, d1):
    """`log dy/dx` of a rational-quadratic bin at `theta` (`omt = 1 - theta`),
    every term positive for `theta` in `[0, 1]`:
    `log(s^2 (d1 theta^2 + 2 s theta omt + d0 omt^2)) - 2 log(den)` with
    `den = s (theta^2 + omt^2) + (d0 + d1) theta omt`."""
    t_omt = theta * omt
    den = s * (theta * theta + omt * omt) + (d0 + d1) * t_omt
    num = d1 * theta * theta + 2.0 * s * t_omt + d0 * omt * omt
    return 2.0 * ops.log(s) + ops.log(num) - 2.0 * ops.log(den), den


def rational_quadratic_spline(x, widths, heights, derivatives, bound=3.0, min_bin_width=1e-3,
                              min_bin_height=1e-3, min_derivative=1e-3):
    """Rational-quadratic spline on `[-B, B]`, identity outside: `(y, ladj)`.

    In bin `k` (knots `x_k < x_{k+1}`, `y_k < y_{k+1}`, slopes `d_k`,
    `d_{k+1}`; `w = x_{k+1} - x_k`, `h = y_{k+1} - y_k`, `s = h / w`,
    `theta = (x - x_k) / w`):
    `y = y_k + h (s theta^2 + d_k theta (1 - theta)) / (s + (d_k + d_{k+1} - 2 s) theta (1 - theta))`,
    `ladj = log(s^2 (d_{k+1} theta^2 + 2 s theta (1 - theta) + d_k (1 - theta)^2)) - 2 log(denominator)`.
    Outside `[-B, B]`: `y = x`, `ladj = 0`.

    Bin widths are `2B (min_bin_width + (1 - K min_bin_width) softmax(widths))`,
    heights likewise; interior slopes are
    `min_derivative + softplus(derivatives + log(expm1(1 - min_derivative)))`
    (1 for zero parameters, so zero parameters give the identity) and the
    two boundary slopes are 1, so value and derivative are
    continuous at `+-B`. The spline branch is evaluated at `x` clamped into
    `[-B, B]`, so values and gradients are finite for every finite `x`.

    Args:
        x: inputs `(...)`; its dtype is the dtype of every result.
        widths: unnormalised bin widths `(..., K)`, broadcastable against `x`.
        heights: unnormalised bin heights `(..., K)`.
        derivatives: unnormalised interior knot slopes `(..., K - 1)`.
        bound: `B > 0`. Defaults to 3.
        min_bin_width, min_bin_height: each bin's minimum share of `2B`
            (`K * min < 1`). Default to 1e-3.
        min_derivative: the minimum interior slope (> 0). Defaults to 1e-3.

    Returns:
        `(y, ladj)`, both shaped like `x`; `ladj = log|dy/dx|` element-wise.

    Raises:
        ValueError: for `K < 2`, `B <= 0`, minimums out of range or
            parameter shapes that disagree.

    References: Durkan et al., Neural Spline Flows, https://arxiv.org/abs/1906.04032

    >>> import numpy as np
    >>> x = np.array([-5.0, 0.5, 5.0])
    >>> y, ladj = rational_quadratic_spline(x, np.zeros(4), np.zeros(4), np.zeros(3))
    >>> [float(v) for v in y[::2]], float(ladj[0])
    ([-5.0, 5.0], 0.0)
    """
    x = ops.convert_to_tensor(x)
    xk, yk, dk = _spline_params(x, widths, heights, derivatives, bound, min_bin_width, min_bin_height,
                                min_derivative, "rational_quadratic_spline")
    inside, x_in = _clamped(x, bound)
    onehot = _bin_of(x_in, xk[..., 1:-1], xk.shape[-1] - 1)
    x0, x1, y0, y1, d0, d1 = _spline_bin(onehot, xk, yk, dk)
    w, h = x1 - x0, y1 - y0
    s = h / w
    # Both >= 0 exactly: x0 <= x_in <= x1 by the bin search.
    theta, omt = (x_in - x0) / w, (x1 - x_in) / w
    log_slope, den = _rq_log_slope(theta, omt, s, d0, d1)
    y = y0 + h * (s * theta * theta + d0 * theta * omt) / den
    return ops.where(inside, y, x), ops.where(inside, log_slope, ops.zeros_like(x))


def rational_quadratic_spline_inverse(y, widths, heights, derivatives, bound=3.0, min_bin_width=1e-3,
                                      min_bin_height=1e-3, min_derivative=1e-3):
    """The inverse of `rational_quadratic_spline`: `(x, ladj)` with
    `ladj = log|dx/dy|`, minus the forward's at `x`.

    In bin `k` (found on the `y` knots) `theta` is the root in `[0, 1]` of
    `a theta^2 + b theta + c = 0` with `u = y - y_k`, `v = y_{k+1} - y`,
    `D = d_k + d_{k+1} - 2 s`, `a = h (s - d_k) + u D`, `b = h d_k - u D`,
    `c = -s u`; `x = x_k + theta w`. The root is taken in the stable form
    `theta = 2c / (-b - sqrt(b^2 - 4ac))` for `b >= 0` and
    `(-b + sqrt(b^2 - 4ac)) / 2a` for `b < 0` (there `a = h s - b > 0`), and
    the discriminant is computed as the equal sum of non-negative terms
    `b^2 - 4ac = (d_k v - d_{k+1} u)^2 + 4 s^2 u v` (strictly positive), so
    round-off can never make it negative. Outside `[-B, B]`: `x = y`,
    `ladj = 0`. Arguments as for `rational_quadratic_spline`.

    >>> import numpy as np
    >>> p = np.random.default_rng(0).normal(size=(5, 11))  # one spline per input, K = 4
    >>> x = np.array([-4.0, -1.0, 0.2, 2.9, 7.0])
    >>> y, ladj = rational_quadratic_spline(x, p[:, :4], p[:, 4:8], p[:, 8:])
    >>> back, ladj_back = rational_quadratic_spline_inverse(y, p[:, :4], p[:, 4:8], p[:, 8:])
    >>> bool(np.allclose(back, x, atol=1e-12)), bool(np.allclose(ladj_back, -ladj, atol=1e-12))
    (True, True)
    """
    y = ops.convert_to_tensor(y)
    xk, yk, dk = _spline_params(y, widths, heights, derivatives, bound, min_bin_width, min_bin_height,
                                min_derivative, "rational_quadratic_spline_inverse")
    inside, y_in = _clamped(y, bound)
    onehot = _bin_of(y_in, yk[..., 1:-1], yk.shape[-1] - 1)
    x0, x1, y0, y1, d0, d1 = _spline_bin(onehot, xk, yk, dk)
    w, h = x1 - x0, y1 - y0
    s = h / w
    u, v = y_in - y0, y1 - y_in  # both >= 0 exactly, by the bin search
    b = h * d0 - u * (d0 + d1 - 2.0 * s)
    root = ops.sqrt(ops.square(d0 * v - d1 * u) + 4.0 * s * s * u * v)
    # b >= 0: 2c / (-b - root) = 2 s u / (b + root), with b + root >= root > 0.
    # b < 0: (root - b) / 2a with a = h s - b = h s + |b| > 0; written with
    # |b| so the branch `where` drops stays finite too.
    theta = ops.where(b >= 0, 2.0 * s * u / (ops.abs(b) + root), (root - b) / (2.0 * (h * s + ops.abs(b))))
    log_slope, _ = _rq_log_slope(theta, 1.0 - theta, s, d0, d1)
    x = x0 + theta * w
    return ops.where(inside, x, y), ops.where(inside, -log_slope, ops.zeros_like(y))


def _linear_params(z, logits, bound, min_bin_height, owner):
    _check_positive(owner, "bound", bound)
    logits = ops.convert_to_tensor(logits)
    k = logits.shape[-1]
    if k is not None and k < 2:
        raise ValueError(f"{owner} needs at least 2 bins. Received: logits of shape {tuple(logits.shape)}")
    _check_min_size(owner, "min_bin_height", min_bin_height, k)
    pdf = min_bin_height + (1.0 - k * min_bin_height) * ops.softmax(ops.cast(logits, z.dtype), axis=-1)
    edge = ops.zeros_like(pdf[..., :1])
    cdf = ops.concatenate([edge, ops.cumsum(pdf[..., :-1], axis=-1), edge + 1.0], axis=-1)
    return k, pdf, cdf


def piecewise_linear(x, logits, bound=1.0, min_bin_height=1e-3):
    """Piecewise-linear CDF map of `[-B, B]` onto itself, identity outside:
    `(y, ladj)`.

    `K` bins of equal width `2B / K`; bin `k` gets the mass
    `p_k = m + (1 - K m) softmax(logits)_k` (`m = min_bin_height`), so with
    `t = K (x + B) / 2B = k + alpha`:
    `y = -B + 2B (sum_{j<k} p_j + alpha p_k)`, `ladj = log(K p_k)`.
    Outside `[-B, B]`: `y = x`, `ladj = 0`. The floor `m` keeps every bin's
    slope at least `K m`, so the inverse exists (and is finite) for any
    finite logits; Müller et al. have no floor (`m = 0`).

    Args:
        x: inputs `(...)`; its dtype is the dtype of every result.
        logits: unnormalised bin masses `(..., K)`, broadcastable against `x`.
        bound: `B > 0`. Defaults to 1.
        min_bin_height: `m`, each bin's minimum mass (`K m < 1`). Defaults to 1e-3.

    Returns:
        `(y, ladj)`, both shaped like `x`.

    References: Müller et al., Neural Importance Sampling, https://arxiv.org/abs/1808.03856

    >>> import numpy as np
    >>> y, ladj = piecewise_linear(np.array([-1.0, 0.0, 0.5, 2.0]), np.zeros(4))
    >>> [round(float(v), 6) for v in y], [round(float(v), 6) for v in ladj]
    ([-1.0, 0.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0])
    """
    x = ops.convert_to_tensor(x)
    k, pdf, cdf = _linear_params(x, logits, bound, min_bin_height, "piecewise_linear")
    inside, x_in = _clamped(x, bound)
    t = (x_in + bound) * (k / (2.0 * bound))  # in [0, K]
    onehot = _bin_of(t, ops.arange(1, k, dtype=x.dtype), k)
    alpha = t - _pick(onehot, ops.arange(0, k, dtype=x.dtype))  # in [0, 1]
    p = _pick(onehot, pdf)
    y = 2.0 * bound * (_pick(onehot, cdf[..., :-1]) + alpha * p) - bound
    return ops.where(inside, y, x), ops.where(inside, ops.log(k * p), ops.zeros_like(x))


def piecewise_linear_inverse(y, logits, bound=1.0, min_bin_height=1e-3):
    """The inverse of `piecewise_linear`: with `t = (y + B) / 2B` in bin `k`
    of the CDF knots `c_k`, `x = -B + 2B (k + (t - c_k) / p_k) / K`,
    `ladj = -log(K p_k)`; identity outside `[-B, B]`. Arguments as for
    `piecewise_linear`.

    >>> import numpy as np
    >>> logits = np.array([2.0, -1.0, 0.5])
    >>> y, _ = piecewise_linear(np.array([-0.9, 0.1, 0.99]), logits)
    >>> [round(float(v), 9) for v in piecewise_linear_inverse(y, logits)[0]]
    [-0.9, 0.1, 0.99]
    """
    y = ops.convert_to_tensor(y)
    k, pdf, cdf = _linear_params(y, logits, bound, min_bin_height, "piecewise_linear_inverse")
    inside, y_in = _clamped(y, bound)
    t = (y_in + bound) / (2.0 * bound)  # in [0, 1]
    onehot = _bin_of(t, cdf[..., 1:-1], k)
    p = _pick(onehot, pdf)
    alpha = (t - _pick(onehot, cdf[..., :-1])) / p  # >= 0, p >= min_bin_height
    x = (2.0 * bound / k) * (_pick(onehot, ops.arange(0, k, dtype=y.dtype)) + alpha) - bound
    return ops.where(inside, x, y), ops.where(inside, -ops.log(k * p), ops.zeros_like(y))


# -- transforms bound to a conditioner ---------------------------------------------
class Transform:
    """An element-wise bijection whose parameters come from a conditioner.

    `params_per_dim` values per transformed element (`P`); `build(layer, n)`
    may add weights to the owning layer for `n` transformed channels;
    `forward(x, h, active)` and `inverse(y, h, active)` return `(out, ladj)`
    element-wise. `active` is `None` (every element is transformed) or a 0/1
    tensor broadcastable to `x` marking the transformed elements; inactive
    elements pass through unchanged with `ladj = 0`.
    """

    name = None
    params_per_dim = 1

    def build(self, layer, channels):
        pass

    def forward(self, x, h, active=None):
        raise NotImplementedError

    def inverse(self, y, h, active=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}


class Additive(Transform):
    """NICE's shift: `y = x + t`, volume preserving."""

    name = "additive"
    params_per_dim = 1

    def _shift(self, h, active):
        return h if active is None else h * active

    def forward(self, x, h, active=None):
        return additive(x, self._shift(h, active))

    def inverse(self, y, h, active=None):
        return additive_inverse(y, self._shift(h, active))


AFFINE_SCALES = ("sigmoid", "exp")


class Affine(Transform):
    """Affine map with a bounded scale, in the two forms in use.

    `scale="sigmoid"` (Glow): `y = (x + t) * sigmoid(h_s + 2)`, so
    `log_scale = log_sigmoid(h_s + 2)` in `(-inf, 0)`: the forward map never
    expands, and a zero conditioner gives `sigmoid(2) = 0.88`.
    `scale="exp"` (RealNVP): `y = x * exp(s) + t` with `s = g * tanh(h_s)`,
    `g` a learned per-channel factor (the owning layer's `scale_factor`,
    initialised to 1), so `|s| <= |g|`.
    """

    name = "affine"
    params_per_dim = 2

    def __init__(self, scale="sigmoid"):
        if scale not in AFFINE_SCALES:
            raise ValueError(f"Affine scale must be one of {AFFINE_SCALES}. Received: scale={scale!r}")
        self.scale = scale
        self.scale_factor = None

    def build(self, layer, channels):
        if self.scale == "exp":
            self.scale_factor = layer.add_weight(shape=(channels,), initializer="ones", name="scale_factor")

    def _params(self, h, active):
        t, raw = split_channels(h, h.shape[-1] // 2)
        if self.scale == "sigmoid":
            log_s = ops.log_sigmoid(raw + 2.0)
        else:
            log_s = ops.cast(self.scale_factor, raw.dtype) * ops.tanh(raw)
        if active is not None:
            t, log_s = t * active, log_s * active
        return t, log_s

    def forward(self, x, h, active=None):
        t, log_s = self._params(h, active)
        return affine(x, t, log_s, shift_first=self.scale == "sigmoid")

    def inverse(self, y, h, active=None):
        t, log_s = self._params(h, active)
        return affine_inverse(y, t, log_s, shift_first=self.scale == "sigmoid")

    def get_config(self):
        return {"name": self.name, "scale": self.scale}


def _parameter_major(h, sizes):
    """Splits a parameter-major `h` (`(..., P * C)`, parameter `p` of
    channel `c` at `p * C + c`) into `(..., C, n)` blocks of `sizes`
    (summing to `P`): parameters last, per channel."""
    pieces = ops.split(h, sum(sizes), axis=-1)  # P tensors (..., C)
    per_channel = ops.stack(pieces, axis=-1)  # (..., C, P)
    if len(sizes) == 1:
        return [per_channel]
    cuts = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
    return ops.split(per_channel, cuts, axis=-1)


def _masked(z, out, ladj, active):
    """Inactive elements pass through exactly, with `ladj = 0` (`out` and
    `ladj` are finite by construction, so `where` is safe for gradients)."""
    if active is None:
        return out, ladj
    keep = ops.cast(active, "bool")
    return ops.where(keep, out, z), ops.where(keep, ladj, ops.zeros_like(ladj))


class Spline(Transform):
    """Rational-quadratic spline on `[-bound, bound]` with identity tails
    (`rational_quadratic_spline`), `3 * bins - 1` parameters per element.

    `h` is parameter-major: for `C` channels, parameter `p` of channel `c`
    is `h[..., p * C + c]`; per channel the parameters are `bins`
    unnormalised widths, `bins` heights and `bins - 1` interior slopes.
    `forward` is the spline, `inverse` its inverse.

    Args:
        bins: `K >= 2`. Defaults to 8.
        bound: `B > 0`. Defaults to 3.
        min_bin_width, min_bin_height: each bin's minimum share of `2B`
            (`K * min < 1`). Default to 1e-3.
        min_derivative: the minimum interior slope. Defaults to 1e-3.

    Raises:
        ValueError: naming the argument, for `bins < 2`, `bound <= 0`,
            non-finite values or minimums out of range.

    >>> import numpy as np
    >>> t = Spline(bins=4)
    >>> t.params_per_dim
    11
    >>> h = np.random.default_rng(0).normal(size=(2, 11 * 3))
    >>> x = np.array([[0.3, -5.0, 2.0], [1.0, 0.0, -2.9]])
    >>> y, ladj = t.forward(x, h)
    >>> bool(np.allclose(t.inverse(y, h)[0], x, atol=1e-12)), float(ladj[0, 1])
    (True, 0.0)
    """

    name = "spline"

    def __init__(self, bins=8, bound=3.0, min_bin_width=1e-3, min_bin_height=1e-3, min_derivative=1e-3):
        _check_bins_and_bound("Spline", bins, bound)
        _check_min_size("Spline", "min_bin_width", min_bin_width, bins)
        _check_min_size("Spline", "min_bin_height", min_bin_height, bins)
        _check_positive("Spline", "min_derivative", min_derivative)
        self.bins = int(bins)
        self.bound = float(bound)
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.params_per_dim = 3 * self.bins - 1

    def _args(self, h):
        k = self.bins
        widths, heights, derivatives = _parameter_major(h, [k, k, k - 1])
        return dict(widths=widths, heights=heights, derivatives=derivatives, bound=self.bound,
                    min_bin_width=self.min_bin_width, min_bin_height=self.min_bin_height,
                    min_derivative=self.min_derivative)

    def forward(self, x, h, active=None):
        return _masked(x, *rational_quadratic_spline(x, **self._args(h)), active)

    def inverse(self, y, h, active=None):
        return _masked(y, *rational_quadratic_spline_inverse(y, **self._args(h)), active)

    def get_config(self):
        return {"name": self.name, "bins": self.bins, "bound": self.bound, "min_bin_width": self.min_bin_width,
                "min_bin_height": self.min_bin_height, "min_derivative": self.min_derivative}


class PiecewiseLinear(Transform):
    """Piecewise-linear CDF map of `[-bound, bound]` with identity tails
    (`piecewise_linear`), `bins` logits per element, parameter-major in `h`
    (logit `p` of channel `c` is `h[..., p * C + c]`).

    Args:
        bins: `K >= 2` equal-width bins. Defaults to 8.
        bound: `B > 0`. Defaults to 1.
        min_bin_height: each bin's minimum mass (`K * min < 1`). Defaults to 1e-3.

    Raises:
        ValueError: naming the argument, for `bins < 2`, `bound <= 0`,
            non-finite values or `min_bin_height` out of range.

    >>> import numpy as np
    >>> t = PiecewiseLinear(bins=4)
    >>> y, ladj = t.forward(np.array([[0.1, 3.0]]), np.zeros((1, 8)))
    >>> [round(float(v), 6) for v in y[0]], [round(float(v), 6) for v in ladj[0]]
    ([0.1, 3.0], [0.0, 0.0])
    """

    name = "piecewise_linear"

    def __init__(self, bins=8, bound=1.0, min_bin_height=1e-3):
        _check_bins_and_bound("PiecewiseLinear", bins, bound)
        _check_min_size("PiecewiseLinear", "min_bin_height", min_bin_height, bins)
        self.bins = int(bins)
        self.bound = float(bound)
        self.min_bin_height = float(min_bin_height)
        self.params_per_dim = self.bins

    def _logits(self, h):
        return _parameter_major(h, [self.bins])[0]

    def forward(self, x, h, active=None):
        y, ladj = piecewise_linear(x, self._logits(h), self.bound, self.min_bin_height)
        return _masked(x, y, ladj, active)

    def inverse(self, y, h, active=None):
        x, ladj = piecewise_linear_inverse(y, self._logits(h), self.bound, self.min_bin_height)
        return _masked(y, x, ladj, active)

    def get_config(self):
        return {"name": self.name, "bins": self.bins, "bound": self.bound, "min_bin_height": self.min_bin_height}


TRANSFORMS = {"additive": Additive, "affine": Affine, "spline": Spline, "piecewise_linear": PiecewiseLinear}


def get(transform):
    """A fresh `Transform` from a name (`"affine"`), a config dict
    (`{"name": "affine", "scale": "exp"}`) or a `Transform` (whose config is
    copied, so layers never share one)."""
    if isinstance(transform, Transform):
        transform = transform.get_config()
    if isinstance(transform, str):
        transform = {"name": transform}
    if not isinstance(transform, dict) or transform.get("name") not in TRANSFORMS:
        raise ValueError(
            f"transform must be one of {sorted(TRANSFORMS)} (a name, a config dict or a Transform). "
            f"Received: transform={transform!r}"
        )
    kwargs = {k: v for k, v in transform.items() if k != "name"}
    return TRANSFORMS[transform["name"]](**kwargs)


__all__ = ["additive", "additive_inverse", "affine", "affine_inverse", "rational_quadratic_spline",
           "rational_quadratic_spline_inverse", "piecewise_linear", "piecewise_linear_inverse", "Transform",
           "Additive", "Affine", "Spline", "PiecewiseLinear", "AFFINE_SCALES", "TRANSFORMS", "get"]
