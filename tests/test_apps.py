"""tfflows.apps: interpolation, attribute manipulation, inpainting and
out-of-distribution scores, checked against closed forms where a flow's
density is known (a linear flow is a Gaussian)."""

import numpy as np
import pytest

import tfflows
from tfflows import apps
from tfflows.apps import inpainting as inpaint_module
from tfflows.apps import ood
from tfflows.layers.linear import LULinear
from tfflows.models import FlowModel


def _gaussian_model(dim=3, seed=0):
    """A FlowModel with one random LULinear layer: x ~ N(mu, (W^T W)^-1)."""
    layer = LULinear(seed=seed)
    model = FlowModel([layer], data_shape=(dim,), n_bits=None)
    model(np.zeros((1, dim), "float32"))
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(np.asarray(v.numpy()) + rng.normal(0.0, 0.4, size=v.shape).astype("float32"))
    b = np.asarray(model.encode(np.zeros((1, dim), "float32")), "float64")[0]
    w = (np.asarray(model.encode(np.eye(dim, dtype="float32")), "float64") - b).T  # z = W x + b
    precision = w.T @ w
    mean = -np.linalg.solve(w, b)
    return model, mean, precision


def _conditional(mean, precision, x, hidden):
    h, o = hidden, ~hidden
    cov_h = np.linalg.inv(precision[np.ix_(h, h)])
    mu_h = mean[h] - cov_h @ precision[np.ix_(h, o)] @ (x[o] - mean[o])
    return mu_h, cov_h


def test_linear_flow_is_the_gaussian_the_tests_assume():
    model, mean, precision = _gaussian_model()
    x = np.random.default_rng(1).normal(size=(5, 3))
    d = x - mean
    expected = 0.5 * np.log(np.linalg.det(precision)) - 1.5 * np.log(2 * np.pi) - 0.5 * np.einsum(
        "ni,ij,nj->n", d, precision, d)
    np.testing.assert_allclose(np.asarray(model.log_prob(x.astype("float32"))), expected, rtol=1e-4, atol=1e-4)


# -- latent operations ---------------------------------------------------------
def test_interpolation_ends_are_the_inputs_and_linear_midpoint_decodes_the_mean_latent():
    model, _, _ = _gaussian_model(dim=4)
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 4)).astype("float32"), rng.normal(size=(2, 4)).astype("float32")
    path = apps.interpolate(model, x1, x2, n=5)
    assert path.shape == (2, 5, 4)
    np.testing.assert_allclose(path[:, 0], x1, atol=1e-4)
    np.testing.assert_allclose(path[:, -1], x2, atol=1e-4)
    z_mid = (np.asarray(model.encode(x1)) + np.asarray(model.encode(x2))) / 2
    np.testing.assert_allclose(path[:, 2], np.asarray(model.decode(z_mid)), atol=1e-4)
    one = apps.interpolate(model, x1[0], x2[0], n=3, path="slerp")
    assert one.shape == (3, 4)
    np.testing.assert_allclose(one[0], x1[0], atol=1e-4)
    np.testing.assert_allclose(one[-1], x2[0], atol=1e-4)


def test_slerp_keeps_equal_norms_and_interpolates_unequal_ones():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True) * np.linalg.norm(z1, axis=1, keepdims=True)
    t = np.linspace(0, 1, 7)
    path = apps.slerp(z1, z2, t)
    np.testing.assert_allclose(np.linalg.norm(path, axis=2), np.repeat(np.linalg.norm(z1, axis=1)[None], 7, 0),
                               rtol=1e-10)
    np.testing.assert_allclose(path[0], z1, atol=1e-12)
    np.testing.assert_allclose(path[-1], z2, atol=1e-12)
    # the angle moves uniformly: equal angles between consecutive points
    u = path / np.linalg.norm(path, axis=2, keepdims=True)
    angles = np.arccos(np.clip(np.sum(u[1:] * u[:-1], axis=2), -1, 1))
    np.testing.assert_allclose(angles, np.repeat(angles[:1], 6, 0), rtol=1e-8)
    same = apps.slerp(z1, z1, t)  # parallel: the linear path, no NaN
    np.testing.assert_allclose(same, np.repeat(z1[None], 7, 0), atol=1e-12)


