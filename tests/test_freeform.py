"""Residual flows (`ResidualBlock`, `zoo.resflow`) and continuous flows
(`ContinuousFlow`, `zoo.ffjord`), beyond the contract suite: the stated
tolerances, the spectral normalisation, the Neumann gradient, TFP's FFJORD
as a cross-check, and the errors."""

import keras
import numpy as np
import pytest

from conftest import backend, to_np
from tfflows import layers as L

TF_ONLY = pytest.mark.skipif(backend() != "tensorflow", reason="uses tf.GradientTape / TFP")


def _perturbed(layer, x, scale=0.3, seed=0, context=None):
    layer.forward(x, context=context)
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        w.assign(w.value + (scale * rng.standard_normal(tuple(w.shape))).astype(w.dtype))
    return layer


# -- ResidualBlock ------------------------------------------------------------------------
@pytest.mark.parametrize("shape,hidden", [((64, 6), (32, 32)), ((8, 6, 6, 3), (16, 16))], ids=["vector", "image"])
def test_fixed_point_inverse_error_at_the_default_tolerance(shape, hidden):
    """The inverse's error is at most 1e-5 with the defaults (lipschitz 0.97)."""
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    layer = _perturbed(L.ResidualBlock(hidden=hidden, seed=0), x, scale=1.0)
    y = layer.forward(x)[0]
    assert np.max(np.abs(to_np(y) - x)) > 0.05, "g is nearly zero: the test would be trivial"
    back = to_np(layer.inverse(y)[0])
    err = np.max(np.abs(back - x))
    print(f"fixed-point inverse error {err:.2e}")
    assert err <= 1e-5


@pytest.mark.parametrize("image", [False, True], ids=["dense", "conv"])
def test_every_normalised_kernel_has_operator_norm_at_most_the_coefficient(image):
    shape = (2, 5, 5, 3) if image else (2, 7)
    x = np.random.default_rng(0).standard_normal(shape).astype("float64")
    layer = L.ResidualBlock(hidden=(6, 5), lipschitz=0.8, seed=0, dtype="float64")
    _perturbed(layer, x, scale=2.0)
    for kernel in layer._normalized_kernels("float64", False):  # noqa: SLF001 - the layer's own maps
        k = to_np(kernel)
        if image:  # the convolution operator on a 5x5 image, as a dense matrix
            cin = k.shape[2]
            eye = np.eye(25 * cin).reshape(25 * cin, 5, 5, cin)
            matrix = to_np(keras.ops.conv(eye, k, padding="same")).reshape(25 * cin, -1)
        else:
            matrix = k
        norm = np.linalg.norm(matrix, 2)
        # Power iteration underestimates sigma slightly (20 steps from a stale
        # vector after this large perturbation: 0.09 % for the convolution).
        assert norm <= 0.8 * (1 + 2e-3), f"operator norm {norm:.6f} > 0.8"
        assert norm >= 0.8 * (1 - 1e-2), "scaled by more than its norm: the coefficient is not reached"
    # The convolution's transpose (power iteration, Jacobian products) is its adjoint.
    if image:
        rng = np.random.default_rng(3)
        k = rng.standard_normal((3, 3, 3, 4))
        a, b = rng.standard_normal((1, 5, 5, 3)), rng.standard_normal((1, 5, 5, 4))
        lhs = np.sum(to_np(keras.ops.conv(a, k, padding="same")) * b)
        rhs = np.sum(a * to_np(keras.ops.conv_transpose(b, k, strides=1, padding="same")))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


