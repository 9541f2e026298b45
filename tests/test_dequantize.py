"""Variational dequantization (`VariationalDequantizer`, `FlowModel(dequantizer=...)`):
the noise density by change of variables, the bound's validity against the
model's discrete likelihood, training, saving, and bad input."""

import math

import keras
import numpy as np
import pytest

import tfflows
from conftest import to_np
from tfflows import layers as L

SHAPE = (2, 2, 1)


def small_model(dequantize=True, seed=0):
    keras.utils.set_random_seed(seed)
    flow = L.FlowSequence([L.LogitTransform(alpha=0.05), L.ActNorm(),
                           L.AffineCoupling(mask="checkerboard", hidden=8),
                           L.AffineCoupling(mask="checkerboard", reverse=True, hidden=8)])
    deq = L.VariationalDequantizer(SHAPE, couplings=2, hidden=8, features=4, seed=seed) if dequantize else None
    model = tfflows.FlowModel(flow, data_shape=SHAPE, dequantizer=deq)
    # Non-trivial weights: the nets start at zero (identity couplings).
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(0.3 * rng.standard_normal(tuple(v.shape)).astype("float32"))
    return model


def pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE).astype("uint8")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="autodiff Jacobian via tf.GradientTape")
def test_log_q_is_the_change_of_variables_density():
    import tensorflow as tf

    model = small_model()
    deq = model.dequantizer
    x = pixels(3).astype("float32")
    eps = np.random.default_rng(1).standard_normal((3,) + SHAPE).astype("float32")
    u, log_q = deq.log_q(x, eps)
    d = math.prod(SHAPE)
    for i in range(3):
        e = tf.constant(eps[i:i + 1])
        with tf.GradientTape() as tape:
            tape.watch(e)
            ui, _ = deq.log_q(x[i:i + 1], e)
        jac = tf.reshape(tape.jacobian(ui, e), (d, d)).numpy().astype("float64")
        log_n = -0.5 * float(np.sum(eps[i].astype("float64") ** 2)) - 0.5 * d * math.log(2 * math.pi)
        expected = log_n - np.linalg.slogdet(jac)[1]
        assert abs(float(to_np(log_q)[i]) - expected) < 1e-3 * max(1.0, abs(expected))
    assert np.all((to_np(u) > 0) & (to_np(u) < 1))


@pytest.mark.parametrize("dequantize", [True, False], ids=["variational", "uniform"])
def test_bounds_are_valid_lower_bounds_of_the_discrete_likelihood(dequantize):
    """The discrete NLL in bits/dim, by Monte Carlo over each pixel bin
    (log P(x) = log E_{u ~ U}[p((x + u) / 256)] - D 8 ln 2, 20k uniform draws),
    is below the importance-weighted bound, which is below the plain bound
    (both with 400 draws), within their noise."""
    model = small_model(dequantize=dequantize)
    x = pixels(4, seed=3)
    rng = np.random.default_rng(5)
    d = math.prod(SHAPE)
    draws = 20000
    xs = np.repeat(x.astype("float32")[None], 1, axis=0)[0]
    log_p = []
    for _ in range(draws // 500):
        u = rng.uniform(size=(500,) + x.shape).astype("float32")
        y = ((xs[None] + u) / 256.0).reshape((-1,) + SHAPE)
        z, ld = model.flow.forward(y)
        log_p.append(to_np(model.base.log_prob(z) + ld).reshape(500, -1).astype("float64"))
    log_p = np.concatenate(log_p)  # (draws, batch)
    m = log_p.max(0)
    true_bpd = (-(m + np.log(np.mean(np.exp(log_p - m), 0))) + d * 8 * math.log(2)) / (d * math.log(2))
    plain = model.dequantized_bound(x, draws=400, seed=1)
    iw = model.dequantized_bound(x, draws=400, importance=True, seed=1)
    assert plain.shape == (4,) and iw.shape == (4,)
    assert np.all(plain >= true_bpd - 0.02), (plain, true_bpd)  # a valid bound
    assert np.all(iw >= true_bpd - 0.02), (iw, true_bpd)
    if not dequantize:  # uniform q: the importance-weighted bound is the Monte Carlo likelihood itself
        assert np.allclose(iw, true_bpd, atol=0.02)


def test_bits_per_dim_takes_integer_pixels_and_estimates_the_bound():
    model = small_model()
    x = pixels(6, seed=2)
    one = np.stack([to_np(model.bits_per_dim(x)) for _ in range(200)])  # 200 one-draw estimates
    plain = model.dequantized_bound(x, draws=400, seed=3)
    se = one.std(0) * math.sqrt(1 / 200 + 1 / 400)  # both means' noise (one draw's spread)
    assert np.all(np.abs(one.mean(0) - plain) < 4 * se + 1e-3), (one.mean(0), plain)


def test_training_tightens_the_bound_and_trains_the_dequantizer():
    model = small_model()
    x = np.random.default_rng(0).integers(100, 140, (512,) + SHAPE).astype("uint8")
    before_q = [np.array(v) for v in model.dequantizer.trainable_variables]
    before = float(model.dequantized_bound(x[:128], draws=8, seed=0).mean())
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, batch_size=64, epochs=15, verbose=0)
    after = float(model.dequantized_bound(x[:128], draws=8, seed=0).mean())
    assert after < before - 0.3, (before, after)
    assert history.history["loss"][-1] < history.history["loss"][0]
    moved = [np.max(np.abs(np.array(v) - b)) for v, b in zip(model.dequantizer.trainable_variables, before_q)]
    assert max(moved) > 1e-3


