"""The shared invariant suite (contract v2), parametrised over every flow layer.

Each case in `contract_cases.CASES` declares its capabilities; every
direction it has gets the round trip, the float64 log-det against the
autodiff Jacobian, cancelling log-dets, `call == forward[0]`, the shape
methods, context checks and one compiled `fit` step. Runs on the active
Keras backend; `test_contract_under_jax` reruns this file in a subprocess
with KERAS_BACKEND=jax (and float64 enabled in JAX).
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import LOG_DET_CANCEL_ATOL, ROUND_TRIP_RTOL, backend, to_np
from contract_cases import CASES, AllBut
from tfflows.layers import LAYER_REGISTRY, FlowLayer

IDS = sorted(CASES)


def _marked(ids, test):
    """`ids` as pytest params, those whose case marks `test` slow (see
    `Case.slow`) with `pytest.mark.slow`."""
    def slow(case):
        if isinstance(case.slow, AllBut):
            return test not in case.slow
        return case.slow is True or (isinstance(case.slow, tuple) and test in case.slow)
    return [pytest.param(i, marks=pytest.mark.slow) if slow(CASES[i]) else i for i in ids]
# float64 tolerances: the log-det against the autodiff Jacobian's log|det|
# (relative, with a floor for log-dets near 0), and the round trip.
LOG_DET_F64_RTOL = 1e-6
LOG_DET_F64_ATOL = 1e-9
ROUND_TRIP_F64_RTOL = 1e-10


def _tol(case_id, name, default):
    return CASES[case_id].tolerances.get(name, default)


def _data(case_id, dtype="float32", seed=0):
    case = CASES[case_id]
    rng = np.random.default_rng(seed)
    if case.inputs == "unit":
        x = rng.uniform(0.05, 0.95, size=case.shape)
    else:
        x = rng.standard_normal(case.shape)
    c = None
    if case.context_shape is not None:
        c = rng.standard_normal((case.shape[0],) + tuple(case.context_shape)).astype(dtype)
    return x.astype(dtype), c


def make(case_id, perturb=True, seed=0, dtype="float32"):
    """A built instance on its input, with every weight perturbed; returns
    `(layer, x, context)`.

    Perturbing matters: zero-initialised coupling nets make a fresh layer
    the identity, which would pass a round trip that applies forward twice
    and would ignore its context.
    """
    case = CASES[case_id]
    x, c = _data(case_id, dtype, seed)
    layer = case.make(dtype)
    rng = np.random.default_rng(seed + 1)
    if case.forward is not None:
        layer.initialize(x, context=c) if layer.needs_initialization else layer.forward(x, context=c)
    else:
        layer.inverse(x, context=c)
    if perturb:
        for w in layer.trainable_weights:
            noise = 0.2 * rng.standard_normal(tuple(w.shape))
            w.assign(w.value + noise.astype(dtype))
    return layer, x, c


def _has(case_id, direction):
    return getattr(CASES[case_id], direction) is not None


def _needs(case_id, *directions):
    missing = [d for d in directions if not _has(case_id, d)]
    if missing:
        pytest.skip(f"{case_id} declares no {' or '.join(missing)} direction")


def _needs_exact(case_id):
    if CASES[case_id].log_det == "estimate":
        pytest.skip(f"{case_id} estimates its log-det: test_estimated_log_det_bias checks it against the exact "
                    f"one, and the layer's exact twin case checks the exact one")


# -- the registry ---------------------------------------------------------------------
def test_every_layer_has_a_contract_case():
    covered = {type(CASES[c].make("float32")).__name__ for c in CASES}
    missing = sorted(set(LAYER_REGISTRY) - covered)
    assert not missing, f"flow layers without a contract case: {missing}"


def test_every_exported_flow_layer_is_registered():
    import tfflows.layers as L

    exported = {n for n in L.__all__ if isinstance(getattr(L, n), type)
                and issubclass(getattr(L, n), FlowLayer) and n not in ("FlowLayer", "FactorOut")}
    assert exported <= set(LAYER_REGISTRY), exported - set(LAYER_REGISTRY)


@pytest.mark.parametrize("case_id", _marked(IDS, "test_layer_declares_the_cases_capabilities"))
def test_layer_declares_the_cases_capabilities(case_id):
    case = CASES[case_id]
    layer = case.make("float32")
    assert (layer.forward_mode, layer.inverse_mode, layer.log_det_kind) == (case.forward, case.inverse, case.log_det)
    assert layer.context_shape == (None if case.context_shape is None else tuple(case.context_shape)) or \
        type(layer).__name__ == "FlowSequence"


# -- round trips (float32 and float64) -----------------------------------------------------
@pytest.mark.parametrize("case_id", _marked(IDS, "test_inverse_undoes_forward"))
def test_inverse_undoes_forward(case_id):
    _needs(case_id, "forward", "inverse")
    layer, x, c = make(case_id)
    y, _ = layer.forward(x, context=c)
    assert not np.allclose(to_np(y).ravel()[: x.size], x.ravel()) or case_id in ("Reshape",), \
        "forward is the identity; the perturbation did not take"
    x2, _ = layer.inverse(y, context=c)
    err = np.max(np.abs(to_np(x2) - x) / np.maximum(1.0, np.abs(x)))
    assert err < _tol(case_id, "round_trip_rtol", ROUND_TRIP_RTOL), f"round-trip relative error {err:.2e}"


@pytest.mark.parametrize("case_id", _marked(IDS, "test_forward_undoes_inverse"))
def test_forward_undoes_inverse(case_id):
    _needs(case_id, "forward", "inverse")
    layer, x, c = make(case_id)
    y = to_np(layer.forward(x, context=c)[0])
    y2 = to_np(layer.forward(layer.inverse(y, context=c)[0], context=c)[0])
    err = np.max(np.abs(y2 - y) / np.maximum(1.0, np.abs(y)))
    assert err < 10 * _tol(case_id, "round_trip_rtol", ROUND_TRIP_RTOL), f"inverse-then-forward relative error {err:.2e}"


@pytest.mark.parametrize("case_id", _marked(IDS, "test_round_trip_in_float64"))
def test_round_trip_in_float64(case_id):
    _needs(case_id, "forward", "inverse")
    layer, x, c = make(case_id, dtype="float64")
    y, ld = layer.forward(x, context=c)
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    assert keras.backend.standardize_dtype(ld.dtype) == "float64", "the log-det left float64"
    x2 = to_np(layer.inverse(y, context=c)[0])
    err = np.max(np.abs(x2 - x) / np.maximum(1.0, np.abs(x)))
    assert err < _tol(case_id, "round_trip_f64_rtol", ROUND_TRIP_F64_RTOL), f"float64 round-trip error {err:.2e}"


# -- log-dets --------------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", _marked(IDS, "test_log_det_has_batch_shape_and_the_input_dtype"))
def test_log_det_has_batch_shape_and_the_input_dtype(case_id):
    layer, x, c = make(case_id)
    for direction in ("forward", "inverse"):
        if not _has(case_id, direction):
            continue
        out, ld = getattr(layer, direction)(x if direction == "forward" else _latent(layer, x, c), context=c)
        assert tuple(ld.shape) == (x.shape[0],), direction
        assert keras.backend.standardize_dtype(ld.dtype) == "float32", direction


def _latent(layer, x, c):
    """A point in the latent space: forward(x) where there is a forward."""
    if layer.forward_mode is not None:
        return layer.forward(x, context=c)[0]
    return x


@pytest.mark.parametrize("case_id", _marked(IDS, "test_log_dets_cancel"))
def test_log_dets_cancel(case_id):
    _needs(case_id, "forward", "inverse")
    _needs_exact(case_id)
    layer, x, c = make(case_id)
    y, ld = layer.forward(x, context=c)
    _, ild = layer.inverse(y, context=c)
    np.testing.assert_allclose(to_np(ld) + to_np(ild), 0.0, atol=LOG_DET_CANCEL_ATOL)


def _jacobian_log_det(fn, x, c):
    """log|det J| of `fn(x, c)` per example (float64), from one autodiff
    Jacobian of the whole batch. Examples must not interact: the Jacobian's
    off-diagonal blocks (one example's output w.r.t. another's input) are
    checked to be zero."""
    batch, shape = x.shape[0], x.shape[1:]
    d = int(np.prod(shape))

    def f_flat(v):  # (B * D,) -> (B * D,)
        y = fn(keras.ops.reshape(v, (batch,) + shape), c)
        return keras.ops.reshape(y, (-1,))

    flat = x.reshape(-1).astype("float64")
    if backend() == "jax":
        import jax

        # One XLA program for the whole Jacobian (the weights are constants
        # here), instead of op-by-op eager dispatch: much faster on JAX.
        jac = np.asarray(jax.jit(jax.jacfwd(f_flat))(jax.numpy.asarray(flat)))
    else:
        import tensorflow as tf

        v = tf.constant(flat)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(v)
            y = f_flat(v)
        try:
            jac = tape.jacobian(y, v).numpy()
        except ValueError:  # pfor cannot vectorise through some loops (fixed-point, ODE solves)
            jac = tape.jacobian(y, v, experimental_use_pfor=False).numpy()
    assert jac.dtype == np.float64, f"the Jacobian was computed in {jac.dtype}"
    blocks = jac.reshape(batch, d, batch, d)
    out = []
    for b in range(batch):
        off = np.delete(blocks[b], b, axis=1)
        assert np.all(off == 0.0), "an example's output depends on another example's input"
        out.append(np.linalg.slogdet(blocks[b, :, b, :])[1])
    return np.array(out)


def _finite_difference_log_det(fn, x, c, h=1e-5):
    """log|det J| per example from central differences (float64): each
    input coordinate is moved by +-h in every example at once (examples do
    not interact); truncation error O(h^2), rounding O(eps / h)."""
    batch, shape = x.shape[0], x.shape[1:]
    d = int(np.prod(shape))
    flat = x.reshape(batch, d).astype("float64")
    cols = []
    for j in range(d):
        step = np.zeros_like(flat)
        step[:, j] = h
        up = to_np(fn((flat + step).reshape(x.shape), c)).reshape(batch, -1)
        down = to_np(fn((flat - step).reshape(x.shape), c)).reshape(batch, -1)
        cols.append((up - down) / (2 * h))
    jac = np.stack(cols, axis=2)  # (batch, out, in)
    return np.array([np.linalg.slogdet(j)[1] for j in jac])


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("case_id", _marked(IDS, "test_log_det_matches_autodiff_jacobian_in_float64"))
def test_log_det_matches_autodiff_jacobian_in_float64(case_id, direction):
    _needs(case_id, direction)
    _needs_exact(case_id)
    layer, x, c = make(case_id, dtype="float64")
    point = x if direction == "forward" else to_np(_latent(layer, x, c))
    method = getattr(layer, direction)
    _, ld = method(point, context=c)
    fn = lambda v, ci: method(v, context=ci)[0]  # noqa: E731
    if CASES[case_id].jacobian == "finite-difference":
        expected = _finite_difference_log_det(fn, point, c)
    else:
        expected = _jacobian_log_det(fn, point, c)
    np.testing.assert_allclose(to_np(ld), expected, rtol=_tol(case_id, "log_det_f64_rtol", LOG_DET_F64_RTOL),
                               atol=LOG_DET_F64_ATOL)


# -- estimated log-dets ---------------------------------------------------------------------------
ESTIMATED = [i for i in IDS if CASES[i].log_det == "estimate"]


@pytest.mark.parametrize("case_id", _marked(ESTIMATED, "test_estimated_log_det_bias"))
def test_estimated_log_det_bias(case_id):
    """Over many seeded draws, an unbiased estimator's mean is within 3
    standard errors of the layer's `exact_log_det`; a biased one's bias is
    reported and within the layer's stated bound (`log_det_bias_bound`)."""
    case = CASES[case_id]
    assert case.estimator in ("unbiased", "biased"), f"{case_id}: declare estimator='unbiased' or 'biased'"
    layer, x, c = make(case_id, dtype="float64")
    if case.stress is not None:
        case.stress(layer)
    exact = to_np(layer.exact_log_det(x, context=c))
    reps, calls = 25, 16  # rows per example per call; calls (the standard error is over calls)
    xs = np.repeat(x, reps, axis=0)
    cs = None if c is None else np.repeat(c, reps, axis=0)
    means = np.stack([to_np(layer.forward(xs, context=cs)[1]).reshape(x.shape[0], reps).mean(axis=1)
                      for _ in range(calls)])
    mean, se = means.mean(axis=0), means.std(axis=0, ddof=1) / np.sqrt(calls)
    assert np.all(se > 0), "the estimate does not vary between draws: is it seeded afresh each call?"
    bias = mean - exact
    print(f"{case_id}: exact {exact}, bias {bias}, standard error {se}")
    if case.estimator == "unbiased":
        assert np.all(np.abs(bias) <= 3 * se + 1e-9), f"bias {bias} beyond 3 standard errors {3 * se}"
    else:
        bound = to_np(layer.log_det_bias_bound(x, context=c))
        assert np.all(np.abs(bias) <= bound + 3 * se), f"bias {bias} beyond the stated bound {bound} (+3 SE {3 * se})"


