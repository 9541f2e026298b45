"""Variational inference: the VI layers' constraints and solves, the builders,
reverse-KL fitting, the bounds, the 2-D energies, and their errors.

The contract suite (`test_contract.py`) already checks every VI layer's
round trips, float64 log-dets against the autodiff Jacobian, context and
fit step on TensorFlow and JAX; this file checks what is specific to VI.
`test_fit_and_path_derivative_under_jax` reruns the fitting checks in a
JAX subprocess.
"""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

import tfflows
from conftest import to_np
from tfflows import datasets, vi
from tfflows.layers import Planar, Radial, Sylvester
from tfflows.layers.vi import householder_matrix, orthogonalize, planar_u_hat, radial_radius, solve_planar

# A correlated 2-D Gaussian target with a known normaliser.
COV = np.array([[1.0, 0.8], [0.8, 1.0]])
PREC = np.linalg.inv(COV).astype("float32")
LOG_Z = 0.5 * math.log(np.linalg.det(2 * math.pi * COV))


def gaussian_target(z):
    return -0.5 * ops.sum(ops.matmul(z, PREC) * z, axis=1)


def _weights(layer):
    return {v.name: v for v in layer.weights}


def _perturb(layer, scale, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        w.assign(w.value + scale * rng.standard_normal(tuple(w.shape)).astype(w.dtype))


# -- invertibility constraints ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_planar_constraint_holds_after_random_perturbation(seed):
    layer = Planar(seed=seed)
    layer.inverse(np.zeros((2, 3), "float32"))
    _perturb(layer, 3.0, seed)
    w = _weights(layer)
    u, ww = to_np(w["u"]).astype("float64"), to_np(w["w"]).astype("float64")
    assert float(np.dot(to_np(planar_u_hat(ops.convert_to_tensor(u), ops.convert_to_tensor(ww))), ww)) > -1.0
    # Amortised: the constraint holds for every example's parameters, and
    # the log-det stays finite even where w^T u_hat rounds to -1 in float32.
    amortised = Planar(context_shape=(2,))
    amortised.inverse(np.zeros((2, 3), "float32"), context=np.zeros((2, 2), "float32"))
    _perturb(amortised, 3.0, seed)
    rng = np.random.default_rng(seed)
    context = 5.0 * rng.standard_normal((256, 2)).astype("float32")
    _, _, _, c, sp = amortised._planar_params(ops.convert_to_tensor(context), ops.zeros((256, 3)))
    assert np.all(to_np(sp) > 0) and np.all(to_np(c) >= -1.0)
    _, ld = amortised.inverse(rng.standard_normal((256, 3)).astype("float32"), context=context)
    assert np.all(np.isfinite(to_np(ld)))


def test_planar_log_det_is_finite_where_the_constraint_is_tight():
    # w^T u = -50: w^T u_hat = -1 + 2e-22, which is -1 in float32; at
    # w^T z + b = 0 the log-det is log(softplus(-50)) = -50, not -inf.
    layer = Planar(seed=0)
    layer.inverse(np.zeros((1, 2), "float32"))
    w = _weights(layer)
    w["w"].assign(np.array([1.0, 0.0], "float32"))
    w["u"].assign(np.array([-50.0, 0.0], "float32"))
    w["b"].assign(np.zeros((1,), "float32"))
    x, ld = layer.inverse(np.array([[0.0, 1.0]], "float32"))
    np.testing.assert_allclose(to_np(ld), [-50.0], rtol=1e-5)
    z, fld = layer.forward(to_np(x))
    assert np.all(np.isfinite(to_np(fld))) and np.all(np.isfinite(to_np(z)))


@pytest.mark.parametrize("seed", range(5))
def test_radial_keeps_beta_at_least_minus_alpha_after_random_perturbation(seed):
    layer = Radial(seed=seed)
    z = np.random.default_rng(seed).standard_normal((64, 3)).astype("float32")
    layer.inverse(z)
    _perturb(layer, 3.0, seed)
    w = _weights(layer)
    alpha = np.logaddexp(0.0, to_np(w["alpha"]))
    beta = -alpha + np.logaddexp(0.0, to_np(w["beta"]))
    assert np.all(beta >= -alpha) and np.all(alpha > 0)
    # ... so the map stays invertible: the log-det is finite and the round trip closes.
    x, ld = layer.inverse(z)
    assert np.all(np.isfinite(to_np(ld)))
    np.testing.assert_allclose(to_np(layer.forward(x)[0]), z, atol=1e-4)


def test_sylvester_diagonal_keeps_the_map_invertible_after_random_perturbation():
    layer = Sylvester("orthogonal", m=2, seed=0)
    z = np.random.default_rng(0).standard_normal((256, 3)).astype("float32")
    layer.inverse(z)
    _perturb(layer, 3.0)
    _, ld = layer.inverse(z)
    assert np.all(np.isfinite(to_np(ld)))  # every 1 + R_ii R~_ii h' stays > 0


# -- the solves and the orthogonal matrices ---------------------------------------------------------------
@pytest.mark.parametrize("tolerance", [1e-2, 1e-5, 1e-10])
def test_planar_solve_converges_to_the_stated_tolerance(tolerance):
    rng = np.random.default_rng(0)
    s = 4.0 * rng.standard_normal(200)
    c = np.concatenate([-1.0 + 1e-12 * np.ones(50), rng.uniform(-0.99, 5.0, 150)])  # near-singular too
    b = rng.standard_normal(200)
    a, res, iterations = solve_planar(*(ops.convert_to_tensor(v) for v in (s, c, b)), tolerance, 50)
    a, res = to_np(a), to_np(res)
    scale = tolerance * (1 + np.abs(s) + np.abs(c))
    assert np.all(np.abs(res) <= scale), "the residual missed the tolerance"
    assert int(to_np(iterations)) < 50
    np.testing.assert_allclose(a + c * np.tanh(a + b) - s, res, atol=1e-12)


def test_planar_forward_round_trip_is_within_the_tolerance_bound():
    tol = 1e-3
    layer = Planar(tolerance=tol, seed=1, dtype="float64")
    z = 3.0 * np.random.default_rng(1).standard_normal((100, 4))
    layer.inverse(z)
    _perturb(layer, 1.0, 1)
    x = to_np(layer.inverse(z)[0])
    z2 = to_np(layer.forward(x)[0])
    w = _weights(layer)
    u_hat = to_np(planar_u_hat(w["u"].value, w["w"].value))
    c = float(np.dot(u_hat, to_np(w["w"])))
    bound = np.linalg.norm(u_hat) * tol * (1 + np.abs(x @ to_np(w["w"])) + abs(c))
    assert np.all(np.linalg.norm(z2 - z, axis=1) <= bound)


def test_planar_forward_outside_the_range_raises_naming_the_layer():
    layer = Planar(seed=0, name="p0")
    x = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    layer.forward(x)
    bad = x.copy()
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"Planar 'p0' forward found no pre-image .* 1 of 4 rows \(rows \[2\]\)"):
        layer.forward(bad)
    stingy = Planar(tolerance=1e-12, max_iterations=1, seed=0)
    with pytest.raises(ValueError, match=r"Planar .* after 1 iterations .*max_iterations=1"):
        stingy.forward(10.0 * x)


