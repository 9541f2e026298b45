"""MADE and MaskedAutoregressive (MAF / IAF): the autoregressive property,
one-pass vs sequential directions, orders, and their errors.

The contract suite (test_contract.py) covers round trips, log-dets against
the autodiff Jacobian, context and serialization for every case; these are
the properties particular to autoregressive layers.
"""

import json

import keras
import numpy as np
import pytest

from conftest import backend, to_np
from tfflows import layers as L
from tfflows.layers.autoregressive import input_degrees, made_masks


def _jacobian(fn, x):
    """d fn(x)[0] / d x[0] for one example, `(out, in)`."""
    if backend() == "jax":
        import jax

        return np.asarray(jax.jacfwd(lambda v: fn(v[None])[0])(x[0]))
    import tensorflow as tf

    v = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(v)
        y = fn(v)[0]
    return tape.jacobian(y, v).numpy()[:, 0, :]


def _perturbed(made, seed=0):
    rng = np.random.default_rng(seed)
    for w in made.trainable_weights:
        w.assign(w.value + 0.3 * rng.standard_normal(tuple(w.shape)).astype("float32"))


@pytest.mark.parametrize("order, random_degrees", [("natural", False), ("reverse", False), ("random", False),
                                                   ("random", True), ([2, 0, 3, 1, 4], False)],
                         ids=["natural", "reverse", "random", "random-degrees", "explicit"])
def test_made_output_depends_only_on_earlier_inputs(order, random_degrees):
    d, p = 5, 3
    # tanh: no unit is switched off at this x, so every allowed path carries a gradient.
    made = L.MADE(d, params_per_dim=p, hidden=(16, 16), order=order, random_degrees=random_degrees, seed=7,
                  activation="tanh")
    x = np.random.default_rng(1).normal(size=(1, d)).astype("float32")
    made(x)
    _perturbed(made)
    jac = _jacobian(made, x)  # (p * d, d)
    deg = made.degrees
    for k in range(p):
        for i in range(d):
            allowed = deg < deg[i]
            assert np.all(jac[k * d + i, ~allowed] == 0.0), f"output {k},{i} sees a later input"
    # ... and it does see every earlier input (the masks are not all zero).
    first_out = jac[:d]
    for i in range(d):
        if deg[i] > 1:
            assert np.any(first_out[i, deg < deg[i]] != 0.0)


def test_made_masks_connect_exactly_the_lower_degrees():
    degrees = np.array([3, 1, 2])
    masks, hidden = made_masks(degrees, [4], params_per_dim=2)
    # Input -> hidden: degree(hidden) >= degree(input).
    np.testing.assert_array_equal(masks[0], (hidden[0][None, :] >= degrees[:, None]).astype("float32"))
    # Hidden -> output (two copies of each feature): degree(output) > degree(hidden).
    np.testing.assert_array_equal(masks[1], (np.tile(degrees, 2)[None, :] > hidden[0][:, None]).astype("float32"))


def test_random_order_survives_a_config_round_trip():
    layer = L.MaskedAutoregressive(order="random", hidden=(8,))
    x = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
    layer.forward(x)
    clone = L.MaskedAutoregressive.from_config(json.loads(json.dumps(layer.get_config())))
    clone.forward(x)
    np.testing.assert_array_equal(clone.made.degrees, layer.made.degrees)


@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_the_one_pass_direction_is_one_made_call_and_the_other_takes_d(direction, monkeypatch):
    d = 4
    layer = L.MaskedAutoregressive(direction=direction, hidden=(8,))
    x = np.random.default_rng(0).normal(size=(2, d)).astype("float32")
    layer.forward(x)
    calls = []
    original = layer._params
    monkeypatch.setattr(layer, "_params", lambda u, c: calls.append(1) or original(u, c))
    one, seq = ("forward", "inverse") if direction == "maf" else ("inverse", "forward")
    getattr(layer, one)(x)
    assert len(calls) == 1
    calls.clear()
    getattr(layer, seq)(x)
    # fori_loop traces its body once on TF graph/JAX; eagerly it runs D times. Either way
    # the sequential direction's last pass recomputes the parameters from the solution.
    assert len(calls) in (2, d + 1)


def test_iaf_is_maf_with_the_directions_swapped():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    maf = L.MaskedAutoregressive(direction="maf", hidden=(8,), seed=0)
    iaf = L.MaskedAutoregressive(direction="iaf", hidden=(8,), seed=0)
    maf.forward(x)
    iaf.forward(x)
    iaf.set_weights(maf.get_weights())
    y_maf, ld_maf = maf.inverse(x)  # latent -> data, sequential
    y_iaf, ld_iaf = iaf.inverse(x)  # latent -> data, one pass
    # Same MADE, same transform: MAF's data-from-latent solves x = T(z; MADE(x)),
    # IAF's computes x = T(z; MADE(z)). They differ, but each inverts its own forward.
    for layer, y in ((maf, y_maf), (iaf, y_iaf)):
        np.testing.assert_allclose(to_np(layer.forward(y)[0]), x, atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(direction="flow"), r"direction must be one of \('maf', 'iaf'\)"),
    (dict(order="sideways"), r"order must be one of"),
    (dict(order=[0, 0, 1]), r"order must be a permutation of 1..3"),
], ids=["direction", "order-name", "order-permutation"])
def test_bad_arguments_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer = L.MaskedAutoregressive(**kwargs)
        layer.forward(np.zeros((2, 3), "float32"))


def test_made_input_degrees():
    np.testing.assert_array_equal(input_degrees(3, "natural"), [1, 2, 3])
    np.testing.assert_array_equal(input_degrees(3, "reverse"), [3, 2, 1])
    np.testing.assert_array_equal(input_degrees(3, [2, 0, 1]), [3, 1, 2])
    assert sorted(input_degrees(5, "random", seed=0)) == [1, 2, 3, 4, 5]


def test_wrong_feature_count_raises():
    layer = L.MaskedAutoregressive(hidden=(8,))
    layer.forward(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match="expects inputs of rank 2"):
        layer.forward(np.zeros((2, 3, 1), "float32"))
    with pytest.raises(Exception, match=r"3|4"):
        layer.forward(np.zeros((2, 4), "float32"))


def test_maf_trains_on_a_correlated_gaussian_to_its_entropy():
    import tfflows

    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    x = rng.multivariate_normal([0, 0], cov, size=4096).astype("float32")
    entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
    model = tfflows.FlowModel([L.MaskedAutoregressive(hidden=(32,)), L.Reverse(),
                               L.MaskedAutoregressive(hidden=(32,))], data_shape=(2,), n_bits=None)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    model.fit(x, batch_size=256, epochs=30, verbose=0)
    nll = float(np.mean(to_np(-model.log_prob(x))))
    assert abs(nll - entropy) < 0.05, (nll, entropy)
