"""FastFlow (issue #46): per-scale 2-D flows on a frozen backbone, the
anomaly maps (anomalib's latent probability, and -log p per position),
synthetic defects, and the shipped MNIST backbone."""

import os
import shutil

import keras
import numpy as np
import pytest

from tfflows import apps
from tfflows.apps import anomaly
from tfflows.zoo.presets import WEIGHTS_DIR, WeightsError


def _backbone(size=8, second=True):
    inputs = keras.Input((size, size, 1))
    f1 = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    outputs = [f1]
    if second:
        outputs.append(keras.layers.AveragePooling2D(2)(keras.layers.Conv2D(6, 3, padding="same")(f1)))
    return keras.Model(inputs, outputs)


def _normal(n, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 0.2, size=(n, 8, 8, 1)).astype("float32")


def test_map_is_minus_log_p_per_position():
    ff = anomaly.FastFlow(_backbone(), steps=2)
    ff.fit(_normal(32), epochs=1, batch_size=16)
    rng = np.random.default_rng(5)
    for flow in ff.flows:  # away from the zero-initialised identity
        for v in flow.trainable_variables:
            v.assign(np.asarray(v.numpy()) + rng.normal(0.0, 0.05, size=v.shape).astype("float32"))
    ff._nll_fn = None
    x = _normal(5, seed=1)
    maps = ff.scale_maps(x, kind="nll")
    for m, flow, f in zip(maps, ff.flows, ff.features(x)):
        c = f.shape[-1]
        # Summed over positions (and times the channels), the map is the flow's own -log p.
        np.testing.assert_allclose((m * c).sum(axis=(1, 2)), -np.asarray(flow.log_prob(f)), rtol=1e-4, atol=1e-3)
    # anomalib's map, -exp(-0.5 mean_c z^2), from the same latents.
    for m, flow, f in zip(ff.scale_maps(x), ff.flows, ff.features(x)):
        z = np.asarray(flow.encode(f))
        np.testing.assert_allclose(m, -np.exp(-0.5 * (z ** 2).mean(-1)), rtol=1e-4, atol=1e-6)
    full = ff.anomaly_map(x)
    assert full.shape == (5, 8, 8) and np.all(np.isfinite(full))
    np.testing.assert_allclose(ff.score(x), full.reshape(5, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(ff.score(x, reduce="mean"), full.reshape(5, -1).mean(1), rtol=1e-6)
    last = ff.anomaly_map(x, kind="nll", scales=[1])
    assert last.shape == (5, 8, 8) and not np.allclose(last, ff.anomaly_map(x, kind="nll"))
    with pytest.raises(ValueError, match="scales 0..1; got scale 2"):
        ff.anomaly_map(x, scales=[2])
    with pytest.raises(ValueError, match="map kind must be one of"):
        ff.anomaly_map(x, kind="density")


def test_fit_lowers_the_loss_and_the_map_finds_a_defect():
    ff = anomaly.FastFlow(_backbone(second=False), steps=4, hidden_ratio=2.0)
    ff.fit(_normal(256), epochs=8, batch_size=32, learning_rate=3e-3, noise=0.0)
    assert ff.history[0][-1] < ff.history[0][0]
    x = _normal(20, seed=2)
    x[:10, 2:5, 2:5, 0] = 0.95  # a bright square on half of them
    maps = ff.anomaly_map(x, kind="nll")
    inside = maps[:10, 2:5, 2:5].mean()
    outside = np.concatenate([maps[:10, 6:, 6:].ravel(), maps[10:].ravel()]).mean()
    assert inside > outside + 1.0
    for kind in ("nll", "probability"):
        scores = ff.score(x, kind=kind)
        assert apps.auroc(scores[10:], scores[:10]) == 1.0


def test_bad_input_gets_a_clear_error():
    ff = anomaly.FastFlow(_backbone(), steps=1)
    with pytest.raises(ValueError, match="has not been trained"):
        ff.score(_normal(2))
    with pytest.raises(ValueError, match=r"takes images of shape \(N, 8, 8, 1\); got \(2, 9, 9, 1\)"):
        ff.fit(np.zeros((2, 9, 9, 1), "float32"))
    with pytest.raises(TypeError, match="float images"):
        ff.fit(np.zeros((2, 8, 8, 1), "uint8"))
    with pytest.raises(ValueError, match="empty batch"):
        ff.fit(np.zeros((0, 8, 8, 1), "float32"))
    bad = _normal(2)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ff.fit(bad)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        ff.fit(_normal(2), noise=-1.0)
    with pytest.raises(ValueError, match="reduce must be"):
        anomaly.reduce_map(np.zeros((2, 8, 8)), reduce="median")
    inputs = keras.Input((8, 8, 1))
    small = keras.Model(inputs, keras.layers.Conv2D(3, 1)(keras.layers.MaxPooling2D(8)(inputs)))
    with pytest.raises(ValueError, match="1x1, too small"):
        anomaly.FastFlow(small)
    flat = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="feature maps"):
        anomaly.FastFlow(flat)
    one = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    with pytest.raises(ValueError, match="at least 2"):
        anomaly.FastFlow(one)
    with pytest.raises(TypeError, match="keras.Model"):
        anomaly.FastFlow("resnet")


def test_the_shipped_backbone_is_checked_and_gives_three_scales(tmp_path):
    ff = apps.fastflow(backbone=None)
    assert ff.image_shape == (28, 28, 1)
    assert ff.feature_shapes == [(28, 28, 32), (14, 14, 32), (7, 7, 64)]
    assert not ff.backbone.trainable
    shutil.copy(os.path.join(WEIGHTS_DIR, anomaly.BACKBONE_FILE), tmp_path / anomaly.BACKBONE_FILE)
    with open(tmp_path / anomaly.BACKBONE_FILE, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(WeightsError, match="sha256"):
        anomaly.mnist_backbone(weights_dir=str(tmp_path))


def test_the_shipped_backbone_knows_digits(mnist_npz):
    """Its weights are the 98.5 %-accurate classifier's feature layers: a
    nearest-class-mean rule on its pooled last map sorts test digits."""
    with np.load(mnist_npz) as f:
        x_train, y_train = f["x_train"][:2000, ..., None] / 256.0, f["y_train"][:2000]
        x_test, y_test = f["x_test"][:500, ..., None] / 256.0, f["y_test"][:500]
    backbone = anomaly.mnist_backbone()

    def pooled(x):
        return np.asarray(backbone(x.astype("float32"))[-1]).reshape(len(x), -1)

    train, test = pooled(x_train), pooled(x_test)
    means = np.stack([train[y_train == c].mean(0) for c in range(10)])
    pred = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == y_test).mean() > 0.8
    random = anomaly.mnist_backbone(pretrained=False)
    assert not np.allclose(np.asarray(random(x_test[:2].astype("float32"))[-1]),
                           np.asarray(backbone(x_test[:2].astype("float32"))[-1]))


def test_synthetic_defects_mark_exactly_the_changed_pixels():
    x = np.zeros((30, 28, 28, 1), "float32")
    x[:, 8:20, 12:16, 0] = 0.8  # a stroke
    x[:10, :, :, 0] = 0.0
    x[:10, 5:25, 26:28, 0] = 0.8  # a 2-pixel-wide stroke at the right edge
    x[10:12, :, :, 0] = 0.0  # blank
    defective, masks = apps.synthetic_defects(x, seed=3)
    changed = np.abs(defective - x)[..., 0] > 0.1
    np.testing.assert_array_equal(masks, changed)
    assert masks.reshape(30, -1).sum(1).min() >= 4
    assert defective.max() < 1.0 and defective.min() >= 0.0
    again, _ = apps.synthetic_defects(x, seed=3)
    np.testing.assert_array_equal(again, defective)
    with pytest.raises(ValueError, match="grey images"):
        apps.synthetic_defects(np.zeros((2, 28, 28), "float32"))