def test_orthogonalize_and_householder_give_orthonormal_columns():
    a = np.random.default_rng(0).standard_normal((8, 6, 4))
    q = to_np(orthogonalize(ops.convert_to_tensor(a)))
    np.testing.assert_allclose(np.swapaxes(q, 1, 2) @ q, np.broadcast_to(np.eye(4), (8, 4, 4)), atol=1e-12)
    # The orthogonal polar factor: the same column space as a.
    proj = q @ np.swapaxes(q, 1, 2)
    np.testing.assert_allclose(proj @ a, a, atol=1e-10)
    h = to_np(householder_matrix(ops.convert_to_tensor(np.random.default_rng(1).standard_normal((8, 3, 5)))))
    np.testing.assert_allclose(np.swapaxes(h, 1, 2) @ h, np.broadcast_to(np.eye(5), (8, 5, 5)), atol=1e-12)


def test_radial_radius_solves_the_quadratic():
    rng = np.random.default_rng(0)
    rho, alpha, sp = rng.uniform(0, 5, 100), rng.uniform(0.01, 3, 100), rng.uniform(1e-4, 3, 100)
    r = to_np(radial_radius(*(ops.convert_to_tensor(v) for v in (rho, alpha, sp))))
    assert np.all(r >= 0)
    np.testing.assert_allclose(r * (sp + r) / (alpha + r), rho, rtol=1e-12, atol=1e-14)


def test_sylvester_log_det_uses_the_orthonormality_of_q_in_float64():
    # log|det| from the diagonal formula against slogdet of the exact Jacobian
    # I + Q R diag(h') R~ Q^T, for O-SNF with m < D.
    layer = Sylvester("orthogonal", m=3, seed=3, dtype="float64")
    z = np.random.default_rng(3).standard_normal((5, 6))
    layer.inverse(z)
    _perturb(layer, 0.5, 3)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("written with tf.GradientTape")
    import tensorflow as tf

    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        x, ld = layer.inverse(zt)
    jac = tape.batch_jacobian(x, zt).numpy()
    np.testing.assert_allclose(ld.numpy(), np.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-12)