def test_training_updates_the_stored_power_vectors():
    x = np.random.default_rng(0).standard_normal((4, 5)).astype("float32")
    layer = _perturbed(L.ResidualBlock(hidden=(8,), seed=0), x, scale=1.0)
    before = [to_np(v).copy() for v in layer.non_trainable_weights if "power_vector" in v.path]
    layer.forward(x)
    assert all(np.array_equal(b, to_np(v)) for b, v in zip(before, [v for v in layer.non_trainable_weights
                                                                      if "power_vector" in v.path]))
    layer.forward(x, training=True)
    after = [to_np(v) for v in layer.non_trainable_weights if "power_vector" in v.path]
    assert any(not np.allclose(b, a) for b, a in zip(before, after))


@TF_ONLY
def test_roulette_gradient_is_the_exact_log_det_gradient_on_average():
    """The Neumann-series gradient estimator (Residual Flows, eq. 8) is
    unbiased: averaged over 300 draws (of 400 probes each), the gradient of
    the estimated log-det with respect to every kernel is the exact
    log-det's. A block at its Lipschitz cap with one exact term makes the
    random terms matter (a gradient whose random terms were weighted one
    step off came out about 5 % large here, z-scores 7 to 12)."""
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((1, 2))
    layer = L.ResidualBlock(hidden=(8,), lipschitz=0.95, n_exact_terms=1, seed=3, dtype="float64")
    layer.forward(x)
    kernels = [w for w in layer.trainable_weights if "kernel" in w.path]
    for k in kernels:
        k.assign(k * 20.0)  # every kernel at its spectral cap 0.95 (|J_g| is 0.2 at this point)
    with tf.GradientTape() as tape:
        exact_value = tf.reduce_sum(layer.exact_log_det(tf.constant(x)))
    exact = np.concatenate([to_np(t).ravel() for t in tape.gradient(exact_value, kernels)])
    reps, calls = 400, 300
    xs = tf.constant(np.repeat(x, reps, axis=0))

    @tf.function
    def draw():
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(layer.forward(xs)[1]) / reps
        return value, tape.gradient(value, kernels)

    values, grads = [], []
    for _ in range(calls):
        value, g = draw()
        values.append(float(value))
        grads.append(np.concatenate([to_np(t).ravel() for t in g]))
    grads = np.array(grads)
    mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(calls)
    z = np.abs(mean - exact) / se
    slope = float(np.dot(mean, exact) / np.dot(exact, exact))
    value_z = abs(np.mean(values) - float(exact_value)) / (np.std(values, ddof=1) / np.sqrt(calls))
    print(f"gradient |z| median {np.median(z):.2f}, max {z.max():.2f}, slope {slope:.4f}; log-det z {value_z:.2f}")
    # The 17 gradients share each draw's series length, so their z-scores move
    # together (one draw of 1,500 calls gave median 1.4, slope 0.994); the
    # mis-weighted estimator gave slope 1.056, median |z| 7.5.
    assert value_z < 4
    assert np.median(z) < 3 and z.max() < 5, f"gradient z-scores {np.sort(z)[-5:]}"
    assert abs(slope - 1) < 0.025


def test_residual_block_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"Lipschitz coefficient in \(0, 1\)"):
        L.ResidualBlock(lipschitz=1.0)
    with pytest.raises(ValueError, match="log_det must be one of"):
        L.ResidualBlock(log_det="hutch")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    layer = _perturbed(L.ResidualBlock(hidden=(8,), max_iterations=2, seed=0), x, scale=1.0)
    with pytest.raises(ValueError, match=r"ResidualBlock '.*' inverse did not converge.*residual"):
        layer.inverse(x)
    ok = L.ResidualBlock(hidden=(8,), seed=0)
    ok.forward(x)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="did not converge"):
        ok.inverse(bad)


