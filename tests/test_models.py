"""FlowModel: exact bits/dim, sampling, encode/decode, training, saving."""

import math

import keras
import numpy as np
import pytest

import tfflows
from conftest import to_np
from tfflows import layers as L


def test_bits_per_dim_of_a_known_distribution_is_exact():
    # Identity-like flow (a fixed rescale by 2) with a standard normal base:
    # log p(x) = sum log N(2x; 0, 1) + D log 2, computed by hand.
    model = tfflows.FlowModel([L.Rescale(2.0, 0.0)], data_shape=(3, 2, 1), n_bits=8)
    x = np.random.default_rng(0).uniform(size=(5, 3, 2, 1)).astype("float32")
    d = 6
    log_p = np.sum(-0.5 * (2 * x.reshape(5, -1)) ** 2 - 0.5 * math.log(2 * math.pi), axis=1) + d * math.log(2.0)
    bpd = (-log_p + d * 8 * math.log(2.0)) / (d * math.log(2.0))
    np.testing.assert_allclose(to_np(model.log_prob(x)), log_p, rtol=1e-6)
    np.testing.assert_allclose(to_np(model.bits_per_dim(x)), bpd, rtol=1e-6)
    model5 = tfflows.FlowModel([L.Rescale(2.0, 0.0)], data_shape=(3, 2, 1), n_bits=5)
    np.testing.assert_allclose(to_np(model5.bits_per_dim(x)), bpd - 3.0, rtol=1e-6)


def test_logistic_base_log_prob_is_exact():
    model = tfflows.FlowModel([L.Reverse()], base="logistic", data_shape=(4,))
    x = np.random.default_rng(1).uniform(-3, 3, size=(6, 4)).astype("float32")
    expected = np.sum(-x - 2 * np.log1p(np.exp(-x)), axis=1)
    np.testing.assert_allclose(to_np(model.log_prob(x)), expected, rtol=1e-5)


@pytest.fixture(scope="module")
def built_models():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 28, 28, 1)).astype("float32")
    out = {}
    for name, builder in tfflows.zoo.builders.BUILDERS.items():
        model = builder(preset="mnist-tiny")
        model.initialize(x)
        for w in model.trainable_weights:
            w.assign(w.value + 0.01 * rng.standard_normal(tuple(w.shape)).astype("float32"))
        out[name] = model
    return out, x


@pytest.mark.parametrize("name", ["glow", "realnvp", "nice"])
def test_decode_undoes_encode_for_each_zoo_model(built_models, name):
    models, x = built_models
    model = models[name]
    z = model.encode(x)
    assert tuple(z.shape) == (8,) + model.latent_shape
    np.testing.assert_allclose(to_np(model.decode(z)), x, atol=2e-5)


@pytest.mark.parametrize("name", ["glow", "realnvp", "nice"])
def test_sample_shapes_temperature_and_mode(built_models, name):
    models, _ = built_models
    model = models[name]
    s = to_np(model.sample(4, temperature=0.7, seed=3))
    assert s.shape == (4, 28, 28, 1) and np.all(np.isfinite(s))
    np.testing.assert_array_equal(s, to_np(model.sample(4, temperature=0.7, seed=3)))
    mode = to_np(model.decode(np.zeros((1,) + model.latent_shape, "float32")))
    np.testing.assert_allclose(to_np(model.sample(2, temperature=0.0, seed=5)), np.repeat(mode, 2, 0), atol=1e-6)
    # One temperature per row: row 0 at T=0 is the mode, row 1 at T=1 is not.
    rows = to_np(model.sample(2, temperature=np.array([0.0, 1.0], "float32"), seed=9))
    np.testing.assert_allclose(rows[0], mode[0], atol=1e-6)
    assert not np.allclose(rows[1], mode[0], atol=1e-3)


