"""Bad input raises ValueError/TypeError naming the layer and the problem."""

import numpy as np
import pytest

from tfflows import layers as L

X4 = np.zeros((2, 4, 4, 2), "float32")


@pytest.mark.parametrize(
    "make, x, error, match",
    [
        (L.Squeeze, np.zeros((2, 27, 28, 1), "float32"), ValueError, r"Squeeze .* needs even height and width, got 27x28"),
        (L.Squeeze, np.zeros((2, 8), "float32"), ValueError, r"Squeeze .* expects inputs of rank 4 .* got rank 2"),
        (L.Unsqueeze, np.zeros((2, 2, 2, 3), "float32"), ValueError, r"Unsqueeze .* channels divisible by 4, got 3"),
        (lambda: L.AffineCoupling(hidden=4), np.zeros((2, 4, 4, 1), "float32"), ValueError,
         r"AffineCoupling .* channel mask needs at least 2 channels"),
        (lambda: L.AffineCoupling(mask="checkerboard", hidden=4), np.zeros((2, 1), "float32"), ValueError,
         r"AffineCoupling .* checkerboard mask needs at least 2 positions"),
        (lambda: L.AffineCoupling(hidden=4), np.zeros((2, 3, 4), "float32"), ValueError,
         r"AffineCoupling .* expects inputs of rank 2 or 4 .* got rank 3"),
        (lambda: L.Permute([0, 2, 1]), X4, ValueError, r"Permute .* permutation of 3 channels but the input has 2"),
        (lambda: L.Split(keep=2), X4, ValueError, r"Split .* must keep between 1 and C-1 channels; got keep=2 with C=2"),
        (lambda: L.Reshape((5,)), X4, ValueError, r"Reshape .* cannot reshape event 4x4x2 \(32 values\) to 5"),
        (L.ActNorm, np.zeros((2, 4, 4, 2), "int32"), TypeError, r"ActNorm .* needs a floating-point input .* int32"),
        (L.Invertible1x1Conv, np.zeros((0, 4, 4, 2), "float32"), ValueError, r"Invertible1x1Conv .* got an empty batch"),
    ],
    ids=["squeeze-odd", "squeeze-rank", "unsqueeze-channels", "coupling-one-channel",
         "coupling-checkerboard-too-small", "coupling-rank", "permute-size", "split-keep",
         "reshape-size", "non-float", "empty-batch"],
)
def test_bad_input_raises_with_a_clear_message(make, x, error, match):
    with pytest.raises(error, match=match):
        make().forward(x)


def test_coupling_net_with_wrong_output_is_rejected():
    import keras

    net = keras.layers.Dense(3)  # affine coupling of 4 features needs 2 * 2 outputs
    with pytest.raises(ValueError, match=r"AffineCoupling .* its net maps \(2,\) to \(3,\), but this coupling needs output shape \(4,\)"):
        L.AffineCoupling(net=net).forward(np.zeros((2, 4), "float32"))


def test_user_net_is_used_and_round_trips():
    import keras

    net = keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    layer = L.AdditiveCoupling(net=net)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    y, _ = layer.forward(x)
    assert not np.allclose(np.asarray(y), x)  # a random-init user net is not the identity
    np.testing.assert_allclose(np.asarray(layer.inverse(y)[0]), x, atol=1e-6)
    clone = L.AdditiveCoupling.from_config(layer.get_config())
    clone.forward(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone.forward(x)[0]), np.asarray(y))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L.AffineCoupling(mask="stripes"), r"AffineCoupling mask must be one of .* Received: mask='stripes'"),
        (lambda: L.AffineCoupling(scale="softplus"), r"AffineCoupling scale must be one of .* Received: scale='softplus'"),
        (lambda: L.Permute([0, 0, 1]), r"Permute needs a permutation of 0..2"),
        (lambda: L.LogitTransform(alpha=0.5), r"LogitTransform alpha must be in \[0, 0.5\)"),
        (lambda: L.Rescale(0.0), r"Rescale scale must be finite and nonzero"),
        (lambda: L.ActNorm(eps=0), r"ActNorm eps must be positive"),
    ],
    ids=["mask", "scale", "permutation", "alpha", "rescale", "eps"],
)
def test_bad_argument_raises_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_flow_sequence_rejects_non_flow_layers():
    import keras

    with pytest.raises(TypeError, match=r"FlowSequence .* takes FlowLayer instances; item 1 is a Dense"):
        L.FlowSequence([L.Reverse(), keras.layers.Dense(3)])


def test_multiscale_inverse_checks_the_flat_latent_size():
    seq = L.FlowSequence([L.Squeeze(), L.Split(), L.Squeeze()])
    seq.forward(np.zeros((1, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match=r"inverts flat latents of shape \(batch, 16\), got 1x15"):
        seq.inverse(np.zeros((1, 15), "float32"))


def test_model_rejects_nan_and_wrong_shape():
    import tfflows

    model = tfflows.FlowModel([L.AffineCoupling(hidden=4)], data_shape=(4,))
    bad = np.zeros((2, 4), "float32")
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite value"):
        model.log_prob(bad)
    with pytest.raises(ValueError, match=r"expects data of shape \(batch, 4\), got \(2, 5\)"):
        model.log_prob(np.zeros((2, 5), "float32"))
    with pytest.raises(TypeError, match=r"expects float data .* got dtype uint8"):
        model.log_prob(np.zeros((2, 4), "uint8"))


def test_model_takes_float64_data_as_float32():
    """float64 numpy in (what `np.random.rand` gives) is cast like keras.Model does."""
    import tfflows

    model = tfflows.FlowModel([L.ActNorm(), L.AffineCoupling(hidden=4)], data_shape=(4,))
    x = np.random.default_rng(0).uniform(size=(3, 4))
    lp64 = np.asarray(model.log_prob(x))
    lp32 = np.asarray(model.log_prob(x.astype("float32")))
    assert lp64.dtype == np.float32
    np.testing.assert_array_equal(lp64, lp32)
    np.testing.assert_array_equal(np.asarray(model.encode(x)), np.asarray(model.encode(x.astype("float32"))))
