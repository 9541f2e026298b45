"""tf.data pipelines: sources, dequantization, determinism, bad data."""

import os

import numpy as np
import pytest

from tfflows.images import write_png
from tfflows.zoo import data


def _batches(ds, n=2):
    return [b.numpy() for b in ds.take(n)]


def test_embedded_mnist_batches_are_dequantized_in_unit_interval():
    (b,) = _batches(data.load("mnist", batch_size=32, seed=0), 1)
    assert b.shape == (32, 28, 28, 1) and b.dtype == np.float32
    assert b.min() >= 0.0 and b.max() < 1.0
    # Uniform dequantization: floor(256 x) recovers the uint8 level.
    assert np.all(np.floor(b * 256) <= 255)


def test_uniform_noise_stays_inside_each_bin():
    u8 = np.random.default_rng(0).integers(0, 256, size=(40, 4, 4, 1)).astype(np.uint8)
    (b,) = _batches(data.load(u8, batch_size=40, shuffle=False), 1)
    np.testing.assert_array_equal(np.floor(b * 256).astype(int), u8.astype(int))
    frac = b * 256 - u8
    assert 0.3 < frac.mean() < 0.7 and frac.std() > 0.2  # noise, not a constant offset


def test_same_seed_same_batches_other_seed_other_batches():
    a = _batches(data.load("mnist", batch_size=16, seed=7))
    b = _batches(data.load("mnist", batch_size=16, seed=7))
    c = _batches(data.load("mnist", batch_size=16, seed=8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_repeat_draws_fresh_noise_each_epoch():
    u8 = np.full((4, 2, 2, 1), 100, np.uint8)
    ds = data.load(u8, batch_size=4, shuffle=False, repeat=True)
    e1, e2 = _batches(ds, 2)
    assert not np.array_equal(e1, e2)


def test_skip_resumes_the_same_stream():
    full = _batches(data.load("mnist", batch_size=8, seed=3, repeat=True), 5)
    resumed = _batches(data.load("mnist", batch_size=8, seed=3, repeat=True, skip=3 * 8), 2)
    np.testing.assert_array_equal(resumed[0], full[3])
    np.testing.assert_array_equal(resumed[1], full[4])


def test_n_bits_reduction_and_deterministic_modes():
    u8 = np.array([0, 7, 8, 255], np.uint8).reshape(4, 1, 1, 1)
    (x,) = _batches(data.load(u8, batch_size=4, shuffle=False, n_bits=5, dequantize="none"), 1)
    np.testing.assert_allclose(x.ravel(), (np.array([0, 0, 1, 31]) + 0.5) / 32)
    (v,) = _batches(data.load(u8, batch_size=4, shuffle=False, dequantize="variational"), 1)
    np.testing.assert_array_equal(v.ravel(), u8.ravel().astype("float32"))  # pixel values for the model's dequantizer
    (v,) = _batches(data.load(u8, batch_size=4, shuffle=False, n_bits=5, dequantize="variational"), 1)
    np.testing.assert_array_equal(v.ravel(), [0, 0, 1, 31])
    with pytest.raises(ValueError, match="logit"):
        data.load(u8, dequantize="variational", logit=0.05)


def test_logit_option_matches_the_formula():
    u8 = np.array([0, 128, 255], np.uint8).reshape(3, 1, 1, 1)
    (y,) = _batches(data.load(u8, batch_size=3, shuffle=False, dequantize="none", logit=0.05), 1)
    p = 0.05 + 0.9 * (u8.ravel() + 0.5) / 256
    np.testing.assert_allclose(y.ravel(), np.log(p) - np.log1p(-p), rtol=1e-5)


def test_float_images_in_unit_range_are_accepted():
    u8 = np.random.default_rng(0).integers(0, 256, size=(6, 3, 3)).astype(np.uint8)
    (x,) = _batches(data.load(u8.astype(np.float32) / 255.0, batch_size=6, shuffle=False, dequantize="none"), 1)
    np.testing.assert_allclose(x[..., 0], (u8 + 0.5) / 256, atol=1e-6)


def test_npz_and_image_folder_sources(tmp_path):
    u8 = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6, 3)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=u8, y_train=np.arange(5))
    (x,) = _batches(data.load(str(tmp_path / "d.npz"), batch_size=5, shuffle=False, dequantize="none"), 1)
    np.testing.assert_allclose(x, (u8 + 0.5) / 256, atol=1e-6)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(u8):
        write_png(str(folder / f"{i}.png"), img)
    (y,) = _batches(data.load(str(folder), batch_size=5, shuffle=False, dequantize="none"), 1)
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_tfds_source_uses_tfds_load(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        (x,) = _batches(data.load("tfds:mnist", batch_size=12,
                                  shuffle=False), 1)
    assert x.shape == (12, 28, 28, 1) and 0 <= x.min() and x.max() < 1


@pytest.mark.parametrize(
    "images, match",
    [
        (np.full((2, 4, 4), -1, np.int16), r"integer images must lie in \[0, 255\], got values in \[-1, -1\]"),
        (np.full((2, 4, 4), 300, np.int32), r"integer images must lie in \[0, 255\], got values in \[300, 300\]"),
        (np.full((2, 4, 4), 1.5, np.float32), r"float images must lie in \[0, 1\]"),
        (np.array([[[np.nan]]], np.float32), r"1 NaN or infinite value"),
        (np.zeros((4, 4), np.uint8), r"expected images of shape \(N, H, W\) or \(N, H, W, C\), got shape \(4, 4\)"),
        (np.zeros((0, 4, 4), np.uint8), r"is empty"),
        (np.array([["a"]], dtype=object), r"expected an image array of integers or floats"),
    ],
    ids=["negative", "over-255", "float-over-1", "nan", "rank-2", "empty", "object"],
)
def test_bad_data_is_rejected_with_a_clear_error(images, match):
    with pytest.raises(data.DataError, match=match):
        data.load(images)


def test_mixed_image_sizes_and_bad_arguments(tmp_path):
    write_png(str(tmp_path / "a.png"), np.zeros((4, 4, 1), np.uint8))
    write_png(str(tmp_path / "b.png"), np.zeros((5, 4, 1), np.uint8))
    with pytest.raises(data.DataError, match=r"images have different shapes"):
        data.load(str(tmp_path))
    with pytest.raises(ValueError, match=r"n_bits must be in 1..8"):
        data.load("mnist", n_bits=9)
    with pytest.raises(ValueError, match=r"dequantize must be one of"):
        data.load("mnist", dequantize="gaussian")
    with pytest.raises(data.DataError, match=r"splits 'train' and 'test', not 'validation'"):
        data.load("mnist", split="validation")