def test_sample_uses_a_compiled_decode_that_follows_the_weights():
    model = tfflows.zoo.glow(preset="mnist-tiny")
    x = np.random.default_rng(2).uniform(size=(8, 28, 28, 1)).astype("float32")
    model.initialize(x)
    z = np.random.default_rng(3).normal(size=(3,) + model.latent_shape).astype("float32")
    fn = model.make_decode_function()
    assert fn is model.make_decode_function()  # built once, cached
    if keras.backend.backend() in ("tensorflow", "jax"):
        assert fn != model.decode
    np.testing.assert_allclose(to_np(fn(z)), to_np(model.decode(z)), atol=2e-5)
    # Changing the weights changes the compiled decode too (no stale capture).
    before = to_np(fn(z))
    for w in model.trainable_weights:
        if "conv_out" in w.path and w.path.endswith("kernel"):
            w.assign(w.value + 0.05)
    after = to_np(fn(z))
    assert not np.allclose(before, after, atol=1e-4)
    np.testing.assert_allclose(after, to_np(model.decode(z)), atol=2e-5)


def test_compiled_bits_per_dim_matches_eager_and_follows_the_weights():
    from tfflows import training

    model = tfflows.zoo.glow(preset="mnist-tiny")
    u8 = np.random.default_rng(4).integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    x = ((u8[..., None] + 0.5) / 256.0).astype("float32")
    model.initialize(x)
    fn = model.make_bits_per_dim_function()
    assert fn is model.make_bits_per_dim_function()  # built once, cached
    np.testing.assert_allclose(to_np(fn(x)), to_np(model.bits_per_dim(x)), atol=1e-5)
    before = to_np(fn(x))
    for w in model.trainable_weights:
        if "conv_out" in w.path and w.path.endswith("kernel"):
            w.assign(w.value + 0.05)
    after = to_np(fn(x))
    assert not np.allclose(before, after, atol=1e-4)
    # evaluate_bpd (which uses the compiled function) agrees with eager bits_per_dim
    # on the same noise draw.
    rng = np.random.default_rng(7)
    noisy = ((u8[..., None] + rng.random(x.shape, dtype=np.float32)) / 256.0).astype("float32")
    per_image = training.bpd_per_draw(model, u8, draws=1, batch_size=5, seed=7)[0]
    np.testing.assert_allclose(per_image, to_np(model.bits_per_dim(noisy)), atol=1e-5)


def test_initialize_normalises_actnorm_outputs():
    model = tfflows.FlowModel([L.ActNorm(), L.AffineCoupling(hidden=4), L.ActNorm()], data_shape=(4,))
    assert model.needs_initialization
    x = (5 + 3 * np.random.default_rng(0).standard_normal((256, 4))).astype("float32")
    model.initialize(x)
    assert not model.needs_initialization
    y = to_np(model.flow.flow_layers[0].forward(x)[0])
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-3)


def test_fit_initializes_on_first_batch_and_lowers_bpd():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(512, 1))
    x = np.clip(np.concatenate([a, a ** 2 + 0.05 * rng.standard_normal((512, 1))], 1), 0, 1).astype("float32")
    model = tfflows.FlowModel([L.ActNorm(), L.AffineCoupling(hidden=16), L.Reverse(), L.ActNorm(),
                               L.AffineCoupling(hidden=16)], data_shape=(2,))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = float(np.mean(to_np(model.bits_per_dim(x))))
    hist = model.fit(x, batch_size=64, epochs=15, verbose=0)
    assert not model.needs_initialization
    after = float(np.mean(to_np(model.bits_per_dim(x))))
    assert after < before - 1.0, (before, after)
    assert set(hist.history) >= {"loss", "bpd"}
    np.testing.assert_allclose(hist.history["loss"], hist.history["bpd"], rtol=1e-5)


@pytest.mark.slow
def test_short_fit_on_real_mnist_lowers_bits_per_dim(mnist_npz):
    from tfflows.zoo import data

    with np.load(mnist_npz) as f:
        train, test = f["x_train"][:3200], f["x_test"][:500]
    model = tfflows.zoo.glow(preset="mnist-tiny")
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    ds = data.load(train, batch_size=64, seed=0)
    test_ds = data.load(test, batch_size=250, shuffle=False, seed=1)
    model.initialize(next(iter(ds)))
    before = model.evaluate(test_ds, verbose=0, return_dict=True)["loss"]
    model.fit(ds, epochs=2, verbose=0)
    after = model.evaluate(test_ds, verbose=0, return_dict=True)["loss"]
    assert after < before - 1.0, (before, after)


