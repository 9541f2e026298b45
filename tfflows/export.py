"""SavedModel export of a `FlowModel` for TensorFlow Serving.

`save(model, base_path)` writes `base_path/<version>/` (the layout TF Serving
polls: one numbered folder per version) holding a SavedModel with five
signatures. Every input is batched with a free batch size and a fixed
trailing shape; every signature has the method name
`tensorflow/serving/predict`. `(H, W, C)` is `model.data_shape` and `D` the
latent size `prod(model.latent_shape)`.

The signatures, their inputs and outputs are one table,
`tfflows.serving.SIGNATURES` (`serving_default` and `log_prob_float` give
`log_prob` and `bits_per_dim`; `sample`, `encode` and `decode` map between
images and the flat latent); docs/serving.md shows it with examples.

Conventions:

- uint8 images are dequantized to bin centres, exactly as
  `tfflows.zoo.data` does with `dequantize="none"`: the top `n_bits` of each
  byte, `k = u8 >> (8 - n_bits)`, become `x = (k + 0.5) / 2^n_bits`. So
  `serving_default(u8)` equals `model.log_prob((k + 0.5) / 2^n_bits)`.
- `log_prob` is `log p(x)` in nats of the density on `[0, 1)^(H*W*C)`;
  `bits_per_dim = (-log_prob + D * n_bits * ln 2) / (D * ln 2)`, as in
  `FlowModel.bits_per_dim`.
- `latent` is always flat `(batch, D)`. For multi-scale flows (a `Split` in
  the `FlowSequence`) it is laid out as
  `[split_1, split_2, ..., final]`, each part flattened in row-major HWC
  order; without a split it is the latent tensor flattened row-major. The
  parts, their shapes and offsets are written to
  `<version>/assets.extra/tfflows.json` (see `latent_layout`).
- `sample` draws each row from its own stateless key `[seed, 0]`:
  `z = temperature * eps`, `eps ~ N(0, I)` for a normal base (via
  `tf.random.stateless_normal`) or the standard logistic for a logistic base
  (`log u - log1p(-u)` of a stateless uniform in `[1e-6, 1 - 1e-6)`): the
  base's own `from_noise` map of stateless noise of its `noise` kind. A row
  depends only on its own seed and temperature, never on the batch.
- `sample` and `decode` return float32 images in data space clipped to
  `[0, 1]`; multiply by 255 and round for 8-bit pixels. They never return
  NaN: a non-finite image (the inverse overflowed, e.g. at a high
  temperature) fails the call with an `InvalidArgumentError` saying so
  ("sample: the inverse overflowed at this temperature ... lower the
  temperature"), as do a NaN, infinite or negative `temperature` and a
  latent holding NaN or Inf.
- Requests with a wrong dtype or trailing shape fail with an
  `InvalidArgumentError` naming the expected dtype or shape; the server (or
  the loading process) keeps running.

The SavedModel holds only TF graph functions and variables (no pickled
Python, no `Lambda`): `tf.saved_model.load(path)` works in a process that
never imports tfflows or keras.
"""

import json
import os
import re
import shutil
import socket
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfflows import distributions, serving
from tfflows.layers.base import event_size
from tfflows.models import bits_per_dim
from tfflows.version import __version__
from tfflows.zoo.data import dequantize_images

SIGNATURES = tuple(serving.SIGNATURES)  # of an image model; see `signature_specs`
METADATA_FILE = os.path.join("assets.extra", "tfflows.json")


# -- model introspection --------------------------------------------------------
def latent_layout(model):
    """The parts of the flat latent, in order (`FlowModel.latent_layout`).

    Each dict has `name` (`"split_1"`, ..., `"final"`, or `"latent"` for
    flows without a split), `shape` (the part's event shape, HWC), `offset`
    and `size` in the flat `(batch, D)` latent.
    """
    return model.latent_layout()