# -- argument and shape errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: Planar(seed=0, context_shape=(3,)),
    lambda: Radial(seed=0, context_shape=(3,)),
    lambda: Sylvester(kind="orthogonal", seed=0, context_shape=(3,)),
    lambda: Sylvester(kind="householder", seed=0, context_shape=(3,)),
    lambda: Sylvester(kind="triangular", seed=0, context_shape=(3,)),
], ids=["planar", "radial", "o-snf", "h-snf", "t-snf"])
def test_an_amortised_layer_is_finite_for_a_zero_context(make):
    # A zero context (an ELU/ReLU encoder's output for an all-zero image)
    # leaves only the amortisation bias; it starts at the free layer's
    # initial values, so w, Q and the reflection vectors are not zero.
    layer = make()
    z = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    x, log_det = layer.inverse(z, context=np.zeros((5, 3), "float32"))
    assert np.all(np.isfinite(to_np(x))) and np.all(np.isfinite(to_np(log_det)))


def test_sylvester_m_larger_than_the_dimension_raises():
    with pytest.raises(ValueError, match=r"m <= D.*m=5 for inputs of D=3"):
        Sylvester("orthogonal", m=5).inverse(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"m=5, dim=3"):
        tfflows.zoo.sylvester(3, m=5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="qr"), "kind must be one of"),
    (dict(kind="orthogonal", n_reflections=2), "n_reflections applies to kind='householder'"),
    (dict(kind="householder", reverse=True), "reverse=True applies to kind='triangular'"),
    (dict(kind="orthogonal", m=0), "m >= 1"),
], ids=["kind", "reflections", "reverse", "m0"])
def test_sylvester_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sylvester(**kwargs)


def test_planar_bad_options_raise():
    with pytest.raises(ValueError, match="tolerance must be in"):
        Planar(tolerance=0.0)
    with pytest.raises(ValueError, match="max_iterations >= 1"):
        Planar(max_iterations=0)


def test_sylvester_forward_is_unavailable():
    q = tfflows.zoo.sylvester(2, flows=2, kind="triangular", seed=0)
    with pytest.raises(NotImplementedError, match="no forward direction"):
        q.log_prob(np.zeros((2, 2), "float32"))
    with pytest.raises(NotImplementedError, match="Sylvester 'sylvester0' has no forward direction"):
        q.flow.flow_layers[0].forward(np.zeros((2, 2), "float32"))


# -- builders ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda: tfflows.zoo.planar(3, flows=3, seed=0),
    lambda: tfflows.zoo.radial(3, flows=3, seed=0),
    lambda: tfflows.zoo.householder(3, flows=2, n_reflections=2, seed=0),
    lambda: tfflows.zoo.planar(3, flows=2, context_dim=2, seed=0),
], ids=["planar", "radial", "householder", "planar-amortised"])
def test_builders_sample_in_one_pass_with_the_models_density(build):
    q = build()
    context = None if q.context_shape is None else np.random.default_rng(0).standard_normal((6, 2)).astype("float32")
    _perturb(q.flow, 0.3)
    z, log_q = q.sample_and_log_prob(6, context=context, seed=0)
    assert q.flow.inverse_mode == "analytic"
    np.testing.assert_allclose(to_np(q.log_prob(z, context=context)), to_np(log_q), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["orthogonal", "householder", "triangular"])
def test_sylvester_builder_samples_with_a_finite_log_density(kind):
    q = tfflows.zoo.sylvester(4, flows=3, kind=kind, m=2 if kind == "orthogonal" else None, seed=0)
    z, log_q = q.sample_and_log_prob(5, seed=0)
    assert tuple(z.shape) == (5, 4) and np.all(np.isfinite(to_np(log_q)))
    if kind == "triangular":
        assert [l.reverse for l in q.flow.flow_layers[:3]] == [False, True, False]


# -- fitting --------------------------------------------------------------------------------------------------
def test_fit_to_density_lowers_the_kl_to_near_zero():
    q = tfflows.zoo.planar(2, flows=4, seed=0)
    before = float(vi.elbo(gaussian_target, q, 4000, seed=1))
    history = vi.fit_to_density(gaussian_target, q, steps=200, batch_size=128,
                                optimizer=keras.optimizers.Adam(1e-2))
    after = float(vi.elbo(gaussian_target, q, 4000, seed=1))
    assert history["elbo"].shape == (200,) and np.all(np.isfinite(history["elbo"]))
    assert LOG_Z - before > 0.5, "the untrained q is already close"
    assert LOG_Z - after < 0.03, f"KL = {LOG_Z - after:.3f} after 200 steps"
    assert history["elbo"][-20:].mean() > history["elbo"][:20].mean()


