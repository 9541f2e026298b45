"""tfflows.checkpoint: the one checkpoint format, restored into a live model.

Backend-agnostic: plain Keras models, so these run on TensorFlow and JAX.
`tests/test_distribute.py` covers the format under `tfflows.distribute.train`
(kill while saving, damaged checkpoints skipped, multi-worker resume) and
`tests/test_cli.py` under `tfflows train`.
"""

import os
import warnings

import keras
import numpy as np
import pytest

from tfflows import checkpoint


def _model(optimizer="adam", width=3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(0.01) if optimizer == "adam" else keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer=opt, loss="mse")
    return model


def _values(variables):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]


def _trained(tmp_path, steps=3):
    model = _model()
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8 * steps, 4)), rng.normal(size=(8 * steps, 1)), batch_size=8, verbose=0)
    path = checkpoint.save_checkpoint(model, str(tmp_path), dict(step=steps, note="kept"))
    return model, path


def test_restore_checkpoint_brings_back_weights_and_optimizer_state(tmp_path):
    model, path = _trained(tmp_path)
    fresh = _model()
    assert not fresh.optimizer.built  # restore builds it, then loads its slots
    state = checkpoint.restore_checkpoint(fresh, path)
    assert state == dict(step=3, note="kept")
    for a, b in zip(_values(model.weights), _values(fresh.weights)):
        np.testing.assert_array_equal(a, b)
    assert len(fresh.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(_values(model.optimizer.variables), _values(fresh.optimizer.variables)):
        np.testing.assert_array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 3


def test_restore_checkpoint_refuses_another_optimizer_and_keeps_its_step_count(tmp_path):
    _, path = _trained(tmp_path)
    other = _model(optimizer="sgd")
    with pytest.raises(ValueError, match="does not fit optimizer"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint.restore_checkpoint(other, path)
    assert int(keras.ops.convert_to_numpy(other.optimizer.iterations)) == 0


def test_restore_checkpoint_needs_a_compiled_model(tmp_path):
    _, path = _trained(tmp_path)
    bare = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="needs a compiled model"):
        checkpoint.restore_checkpoint(bare, path)


def test_restore_latest_skips_a_damaged_checkpoint_for_the_one_before(tmp_path):
    model, first = _trained(tmp_path)
    second = checkpoint.save_checkpoint(model, str(tmp_path), dict(step=4))
    with open(os.path.join(second, "model.keras"), "r+b") as f:
        f.truncate(100)
    fresh = _model()
    with pytest.warns(UserWarning, match="Skipping unreadable checkpoint .*ckpt-000000004"):
        path, state = checkpoint.restore_latest(fresh, str(tmp_path))
    assert (path, state["step"]) == (first, 3)


def test_restore_latest_refuses_checkpoints_of_another_architecture(tmp_path):
    _trained(tmp_path)
    wider = _model(width=5)
    with pytest.raises(ValueError, match="No checkpoint in .* could be restored into this model"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint.restore_latest(wider, str(tmp_path))


def test_restore_latest_of_an_empty_folder_is_nothing(tmp_path):
    assert checkpoint.restore_latest(_model(), str(tmp_path / "missing")) == (None, None)
    assert checkpoint.checkpoint_paths(str(tmp_path / "missing")) == []


def test_checkpoint_paths_start_at_latest_and_leave_out_unfinished_saves(tmp_path):
    d = tmp_path
    for step in (2, 4, 6):
        (d / f"ckpt-{step:09d}").mkdir()
    (d / ".tmp-ckpt-000000008-77").mkdir()
    (d / "LATEST").write_text("ckpt-000000004\n")
    assert [os.path.basename(p) for p in checkpoint.checkpoint_paths(str(d))] == [
        "ckpt-000000004", "ckpt-000000002"]  # 6 never became LATEST: its save was cut off
    (d / "LATEST").unlink()
    assert [os.path.basename(p) for p in checkpoint.checkpoint_paths(str(d))] == [
        "ckpt-000000006", "ckpt-000000004", "ckpt-000000002"]


def test_a_failed_save_leaves_no_temporary_folder(tmp_path, monkeypatch):
    model, _ = _trained(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(model, str(tmp_path), dict(step=9))
    assert sorted(os.listdir(tmp_path)) == ["LATEST", "ckpt-000000003"]