def signature_specs(model):
    """`{signature: {"inputs": {name: (dtype, shape)}, "outputs": {...}}}`
    for `model`: its `tfflows.serving.signature_table` (images or continuous
    data, with a `context` input for a conditional model) with the shapes
    filled in.

    Dtypes are numpy names, shapes use `None` for the free batch axis.
    """
    shapes = {"batch": (None,), "image": (None,) + tuple(model.data_shape), "data": (None,) + tuple(model.data_shape),
              "latent": (None, event_size((None,) + tuple(model.latent_shape))),
              "context": (None,) + tuple(model.context_shape or ())}
    table = serving.signature_table(continuous=model.n_bits is None, conditional=model.context_shape is not None)
    return {name: {side: {k: (dtype, shapes[kind]) for k, (dtype, kind) in spec[side].items()}
                   for side in ("inputs", "outputs")}
            for name, spec in table.items()}


def _stateless_noise(kind, key, shape):
    """Standard noise of `kind` (a base's `noise`) from the stateless key `key`."""
    if kind == "uniform":
        return tf.random.stateless_uniform(shape, seed=key, dtype=tf.float32)
    return tf.random.stateless_normal(shape, seed=key, dtype=tf.float32)


def _check_exportable(model):
    if not (hasattr(model, "flow") and hasattr(model, "base") and hasattr(model, "data_shape")):
        raise TypeError(f"tfflows.export.save needs a tfflows FlowModel, got {type(model).__name__}.")
    if getattr(model, "dequantizer", None) is not None:
        raise NotImplementedError(
            f"tfflows.export does not serve models with a variational dequantizer yet (model '{model.name}'): "
            f"its signatures dequantize with uniform noise. Export a model trained with uniform noise: for shipped "
            f"weights, the ones shipped beside them, tfflows.zoo.glow(preset=..., pretrained=True, dequantize='uniform') (on the command line, "
            f"tfflows export --pretrained --arch dequantize=uniform).")
    if model.n_bits is not None and model.n_bits > 8:
        raise ValueError(
            f"tfflows.export serves uint8 images, so the model's n_bits must be at most 8. "
            f"Received: n_bits={model.n_bits}"
        )
    if model.needs_initialization:
        raise ValueError(
            f"Model '{model.name}' has ActNorm layers that were never initialised: call "
            f"model.initialize(batch) (or fit, or load trained weights) before exporting."
        )
    if not isinstance(model.base, distributions.Distribution) or model.base.noise not in distributions.NOISES:
        raise TypeError(f"tfflows.export samples a tfflows.distributions.Distribution (its from_noise of "
                        f"normal or uniform noise); the model's base is a {type(model.base).__name__}.")