def test_path_derivative_drops_the_score_term():
    # q = N(0, I) exactly at initialisation (a Householder flow after an
    # identity affine), and the target is N(0, I): every path-derivative
    # gradient is zero (q = p), while the plain reparameterised gradient is
    # not (its score term has zero mean, not zero value). Plain SGD shows it.
    def normal(z):
        return -0.5 * ops.sum(ops.square(z), axis=1) - math.log(2 * math.pi)

    moved = {}
    for pd in (False, True):
        q = tfflows.zoo.householder(2, seed=0)
        before = [to_np(w).copy() for w in q.trainable_weights]
        vi.fit_to_density(normal, q, steps=3, batch_size=16, optimizer=keras.optimizers.SGD(0.1),
                          path_derivative=pd)
        moved[pd] = max(np.abs(to_np(w) - b).max() for w, b in zip(q.trainable_weights, before))
    assert moved[True] < 1e-5, moved
    assert moved[False] > 1e-3, moved


def test_path_derivative_fit_also_converges():
    q = tfflows.zoo.planar(2, flows=4, seed=0)
    vi.fit_to_density(gaussian_target, q, steps=200, batch_size=128, optimizer=keras.optimizers.Adam(1e-2),
                      path_derivative=True)
    assert LOG_Z - float(vi.elbo(gaussian_target, q, 4000, seed=1)) < 0.03


@pytest.mark.parametrize("kind", ["orthogonal", "householder"])
def test_sylvester_fit_step_compiles_under_xla(kind):
    # The orthogonalisation loop must differentiate under XLA (Keras' "auto"
    # turns XLA on for TensorFlow on GPUs): TF's gradient of a while loop
    # needs maximum_iterations there.
    q = tfflows.zoo.sylvester(2, flows=2, kind=kind, seed=0)
    history = vi.fit_to_density(gaussian_target, q, steps=2, batch_size=16, jit_compile=True)
    assert np.all(np.isfinite(history["elbo"]))


def test_iw_bound_is_above_the_elbo_and_approaches_log_z():
    q = tfflows.zoo.householder(2, seed=0)  # N(0, I), not the target
    e = float(vi.elbo(gaussian_target, q, 20000, seed=1))
    iw = [float(vi.iw_bound(gaussian_target, q, n, k, seed=2)) for n, k in ((20000, 1), (2000, 10), (200, 100))]
    assert abs(iw[0] - e) < 0.05, (iw, e)  # k = 1 is the ELBO
    assert e < iw[1] < iw[2] <= LOG_Z + 0.01, (e, iw, LOG_Z)
    assert LOG_Z - iw[2] < 0.25 * (LOG_Z - e)


def test_conditional_fit_and_bounds_take_one_row_per_context():
    # p(z | c) = N(c, I): log Z = log(2 pi) for every c; q amortised from c.
    def target(z, c):
        return -0.5 * ops.sum(ops.square(z - c), axis=1)

    context = np.array([[1.5, -1.0], [-2.0, 0.5]], "float32")
    q = tfflows.zoo.planar(2, flows=2, context_dim=2, seed=0)
    vi.fit_to_density(target, q, steps=200, batch_size=64, optimizer=keras.optimizers.Adam(2e-2), context=context)
    e = to_np(vi.elbo(target, q, 2000, context=context, seed=1))
    iw = to_np(vi.iw_bound(target, q, 50, 20, context=context, seed=1))
    assert e.shape == (2,) and iw.shape == (2,)
    assert np.all(math.log(2 * math.pi) - e < 0.1), e


# -- errors -----------------------------------------------------------------------------------------------------
def test_a_target_returning_nan_raises_naming_the_step_and_the_count():
    def bad(z):  # NaN wherever z1 < 0: about half of the samples
        return ops.log(z[:, 0])

    q = tfflows.zoo.planar(2, flows=2, seed=0)
    with pytest.raises(ValueError, match=r"NaN or Inf for \d+ of 64 samples at step 1 \(of 10\)"):
        vi.fit_to_density(bad, q, steps=10, batch_size=64)
    assert all(np.all(np.isfinite(to_np(w))) for w in q.weights), "the weights were left non-finite"


def test_a_target_of_the_wrong_shape_raises():
    q = tfflows.zoo.planar(2, flows=1, seed=0)
    with pytest.raises(ValueError, match=r"shape \(n,\).*returned shape \(8, 2\)"):
        vi.elbo(lambda z: z, q, 8)


