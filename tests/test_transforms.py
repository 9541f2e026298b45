"""Invariants of the bounded element-wise transforms in `tfflows.transforms`.

The rational-quadratic spline and the piecewise-linear map, each in both
directions, in float64 and float32: round trips, `ladj` against the autodiff
derivative, cancelling log-dets, continuity, identity tails, monotonicity,
and finite values and gradients for every finite input (the two known traps,
nflows #87 and bayesflow #721, have a test each). Then the `Spline` and
`PiecewiseLinear` transforms: parameter-major layout, `active` masking,
config round trip and constructor errors. Runs on the active Keras backend;
`test_round_trips_and_finiteness_under_jax` reruns this file under JAX.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

from conftest import backend, to_np
from tfflows import transforms

DTYPES = ["float64", "float32"]
BINS = 5
# Tolerances by dtype. Round trips are relative to max(1, |x|); ladj against
# autodiff is relative with an absolute floor for ladj near 0.
ROUND_TRIP_ATOL = {"float64": 1e-10, "float32": 2e-5}
LADJ_RTOL = {"float64": 1e-6, "float32": 1e-3}
LADJ_ATOL = {"float64": 1e-9, "float32": 1e-4}
CONTINUITY_ATOL = {"float64": 1e-6, "float32": 1e-4}
# Half-gap of the points probed on either side of a knot.
KNOT_OFFSET = {"float64": 1e-10, "float32": 1e-6}


class MapCase:
    """One map family: its two functions, bound and parameter blocks."""

    def __init__(self, name, forward, inverse, bound, sizes):
        self.name, self.forward, self.inverse, self.bound, self.sizes = name, forward, inverse, bound, sizes

    def fn(self, direction):
        return self.forward if direction == "forward" else self.inverse

    def params(self, rng, scale=2.0, shape=()):
        """Unnormalised parameters: one array per block, `shape + (size,)`."""
        return [rng.normal(0.0, scale, tuple(shape) + (n,)) for n in self.sizes]

    def extreme_params(self, rng):
        """Logits of +-50 (and some 0): softmax masses of ~exp(-100) and
        slopes of ~1e-3 next to slopes of 50."""
        return [rng.choice([-50.0, 50.0, 0.0], size=n, p=[0.45, 0.45, 0.1]) for n in self.sizes]

    def knots(self, params, direction):
        """The knots (`K + 1`, float64, numpy) in the input space of `direction`."""
        b = self.bound
        if self.name == "spline":
            unnormalised = params[0] if direction == "forward" else params[1]
            return _np_knots(unnormalised, b)
        if direction == "forward":
            return np.linspace(-b, b, BINS + 1)
        return _np_knots(params[0], b)


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_knots(unnormalised, bound, min_size=1e-3):
    sizes = min_size + (1 - BINS * min_size) * _softmax(np.asarray(unnormalised, np.float64))
    return np.concatenate([[-bound], 2 * bound * np.cumsum(sizes[:-1]) - bound, [bound]])


CASES = {
    "spline": MapCase("spline", transforms.rational_quadratic_spline,
                      transforms.rational_quadratic_spline_inverse, 3.0, (BINS, BINS, BINS - 1)),
    "piecewise_linear": MapCase("piecewise_linear", transforms.piecewise_linear,
                                transforms.piecewise_linear_inverse, 1.0, (BINS,)),
}
MAP_IDS = sorted(CASES)
DIRECTIONS = ["forward", "inverse"]


def _compiled(case, direction):
    """The map `(z, *params) -> (out, ladj)`; jitted once per map on JAX,
    whose eager ops would otherwise compile for every new input shape."""
    key = (case.name, direction)
    if key not in _COMPILED:
        fn, bound = case.fn(direction), case.bound

        def call(z, *params):
            return fn(z, *params, bound=bound)

        _COMPILED[key] = call
        if backend() == "jax":
            import jax

            _COMPILED[key] = jax.jit(call)
    return _COMPILED[key]


_COMPILED = {}


def _call(case, direction, z, params, dtype):
    z = ops.convert_to_tensor(np.asarray(z, dtype))
    params = [ops.convert_to_tensor(np.asarray(p, dtype)) for p in params]
    out, ladj = _compiled(case, direction)(z, *params)
    assert out.dtype == dtype and ladj.dtype == dtype, (out.dtype, ladj.dtype)
    return to_np(out), to_np(ladj)


def _objective(outputs, part):
    out, ladj = outputs
    if part == "both":  # NaN or Inf in either gradient survives the sum
        return ops.sum(out) + ops.sum(ladj)
    return ops.sum(outputs[part])


def grads(case, direction, part, z, params, dtype):
    """Gradients of `sum(out)` (`part=0`), `sum(ladj)` (`part=1`) or their
    sum (`part="both"`) with respect to the input and each parameter block
    (numpy), by `jax.grad` on JAX and a `GradientTape` on TensorFlow. The
    maps are element-wise, so the gradient with respect to the input is the
    diagonal of the Jacobian (and, with parameters given per element, the
    gradient with respect to them is per element too)."""
    args = [ops.convert_to_tensor(np.asarray(a, dtype)) for a in [z, *params]]
    if backend() == "jax":
        key = (case.name, direction, part, len(args))
        if key not in _GRADS:
            import jax

            fn = _compiled(case, direction)
            _GRADS[key] = jax.jit(jax.grad(lambda *a: _objective(fn(*a), part), argnums=tuple(range(len(args)))))
        return [np.asarray(g) for g in _GRADS[key](*args)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(args)
        total = _objective(case.fn(direction)(*args, bound=case.bound), part)
    return [to_np(g) for g in tape.gradient(total, args, unconnected_gradients=tf.UnconnectedGradients.ZERO)]


_GRADS = {}


def _spanning_inputs(case, rng, n, dtype):
    """Inputs inside and outside `[-B, B]`, with both bounds exactly."""
    b = case.bound
    z = np.concatenate([rng.uniform(-1.5 * b, 1.5 * b, n - 3), [-b, 0.0, b]])
    return z.astype(dtype)


def _close(actual, expected, atol, rtol=0.0):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.abs(actual - expected) - rtol * np.abs(expected)
    worst = int(np.argmax(err))
    assert np.all(err <= atol), (
        f"max excess {err.flat[worst]:.3g} at index {worst}: {actual.flat[worst]!r} vs {expected.flat[worst]!r}")


# -- the maps -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("first", DIRECTIONS, ids=["inverse_undoes_forward", "forward_undoes_inverse"])
def test_round_trip_is_identity(first, case_id, dtype):
    case = CASES[case_id]
    rng = np.random.default_rng(0)
    n = 400
    z = _spanning_inputs(case, rng, n, dtype)
    params = case.params(rng, shape=(n,))  # one map per element
    second = "inverse" if first == "forward" else "forward"
    out, ladj = _call(case, first, z, params, dtype)
    back, _ = _call(case, second, out, params, dtype)
    # Rounding `out` alone moves `back` by ulp(out) / slope: where the first
    # map is flat (slopes of e^-11 at scale-2 parameters) float32 cannot do
    # better, so that term joins the tolerance.
    rounding = 4 * np.finfo(dtype).eps * np.maximum(1.0, np.abs(out)) * np.exp(-ladj.astype(np.float64))
    excess = np.abs(back - z) - ROUND_TRIP_ATOL[dtype] * np.maximum(1.0, np.abs(z)) - rounding
    worst = int(np.argmax(excess))
    assert np.all(excess <= 0), f"round trip off by {abs(back[worst] - z[worst]):.3g} at z={z[worst]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ladj_is_log_of_autodiff_derivative(direction, case_id, dtype):
    case = CASES[case_id]
    rng = np.random.default_rng(1)
    n = 300
    z = _spanning_inputs(case, rng, n, dtype)
    params = case.params(rng, shape=(n,))
    slope = grads(case, direction, 0, z, params, dtype)[0]
    _, ladj = _call(case, direction, z, params, dtype)
    assert np.all(slope > 0), "the map must be increasing"
    _close(ladj, np.log(slope), LADJ_ATOL[dtype], LADJ_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
def test_inverse_ladj_is_minus_forward_ladj(case_id, dtype):
    case = CASES[case_id]
    rng = np.random.default_rng(2)
    n = 300
    x = _spanning_inputs(case, rng, n, dtype)
    params = case.params(rng, shape=(n,))
    y, ladj = _call(case, "forward", x, params, dtype)
    _, ladj_inv = _call(case, "inverse", y, params, dtype)
    _close(ladj_inv, -ladj, LADJ_ATOL[dtype], LADJ_RTOL[dtype])


def _across_knots(case, direction, params, dtype, part):
    """`part` (0: output, 1: ladj) at each knot (both bounds included) and
    just below and above it, and how far it may move over that offset: the
    offset times the largest derivative of `part` there (autodiff), so only
    a jump fails."""
    knots = case.knots(params, direction)
    d = KNOT_OFFSET[dtype]
    values, moves = [], []
    for z in ((knots - d).astype(dtype), knots.astype(dtype), (knots + d).astype(dtype)):
        values.append(_call(case, direction, z, params, dtype)[part])
        moves.append(np.abs(grads(case, direction, part, z, params, dtype)[0]))
    return values, 2.0 * d * np.maximum.reduce(moves)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_continuous_at_bound_and_knots(direction, case_id, dtype):
    case = CASES[case_id]
    rng = np.random.default_rng(3)
    for _ in range(3):
        (below, at, above), move = _across_knots(case, direction, case.params(rng), dtype, part=0)
        _close(below - at, 0.0 * at, CONTINUITY_ATOL[dtype] + move)
        _close(above - at, 0.0 * at, CONTINUITY_ATOL[dtype] + move)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_spline_slope_is_continuous_at_bound_and_knots(direction, dtype):
    # The boundary slopes are 1, so the spline meets the identity tails with a
    # continuous derivative (the piecewise-linear map's slope jumps by design).
    case = CASES["spline"]
    rng = np.random.default_rng(4)
    for _ in range(3):
        (below, at, above), move = _across_knots(case, direction, case.params(rng), dtype, part=1)
        _close(below - at, 0.0 * at, CONTINUITY_ATOL[dtype] + move)
        _close(above - at, 0.0 * at, CONTINUITY_ATOL[dtype] + move)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_identity_in_the_tails(direction, case_id, dtype):
    case = CASES[case_id]
    b = case.bound
    z = np.array([-1e6, -10 * b, -b - 1e-3, -np.nextafter(np.asarray(b, dtype), np.inf),
                  np.nextafter(np.asarray(b, dtype), np.inf), b + 1e-3, 10 * b, 1e6], dtype)
    params = case.params(np.random.default_rng(5), shape=(z.size,))
    out, ladj = _call(case, direction, z, params, dtype)
    np.testing.assert_array_equal(out, z)
    np.testing.assert_array_equal(ladj, np.zeros_like(z))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_monotone(direction, case_id, dtype):
    case = CASES[case_id]
    rng = np.random.default_rng(6)
    for params in (case.params(rng), case.extreme_params(rng)):
        z = np.sort(np.concatenate([np.linspace(-1.5 * case.bound, 1.5 * case.bound, 3001),
                                    case.knots(params, direction)])).astype(dtype)
        out, _ = _call(case, direction, z, params, dtype)
        assert np.all(np.diff(out) >= 0), f"outputs decrease after index {int(np.argmin(np.diff(out)))}"


@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_results_follow_the_input_dtype(direction, case_id):
    case = CASES[case_id]
    params = case.params(np.random.default_rng(13))
    for x_dtype, p_dtype in (("float64", "float32"), ("float32", "float64")):
        z = ops.convert_to_tensor(np.array([-2.0, 0.1, 0.5, 9.0], x_dtype) * case.bound)
        out, ladj = case.fn(direction)(z, *[ops.convert_to_tensor(p.astype(p_dtype)) for p in params],
                                       bound=case.bound)
        assert out.dtype == z.dtype and ladj.dtype == z.dtype, (x_dtype, p_dtype, out.dtype, ladj.dtype)


def _trap_inputs(case, params, direction, dtype):
    """0, both bounds exactly, every knot exactly, +-1e6, +-(B +- 1e-7), and
    inputs so large that any arithmetic on them in the spline branch
    overflows (+-1e20, the largest finite float)."""
    b, big = case.bound, float(np.finfo(dtype).max)
    z = np.concatenate([[0.0, -1e6, 1e6, b - 1e-7, b + 1e-7, -b - 1e-7, -b + 1e-7, -1e20, 1e20, -big, big],
                        case.knots(params, direction)])
    return z.astype(dtype)


def _assert_finite_values_and_gradients(case, direction, z, params, dtype):
    """Values, and gradients with respect to the input and to parameters
    given per element, are finite; returns `(out, ladj, parameter grads)`."""
    z = z.astype(dtype)
    params = [np.broadcast_to(p, z.shape + p.shape[-1:]).astype(dtype) for p in params]
    out, ladj = _call(case, direction, z, params, dtype)
    bad = ~np.isfinite(out + ladj)
    assert not bad.any(), f"non-finite value at z={z[bad]}"
    gs = grads(case, direction, "both", z, params, dtype)
    for name, g in zip(["input"] + [f"parameter block {j}" for j in range(len(params))], gs):
        bad = ~np.isfinite(g).reshape(z.shape + (-1,)).all(-1)
        assert not bad.any(), f"non-finite gradient w.r.t. the {name} at z={z[bad]}"
    return out, ladj, gs[1:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", MAP_IDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", ["scale2", "logits50"])
def test_gradients_finite_for_inputs_outside_the_bound_bayesflow721(kind, direction, case_id, dtype):
    # bayesflow #721: the spline ran on out-of-bound inputs, masked by `where`; its Inf/NaN reached the gradient.
    case = CASES[case_id]
    rng = np.random.default_rng(7)
    for _ in range(3):
        params = case.params(rng) if kind == "scale2" else case.extreme_params(rng)
        z = _trap_inputs(case, params, direction, dtype)
        _, _, param_grads = _assert_finite_values_and_gradients(case, direction, z, params, dtype)
        # Outside the bound nothing depends on the parameters.
        tail = np.abs(z) > case.bound
        for g in param_grads:
            np.testing.assert_array_equal(g[tail], np.zeros_like(g[tail]))


def _naive_discriminant(params, y, dtype):
    """`b^2 - 4ac` of the spline inverse as written in the paper (and
    nflows), in `dtype`, at `y` inside the bound."""
    t = np.dtype(dtype).type
    widths, heights, derivatives = (np.asarray(p, dtype) for p in params)
    xk, yk = (_np_knots(u, 3.0).astype(dtype) for u in (widths, heights))
    d = np.concatenate([[1.0], 1e-3 + np.logaddexp(0.0, derivatives.astype(np.float64)), [1.0]]).astype(dtype)
    k = np.sum(y[:, None] >= yk[None, 1:-1], axis=-1)
    h, w = (yk[k + 1] - yk[k]).astype(dtype), (xk[k + 1] - xk[k]).astype(dtype)
    s, u = (h / w).astype(dtype), (y - yk[k]).astype(dtype)
    slopes = (d[k] + d[k + 1] - t(2) * s).astype(dtype)
    a = (h * (s - d[k]) + u * slopes).astype(dtype)
    b = (h * d[k] - u * slopes).astype(dtype)
    c = (-s * u).astype(dtype)
    return (b * b - t(4) * a * c).astype(dtype)


# Spline parameters (bins=5) found by a search over logits in {-50, 0, 50}:
# with each, the paper's (and nflows') float32 b^2 - 4ac rounds below zero
# within a few ulps of a knot, in numpy and on TensorFlow alike.
NFLOWS87_PARAMS = [
    [[-50.0, -50.0, -50.0, -50.0, 0.0], [0.0, 0.0, 0.0, 50.0, 50.0], [-50.0, 0.0, -50.0, -50.0]],
    [[0.0, 50.0, -50.0, 50.0, 0.0], [0.0, 0.0, -50.0, 50.0, 50.0], [0.0, -50.0, 50.0, -50.0]],
    [[0.0, -50.0, -50.0, 0.0, -50.0], [-50.0, -50.0, -50.0, 50.0, 50.0], [0.0, 0.0, 50.0, -50.0]],
]


def _near(points, dtype, ulps=8):
    """`points` and their neighbours up to `ulps` floats away on each side."""
    out, up, down = [points.astype(dtype)], points.astype(dtype), points.astype(dtype)
    for _ in range(ulps):
        up, down = np.nextafter(up, np.asarray(np.inf, dtype)), np.nextafter(down, np.asarray(-np.inf, dtype))
        out += [up, down]
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", range(len(NFLOWS87_PARAMS)))
def test_spline_inverse_finite_where_the_discriminant_rounds_negative_nflows87(which, dtype):
    # nflows #87: float32 round-off made the inverse's b^2 - 4ac negative near knots (AssertionError, or sqrt NaN).
    case = CASES["spline"]
    params = [np.array(p) for p in NFLOWS87_PARAMS[which]]
    y = np.concatenate([_near(case.knots(params, "inverse"), dtype), np.linspace(-3.0, 3.0, 2001)])
    y = np.clip(y, -3.0, 3.0).astype(dtype)
    if dtype == "float32":
        assert (_naive_discriminant(params, y, dtype) < 0).any(), "these inputs no longer exercise the trap"
    x, _, _ = _assert_finite_values_and_gradients(case, "inverse", y, params, dtype)
    again, _ = _call(case, "forward", x, params, dtype)
    _close(again, y, 10 * ROUND_TRIP_ATOL[dtype] * case.bound)


# -- the Transform classes ----------------------------------------------------------
TRANSFORM_CASES = {
    "Spline": (lambda: transforms.Spline(bins=BINS, bound=3.0), "spline", 3 * BINS - 1),
    "PiecewiseLinear": (lambda: transforms.PiecewiseLinear(bins=BINS, bound=1.0), "piecewise_linear", BINS),
}
TRANSFORM_IDS = sorted(TRANSFORM_CASES)


def _pure_with(name, z, per_channel, direction):
    """The map of channel parameters `per_channel` (`(P,)`) applied to `z`."""
    case = CASES[TRANSFORM_CASES[name][1]]
    blocks = np.split(per_channel, np.cumsum(case.sizes)[:-1])
    return case.fn(direction)(z, *[ops.convert_to_tensor(b) for b in blocks], bound=case.bound)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", TRANSFORM_IDS)
def test_each_channel_reads_its_own_parameters(name, direction):
    make, _, n_params = TRANSFORM_CASES[name]
    t = make()
    assert t.params_per_dim == n_params
    rng = np.random.default_rng(9)
    c, n = 3, 50
    per_channel = rng.normal(0.0, 2.0, (c, n_params))  # parameter p of channel c
    # Parameter-major: h[..., p * C + c] = per_channel[c, p].
    h = np.broadcast_to(per_channel.T.reshape(-1), (n, n_params * c)).copy()
    z = rng.uniform(-1.2, 1.2, (n, c)) * CASES[TRANSFORM_CASES[name][1]].bound
    out, ladj = getattr(t, direction)(ops.convert_to_tensor(z), ops.convert_to_tensor(h))
    for ch in range(c):
        want, want_ladj = _pure_with(name, ops.convert_to_tensor(z[:, ch]), per_channel[ch], direction)
        np.testing.assert_allclose(to_np(out)[:, ch], to_np(want), rtol=0, atol=1e-12)
        np.testing.assert_allclose(to_np(ladj)[:, ch], to_np(want_ladj), rtol=0, atol=1e-12)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", TRANSFORM_IDS)
def test_inactive_elements_pass_through_exactly(name, direction):
    make, _, n_params = TRANSFORM_CASES[name]
    t = make()
    rng = np.random.default_rng(10)
    c, n = 4, 40
    z = rng.uniform(-1.5, 1.5, (n, c)) * CASES[TRANSFORM_CASES[name][1]].bound
    h = rng.normal(0.0, 2.0, (n, n_params * c))
    active = (rng.uniform(size=(n, c)) < 0.5).astype("float64")
    fn = getattr(t, direction)
    out, ladj = (to_np(v) for v in fn(ops.convert_to_tensor(z), ops.convert_to_tensor(h),
                                      ops.convert_to_tensor(active)))
    full, full_ladj = (to_np(v) for v in fn(ops.convert_to_tensor(z), ops.convert_to_tensor(h)))
    off = active == 0
    np.testing.assert_array_equal(out[off], z[off])
    np.testing.assert_array_equal(ladj[off], 0.0)
    np.testing.assert_array_equal(out[~off], full[~off])
    np.testing.assert_array_equal(ladj[~off], full_ladj[~off])
    # Broadcast masks (a channel mask) work too.
    channel_mask = np.array([1.0, 0.0, 1.0, 0.0])
    out, _ = fn(ops.convert_to_tensor(z), ops.convert_to_tensor(h), ops.convert_to_tensor(channel_mask))
    np.testing.assert_array_equal(to_np(out)[:, 1::2], z[:, 1::2])


@pytest.mark.parametrize("name", TRANSFORM_IDS)
def test_config_round_trips(name):
    make, registered, _ = TRANSFORM_CASES[name]
    t = make()
    config = t.get_config()
    assert config["name"] == registered and transforms.TRANSFORMS[registered] is type(t)
    rebuilt = transforms.get(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(t) and rebuilt.get_config() == config
    copy = transforms.get(t)
    assert copy is not t and copy.get_config() == config
    assert type(transforms.get(registered)) is type(t)
    rng = np.random.default_rng(11)
    z = ops.convert_to_tensor(rng.normal(size=(6, 2)))
    h = ops.convert_to_tensor(rng.normal(size=(6, 2 * t.params_per_dim)))
    for a, b in zip(t.forward(z, h), rebuilt.forward(z, h)):
        np.testing.assert_array_equal(to_np(a), to_np(b))


BAD_ARGUMENTS = {
    "spline-one-bin": (transforms.Spline, dict(bins=1), "needs at least 2 bins. Received: bins=1"),
    "spline-fractional-bins": (transforms.Spline, dict(bins=2.5), r"integer number of bins .* bins=2.5"),
    "spline-zero-bound": (transforms.Spline, dict(bound=0.0), r"finite bound > 0. Received: bound=0.0"),
    "spline-negative-bound": (transforms.Spline, dict(bound=-3), r"bound > 0. Received: bound=-3"),
    "spline-infinite-bound": (transforms.Spline, dict(bound=math.inf), r"finite bound .* bound=inf"),
    "spline-nan-bound": (transforms.Spline, dict(bound=math.nan), r"finite bound .* bound=nan"),
    "spline-minimum-width-too-large": (transforms.Spline, dict(bins=8, min_bin_width=0.125),
                                       r"bins \* min_bin_width < 1.* min_bin_width=0.125 with bins=8"),
    "spline-negative-minimum-height": (transforms.Spline, dict(min_bin_height=-1e-3),
                                       r"min_bin_height > 0. Received: min_bin_height=-0.001"),
    "spline-zero-minimum-derivative": (transforms.Spline, dict(min_derivative=0.0),
                                       r"min_derivative > 0. Received: min_derivative=0.0"),
    "spline-nan-minimum-derivative": (transforms.Spline, dict(min_derivative=math.nan),
                                      r"min_derivative .* min_derivative=nan"),
    "linear-one-bin": (transforms.PiecewiseLinear, dict(bins=1), "needs at least 2 bins. Received: bins=1"),
    "linear-negative-bound": (transforms.PiecewiseLinear, dict(bound=-1.0), r"bound > 0. Received: bound=-1.0"),
    "linear-minimum-height-too-large": (transforms.PiecewiseLinear, dict(bins=4, min_bin_height=0.3),
                                        r"bins \* min_bin_height < 1"),
}


@pytest.mark.parametrize("case_id", sorted(BAD_ARGUMENTS))
def test_constructor_rejects_bad_arguments(case_id):
    cls, kwargs, message = BAD_ARGUMENTS[case_id]
    with pytest.raises(ValueError, match=message) as info:
        cls(**kwargs)
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("case_id", MAP_IDS)
def test_maps_reject_bad_arguments(case_id):
    case = CASES[case_id]
    params = case.params(np.random.default_rng(12))
    with pytest.raises(ValueError, match=f"{case.forward.__name__} needs a finite bound > 0. Received: bound=0"):
        case.forward(np.zeros(3), *params, bound=0)
    with pytest.raises(ValueError, match="needs at least 2 bins"):
        case.forward(np.zeros(3), *[p[..., :1] for p in params[:2]], *[p[..., :0] for p in params[2:]])
    if case_id == "spline":
        with pytest.raises(ValueError, match=r"needs derivatives with last dimension 4. Received: .* shape \(5,\)"):
            case.inverse(np.zeros(3), params[0], params[1], params[0])


def test_round_trips_and_finiteness_under_jax():
    if backend() == "jax":
        pytest.skip("already running under JAX")
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install 'jax[cpu]'), so the JAX pass cannot run")
    from conftest import jax_rerun

    returncode, stdout, stderr = jax_rerun("test_transforms.py::test_round_trips_and_finiteness_under_jax")
    tail = (stdout + stderr)[-3000:]
    assert returncode == 0, f"transform checks failed under JAX:\n{tail}"
    assert " passed" in stdout and "failed" not in stdout.splitlines()[-1], tail


@pytest.mark.parametrize("kind", ["spline", "piecewise_linear"])
def test_zero_parameters_give_the_identity(kind):
    """A zero-initialised conditioner starts a spline layer at the identity."""
    t = transforms.get(kind)
    x = np.linspace(-4.0, 4.0, 41).reshape(1, 41).astype("float64")
    h = np.zeros((1, 41 * t.params_per_dim), "float64")
    y, ladj = t.forward(x, h)
    np.testing.assert_allclose(np.asarray(y), x, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ladj), 0.0, atol=1e-12)