# -- the serving functions ---------------------------------------------------------
def _endpoints(model):
    """The serving functions, closed over `model`'s layers and variables.

    Each takes its signature's inputs in order; a conditional model's take
    `context` last.
    """
    data_shape = tuple(model.data_shape)
    latent_shape = tuple(model.latent_shape)
    dims = event_size((None,) + data_shape)
    latent_dim = event_size((None,) + latent_shape)
    images = model.n_bits is not None
    data_name = "images" if images else "x"
    specs = signature_specs(model)

    def check_data(x):
        return tf.ensure_shape(x, (None,) + data_shape, name=f"check_{data_name}_shape")

    def check_context(context, like):
        if context is None:
            return None
        context = tf.ensure_shape(context, (None,) + tuple(model.context_shape), name="check_context_shape")
        same_batch = tf.debugging.assert_equal(
            tf.shape(context)[0], tf.shape(like)[0],
            message="the context needs one row per example (inputs 'context' and the data, latent or "
                    "seed must have the same batch size)")
        with tf.control_dependencies([same_batch]):
            return tf.debugging.check_numerics(context, "the context holds NaN or Inf")

    def density(x, context):
        z, log_det = model.flow.forward(x, context=context)
        # Give the latent its full static shape (the base's log_prob counts
        # its event size from it).
        z = tf.ensure_shape(z, (None,) + latent_shape)
        log_p = model.base.log_prob(z, context=context) + log_det
        out = {"log_prob": tf.identity(log_p, name="log_prob")}
        if images:
            out["bits_per_dim"] = tf.identity(bits_per_dim(log_p, dims, int(model.n_bits)), name="bits_per_dim")
        return out

    def log_prob_uint8(images_u8, context=None):
        x = dequantize_images(check_data(images_u8), 0.5, int(model.n_bits))  # bin centres
        return density(x, check_context(context, x))

    def log_prob_float(x, context=None):
        x = check_data(x)
        return density(x, check_context(context, x))

    def encode(x, context=None):
        x = check_data(x)
        z, _ = model.flow.forward(x, context=check_context(context, x))
        return {"latent": tf.reshape(z, (-1, latent_dim), name="latent")}

    def decode_flat(latent, context, overflow_message):
        z = tf.reshape(latent, (-1,) + latent_shape)
        x, _ = model.flow.inverse(z, context=context)
        # A non-finite output fails the call (InvalidArgumentError with this
        # message) rather than coming back as NaN, which clipping would keep.
        x = tf.debugging.check_numerics(x, overflow_message)
        if images:
            return tf.clip_by_value(x, 0.0, 1.0, name="images")
        return tf.identity(x, name="x")

    def decode(latent, context=None):
        latent = tf.ensure_shape(latent, (None, latent_dim), name="check_latent_shape")
        latent = tf.debugging.check_numerics(latent, "decode: the latent holds NaN or Inf")
        return {data_name: decode_flat(
            latent, check_context(context, latent),
            "decode: the inverse gave a non-finite output for this latent (it overflowed: the latent is "
            "too far out for this model)")}

    def sample(temperature, seed, context=None):
        temperature = tf.ensure_shape(temperature, (None,), name="check_temperature_shape")
        seed = tf.ensure_shape(seed, (None,), name="check_seed_shape")
        same_batch = tf.debugging.assert_equal(
            tf.shape(temperature)[0], tf.shape(seed)[0],
            message="sample needs one temperature per seed (inputs 'temperature' and 'seed' "
                    "must have the same batch size)")
        good_temperature = tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(temperature) & (temperature >= 0.0)),
            ["sample: every temperature must be finite and >= 0; got temperature =", temperature],
            summarize=16)
        with tf.control_dependencies([same_batch, good_temperature]):
            seed = tf.identity(seed)
            temperature = tf.identity(temperature)
        context = check_context(context, seed)

        def one_row(s):
            return _stateless_noise(model.base.noise, tf.stack([s, tf.zeros_like(s)]), latent_shape)

        eps = tf.map_fn(one_row, seed, fn_output_signature=tf.TensorSpec(latent_shape, tf.float32))
        z = model.base.from_noise(eps, context=context, temperature=temperature)
        return {data_name: decode_flat(
            tf.reshape(z, (-1, latent_dim)), context,
            "sample: the inverse overflowed at this temperature (a non-finite output); lower the temperature")}

    functions = dict(serving_default=log_prob_uint8 if images else log_prob_float, log_prob_float=log_prob_float,
                     sample=sample, encode=encode, decode=decode)
    return {name: (functions[name], [tf.TensorSpec(shape, dtype, name=k)
                                     for k, (dtype, shape) in spec["inputs"].items()])
            for name, spec in specs.items()}


def metadata(model):
    """What `save` writes to `assets.extra/tfflows.json` (plain JSON types)."""
    specs = signature_specs(model)
    images = model.n_bits is not None
    return {
        "format": "tfflows-savedmodel/1",
        "tfflows_version": __version__,
        "model_name": model.name,
        "data_shape": [int(d) for d in model.data_shape],
        "n_bits": int(model.n_bits) if images else None,
        "context_shape": None if model.context_shape is None else [int(d) for d in model.context_shape],
        "base": type(model.base).__name__,
        "latent_shape": [int(d) for d in model.latent_shape],
        "latent_dim": event_size((None,) + tuple(model.latent_shape)),
        "latent_layout": latent_layout(model),
        "dequantization": ("x = ((u8 >> (8 - n_bits)) + 0.5) / 2**n_bits (bin centres)" if images
                           else "none: continuous data"),
        "sample_key": "per row: [seed, 0] for tf.random.stateless_*",
        ("images_out" if images else "x_out"): ("float32 in data space, clipped to [0, 1]" if images
                                                else "float32 in data space, not clipped"),
        "signatures": {
            name: {side: {k: {"dtype": d, "shape": [-1 if s is None else s for s in shape]}
                          for k, (d, shape) in spec[side].items()}
                   for side in ("inputs", "outputs")}
            for name, spec in specs.items()
        },
    }