def test_a_context_of_the_wrong_size_raises():
    q = tfflows.zoo.planar(2, flows=1, context_dim=3, seed=0)
    with pytest.raises(ValueError, match=r"expects a context of shape \(batch, 3\), got \(4, 2\)"):
        vi.fit_to_density(lambda z, c: -ops.sum(z * z, axis=1), q, steps=1, context=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="needs a context"):
        vi.fit_to_density(lambda z, c: -ops.sum(z * z, axis=1), q, steps=1)
    with pytest.raises(ValueError, match="unconditional"):
        vi.fit_to_density(gaussian_target, tfflows.zoo.planar(2, flows=1), steps=1, context=np.zeros((4, 3)))


def test_path_derivative_needs_a_forward_direction():
    q = tfflows.zoo.sylvester(2, flows=1, seed=0)
    with pytest.raises(ValueError, match="path_derivative=True .* Sylvester"):
        vi.fit_to_density(gaussian_target, q, steps=1, path_derivative=True)


# -- energies ------------------------------------------------------------------------------------------------------
def test_energies_match_the_papers_formulas_inside_the_box():
    z = np.random.default_rng(0).uniform(-4, 4, (500, 2))
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    u = {
        "U1": 0.5 * ((np.linalg.norm(z, axis=1) - 2) / 0.4) ** 2
        - np.log(np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)),
        "U2": 0.5 * ((z2 - w1) / 0.4) ** 2,
        "U3": -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)),
        "U4": -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)),
    }
    for name in datasets.ENERGIES:
        np.testing.assert_allclose(to_np(datasets.energy(name, z.astype("float32"))), -u[name], rtol=1e-4,
                                   atol=1e-3, err_msg=name)


def test_energy_log_z_by_quadrature_matches_the_closed_form_of_u2():
    closed = math.log(0.4 * math.sqrt(2 * math.pi) * (8 + 0.2 * math.sqrt(2 * math.pi)))
    assert abs(datasets.energy_log_z("U2") - closed) < 1e-10
    values = [datasets.energy_log_z(n) for n in datasets.ENERGIES]
    assert all(np.isfinite(values))


def test_energy_errors():
    with pytest.raises(ValueError, match="Unknown energy"):
        datasets.energy("U5", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        datasets.energy("U1", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Unknown energy"):
        datasets.energy_log_z("u1")


@pytest.mark.slow
# -- JAX ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="this test launches the JAX run")
def test_fit_and_path_derivative_under_jax():
    pytest.importorskip("jax")
    script = textwrap.dedent("""
        import math, keras, numpy as np, tfflows
        from keras import ops
        from tfflows import vi, datasets
        assert keras.backend.backend() == "jax"
        prec = np.linalg.inv(np.array([[1.0, 0.8], [0.8, 1.0]])).astype("float32")
        log_z = 0.5 * math.log(np.linalg.det(2 * math.pi * np.array([[1.0, 0.8], [0.8, 1.0]])))
        target = lambda z: -0.5 * ops.sum(ops.matmul(z, prec) * z, axis=1)
        q = tfflows.zoo.planar(2, flows=4, seed=0)
        h = vi.fit_to_density(target, q, steps=200, batch_size=128, optimizer=keras.optimizers.Adam(1e-2))
        assert log_z - float(vi.elbo(target, q, 4000, seed=1)) < 0.03
        normal = lambda z: -0.5 * ops.sum(ops.square(z), axis=1) - math.log(2 * math.pi)
        for pd, check in ((True, lambda m: m < 1e-5), (False, lambda m: m > 1e-3)):
            q = tfflows.zoo.householder(2, seed=0)
            before = [np.asarray(w).copy() for w in q.trainable_weights]
            vi.fit_to_density(normal, q, steps=3, batch_size=16, optimizer=keras.optimizers.SGD(0.1),
                              path_derivative=pd)
            moved = max(np.abs(np.asarray(w) - b).max() for w, b in zip(q.trainable_weights, before))
            assert check(moved), (pd, moved)
        q = tfflows.zoo.sylvester(2, flows=2, seed=0)
        h = vi.fit_to_density(lambda z: datasets.energy("U1", z), q, steps=20, batch_size=64)
        assert np.all(np.isfinite(h["elbo"]))
        try:
            vi.fit_to_density(lambda z: ops.log(z[:, 0]), tfflows.zoo.planar(2, flows=1), steps=5, batch_size=64)
        except ValueError as e:
            assert "NaN or Inf" in str(e) and "at step 1" in str(e), e
        else:
            raise AssertionError("no error for a NaN target")
        print("JAX OK")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0 and "JAX OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