def test_attribute_direction_and_manipulate():
    model, _, _ = _gaussian_model(dim=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype("float32")
    labels = np.arange(20) % 4
    d = apps.attribute_direction(model, x, labels, target=1)
    z = np.asarray(model.encode(x), "float64")
    np.testing.assert_allclose(d, z[labels == 1].mean(0) - z[labels != 1].mean(0), rtol=1e-10)
    np.testing.assert_allclose(apps.attribute_direction(model, x, labels == 1), d, rtol=1e-10)
    np.testing.assert_allclose(apps.manipulate(model, x[:4], d, 0.0), x[:4], atol=1e-4)
    moved = apps.manipulate(model, x[:4], d, [-1.0, 0.5, 2.0])
    assert moved.shape == (3, 4, 3)
    np.testing.assert_allclose(np.asarray(model.encode(moved[2])), z[:4] + 2.0 * d, atol=1e-4)
    with pytest.raises(ValueError, match="with and without"):
        apps.attribute_direction(model, x, np.ones(20, bool))
    with pytest.raises(ValueError, match="target="):
        apps.attribute_direction(model, x, labels)
    with pytest.raises(ValueError, match="latent's size"):
        apps.manipulate(model, x, np.ones(5), 1.0)


def test_latent_operations_refuse_bad_input():
    model, _, _ = _gaussian_model(dim=3)
    x = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match="path must be"):
        apps.interpolate(model, x, x, path="cubic")
    with pytest.raises(ValueError, match="n >= 2"):
        apps.interpolate(model, x, x, n=1)
    with pytest.raises(ValueError, match="same shape"):
        apps.interpolate(model, x, x[:1])
    with pytest.raises(ValueError, match="shape"):
        apps.interpolate(model, np.zeros((2, 4)), np.zeros((2, 4)))


# -- inpainting ------------------------------------------------------------------
def test_map_inpainting_finds_the_gaussian_conditional_mean():
    model, mean, precision = _gaussian_model(dim=4, seed=2)
    x = np.array([0.3, -0.7, 1.1, 0.2])
    hidden = np.array([False, True, False, True])
    filled = apps.inpaint(model, x, hidden, method="map", steps=600, step_size=0.05)
    mu_h, _ = _conditional(mean, precision, x, hidden)
    np.testing.assert_allclose(filled[hidden], mu_h, atol=2e-3)
    assert np.array_equal(filled[~hidden], x[~hidden])  # observed entries untouched


def test_langevin_inpainting_samples_the_gaussian_conditional():
    model, mean, precision = _gaussian_model(dim=3, seed=3)
    x = np.array([0.5, 0.0, -0.4])
    hidden = np.array([False, True, True])
    chains = np.repeat(x[None], 2000, axis=0)
    draws = apps.inpaint(model, chains, hidden, method="sample", steps=800, step_size=0.05, seed=1)
    mu_h, cov_h = _conditional(mean, precision, x, hidden)
    got = draws[:, hidden]
    se = np.sqrt(np.diag(cov_h) / len(got))
    assert np.all(np.abs(got.mean(0) - mu_h) < 4 * se + 0.01 * np.sqrt(np.diag(cov_h))), (got.mean(0), mu_h, se)
    # unadjusted Langevin's variance bias is O(step size): within 10 % at 0.05
    np.testing.assert_allclose(np.var(got, axis=0), np.diag(cov_h), rtol=0.1)
    assert np.all(draws[:, ~hidden] == x[~hidden])


def test_image_inpainting_stays_in_the_unit_interval_and_raises_log_p():
    model = tfflows.zoo.glow(preset="mnist-tiny")
    d = np.load(tfflows.zoo.data.EMBEDDED)
    x = (d["x_test"][:2].astype("float32")[..., None] + 0.5) / 256.0
    model.initialize(x)
    mask = np.zeros((28, 28, 1), bool)
    mask[14:] = True  # fill the bottom half
    start, lp0 = apps.inpaint(model, x, mask, steps=0, return_log_prob=True)
    filled, lp = apps.inpaint(model, x, mask, steps=30, return_log_prob=True)
    assert filled.shape == x.shape and np.all(filled >= 0) and np.all(filled < 1)
    assert np.array_equal(filled[:, :14], x[:, :14])
    assert np.all(lp > lp0)


