"""Vector flows: the `maf`, `iaf`, `nsf` and vector `realnvp` builders with
their defaults, conditional fitting, the TFP adapter's context, and the
errors a user meets first."""

import keras
import numpy as np
import pytest

import tfflows
from conftest import backend, to_np
from tfflows import datasets

BUILDERS = {
    "maf": lambda **kw: tfflows.zoo.maf(2, flows=3, hidden=(32, 32), **kw),
    "iaf": lambda **kw: tfflows.zoo.iaf(2, flows=3, hidden=(32, 32), **kw),
    "nsf-coupling": lambda **kw: tfflows.zoo.nsf(2, kind="coupling", flows=3, hidden=(32, 32), **kw),
    "nsf-autoregressive": lambda **kw: tfflows.zoo.nsf(2, kind="autoregressive", flows=2, hidden=(32, 32), **kw),
    "realnvp": lambda **kw: tfflows.zoo.realnvp(data_shape=(2,), steps=2, hidden=32, **kw),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_defaults_train_on_a_numpy_array(name):
    """`compile()` with no arguments and `fit(x, batch_size=...)` lower the
    NLL (nats) of 8 Gaussians well below its starting value."""
    x = datasets.toy("8gaussians", 4096, seed=0)
    model = BUILDERS[name]()
    model.compile()
    start = float(np.mean(to_np(model(x))))
    history = model.fit(x, batch_size=256, epochs=8 if name != "iaf" else 4, verbose=0)
    end = float(np.mean(to_np(model(x))))
    assert np.isfinite(history.history["loss"][-1])
    assert end < start - 0.5, (start, end)
    z = model.encode(x[:8])
    np.testing.assert_allclose(to_np(model.decode(z)), x[:8], atol=1e-3)
    s, log_q = model.sample_and_log_prob(16, seed=0)
    np.testing.assert_allclose(to_np(log_q), to_np(model.log_prob(s)), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_conditional_builders_need_their_context(name):
    model = BUILDERS[name](context_dim=3)
    x = np.zeros((4, 2), "float32")
    c = np.ones((4, 3), "float32")
    assert tuple(to_np(model.log_prob(x, context=c)).shape) == (4,)
    with pytest.raises(ValueError, match="needs a context"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"context of shape \(batch, 3\)"):
        model.log_prob(x, context=np.ones((4, 2), "float32"))


@pytest.mark.parametrize("builder, kwargs, match", [
    (tfflows.zoo.maf, dict(dim=0), "positive integer dim"),
    (tfflows.zoo.maf, dict(dim=2, flows=0), "positive integer flows"),
    (tfflows.zoo.maf, dict(dim=2, context_dim=-1), "context_dim must be a positive integer"),
    (tfflows.zoo.nsf, dict(dim=2, kind="spline"), r"kind must be one of \('coupling', 'autoregressive'\)"),
    (tfflows.zoo.nsf, dict(dim=1), "needs dim >= 2"),
], ids=["dim", "flows", "context", "nsf-kind", "nsf-coupling-1d"])
def test_bad_builder_arguments_raise_naming_them(builder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        builder(**kwargs)


def test_vector_model_refuses_a_wrong_dimension_and_nan():
    model = tfflows.zoo.maf(3, flows=1, hidden=(8,))
    with pytest.raises(ValueError, match=r"expects data of shape \(batch, 3\), got \(2, 4\)"):
        model.log_prob(np.zeros((2, 4), "float32"))
    bad = np.zeros((2, 3), "float32")
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        model.log_prob(bad)


@pytest.mark.skipif(backend() != "tensorflow", reason="TFP's TF substrate")
def test_tfp_adapter_passes_the_context_as_a_bijector_keyword():
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    model = tfflows.zoo.maf(3, flows=2, hidden=(8,), context_dim=2)
    rng = np.random.default_rng(0)
    for w in model.trainable_weights:
        w.assign(w.value + 0.1 * rng.standard_normal(tuple(w.shape)).astype("float32"))
    x = rng.normal(size=(5, 3)).astype("float32")
    c = rng.normal(size=(5, 2)).astype("float32")
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [3]), tfflows.as_bijector(model))
    np.testing.assert_allclose(dist.log_prob(x, bijector_kwargs={"context": c}), to_np(model.log_prob(x, context=c)),
                               atol=1e-5)
    # A batch of contexts with an extra batch axis is flattened like the data.
    lp = dist.log_prob(x.reshape(5, 1, 3), bijector_kwargs={"context": c.reshape(5, 1, 2)})
    np.testing.assert_allclose(np.asarray(lp)[:, 0], to_np(model.log_prob(x, context=c)), atol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: tfflows.layers.SplineCoupling(bins=1), "needs at least 2 bins. Received: bins=1"),
    (lambda: tfflows.layers.ElementwiseSpline(bound=0.0), r"needs a finite bound > 0. Received: bound=0.0"),
    (lambda: tfflows.layers.PiecewiseLinear(bins=1), "needs at least 2 bins"),
    (lambda: tfflows.layers.MaskedAutoregressive({"name": "spline", "bound": -1.0}), "bound > 0"),
    (lambda: tfflows.zoo.nsf(2, bins=1), "needs at least 2 bins"),
], ids=["coupling-bins", "elementwise-bound", "piecewise-bins", "maf-bound", "nsf-bins"])
def test_bad_spline_arguments_raise_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()
