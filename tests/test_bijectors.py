"""TFP interop: tfflows layers as tfp.bijectors.Bijector (TF backend)."""

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("the TFP adapter needs the TensorFlow backend", allow_module_level=True)

import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tfflows  # noqa: E402
from tfflows import layers as L  # noqa: E402

tfd, tfb = tfp.distributions, tfp.bijectors


def _multiscale():
    flow = L.FlowSequence([L.Squeeze(), L.ActNorm(), L.Invertible1x1Conv(seed=0), L.AffineCoupling(hidden=8),
                           L.Split(), L.Squeeze(), L.AffineCoupling(hidden=8)])
    model = tfflows.FlowModel(flow, data_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 8, 8, 1)).astype("float32")
    model.initialize(x)
    for w in flow.trainable_weights:  # leave the identity-at-init regime
        w.assign(w.value + 0.05 * rng.standard_normal(tuple(w.shape)).astype("float32"))
    return model, x


def test_transformed_distribution_log_prob_equals_model_log_prob():
    model, x = _multiscale()
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), model.latent_shape),
                                       tfflows.as_bijector(model.flow))
    np.testing.assert_allclose(dist.log_prob(x).numpy(), np.asarray(model.log_prob(x)), rtol=1e-5, atol=1e-3)


def test_bijector_directions_are_flipped():
    model, x = _multiscale()
    bij = tfflows.as_bijector(model)
    z = bij.inverse(x)
    np.testing.assert_allclose(z.numpy(), np.asarray(model.encode(x)), atol=1e-6)
    np.testing.assert_allclose(bij.forward(z).numpy(), x, atol=1e-5)
    np.testing.assert_allclose(bij.inverse_log_det_jacobian(x).numpy(),
                               -bij.forward_log_det_jacobian(z).numpy(), atol=1e-3)


def test_variables_are_tracked_and_gradients_reach_them():
    model, x = _multiscale()
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), model.latent_shape),
                                       tfflows.as_bijector(model.flow))
    tracked = {id(v) for v in dist.trainable_variables}
    assert len(dist.trainable_variables) == len(model.flow.trainable_variables) > 0
    assert all(id(v.value) in tracked for v in model.flow.trainable_variables)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
    grads = tape.gradient(loss, dist.trainable_variables)
    assert all(g is not None for g in grads)


def test_adam_steps_on_transformed_distribution_lower_nll():
    flow = L.FlowSequence([L.AffineCoupling(hidden=16), L.Reverse(), L.AffineCoupling(hidden=16)])
    flow.build((None, 2))
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [2]), tfflows.as_bijector(flow))
    rng = np.random.default_rng(0)
    a = rng.standard_normal(512).astype("float32")
    data = np.stack([a, 0.5 * a ** 2 + 0.1 * rng.standard_normal(512).astype("float32")], 1)  # a banana
    opt = keras.optimizers.Adam(1e-2)
    variables = flow.trainable_variables

    def nll():
        return -tf.reduce_mean(dist.log_prob(data))

    start = float(nll())
    for _ in range(60):
        with tf.GradientTape() as tape:
            loss = nll()
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    end = float(nll())
    assert end < start - 0.3, (start, end)


def test_composes_with_chain_invert_and_native_bijectors():
    model, x = _multiscale()
    bij = tfflows.as_bijector(model.flow)
    chain = tfb.Chain([tfb.Shift(0.25), bij])  # latent -> data -> shifted data
    z = bij.inverse(x)
    np.testing.assert_allclose(chain.forward(z).numpy(), x + 0.25, atol=1e-5)
    np.testing.assert_allclose(chain.inverse(x + 0.25).numpy(), z.numpy(), atol=1e-5)
    inv = tfb.Invert(bij)
    np.testing.assert_allclose(inv.forward(x).numpy(), z.numpy(), atol=1e-6)
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), model.latent_shape), chain)
    np.testing.assert_allclose(dist.log_prob(x + 0.25).numpy(), np.asarray(model.log_prob(x)), rtol=1e-5, atol=1e-3)
    assert tuple(dist.sample(3, seed=1).shape) == (3, 8, 8, 1)


def test_extra_batch_dims_are_handled():
    flow = L.AffineCoupling(hidden=4)
    bij = tfflows.as_bijector(flow, event_shape=(4,))
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    assert tuple(bij.inverse(x).shape) == (2, 3, 4)
    assert tuple(bij.inverse_log_det_jacobian(x).shape) == (2, 3)


def test_unbuilt_layer_is_refused():
    with pytest.raises(ValueError, match=r"is not built"):
        tfflows.as_bijector(L.AffineCoupling(hidden=4))