def test_inpainting_refuses_bad_input():
    model, _, _ = _gaussian_model(dim=3)
    x = np.zeros(3)
    with pytest.raises(ValueError, match="method must be"):
        apps.inpaint(model, x, [True, False, False], method="gibbs")
    with pytest.raises(ValueError, match="mask must have the shape"):
        apps.inpaint(model, x, [True, False])
    with pytest.raises(ValueError, match="boolean or 0/1"):
        apps.inpaint(model, x, [2, 0, 0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        apps.inpaint(model, np.array([0.0, np.nan, 1.0]), [True, False, False])
    with pytest.raises(ValueError, match="step_size"):
        apps.inpaint(model, x, [True, False, False], step_size=-1.0)
    image_model = tfflows.zoo.glow(preset="mnist-tiny")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        apps.inpaint(image_model, np.full((28, 28, 1), 3.0), np.zeros((28, 28, 1), bool))
    assert inpaint_module.__all__ == ["inpaint"]


# -- out-of-distribution scores ----------------------------------------------------
def test_ood_scores_match_their_definitions():
    model, _, _ = _gaussian_model(dim=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype("float32")
    nll = -np.asarray(model.log_prob(x), "float64")
    np.testing.assert_allclose(apps.ood_score(model, x), nll, rtol=1e-6)
    ref = rng.normal(size=(40, 3)).astype("float32")
    ref_nll = -np.asarray(model.log_prob(ref), "float64").mean()
    np.testing.assert_allclose(apps.ood_score(model, x, "typicality", reference=ref), np.abs(nll - ref_nll),
                               rtol=1e-5)
    np.testing.assert_allclose(apps.ood_score(model, x, "typicality", reference=1.5), np.abs(nll - 1.5), rtol=1e-6)
    np.testing.assert_allclose(apps.ood_score(model, x, "likelihood_ratio", background=model), 0.0, atol=1e-5)
    other, _, _ = _gaussian_model(dim=3, seed=5)
    np.testing.assert_allclose(apps.ood_score(model, x, "likelihood_ratio", background=other),
                               nll + np.asarray(other.log_prob(x), "float64"), rtol=1e-5)


def test_complexity_is_low_for_flat_images_and_high_for_noise():
    rng = np.random.default_rng(0)
    flat = np.full((4, 28, 28, 1), 0.5)
    noise = rng.uniform(size=(4, 28, 28, 1))
    c_flat, c_noise = ood.complexity_bits(flat), ood.complexity_bits(noise)
    assert np.all(c_flat < 0.3) and np.all(c_noise > 7.0)  # noise is incompressible: about 8 bits/pixel
    model = tfflows.zoo.glow(preset="mnist-tiny")
    x = (np.load(tfflows.zoo.data.EMBEDDED)["x_test"][:4].astype("float32")[..., None] + 0.5) / 256
    np.testing.assert_allclose(apps.ood_score(model, x, "complexity"),
                               np.asarray(model.bits_per_dim(x), "float64") - ood.complexity_bits(x), rtol=1e-5)


def test_auroc_and_perturb():
    assert apps.auroc([0, 1, 2], [3, 4, 5]) == 1.0
    assert apps.auroc([3, 4, 5], [0, 1, 2]) == 0.0
    assert apps.auroc([1, 2], [1, 2]) == 0.5
    assert apps.auroc([0, 1, 2], [np.inf, 5, np.inf]) == 1.0  # infinite scores keep their order
    with pytest.raises(ValueError, match="NaN"):
        apps.auroc([0, np.nan], [1])
    x = np.zeros((1000, 8), np.uint8)
    p = apps.perturb(x, 0.2, seed=0)
    assert p.dtype == np.uint8 and 0.17 < np.mean(p != 0) < 0.23  # about 20 % replaced (1/256 stay 0)
    assert np.array_equal(apps.perturb(x, 0.0), x)
    with pytest.raises(ValueError, match="rate"):
        apps.perturb(x, 1.5)


def test_ood_score_refuses_bad_input():
    model, _, _ = _gaussian_model(dim=3)
    x = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match="method must be"):
        apps.ood_score(model, x, "entropy")
    with pytest.raises(ValueError, match="reference="):
        apps.ood_score(model, x, "typicality")
    with pytest.raises(ValueError, match="background="):
        apps.ood_score(model, x, "likelihood_ratio")
    with pytest.raises(ValueError, match="image model"):
        apps.ood_score(model, x, "complexity")
    with pytest.raises(ValueError, match="non-empty batch"):
        apps.ood_score(model, np.zeros((0, 3), "float32"))
    bigger, _, _ = _gaussian_model(dim=4)
    with pytest.raises(ValueError, match="same data"):
        apps.ood_score(model, x, "likelihood_ratio", background=bigger)