def test_series_estimator_bias_is_within_its_bound_and_shrinks_with_terms():
    x = np.random.default_rng(0).standard_normal((2, 4))
    biases = []
    for n in (1, 2, 6):
        layer = _perturbed(L.ResidualBlock(hidden=(8,), lipschitz=0.9, log_det="series", n_terms=n, seed=4,
                                           dtype="float64"), x, scale=0.6)
        bound = to_np(layer.log_det_bias_bound(x))
        exact = to_np(layer.exact_log_det(x))
        calls = np.array([to_np(layer.forward(np.repeat(x, 200, axis=0))[1]).reshape(2, 200).mean(axis=1)
                          for _ in range(10)])
        est, se = calls.mean(axis=0), calls.std(axis=0, ddof=1) / np.sqrt(len(calls))
        biases.append(np.abs(est - exact))
        print(f"series n_terms={n}: bias {est - exact}, bound {bound}, SE {se}")
        assert np.all(np.abs(est - exact) <= bound + 3 * se)
    assert np.all(biases[-1] < biases[0]) or np.all(biases[0] <= 3 * se)


# -- ContinuousFlow ------------------------------------------------------------------------
@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_ode_round_trip_error_at_the_stated_tolerance(tol):
    x = np.random.default_rng(0).standard_normal((16, 2))
    layer = _perturbed(L.ContinuousFlow(hidden=(16,), rtol=tol, atol=tol, seed=0, dtype="float64"), x, scale=1.0)
    y = to_np(layer.forward(x)[0])
    assert np.max(np.abs(y - x)) > 0.1
    err = np.max(np.abs(to_np(layer.inverse(y)[0]) - x) / (1 + np.abs(x)))
    print(f"tolerance {tol:g}: round-trip error {err:.2e}")
    # dopri5 controls the local error per step; the global error of the two
    # solves came out 56x (1e-4) and 64x (1e-6) the tolerance with TFP, and
    # 350x and 210x with JAX's odeint (which steps past t = T and interpolates
    # back with its dense output).
    assert err <= (100 if backend() == "tensorflow" else 500) * tol


@pytest.mark.slow
@TF_ONLY
def test_adjoint_and_direct_gradients_agree():
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((8, 2))
    grads = {}
    for mode in ("adjoint", "direct"):
        keras.utils.set_random_seed(0)
        layer = _perturbed(L.ContinuousFlow(hidden=(8,), gradient=mode, rtol=1e-9, atol=1e-9, seed=0,
                                            dtype="float64"), x, scale=1.0)
        with tf.GradientTape() as tape:
            y, ld = layer.forward(x)
            loss = tf.reduce_sum(0.5 * tf.square(y)) - tf.reduce_sum(ld)
        grads[mode] = np.concatenate([to_np(g).ravel() for g in tape.gradient(loss, layer.trainable_variables)])
    np.testing.assert_allclose(grads["adjoint"], grads["direct"], rtol=1e-5, atol=1e-7)
    # A fresh layer (near-zero dynamics) still gets finite direct gradients.
    fresh = L.ContinuousFlow(hidden=(8,), gradient="direct", seed=0)
    with tf.GradientTape() as tape:
        y, ld = fresh.forward(x.astype("float32"))
        loss = tf.reduce_sum(0.5 * tf.square(y)) - tf.reduce_sum(ld)
    assert all(np.all(np.isfinite(to_np(g))) for g in tape.gradient(loss, fresh.trainable_variables))


