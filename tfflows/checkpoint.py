"""Resumable checkpoints: one format for `tfflows train`, `fit` and
`tfflows.distribute.train` (any strategy, multi-worker included).

A checkpoint is a folder `ckpt-<step>/` (the step zero-padded to nine
digits) holding `model.keras` (the model with its optimizer state, in Keras'
safe format) and `state.json` (the loop position: `step` and whatever else
the trainer records, e.g. epoch, minutes, curve, config, running epoch sums).
It is written under a temporary name, flushed to disk and renamed into place
only when complete; only then does the `LATEST` file (replaced atomically
with `os.replace`) point at it. A crash while saving therefore leaves the
previous checkpoint as the latest. The `keep` newest checkpoints are kept.

`restore_checkpoint(model, path)` loads a checkpoint's weights and optimizer
state into an existing compiled model (the model keeps its variables, so it
works for a model built under a `tf.distribute` strategy);
`restore_latest(model, directory)` does so with the newest checkpoint that
can be read, skipping damaged or unfinished ones with a warning.

Backend-agnostic: keras, numpy and the standard library only.
"""

import json
import os
import re
import shutil
import warnings

import keras
import numpy as np

_NAME = re.compile(r"^ckpt-(\d+)$")


def _atomic_write_text(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(model, directory, state, keep=2):
    """Writes `ckpt-<step>/` then points `LATEST` at it. Returns its path.

    Args:
        model: a Keras model; saved with `model.save` (weights, config and,
            when compiled, the optimizer's state).
        directory: the checkpoint folder (created if needed).
        state: a JSON-serialisable dict with at least `step`.
        keep: how many of the newest checkpoints to keep (`None`: all).
    """
    os.makedirs(directory, exist_ok=True)
    name = f"ckpt-{int(state['step']):09d}"
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        model.save(os.path.join(tmp, "model.keras"))
        _fsync_file(os.path.join(tmp, "model.keras"))
        _atomic_write_text(os.path.join(tmp, "state.json"), json.dumps(state, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(os.path.join(directory, "LATEST"), name + "\n")
    ckpts = sorted(d for d in os.listdir(directory) if d.startswith("ckpt-"))
    for old in ckpts[:-keep] if keep is not None else []:
        if old != name:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    return final


def latest_checkpoint(directory):
    """Path of the newest complete checkpoint in `directory`, or `None`."""
    pointer = os.path.join(directory, "LATEST")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    if not os.path.exists(os.path.join(path, "state.json")):
        raise ValueError(f"checkpoint {path} named by {pointer} is incomplete or missing.")
    return path


def load_checkpoint(path):
    """`(model, state)` from a checkpoint folder (Keras safe_mode loading)."""
    model = keras.saving.load_model(os.path.join(path, "model.keras"), safe_mode=True)
    return model, read_state(path)


def read_state(path):
    """The `state.json` dict of a checkpoint folder (step, minutes, curve, config)."""
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def _step_of(name):
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoint_paths(directory):
    """The checkpoint folders of `directory` to try, newest first.

    The one `LATEST` names comes first, then every older `ckpt-<step>`
    folder. Folders newer than `LATEST`'s belong to saves that did not
    finish, and temporary folders (`.tmp-*`) to saves cut off mid-write: both
    are left out. Without a readable `LATEST`, every `ckpt-<step>` folder is
    listed.
    """
    if not os.path.isdir(directory):
        return []
    steps = sorted(((s, d) for d in os.listdir(directory) if (s := _step_of(d)) is not None), reverse=True)
    latest = None
    pointer = os.path.join(directory, "LATEST")
    if os.path.exists(pointer):
        with open(pointer) as f:
            latest = _step_of(f.read().strip())
    if latest is None:
        return [os.path.join(directory, d) for _, d in steps]
    paths = [os.path.join(directory, f"ckpt-{latest:09d}")]
    return paths + [os.path.join(directory, d) for s, d in steps if s < latest]


def restore_checkpoint(model, path):
    """Restores a checkpoint's weights and optimizer state into `model`.

    `model` must be built and compiled with the architecture and optimizer
    the checkpoint was written with; it keeps its own variables (and so the
    strategy they live in), only their values change. An optimizer that is
    not built yet is built on `model.trainable_variables` first (under a
    `tf.distribute` strategy call this inside the strategy's scope).

    Returns:
        The checkpoint's `state.json` dict.

    Raises:
        ValueError: when `model` has no optimizer, or when the checkpoint
            does not fit this model or its optimizer (another architecture,
            another optimizer). Reading a damaged or unfinished checkpoint
            raises what the reader raises (`OSError`, `ValueError`,
            `zipfile.BadZipFile`, ...). After an error the model may be
            partly overwritten: restore another checkpoint or rebuild it.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(f"restore_checkpoint needs a compiled model (its optimizer state is restored too); "
                         f"compile model '{model.name}' first.")
    state = read_state(path)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{os.path.join(path, 'state.json')} has no 'step'.")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    # Keras' `load_weights` restores a built optimizer's variables from a
    # `.keras` file, but when their number differs it only warns and keeps
    # the current values. Its step counters are set to -1 first (a saved
    # counter is never negative), so a skipped optimizer cannot go unseen.
    counters = [v for v in optimizer.variables if "int" in keras.backend.standardize_dtype(v.dtype)]
    before = [np.asarray(keras.ops.convert_to_numpy(v)) for v in counters]
    for v in counters:
        v.assign(np.full(v.shape, -1, dtype=keras.backend.standardize_dtype(v.dtype)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(os.path.join(path, "model.keras"))
        except BaseException:
            for v, value in zip(counters, before):
                v.assign(value)
            raise
    skipped = [v for v in counters if np.any(np.asarray(keras.ops.convert_to_numpy(v)) < 0)]
    if skipped:
        for v, value in zip(counters, before):
            v.assign(value)
        said = "; ".join(str(w.message).strip() for w in caught)
        raise ValueError(
            f"The optimizer state in {path} does not fit optimizer '{optimizer.name}' of model "
            f"'{model.name}' (another optimizer, or another architecture?)" + (f": {said}" if said else ".")
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return state


def restore_latest(model, directory):
    """Restores the newest checkpoint in `directory` that fits `model`.

    Tries `checkpoint_paths(directory)` in turn with `restore_checkpoint`;
    one that cannot be read or restored is skipped for the one before it,
    with a warning.

    Returns:
        `(path, state)` of the restored checkpoint, or `(None, None)` when
        `directory` holds none.

    Raises:
        ValueError: when checkpoints exist but none can be restored into this
            model and optimizer (e.g. they belong to another architecture):
            they are not overwritten by a fresh start.
    """
    errors = []
    for path in checkpoint_paths(directory):
        try:
            state = restore_checkpoint(model, path)
        except Exception as e:  # noqa: BLE001 - damaged files raise many kinds
            errors.append(f"{path}: {type(e).__name__}: {e}")
            warnings.warn(f"Skipping unreadable checkpoint {path}: {type(e).__name__}: {e}", stacklevel=2)
            continue
        return path, state
    if errors:
        raise ValueError(
            f"No checkpoint in {directory} could be restored into this model and optimizer "
            f"(a different architecture?); move them away to start afresh. Errors: {'; '.join(errors)}"
        )
    return None, None


__all__ = [
    "save_checkpoint", "latest_checkpoint", "load_checkpoint", "read_state", "checkpoint_paths",
    "restore_checkpoint", "restore_latest",
]
