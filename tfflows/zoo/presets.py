"""The presets table and the shipped weights, read without Keras.

`tfflows/zoo/presets.json` is the one data table of presets: per model and
preset, the architecture, a note on why, and for shipped weights their file,
sha256, size, measured metrics and model card. `tools/ship.py` writes it;
the training record behind each shipped file (commands, stages, hardware) is
`zoo/<model>-<preset>/history.json` beside the card. This module imports
only the standard library, so `tfflows list` answers without loading
TensorFlow.
"""

import hashlib
import json
import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
# The one data table of presets: per model and preset, the architecture, a
# note on why, and for shipped weights their file, sha256, size, measured
# metrics and model card. `tools/ship.py` writes it; the training record
# behind each shipped file (commands, stages, hardware) is in
# `zoo/<model>-<preset>/history.json` beside the card.
PRESETS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets.json")


def read_presets():
    """The presets table: `{model: {preset: {"architecture", "note", "weights",
    "metrics", "card"}}}` (`weights` is `None` where none ship)."""
    with open(PRESETS_FILE) as f:
        return json.load(f)


def architectures(table):
    out = {}
    for model, presets in table.items():
        out[model] = {}
        for preset, row in presets.items():
            arch = dict(row["architecture"])
            arch["data_shape"] = tuple(arch["data_shape"])
            if isinstance(arch.get("hidden"), list):
                arch["hidden"] = tuple(arch["hidden"])
            out[model][preset] = arch
    return out


# Architecture keywords per (model, preset), from the table. `tiny` presets
# are for tests and the few-minute main job; `mnist` is the CPU recipe behind
# the shipped weights; `cifar10` follows the papers' CIFAR-10 architectures.
PRESETS = architectures(read_presets())


def read_manifest():
    """`{"<model>-<preset>": entry}` for every preset whose weights ship:
    the file, sha256 and size, the architecture, the measured metrics
    (`test_bpd`, `embedded_test500_bpd`, ...) and the card, flattened from
    the presets table (`{}` when none ship). Entries other than a preset's
    main weights carry the builder keywords that load them: `build` (the
    `-uniform` weights beside a learned dequantizer's) or `num_classes` in
    their architecture (class-conditional)."""
    out = {}
    for model, presets in read_presets().items():
        for preset, row in presets.items():
            def entry(sub, architecture=row["architecture"], **extra):
                return dict(model=model, preset=preset, architecture=architecture, card=sub.get("card"),
                            **extra, **sub["weights"], **sub.get("metrics", {}))

            if row.get("weights"):
                out[f"{model}-{preset}"] = entry(row)
            # Uniform-noise weights beside weights with a learned dequantizer
            # (`glow(preset, pretrained=True, dequantize="uniform")`): `build` holds the builder keywords.
            if row.get("uniform"):
                out[f"{model}-{preset}-uniform"] = entry(row["uniform"], build={"dequantize": "uniform"})
            # Class-conditional weights of the preset (`glow(preset, num_classes=K, pretrained=True)`).
            for key, sub in row.get("classes", {}).items():
                out[f"{model}-{preset}-{key}"] = entry(sub, dict(row["architecture"], **sub["architecture"]))
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class WeightsError(ValueError):
    """Shipped weights are missing, corrupted or do not fit the model.

    The sha256 check catches accidental corruption of the package data; it
    is not tampering protection, since the presets table ships beside the weights.
    """


def verified_weights_path(key, weights_dir=None):
    """Path of the shipped weights `key` after checking its sha256."""
    entry = read_manifest().get(key)
    if entry is None:
        shipped = sorted(read_manifest())
        raise WeightsError(
            f"No pretrained weights ship for {key!r}; shipped: {shipped or 'none'}. "
            f"Build with pretrained=False and train (see `tfflows train`)."
        )
    path = os.path.join(weights_dir or WEIGHTS_DIR, entry["file"])
    if not os.path.exists(path):
        raise WeightsError(f"Pretrained weights file {path} for {key!r} is missing; reinstall tfflows.")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(
            f"Pretrained weights file {path} failed its sha256 check (expected "
            f"{entry['sha256']}, got {digest}): the file is corrupted or was modified; "
            f"refusing to load it. Reinstall tfflows."
        )
    return path




#: The models `tfflows train` / `evaluate` / `sample` / `export` build (`--model`).
CLI_MODELS = ("glow", "realnvp", "nice")


def list_models():
    """Every (model, preset): its builder call, its `tfflows` CLI flags, its
    architecture, whether weights ship and, where they do, the measured
    test bits/dim. Returns a list of dicts."""
    manifest = read_manifest()
    rows = []
    for name, presets in PRESETS.items():
        for preset, config in presets.items():
            key = f"{name}-{preset}"
            entry = manifest.get(key, {})
            shipped = key in manifest
            rows.append(dict(
                name=key, model=name, preset=preset,
                call=f"tfflows.zoo.{name}(preset={preset!r}{', pretrained=True' if shipped else ''})",
                flags=(f"--model {name} --preset {preset}" + (" --pretrained" if shipped else "")
                       if name in CLI_MODELS else "(Python only)"),
                architecture={k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()},
                pretrained=shipped, card=entry.get("card"),
                test_bpd=entry.get("test_bpd"), test_bpd_stderr=entry.get("test_bpd_stderr"),
                metrics={k: v for k, v in entry.items() if k.startswith("test_")},
            ))
    return rows