# -- call, shapes, unavailable directions -----------------------------------------------------
@pytest.mark.parametrize("case_id", _marked(IDS, "test_forward_local_sums_to_the_log_det"))
def test_forward_local_sums_to_the_log_det(case_id):
    """`forward_local`'s per-position log-det map sums to `forward`'s log-det
    (images), or the layer says it has none."""
    case = CASES[case_id]
    layer, x, c = make(case_id, dtype="float64")
    assert layer.local_log_det == case.local_log_det
    if not case.local_log_det:
        with pytest.raises(NotImplementedError, match=type(layer).__name__):
            layer.forward_local(x, context=c)
        return
    if len(case.shape) != 4:
        with pytest.raises(ValueError, match="takes images"):
            layer.forward_local(x, context=c)
        return
    y_map, log_det_map = layer.forward_local(x, context=c)
    y, log_det = layer.forward(x, context=c)
    assert tuple(log_det_map.shape) == tuple(case.shape[:3])
    np.testing.assert_allclose(to_np(y_map), to_np(y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_np(log_det_map).sum(axis=(1, 2)), to_np(log_det), rtol=1e-10, atol=1e-10)
    if backend() != "tensorflow":
        return
    # Each position's value is the log|det| of that position's channel block of
    # the autodiff Jacobian (not the total spread out: that would pass the sum).
    import tensorflow as tf

    xt = tf.convert_to_tensor(to_np(x))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        yt = layer.forward(xt, context=c)[0]
    jac = to_np(tape.batch_jacobian(yt, xt))  # (B, H, W, C, H, W, C)
    b, h, w, _ = x.shape
    blocks = np.array([[[np.linalg.slogdet(jac[i, p, q, :, p, q, :])[1] for q in range(w)] for p in range(h)]
                       for i in range(b)])
    np.testing.assert_allclose(to_np(log_det_map), blocks, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("case_id", _marked(IDS, "test_call_is_forward"))
def test_call_is_forward(case_id):
    _needs(case_id, "forward")
    layer, x, c = make(case_id)
    if _varies_with_the_draw(case_id):
        np.testing.assert_allclose(to_np(layer(x, context=c)), to_np(layer.forward(x, context=c)[0]),
                                   rtol=_tol(case_id, "draw_rtol", ROUND_TRIP_RTOL), atol=1e-6)
    else:
        np.testing.assert_array_equal(to_np(layer(x, context=c)), to_np(layer.forward(x, context=c)[0]))


def _varies_with_the_draw(case_id):
    """An adaptive ODE solve with a Hutchinson probe in its state takes
    steps that depend on the probe, so its output varies at the solver's
    tolerance from draw to draw."""
    case = CASES[case_id]
    return case.log_det == "estimate" and case.forward == "iterative"


@pytest.mark.parametrize("case_id", _marked(IDS, "test_shape_methods_match_the_outputs"))
def test_shape_methods_match_the_outputs(case_id):
    layer, x, c = make(case_id)
    if _has(case_id, "forward"):
        y = layer.forward(x, context=c)[0]
        assert tuple(layer.compute_output_shape(x.shape)) == tuple(y.shape)
    else:
        y = x
    if _has(case_id, "inverse"):
        back = layer.inverse(y, context=c)[0]
        assert tuple(layer.compute_inverse_shape(tuple(y.shape))) == tuple(back.shape)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("case_id", _marked([i for i in IDS if CASES[i].forward is None or CASES[i].inverse is None],
                                            "test_unavailable_direction_raises_naming_the_layer"))
def test_unavailable_direction_raises_naming_the_layer(case_id, direction):
    layer, x, c = make(case_id)
    if getattr(CASES[case_id], direction) is not None:
        pytest.skip(f"{case_id} has a {direction} direction")
    with pytest.raises(NotImplementedError, match=type(layer).__name__):
        getattr(layer, direction)(x, context=c)


# -- context --------------------------------------------------------------------------------------
CONDITIONAL = [i for i in IDS if CASES[i].context_shape is not None]


@pytest.mark.parametrize("case_id", _marked(CONDITIONAL, "test_context_changes_the_output"))
def test_context_changes_the_output(case_id):
    layer, x, c = make(case_id)
    other = c + 1.0
    for direction in ("forward", "inverse"):
        if not _has(case_id, direction):
            continue
        point = x if direction == "forward" else to_np(_latent(layer, x, c))
        a = to_np(getattr(layer, direction)(point, context=c)[0])
        b = to_np(getattr(layer, direction)(point, context=other)[0])
        assert not np.allclose(a, b, atol=1e-4), f"{direction} ignores its context"


@pytest.mark.parametrize("case_id", _marked(CONDITIONAL, "test_missing_or_misshapen_context_raises"))
def test_missing_or_misshapen_context_raises(case_id):
    layer, x, c = make(case_id)
    direction = "forward" if _has(case_id, "forward") else "inverse"
    with pytest.raises(ValueError, match="needs a context"):
        getattr(layer, direction)(x, context=None)
    with pytest.raises(ValueError, match="context of shape"):
        getattr(layer, direction)(x, context=np.zeros((x.shape[0], 7, 7, 7), "float32"))


# -- serialization ------------------------------------------------------------------------------
def _clone_from_config(layer, x, c):
    cls = type(layer)
    clone = cls.from_config(layer.get_config())
    if layer.forward_mode is not None:
        clone.forward(x, context=c)
    else:
        clone.inverse(x, context=c)
    clone.set_weights(layer.get_weights())
    return clone


@pytest.mark.parametrize("case_id", _marked(IDS, "test_config_round_trips"))
def test_config_round_trips(case_id):
    layer, x, c = make(case_id)
    config = layer.get_config()
    clone = _clone_from_config(layer, x, c)
    assert clone.get_config() == config
    direction = "forward" if _has(case_id, "forward") else "inverse"
    np.testing.assert_array_equal(to_np(getattr(clone, direction)(x, context=c)[0]),
                                  to_np(getattr(layer, direction)(x, context=c)[0]))
    # The serialized form goes through JSON and the Keras registry too.
    ser = keras.saving.serialize_keras_object(layer)
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(ser)))
    assert type(again) is type(layer)