def test_nan_loss_stops_training_naming_the_step():
    model = tfflows.FlowModel([L.ActNorm(), L.AffineCoupling(hidden=4)], data_shape=(4,))
    x = np.random.default_rng(0).uniform(size=(64, 4)).astype("float32")
    model.initialize(x)
    model.compile(optimizer=keras.optimizers.SGD(1e30))  # diverges on purpose
    with pytest.raises(tfflows.TrainingDivergedError, match=r"loss became (nan|inf) at epoch \d+, step \d+"):
        model.fit(x, batch_size=16, epochs=5, verbose=0)


def test_saved_model_gives_identical_outputs(tmp_path):
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8)
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    model.initialize(x)
    model.compile()
    model.fit(x, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / "glow.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(to_np(loaded.log_prob(x)), to_np(model.log_prob(x)))
    np.testing.assert_array_equal(to_np(loaded.sample(2, seed=1)), to_np(model.sample(2, seed=1)))
    weights = str(tmp_path / "glow.weights.h5")
    model.save_weights(weights)
    twin = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8)
    twin.load_weights(weights)
    np.testing.assert_array_equal(to_np(twin.log_prob(x)), to_np(model.log_prob(x)))
    assert not twin.needs_initialization


def test_fit_works_with_no_other_set_up():
    from tfflows.zoo import data

    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8)  # not compiled, not initialized
    history = model.fit(data.load("mnist", batch_size=32).take(3), epochs=1, verbose=0)
    assert not model.needs_initialization
    assert np.isfinite(history.history["loss"][0])


def test_default_optimizer_steps_like_adam_on_the_nll():
    """bits/dim gradients are NLL gradients / (D ln 2); the default Adam undoes that in eps."""
    dims = 784
    rng = np.random.default_rng(0)
    start = rng.normal(size=(5,)).astype("float32")
    # Tiny NLL gradients, where eps matters: Keras' default eps would damp them.
    g_nll = (1e-6 * rng.normal(size=(3, 5))).astype("float32")
    w_bpd, w_nll = keras.Variable(start), keras.Variable(start)
    opt_bpd = tfflows.default_optimizer(1e-3, clipnorm=None, dims=dims)
    opt_nll = keras.optimizers.Adam(1e-3, epsilon=1e-8)
    plain = keras.optimizers.Adam(1e-3)
    w_plain = keras.Variable(start)
    for g in g_nll:
        opt_bpd.apply_gradients([(g / (dims * math.log(2.0)), w_bpd)])
        opt_nll.apply_gradients([(g, w_nll)])
        plain.apply_gradients([(g / (dims * math.log(2.0)), w_plain)])
    np.testing.assert_allclose(to_np(w_bpd), to_np(w_nll), rtol=1e-5, atol=1e-9)
    # Keras' default eps (1e-7) on the bits/dim gradients moves far less.
    assert np.abs(to_np(w_plain) - start).max() < 0.1 * np.abs(to_np(w_nll) - start).max()
    model = tfflows.FlowModel([L.Reverse()], data_shape=(28, 28, 1))
    model.compile()
    assert math.isclose(float(model.optimizer.epsilon), 1e-8 / (784 * math.log(2.0)), rel_tol=1e-6)