# -- writing -------------------------------------------------------------------------
def list_versions(base_path):
    """The numeric version folders under `base_path`, sorted (as TF Serving sees them).

    Temporary `.tmp-export-*` folders of an export in progress (or of one
    that was killed) are not versions.
    """
    if not tf.io.gfile.isdir(base_path):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base_path)
                  if n.rstrip("/").isdigit())


# `save` writes into `.tmp-export-<version>-<host>-pid<pid>-<random>` in the
# base folder; host and pid let a later export tell a folder left by a killed
# process (removed) from one being written right now (kept).
_TMP_PREFIX = ".tmp-export-"
_TMP_RE = re.compile(r"^\.tmp-export-\d+-(?P<host>.*)-pid(?P<pid>\d+)-[^-]*$")


def _host_tag():
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _process_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return True  # unknown: keep its folder
    return True


def remove_stale_exports(base_path):
    """Removes `.tmp-export-*` folders in `base_path` left by an export on this
    host whose process is no longer running (killed during `save`). Folders of
    running processes, or written from another host, are kept. Returns the
    removed paths."""
    if not os.path.isdir(base_path):
        return []
    removed = []
    for name in os.listdir(base_path):
        match = _TMP_RE.match(name)
        if not match or match["host"] != _host_tag():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _process_running(pid):
            path = os.path.join(base_path, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _write_archive(model, path):
    archive = keras.export.ExportArchive()
    # The flow and the base hold every variable the endpoints read. Tracking
    # the layers rather than the model keeps Keras from adding its own
    # `model(x)` signature, which a conditional model cannot answer.
    archive.track(model.flow)
    archive.track(model.base)
    # serving_default is registered first, so it is also the archive's default.
    for name, (fn, spec) in _endpoints(model).items():
        archive.add_endpoint(name, fn, input_signature=spec)
    archive.write_out(path, verbose=False)
    extra = os.path.join(path, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(metadata(model), f, indent=2)


def save(model, base_path, version=None, overwrite=False):
    """Exports `model` as a TF Serving SavedModel in `base_path/<version>/`.

    Args:
        model: a `FlowModel` (ActNorm initialised, e.g. trained or after
            `model.initialize(batch)`), with a `Normal` or `Logistic` base.
        base_path: the model's base folder (TF Serving's `--model_base_path`).
            Created if missing.
        version: positive integer version. Defaults to `None`: one more than
            the highest version already in `base_path` (1 for a new folder).
        overwrite: replace an existing `base_path/<version>/`. Defaults to
            `False`.

    Returns:
        The path of the version folder that was written.

    Raises:
        ValueError: for a bad version, an uninitialised model or
            `n_bits > 8`.
        FileExistsError: if the version folder exists and `overwrite` is off.
        TypeError: for a model that is not a `FlowModel` or has another base.

    On a local disk the SavedModel is written to a hidden temporary folder in
    `base_path` and renamed into place, so a TF Serving instance polling
    `base_path` never sees a half-written version. Such folders left by a
    killed export (on this host, by a process no longer running) are
    removed by the next `save` to `base_path`.
    """
    _check_exportable(model)
    base_path = os.fspath(base_path)
    if version is None:
        version = (list_versions(base_path) or [0])[-1] + 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"save needs a positive integer version. Received: version={version!r}")
    version = int(version)
    target = os.path.join(base_path, str(version))
    if tf.io.gfile.exists(target):
        if not overwrite:
            raise FileExistsError(
                f"Version folder {target} already exists; pass overwrite=True (CLI: --overwrite) "
                f"or another version."
            )
    tf.io.gfile.makedirs(base_path)
    if "://" in base_path:  # remote file systems: no atomic rename of folders
        if tf.io.gfile.exists(target):
            tf.io.gfile.rmtree(target)
        _write_archive(model, target)
        return target
    remove_stale_exports(base_path)
    tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{version}-{_host_tag()}-pid{os.getpid()}-", dir=base_path)
    try:
        # mkdtemp makes a 0700 folder; give the version folder the usual
        # permissions so a server running as another user can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _write_archive(model, tmp)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target
