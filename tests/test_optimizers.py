"""`tfflows.optimizers.Adam` takes the same steps as `keras.optimizers.Adam`,
through its fused TensorFlow kernel and through Keras' own path alike."""

import keras
import numpy as np
import pytest

import tfflows
from tfflows import optimizers


def _train(optimizer, dtype, steps=5, jit=False):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(dtype)
    y = (x @ rng.normal(size=(4, 1))).astype(dtype)
    model = keras.Sequential([keras.Input((4,), dtype=dtype), keras.layers.Dense(8, activation="tanh", dtype=dtype),
                              keras.layers.Dense(1, dtype=dtype)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit)
    history = model.fit(x, y, batch_size=16, epochs=steps // 4 + 1, shuffle=False, verbose=0)
    return [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in model.weights], history


@pytest.mark.parametrize("kwargs", [dict(learning_rate=1e-2),
                                    dict(learning_rate=keras.optimizers.schedules.CosineDecay(1e-2, 20),
                                         global_clipnorm=0.5, epsilon=1e-4)])
def test_same_weights_as_keras_adam_through_fit(kwargs):
    ours, h1 = _train(optimizers.Adam(**kwargs), "float32")
    theirs, _ = _train(keras.optimizers.Adam(**kwargs), "float32")
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert h1.history["loss"][-1] < h1.history["loss"][0]  # it trains


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-13)])
def test_steps_match_adam_written_out_in_numpy(dtype, tol):
    """Against Kingma & Ba's update in float64 numpy (Keras' own Adam is
    off by about 1e-5 relative on float64 variables, so it is not the
    reference here)."""
    g = np.array([0.1, -0.2, 0.3, 1e-4])
    v_ref, m, s = np.ones(4), np.zeros(4), np.zeros(4)
    lr = float(np.float32(0.01))  # Keras keeps the learning rate as a float32 variable
    for t in range(1, 4):
        m += (g - m) * 0.1
        s += (g * g - s) * 0.001
        v_ref -= m * lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) / (np.sqrt(s) + 1e-7)
    var = keras.Variable(np.ones(4), dtype=dtype)
    opt = optimizers.Adam(0.01, epsilon=1e-7)
    opt.build([var])
    for _ in range(3):
        opt.apply([keras.ops.convert_to_tensor(g, dtype=dtype)], [var])
    if keras.backend.backend() != "tensorflow":
        tol = max(tol, 1e-4)  # Keras' own path (see the docstring)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var), v_ref, rtol=tol, atol=tol)


def test_fused_kernel_is_taken_on_tensorflow(monkeypatch):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused kernel is TensorFlow's")
    from tfflows import tf_optimizers

    calls = []
    real = tf_optimizers.fused_adam_update
    monkeypatch.setattr(tf_optimizers, "fused_adam_update", lambda *a: calls.append(1) or real(*a))
    _train(optimizers.Adam(1e-2), "float32", steps=1)
    assert calls, "fit did not go through the fused update"


def test_default_optimizer_round_trips_through_config():
    from tfflows.models import default_optimizer

    opt = default_optimizer(1e-3, dims=784)
    assert isinstance(opt, optimizers.Adam)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is optimizers.Adam and again.get_config() == opt.get_config()


def test_flow_model_first_fit_traces_the_train_step_once():
    """FlowModel.fit builds the optimizer before Keras traces the step, so
    the tf.function is traced once (a step creating variables is traced twice)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function tracing")
    model = tfflows.zoo.maf(2, flows=2, hidden=(8,))
    x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    assert model.optimizer.built
    fn = model.train_function
    inner = [v for v in getattr(fn, "__closure__", None) or [] if hasattr(v.cell_contents, "experimental_get_tracing_count")]
    counts = [c.cell_contents.experimental_get_tracing_count() for c in inner]
    assert counts == [] or max(counts) == 1, counts
