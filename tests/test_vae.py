"""VAEs with flow posteriors (`tfflows.vae`, `tfflows.zoo.vae`): the bounds
against an exact likelihood, training, the posterior's density, saving,
binarization and input errors, on tiny models (a few pixels, a few latent
dimensions). `test_a_tensorflow_model_gives_the_same_numbers_under_jax`
reruns a saved model and a short fit in a JAX subprocess.
"""

import json
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
from tfflows.vae import VAE, DynamicBinarization, binarize
from tfflows.zoo.vae import POSTERIORS, posterior_flow

D = 12  # pixels of the toy data


def _toy_images(n, seed=0):
    """Two prototypes with 5 % pixel noise: intensities in [0, 1]."""
    rng = np.random.default_rng(seed)
    protos = np.stack([np.arange(D) % 2, np.arange(D) < D // 2]).astype("float32")
    p = protos[rng.integers(0, 2, n)]
    return np.where(p > 0.5, 0.95, 0.05).astype("float32")


def _small(posterior, **kwargs):
    args = dict(latent_dim=3, flows=2, hidden=(16,), context_dim=8, data_shape=(D,), seed=0, made_hidden=(8,))
    args.update(kwargs)
    return tfflows.zoo.vae(posterior, **args)


def _perturb(variables, scale, seed=0):
    rng = np.random.default_rng(seed)
    for v in variables:
        v.assign(v.value + scale * rng.standard_normal(tuple(v.shape)).astype(v.dtype))


# -- building -------------------------------------------------------------------------------------------------
def test_every_posterior_builds_and_gives_finite_bounds():
    import tfflows.zoo.vae as module  # importing the module must not hide the builder

    assert callable(tfflows.zoo.vae) and callable(module)
    # The last row is all zeros: h(0) = 0 for the ELU encoder, where an amortised
    # planar w, O-SNF Q or H-SNF reflection with a zero bias would be 0 (NaN).
    x = np.concatenate([binarize(_toy_images(7), seed=1), np.zeros((1, D), "float32")])
    for name in POSTERIORS:
        model = _small(name)
        assert model.posterior.context_shape == (8,) and model.latent_dim == 3
        ne = model.neg_elbo(x, seed=0)
        nll = model.importance_nll(x, k=8, seed=0)
        assert ne.shape == nll.shape == (8,), name
        # 12 pixels near p = 1/2 at the start: about 12 log 2 = 8.3 nats.
        assert np.all(np.isfinite(ne)) and np.all(ne > 0) and np.all(ne < 30), (name, ne)
        assert np.all(np.isfinite(nll)) and np.all(nll > 0), (name, nll)


# -- the posterior's density --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gaussian", "planar", "householder", "iaf"])
def test_log_q_of_the_elbo_matches_the_flow_models_log_prob(name):
    model = _small(name)
    _perturb(model.posterior.trainable_variables + model.encoder.trainable_variables, 0.3)
    x = binarize(_toy_images(5), seed=2)
    z, log_q = model.posterior_sample(x, n=2, seed=0)
    h = ops.tile(model.encode(x), (2, 1))
    direct = model.posterior.log_prob(ops.reshape(z, (10, 3)), context=h)
    np.testing.assert_allclose(to_np(log_q).reshape(-1), to_np(direct), atol=2e-4, rtol=1e-5)


# -- the bounds ---------------------------------------------------------------------------------------------
def _exact_nll(model, x):
    """`-log p(x)` of a 1-D-latent model by the trapezoid rule on [-10, 10]."""
    grid = np.linspace(-10.0, 10.0, 8001).astype("float32")
    logits = to_np(model.decoder(grid[:, None])).astype("float64")  # (G, D)
    log_px_z = x.astype("float64") @ logits.T - np.logaddexp(0.0, logits).sum(axis=1)  # (N, G)
    log_joint = log_px_z - 0.5 * grid.astype("float64") ** 2 - 0.5 * math.log(2 * math.pi)
    top = log_joint.max(axis=1, keepdims=True)
    w = np.exp(log_joint - top)
    integral = ((w[:, 1:] + w[:, :-1]) * 0.5 * np.diff(grid.astype("float64"))).sum(axis=1)
    return -(np.log(integral) + top[:, 0])


def test_the_importance_estimate_approaches_the_exact_likelihood():
    model = _small("gaussian", latent_dim=1, hidden=(8,), context_dim=4)
    # A decoder whose likelihood varies with z, and a posterior q(z | x) that is
    # neither the prior nor the exact one, and wider than the latter (so the
    # importance weights are bounded and the k-sample estimate converges fast).
    _perturb(model.decoder.trainable_variables, 0.4, seed=1)
    _perturb(model.encoder.trainable_variables, 0.5, seed=2)
    model.posterior.base.dense.bias.assign(np.array([0.2, 0.4], "float32"))  # mean, log-scale of q
    _perturb([model.posterior.base.dense.kernel], 0.05, seed=3)
    x = binarize(_toy_images(6, seed=3), seed=4)
    exact = _exact_nll(model, x)
    ne = model.neg_elbo(x, n_samples=4000, seed=0)
    nll_1 = model.importance_nll(x, k=1, seed=0)
    nll_big = model.importance_nll(x, k=20000, seed=2, batch=7000)  # chunks that do not divide k
    assert np.all(ne >= exact - 0.01), (ne, exact)  # the ELBO is a lower bound (up to noise)
    assert float(np.mean(ne - exact)) > 0.1  # ... and not a tight one for this q
    np.testing.assert_allclose(nll_big, exact, atol=0.03)  # about 3 standard errors
    assert abs(float(np.mean(nll_big - exact))) < 0.01
    assert nll_1.shape == exact.shape and np.all(np.isfinite(nll_1))


def test_the_bounds_are_ordered_elbo_then_k_then_exact():
    model = _small("planar", latent_dim=3)
    _perturb(model.decoder.trainable_variables, 0.4, seed=1)
    _perturb(model.encoder.trainable_variables + model.posterior.trainable_variables, 0.3, seed=2)
    x = binarize(_toy_images(16, seed=5), seed=6)
    # k = 1 is the one-draw ELBO: the same draws give the same numbers.
    np.testing.assert_array_equal(model.importance_nll(x, k=1, seed=4), model.neg_elbo(x, seed=4))
    ne = model.neg_elbo(x, n_samples=500, seed=0).mean()  # about 16.3 nats
    k20 = np.mean([model.importance_nll(x, k=20, seed=s).mean() for s in range(4)])  # about 10.7
    k500 = model.importance_nll(x, k=500, seed=7).mean()  # about 10.2
    assert ne - 1.0 > k20 > k500 + 0.2, (ne, k20, k500)


def test_the_same_seed_gives_the_same_numbers_and_chunking_does_not_change_them():
    model = _small("sylvester-triangular")
    x = binarize(_toy_images(6), seed=0)
    a = model.importance_nll(x, k=30, seed=5)
    np.testing.assert_array_equal(a, model.importance_nll(x, k=30, seed=5))
    b = model.neg_elbo(x, n_samples=4, seed=3, batch=4)  # one example per pass
    c = model.neg_elbo(x, n_samples=4, seed=3, batch=4)
    np.testing.assert_array_equal(b, c)
    assert not np.array_equal(a, model.importance_nll(x, k=30, seed=6))


# -- training -----------------------------------------------------------------------------------------------
def test_fitting_lowers_the_neg_elbo_towards_the_data_entropy():
    model = _small("planar", latent_dim=2, warmup_steps=20)
    x_test = binarize(_toy_images(200, seed=1), seed=2)
    before = model.neg_elbo(x_test, seed=0).mean()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(DynamicBinarization(_toy_images(3200, seed=0), batch_size=32, seed=0), epochs=1, verbose=0)
    after = model.neg_elbo(x_test, n_samples=10, seed=0).mean()
    # Entropy of the data: log 2 (which prototype) + 12 H(0.05) = 3.08 nats; the start is about 8.3.
    assert before > 7.5 and after < 4.0, (before, after)
    assert int(to_np(model.step)) == 100 and set(history.history) >= {"loss", "neg_elbo", "kl"}
    result = model.evaluate(x_test, verbose=0, return_dict=True)
    assert abs(result["neg_elbo"] - after) < 0.3 and result["loss"] == pytest.approx(result["neg_elbo"])


def test_the_warm_up_weights_the_kl_from_zero_to_one():
    model = _small("gaussian", warmup_steps=4)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # weights fixed: only beta changes
    x = binarize(_toy_images(16), seed=0)
    _perturb(model.posterior.trainable_variables, 0.5)  # a KL well above zero
    for step, beta in enumerate([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]):
        logs = model.train_on_batch(x, return_dict=True)
        assert logs["kl"] > 0.1
        assert logs["loss"] == pytest.approx(logs["neg_elbo"] - (1 - beta) * logs["kl"], rel=1e-5, abs=1e-4), step
    assert int(to_np(model.step)) == 6


# -- saving -------------------------------------------------------------------------------------------------
def test_a_saved_model_loads_with_identical_outputs(tmp_path):
    model = _small("sylvester-orthogonal", warmup_steps=10)  # no data -> latent direction, amortised Q
    model.compile()
    x = binarize(_toy_images(16), seed=0)
    model.train_on_batch(x)
    path = str(tmp_path / "vae.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, VAE)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(model.get_config(), sort_keys=True)
    np.testing.assert_array_equal(loaded.neg_elbo(x, seed=3), model.neg_elbo(x, seed=3))
    np.testing.assert_array_equal(loaded.importance_nll(x, k=16, seed=3), model.importance_nll(x, k=16, seed=3))
    assert int(to_np(loaded.step)) == 1 and int(to_np(loaded.optimizer.iterations)) == 1
    np.testing.assert_array_equal(to_np(loaded.sample(3, seed=1)), to_np(model.sample(3, seed=1)))
    assert tuple(loaded.reconstruct(x[:2], seed=0).shape) == (2, D)


# -- data ---------------------------------------------------------------------------------------------------
def test_binarization_is_seeded_and_dynamic_binarization_is_fresh_every_batch():
    images = (np.arange(50 * 4 * 4) % 256).astype("uint8").reshape(50, 4, 4)
    a, b = binarize(images, seed=1), binarize(images, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 16) and set(np.unique(a)) <= {0.0, 1.0}
    p = np.full((2000, 4), 0.3, "float32")
    assert abs(binarize(p, seed=0).mean() - 0.3) < 0.01
    data = DynamicBinarization(images, batch_size=20, seed=3)
    assert len(data) == 2  # the partial batch is dropped
    first = data[0]
    np.testing.assert_array_equal(first, data[0])  # the same batch of the same epoch
    data.on_epoch_end()
    assert not np.array_equal(first, data[0])
    np.testing.assert_array_equal(first, DynamicBinarization(images, batch_size=20, seed=3)[0])
    assert len(DynamicBinarization(images, batch_size=20, drop_remainder=False)) == 3


# -- errors -------------------------------------------------------------------------------------------------
def test_bad_input_raises_errors_that_name_the_problem():
    model = _small("gaussian")
    x = binarize(_toy_images(4), seed=0)
    with pytest.raises(ValueError, match=r"shape \(batch, 12\), got \(4, 3, 4\).*Reshape"):
        model.neg_elbo(x.reshape(4, 3, 4))
    with pytest.raises(ValueError, match=r"values in \[0, 255\].*binarize"):
        model.neg_elbo((x * 255).astype("uint8"))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        model.importance_nll(bad, k=4)
    with pytest.raises(ValueError, match="empty batch"):
        model.neg_elbo(np.zeros((0, D), "float32"))
    with pytest.raises(ValueError, match="integer k >= 1"):
        model.importance_nll(x, k=0)
    with pytest.raises(ValueError, match="integer n_samples >= 1"):
        model.neg_elbo(x, n_samples=1.5)
    with pytest.raises(ValueError, match="x only"):
        model.fit(x, x)
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        model.fit(2 * x - 1, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="context_shape=None"):
        VAE(tfflows.zoo.planar(3, flows=1), data_shape=(D,))
    with pytest.raises(TypeError, match="FlowModel"):
        VAE("planar", data_shape=(D,))
    with pytest.raises(ValueError, match=r"maps \(2, 12\) to \(2, 5\)"):
        VAE(posterior_flow("gaussian", 3, 8), data_shape=(D,), encoder=keras.layers.Dense(5))
    with pytest.raises(ValueError, match="posterior must be one of"):
        tfflows.zoo.vae("radial")
    with pytest.raises(ValueError, match="m <= latent_dim"):
        tfflows.zoo.vae("sylvester-orthogonal", latent_dim=3, m=4, context_dim=4, hidden=(4,), data_shape=(D,))
    with pytest.raises(ValueError, match=r"values in \[-0.5, 1\]"):
        binarize(np.array([[-0.5, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        binarize(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="non-empty batch"):
        binarize(np.zeros((5,)))
    with pytest.raises(ValueError, match="fewer than one batch"):
        DynamicBinarization(np.zeros((5, 4), "uint8"), batch_size=10)
    with pytest.raises(ValueError, match=r"latents of shape \(batch, 3\)"):
        model.decode(np.zeros((2, 4), "float32"))


# -- JAX ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="this test launches the JAX run")
def test_a_tensorflow_model_gives_the_same_numbers_under_jax(tmp_path):
    pytest.importorskip("jax")
    model = _small("planar")
    _perturb(model.trainable_variables, 0.2)
    x = binarize(_toy_images(8), seed=0)
    path = str(tmp_path / "tf.keras")
    model.save(path)
    np.save(str(tmp_path / "x.npy"), x)
    script = textwrap.dedent(f"""
        import json, keras, numpy as np, tfflows
        from tfflows.vae import DynamicBinarization
        assert keras.backend.backend() == "jax"
        x = np.load({str(tmp_path / 'x.npy')!r})
        m = keras.saving.load_model({path!r}, safe_mode=True)
        out = {{"neg_elbo": m.neg_elbo(x, seed=3).tolist(), "nll": m.importance_nll(x, k=64, seed=3).tolist()}}
        # Training under JAX: the warm-up counter, the seed generator and the metrics.
        v = tfflows.zoo.vae("gaussian", latent_dim=3, hidden=(16,), context_dim=8, data_shape=(12,), seed=0,
                            warmup_steps=5)
        h = v.fit(DynamicBinarization(np.where(x > 0.5, 0.9, 0.1), batch_size=4, seed=0), epochs=3, verbose=0)
        assert int(np.asarray(v.step)) == 6 and np.all(np.isfinite(h.history["neg_elbo"])), h.history
        print("JAX " + json.dumps(out))
    """)
    # As conftest's JAX reruns: XLA's optimisation passes only slow the compiles of these tiny graphs.
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("JAX ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-3000:]
    out = json.loads(lines[-1][4:])
    np.testing.assert_allclose(out["neg_elbo"], model.neg_elbo(x, seed=3), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["nll"], model.importance_nll(x, k=64, seed=3), rtol=1e-5, atol=1e-4)


# -- the benchmark ------------------------------------------------------------------------------------------
def test_the_mnist_benchmark_runs_end_to_end_on_a_tiny_fake_set(tmp_path, monkeypatch):
    from benchmarks import _common, glow_mnist, vae_mnist

    monkeypatch.setattr(glow_mnist, "cpu_busy_fraction", lambda seconds=2.0: None)  # no 2 s sampling of /proc

    default = vae_mnist.parse_args([]).out_dir
    assert os.path.dirname(default) == _common.RESULTS_DIR  # benchmarks/results/<date>-<machine>/
    rng = np.random.default_rng(0)
    data = str(tmp_path / "fake.npz")
    np.savez(data, x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
             x_test=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8))
    out = str(tmp_path / "out")
    args = ["--data", data, "--out-dir", out, "--posteriors", "gaussian,planar", "--hidden", "8", "--latent-dim", "2",
            "--context-dim", "4", "--flows", "1", "--batch", "50", "--max-steps", "4", "--steps-per-execution", "2",
            "--test-n", "30", "--nll-subset", "5", "--k", "7", "--threads", "1"]
    assert vae_mnist.main(args) == 0
    with open(os.path.join(out, "vae_mnist.json")) as f:
        report = json.load(f)
    for name in ("gaussian", "planar"):
        r = report["results"][name]
        assert r["steps"] == 4 and r["test_n"] == 30 and r["nll_n"] == 5 and r["k"] == 7
        assert math.isfinite(r["test_neg_elbo"]) and math.isfinite(r["nll"])
    assert report["orderings"][0]["worse"] == "gaussian" and "holds" in report["orderings"][0]
    md = open(os.path.join(out, "vae_mnist.md")).read()
    assert "| planar |" in md and "86.06" in md
    assert vae_mnist.main(args) == 0  # resumes: both models are skipped