@pytest.mark.parametrize("case_id", _marked(IDS, "test_saved_layer_gives_identical_outputs"))
def test_saved_layer_gives_identical_outputs(case_id, tmp_path):
    _needs(case_id, "forward")
    layer, x, c = make(case_id)
    inputs = keras.Input(shape=x.shape[1:])
    if c is None:
        model = keras.Model(inputs, layer(inputs))
    else:
        context = keras.Input(shape=c.shape[1:])
        model = keras.Model([inputs, context], layer(inputs, context=context))
    path = str(tmp_path / "layer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    twin = [l for l in loaded.layers if type(l) is type(layer)][0]
    y, ld = layer.forward(x, context=c)
    y2, ld2 = twin.forward(x, context=c)
    if CASES[case_id].log_det == "estimate":  # fresh draws: compare the exact log-dets
        ld, ld2 = layer.exact_log_det(x, context=c), twin.exact_log_det(x, context=c)
    def same(a, b):
        if _varies_with_the_draw(case_id):
            np.testing.assert_allclose(to_np(a), to_np(b), rtol=_tol(case_id, "draw_rtol", ROUND_TRIP_RTOL),
                                       atol=1e-6)
        else:
            np.testing.assert_array_equal(to_np(a), to_np(b))

    same(y2, y)
    np.testing.assert_array_equal(to_np(ld2), to_np(ld))
    if _has(case_id, "inverse"):
        same(twin.inverse(y, context=c)[0], layer.inverse(y, context=c)[0])


# -- training ------------------------------------------------------------------------------------
@pytest.mark.skipif(backend() != "tensorflow", reason="gradient check written with tf.GradientTape")
@pytest.mark.parametrize("case_id", _marked(IDS, "test_gradients_reach_every_variable"))
def test_gradients_reach_every_variable(case_id):
    import tensorflow as tf

    layer, x, c = make(case_id)
    direction = "forward" if _has(case_id, "forward") else "inverse"
    variables = layer.trainable_variables
    with tf.GradientTape() as tape:
        y, ld = getattr(layer, direction)(x, context=c)
        loss = tf.reduce_sum(tf.square(y)) - tf.reduce_sum(ld)
    grads = tape.gradient(loss, variables)
    dead = [v.path for v, g in zip(variables, grads) if g is None or not np.any(to_np(g))]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("case_id", _marked(IDS, "test_one_compiled_fit_step"))
def test_one_compiled_fit_step(case_id):
    import tfflows

    _needs(case_id, "forward")
    case = CASES[case_id]
    layer, x, c = make(case_id)
    event = tuple(x.shape[1:])
    model = tfflows.FlowModel(layer, data_shape=event, n_bits=None, context_shape=case.context_shape)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [to_np(w).copy() for w in layer.trainable_weights]
    data = x if c is None else (x, c)
    history = model.fit(data, batch_size=x.shape[0], epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss)
    assert "nll" in history.history
    after = [to_np(w) for w in layer.trainable_weights]
    if before:
        assert any(not np.array_equal(a, b) for a, b in zip(after, before)), "the step changed no weight"


# -- seeded initial values ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs,var", [
    ("Invertible1x1Conv", {"lu": False}, "kernel"),
    ("Invertible1x1Conv", {"lu": True}, "lower"),
    ("Permute", {}, "perm"),
], ids=["invconv", "invconv-lu", "permute"])
def test_unseeded_random_init_follows_keras_set_random_seed(cls, kwargs, var):
    # seed=None draws from numpy's global state, which set_random_seed seeds.
    def built(seed):
        keras.utils.set_random_seed(seed)
        layer = LAYER_REGISTRY[cls](**kwargs)
        layer.build((2, 3, 3, 8))
        return to_np(getattr(layer, var))

    a, b, c = built(3), built(3), built(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), "a different global seed gave the same initial value"


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="this test launches the JAX run; it is already the JAX run")
def test_contract_under_jax():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install 'jax[cpu]'), so the JAX pass cannot run")
    from conftest import jax_rerun

    returncode, stdout, stderr = jax_rerun("test_contract.py::test_contract_under_jax")
    tail = (stdout + stderr)[-3000:]
    assert returncode == 0, f"contract suite failed under JAX:\n{tail}"
    assert " passed" in stdout and "failed" not in stdout.splitlines()[-1], tail