def test_a_saved_model_gives_the_same_bound(tmp_path):
    model = small_model()
    x = pixels(5)
    path = str(tmp_path / "deq.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.dequantizer, L.VariationalDequantizer)
    np.testing.assert_allclose(loaded.dequantized_bound(x, draws=4, seed=7), model.dequantized_bound(x, draws=4, seed=7),
                               rtol=1e-6, atol=1e-6)


def test_bad_input_is_named():
    model = small_model()
    with pytest.raises(ValueError, match="integer pixel values"):
        model.bits_per_dim(np.full((2,) + SHAPE, 0.5, "float32"))
    with pytest.raises(ValueError, match="integer pixel values"):
        model.bits_per_dim(np.full((2,) + SHAPE, 256, "int32"))
    with pytest.raises(ValueError, match="empty batch"):
        model.bits_per_dim(np.zeros((0,) + SHAPE, "uint8"))
    with pytest.raises(ValueError, match="shape"):
        model.bits_per_dim(np.zeros((2, 3, 3, 1), "uint8"))
    with pytest.raises(ValueError, match="NaN"):
        model.bits_per_dim(np.full((2,) + SHAPE, np.nan, "float32"))
    with pytest.raises(ValueError, match="dequantizer models"):
        tfflows.FlowModel(L.FlowSequence([L.ActNorm()]), data_shape=(4, 4, 1),
                          dequantizer=L.VariationalDequantizer(SHAPE))
    with pytest.raises(ValueError, match="data_shape"):
        L.VariationalDequantizer((4,))
    with pytest.raises(ValueError, match="couplings"):
        L.VariationalDequantizer(SHAPE, couplings=0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel export is TensorFlow-only")
def test_export_refuses_a_dequantizing_model(tmp_path):
    from tfflows import export

    model = small_model()
    model.initialize(pixels(8))
    with pytest.raises(NotImplementedError, match="variational dequantizer"):
        export.save(model, str(tmp_path / "served"))


def test_evaluate_bpd_of_a_dequantizing_model_estimates_its_bound():
    from tfflows import training

    model = small_model()
    x = pixels(40, seed=4)
    mean, se, per_draw = training.evaluate_bpd(model, x, draws=8, batch_size=20)
    bound = float(model.dequantized_bound(x, draws=32, seed=0).mean())
    assert len(per_draw) == 8 and len(set(per_draw)) == 8  # fresh noise every draw
    assert abs(mean - bound) < 4 * se + 0.05, (mean, se, bound)


def test_evaluation_noise_follows_the_seed_and_leaves_training_noise_alone():
    from tfflows import training

    model = small_model()
    x = pixels(20, seed=6)
    state = np.array(model.dequantizer.seed_generator.state.value)
    a = training.bpd_per_draw(model, x, draws=2, batch_size=10, seed=3)
    b = training.bpd_per_draw(model, x, draws=2, batch_size=10, seed=3)
    c = training.bpd_per_draw(model, x, draws=2, batch_size=10, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(np.array(model.dequantizer.seed_generator.state.value), state)


def test_top_bin_stays_below_one_and_apps_refuse_the_bound():
    from tfflows import apps
    from tfflows.zoo.presets import WeightsError

    model = small_model()
    y = to_np(model._dequantized(np.full((1,) + SHAPE, 255.0, "float32"), np.full((1,) + SHAPE, 1.0, "float32")))
    assert np.all(y < 1.0)
    with pytest.raises(ValueError, match="variational dequantizer"):
        apps.ood_score(model, np.full((2,) + SHAPE, 0.5, "float32"))
    with pytest.raises(ValueError, match="variational dequantizer"):
        apps.inpaint(model, np.full(SHAPE, 0.5, "float32"), np.zeros(SHAPE, bool))
    with pytest.raises(WeightsError, match="variational dequantizer"):
        tfflows.zoo.glow(preset="cifar10", pretrained=True, dequantize="variational")


def test_a_fresh_dequantizer_starts_as_uniform_noise():
    """At init `u = sigmoid(1.702 eps)` ~ Phi(eps): near U(0, 1), so a flow
    trained with uniform noise keeps its bound when a dequantizer is added.
    KL(q || U) = E_q[log q] per dimension is small, and u's quantiles are
    the uniform's."""
    for shape in (SHAPE, (4, 4, 3)):
        deq = L.VariationalDequantizer(shape, couplings=4, hidden=8, features=4, seed=0)
        x = np.random.default_rng(0).integers(0, 256, (4000,) + shape).astype("float32")
        u, log_q = deq(x)
        kl = to_np(log_q).mean() / math.prod(shape)
        # sigmoid(1.702 e) for e ~ N(0, 1): KL from uniform 0.0100 nats (quadrature).
        assert abs(kl - 0.0100) < 0.004, kl
        p = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
        expected = 1 / (1 + np.exp(-1.702 * np.array([-1.6449, -0.6745, 0.0, 0.6745, 1.6449])))  # Phi^-1(p)
        np.testing.assert_allclose(np.quantile(to_np(u).ravel(), p), expected, atol=0.005)