@pytest.mark.slow
@TF_ONLY
def test_log_det_matches_tfp_ffjord_on_the_same_dynamics():
    """TFP's `tfb.FFJORD` (exact trace) with our dynamics gives our latent
    and log-det to the solver tolerance."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    x = np.random.default_rng(0).standard_normal((5, 2))
    layer = _perturbed(L.ContinuousFlow(hidden=(8,), rtol=1e-9, atol=1e-9, seed=0, dtype="float64"), x, scale=1.0)
    weights = layer.dynamics_weights("float64")
    solver = tfp.math.ode.DormandPrince(rtol=1e-9, atol=1e-9)
    bij = tfp.bijectors.FFJORD(state_time_derivative_fn=lambda t, z: layer.dynamics(z, t, weights),
                               ode_solve_fn=solver.solve, trace_augmentation_fn=tfp.bijectors.ffjord.trace_jacobian_exact,
                               dtype=tf.float64)
    y = to_np(layer.forward(x)[0])
    ld = to_np(layer.forward(x)[1])
    # tfb.FFJORD's forward runs the ODE from t=0 to 1 as ours does.
    np.testing.assert_allclose(to_np(bij.forward(x)), y, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(to_np(bij.forward_log_det_jacobian(x, event_ndims=1)), ld, rtol=1e-6, atol=1e-8)


def test_continuous_flow_errors_name_the_problem():
    with pytest.raises(ValueError, match="trace must be one of"):
        L.ContinuousFlow(trace="approx")
    x = np.random.default_rng(0).standard_normal((4, 2)).astype("float32")
    if backend() == "tensorflow":
        layer = L.ContinuousFlow(hidden=(8,), max_num_steps=2, rtol=1e-9, atol=1e-9, seed=0)
        layer.build(x.shape)
        rng = np.random.default_rng(1)
        for w in layer.trainable_weights:
            w.assign(w.value + (3.0 * rng.standard_normal(tuple(w.shape))).astype("float32"))
        with pytest.raises(RuntimeError, match=r"ContinuousFlow '.*'.*max_num_steps=2"):
            layer.forward(x)
    layer = L.ContinuousFlow(hidden=(8,), seed=0)
    layer.build(x.shape)
    layer.trainable_weights[0].assign(np.full(tuple(layer.trainable_weights[0].shape), np.nan, "float32"))
    layer.trainable_weights[-1].assign(np.ones(tuple(layer.trainable_weights[-1].shape), "float32"))
    with pytest.raises((FloatingPointError, RuntimeError), match=r"ContinuousFlow '.*'.*(non-finite|failed)"):
        layer.forward(x)


# -- builders --------------------------------------------------------------------------------
@pytest.mark.slow  # FlowModel fits of both families run in the contract's one_compiled_fit_step
@pytest.mark.parametrize("builder", ["resflow", "ffjord"])
def test_builders_fit_two_moons_and_the_loss_falls(builder):
    from tfflows import datasets, zoo

    keras.utils.set_random_seed(0)
    x = datasets.toy("moons", 512, seed=0).astype("float32")
    if builder == "resflow":
        model = zoo.resflow((2,), blocks=3, hidden=(32, 32), seed=0)
        steps = 60
    else:
        model = zoo.ffjord((2,), hidden=(32, 32), trace="exact", rtol=1e-3, atol=1e-3, seed=0)
        steps = 25
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    before = float(np.mean(to_np(model.log_prob(x))))
    model.fit(x, batch_size=128, epochs=max(1, steps // 4), verbose=0)
    after = float(np.mean(to_np(model.log_prob(x))))
    print(f"{builder}: mean log p {before:.3f} -> {after:.3f}")
    assert after > before + 0.2
    sample = to_np(model.sample(64, seed=1))
    assert sample.shape == (64, 2) and np.all(np.isfinite(sample))


@pytest.mark.parametrize("builder,squeeze", [("resflow", True), ("ffjord", False), ("ffjord", True)])
def test_image_builders_give_bits_per_dim(builder, squeeze):
    from tfflows import zoo

    x = np.random.default_rng(0).uniform(0, 1, (2, 4, 4, 1)).astype("float32")
    if builder == "resflow":
        model = zoo.resflow((4, 4, 1), blocks=1, hidden=(4,), squeeze=squeeze, seed=0)
    else:
        model = zoo.ffjord((4, 4, 1), hidden=(4,), rtol=1e-3, atol=1e-3, squeeze=squeeze, seed=0)
    bpd = to_np(model.bits_per_dim(x))
    assert bpd.shape == (2,) and np.all(np.isfinite(bpd)) and np.all(bpd > 0)
    assert tuple(model.latent_shape) == ((2, 2, 4) if squeeze else (4, 4, 1))
