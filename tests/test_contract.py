"""The shared invariant suite, parametrised over every flow layer.

Runs on the active Keras backend; `test_contract_under_jax` reruns this file
in a subprocess with KERAS_BACKEND=jax.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import LOG_DET_ATOL, LOG_DET_CANCEL_ATOL, ROUND_TRIP_RTOL, backend, to_np
from contract_cases import CASES
from tfflows.layers import LAYER_REGISTRY, FlowLayer

IDS = sorted(CASES)


def make(case_id, perturb=True, seed=0):
    """A built instance on its input, with every weight perturbed.

    Perturbing matters: zero-initialised coupling nets make a fresh layer
    the identity, which would pass a round trip that applies forward twice.
    """
    factory, shape, kind = CASES[case_id]
    rng = np.random.default_rng(seed)
    if kind == "unit":
        x = rng.uniform(0.05, 0.95, size=shape).astype("float32")
    else:
        x = rng.standard_normal(shape).astype("float32")
    layer = factory()
    layer.forward(x)
    if perturb:
        for w in layer.trainable_weights:
            noise = 0.2 * rng.standard_normal(tuple(w.shape)).astype("float32")
            w.assign(w.value + noise)
    return layer, x


def test_every_layer_has_a_contract_case():
    covered = {CASES[c][0]().__class__.__name__ for c in CASES}
    missing = sorted(set(LAYER_REGISTRY) - covered)
    assert not missing, f"flow layers without a contract case: {missing}"


def test_every_exported_flow_layer_is_registered():
    import tfflows.layers as L

    exported = {n for n in L.__all__ if isinstance(getattr(L, n), type)
                and issubclass(getattr(L, n), FlowLayer) and n != "FlowLayer"}
    assert exported <= set(LAYER_REGISTRY), exported - set(LAYER_REGISTRY)


@pytest.mark.parametrize("case_id", IDS)
def test_inverse_undoes_forward(case_id):
    layer, x = make(case_id)
    y, _ = layer.forward(x)
    assert not np.allclose(to_np(y).ravel()[: x.size], x.ravel()) or case_id in ("Reshape",), \
        "forward is the identity; the perturbation did not take"
    x2, _ = layer.inverse(y)
    err = np.max(np.abs(to_np(x2) - x) / np.maximum(1.0, np.abs(x)))
    assert err < ROUND_TRIP_RTOL, f"round-trip relative error {err:.2e}"


@pytest.mark.parametrize("case_id", IDS)
def test_forward_undoes_inverse(case_id):
    layer, x = make(case_id)
    y = to_np(layer.forward(x)[0])
    y2 = to_np(layer.forward(layer.inverse(y)[0])[0])
    err = np.max(np.abs(y2 - y) / np.maximum(1.0, np.abs(y)))
    assert err < 10 * ROUND_TRIP_RTOL, f"inverse-then-forward relative error {err:.2e}"


@pytest.mark.parametrize("case_id", IDS)
def test_log_det_has_batch_shape(case_id):
    layer, x = make(case_id)
    _, ld = layer.forward(x)
    _, ild = layer.inverse(layer.forward(x)[0])
    assert tuple(ld.shape) == (x.shape[0],)
    assert tuple(ild.shape) == (x.shape[0],)
    assert keras.backend.standardize_dtype(ld.dtype) == "float32"


@pytest.mark.parametrize("case_id", IDS)
def test_log_dets_cancel(case_id):
    layer, x = make(case_id)
    y, ld = layer.forward(x)
    _, ild = layer.inverse(y)
    np.testing.assert_allclose(to_np(ld) + to_np(ild), 0.0, atol=LOG_DET_CANCEL_ATOL)


def _jacobian_log_det(layer, x):
    """log|det J| of the flattened forward map, one example at a time."""
    shape = x.shape[1:]

    def f_flat(v):  # (D,) -> (D,)
        y = layer.forward(keras.ops.reshape(v, (1,) + shape))[0]
        return keras.ops.reshape(y, (-1,))

    out = []
    for row in x.reshape(x.shape[0], -1):
        if backend() == "jax":
            import jax

            jac = np.asarray(jax.jacfwd(f_flat)(row.astype("float64").astype("float32")))
        else:
            import tensorflow as tf

            v = tf.constant(row)
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = f_flat(v)
            jac = tape.jacobian(y, v).numpy()
        out.append(np.linalg.slogdet(jac.astype("float64"))[1])
    return np.array(out)


@pytest.mark.parametrize("case_id", IDS)
def test_log_det_matches_autodiff_jacobian(case_id):
    layer, x = make(case_id)
    _, ld = layer.forward(x)
    expected = _jacobian_log_det(layer, x)
    np.testing.assert_allclose(to_np(ld), expected, atol=LOG_DET_ATOL, rtol=1e-4)


def _clone_from_config(layer, x):
    cls = type(layer)
    clone = cls.from_config(layer.get_config())
    clone.forward(x)
    clone.set_weights(layer.get_weights())
    return clone


@pytest.mark.parametrize("case_id", IDS)
def test_config_round_trips(case_id):
    layer, x = make(case_id)
    config = layer.get_config()
    clone = _clone_from_config(layer, x)
    assert clone.get_config() == config
    np.testing.assert_array_equal(to_np(clone.forward(x)[0]), to_np(layer.forward(x)[0]))
    # The serialized form goes through JSON and the Keras registry too.
    ser = keras.saving.serialize_keras_object(layer)
    import json

    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(ser)))
    assert type(again) is type(layer)


@pytest.mark.parametrize("case_id", IDS)
def test_saved_layer_gives_identical_outputs(case_id, tmp_path):
    layer, x = make(case_id)
    inputs = keras.Input(shape=x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "layer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    twin = loaded.layers[-1]
    assert type(twin) is type(layer)
    y, ld = layer.forward(x)
    y2, ld2 = twin.forward(x)
    np.testing.assert_array_equal(to_np(y2), to_np(y))
    np.testing.assert_array_equal(to_np(ld2), to_np(ld))
    np.testing.assert_array_equal(to_np(twin.inverse(y)[0]), to_np(layer.inverse(y)[0]))


@pytest.mark.skipif(backend() != "tensorflow", reason="gradient check written with tf.GradientTape")
@pytest.mark.parametrize("case_id", IDS)
def test_gradients_reach_every_variable(case_id):
    import tensorflow as tf

    layer, x = make(case_id)
    variables = layer.trainable_variables
    with tf.GradientTape() as tape:
        y, ld = layer.forward(x)
        loss = tf.reduce_sum(tf.square(y)) - tf.reduce_sum(ld)
    grads = tape.gradient(loss, variables)
    dead = [v.path for v, g in zip(variables, grads) if g is None or not np.any(to_np(g))]
    assert not dead, f"no gradient reaches {dead}"


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
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         os.path.join(here, "test_contract.py")],
        env=env, capture_output=True, text=True, timeout=900, cwd=here,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"contract suite failed under JAX:\n{tail}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1], tail