# -- nothing silent (issue 48, items 2, 4, 7, 8) ----------------------------------------
def test_sample_raises_naming_rows_and_temperature_when_the_inverse_overflows():
    # Two diagonal scalings by exp(-44): the inverse multiplies by exp(88) = 1.7e38,
    # so |z| > 2 overflows float32.
    model = tfflows.FlowModel([L.DiagonalScaling(), L.DiagonalScaling()], data_shape=(4,))
    for w in model.trainable_weights:
        w.assign(np.full(w.shape, -44.0, "float32"))
    with pytest.raises(ValueError, match=r"rows at temperature 2 are not finite \(rows \[.*\]\): the inverse "
                                         r"flow overflowed\. Lower the temperature"):
        model.sample(16, temperature=2.0, seed=0)
    with pytest.raises(ValueError, match=r"sample_and_log_prob: .* not finite"):
        model.sample_and_log_prob(16, temperature=2.0, seed=0)
    assert np.all(np.isfinite(to_np(model.sample(16, temperature=1e-3, seed=0))))


@pytest.mark.slow
@pytest.mark.large
def test_shipped_glow_never_returns_nan_samples_silently():
    model = tfflows.zoo.glow(preset="mnist", pretrained=True)
    with pytest.raises(ValueError, match=r"of 64 rows at temperature 1.5 are not finite"):
        model.sample(64, temperature=1.5, seed=0)


@pytest.mark.parametrize("temperature, match", [
    (float("nan"), "finite, non-negative temperatures"),
    (float("inf"), "finite, non-negative temperatures"),
    (-1.0, "finite, non-negative temperatures"),
    (np.array([0.5, 0.7, 1.0], "float32"), r"one temperature or one per row \(4\); got shape \(3,\)"),
], ids=["nan", "inf", "negative", "wrong-length"])
def test_bad_temperatures_raise(temperature, match):
    model = tfflows.FlowModel([L.Reverse()], data_shape=(3,))
    with pytest.raises(ValueError, match=match):
        model.sample(4, temperature=temperature, seed=0)


def test_numpy_integer_seed_and_n_are_accepted():
    model = tfflows.FlowModel([L.Reverse()], data_shape=(3,))
    a = to_np(model.sample(np.int64(4), seed=np.int64(7)))
    np.testing.assert_array_equal(a, to_np(model.sample(4, seed=7)))
    with pytest.raises(TypeError, match="seed must be an integer"):
        model.sample(4, seed=7.5)


def test_bits_per_dim_refuses_data_outside_the_unit_interval():
    model = tfflows.FlowModel([L.Rescale(2.0, 0.0)], data_shape=(3, 2, 1))
    x = np.random.default_rng(0).uniform(size=(2, 3, 2, 1)).astype("float32")
    with pytest.raises(ValueError, match=r"expects dequantized data in \[0, 1\) .* got values in \[0\.\d+, 2\d\d"):
        model.bits_per_dim(x * 255)


def test_log_prob_of_a_tensor_with_nan_raises_like_numpy():
    model = tfflows.FlowModel([L.AffineCoupling(hidden=4)], data_shape=(4,))
    bad = np.full((2, 4), 0.5, "float32")
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite value"):
        model.log_prob(keras.ops.convert_to_tensor(bad))


def test_logit_preprocessing_refuses_data_outside_its_domain():
    model = tfflows.zoo.glow(preset="mnist-tiny")
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    with pytest.raises(ValueError, match=r"LogitTransform 'logit' maps data in \[0, 1\]"):
        model.log_prob(x * 255)


def test_decode_refuses_nan_latents_and_takes_float64():
    model = tfflows.FlowModel([L.AffineCoupling(hidden=4)], data_shape=(4,))
    z = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(to_np(model.decode(z)), to_np(model.decode(z.astype("float32"))), atol=1e-6)
    z[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"decode got NaN or infinite latents in rows \[2\]"):
        model.decode(z)


def test_fit_that_diverges_restores_the_last_finite_weights():
    model = tfflows.FlowModel([L.ActNorm(), L.AffineCoupling(hidden=4)], data_shape=(4,))
    x = np.random.default_rng(0).uniform(size=(64, 4)).astype("float32")
    x[40] = np.nan  # the third batch of 16 poisons the loss and every gradient
    model.initialize(x[:16])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    guard = tfflows.StopOnNaN(snapshot_seconds=0)  # a copy after every finite batch
    with pytest.raises(tfflows.TrainingDivergedError, match=r"step 3\. The model's and the optimizer's weights "
                                                            r"were restored to their last finite values \(a copy "
                                                            r"from optimizer step 2"):
        model.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert guard.restored_step == 2
    assert all(np.all(np.isfinite(to_np(w))) for w in model.weights)
    assert all(np.all(np.isfinite(to_np(v))) for v in model.optimizer.variables)
    assert np.all(np.isfinite(to_np(model.log_prob(x[:16]))))
    assert np.all(np.isfinite(to_np(model.sample(8, seed=0))))
    assert int(to_np(model.optimizer.iterations)) == 2, "the diverged step's optimizer update was not undone"
    # With the default (a copy at most every 10 s) the restore goes back to the copy taken at the start.
    model2 = tfflows.FlowModel([L.ActNorm(), L.AffineCoupling(hidden=4)], data_shape=(4,))
    model2.initialize(x[:16])
    model2.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = [to_np(w).copy() for w in model2.weights]
    with pytest.raises(tfflows.TrainingDivergedError, match="a copy from optimizer step 0"):
        model2.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for w, s0 in zip(model2.weights, start):
        np.testing.assert_array_equal(to_np(w), s0)


# -- continuous data and contexts --------------------------------------------------------------
def test_continuous_model_loss_is_the_nll_in_nats():
    model = tfflows.FlowModel([L.Rescale(2.0, 0.0)], data_shape=(3,), n_bits=None)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    log_p = np.sum(-0.5 * (2 * x) ** 2 - 0.5 * math.log(2 * math.pi), axis=1) + 3 * math.log(2.0)
    np.testing.assert_allclose(to_np(model(x)), -log_p, rtol=1e-6)
    with pytest.raises(ValueError, match="bits/dim is defined for discrete data only"):
        model.bits_per_dim(x)


def _conditional_model():
    flow = [L.AffineCoupling(hidden=16, context_shape=(2,)), L.Reverse(),
            L.AffineCoupling(hidden=16, context_shape=(2,))]
    return tfflows.FlowModel(flow, data_shape=(2,), n_bits=None, context_shape=(2,))


def test_conditional_model_fits_x_context_batches_from_arrays_and_tf_data():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    c = rng.normal(size=(512, 2)).astype("float32")
    x = (3.0 * c + 0.1 * rng.normal(size=(512, 2))).astype("float32")  # x depends on the context
    model = _conditional_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    start = float(np.mean(to_np(model((x, c)))))
    model.fit(x, c, batch_size=64, epochs=3, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, c)).batch(64)
    history = model.fit(ds, epochs=3, verbose=0)
    end = float(np.mean(to_np(model((x, c)))))
    assert end < start - 1.0, (start, end)
    assert history.history["nll"][-1] < start
    assert model.evaluate(ds, verbose=0, return_dict=True)["loss"] == pytest.approx(end, abs=1e-3)
    # The context matters: the right one explains x much better than a shuffled one.
    wrong = float(np.mean(to_np(-model.log_prob(x, context=c[::-1]))))
    assert wrong > end + 1.0


def test_conditional_model_samples_per_context_and_checks_it():
    model = _conditional_model()
    for w in model.trainable_weights:
        w.assign(w.value + 0.3)
    c = np.array([[1.0, 0.0], [-1.0, 2.0]], "float32")
    a = to_np(model.sample(2, context=c, seed=1))
    b = to_np(model.sample(2, context=c[::-1], seed=1))
    assert not np.allclose(a, b)
    x, log_q = model.sample_and_log_prob(2, context=c, seed=1)
    np.testing.assert_allclose(to_np(x), a, atol=1e-6)
    np.testing.assert_allclose(to_np(log_q), to_np(model.log_prob(x, context=c)), atol=1e-4)
    with pytest.raises(ValueError, match="is conditional .* needs a context"):
        model.sample(2, seed=1)
    with pytest.raises(ValueError, match=r"got a context for 2 examples and 3 examples"):
        model.sample(3, context=c, seed=1)
