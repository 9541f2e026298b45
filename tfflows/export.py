"""SavedModel export of a `FlowModel` for TensorFlow Serving.

`save(model, base_path)` writes `base_path/<version>/` (the layout TF Serving
polls: one numbered folder per version) holding a SavedModel with five
signatures. Every input is batched with a free batch size and a fixed
trailing shape; every signature has the method name
`tensorflow/serving/predict`. `(H, W, C)` is `model.data_shape` and `D` the
latent size `prod(model.latent_shape)`.

| signature         | inputs                                   | outputs                                   |
|-------------------|------------------------------------------|-------------------------------------------|
| `serving_default` | `images` uint8 `(batch, H, W, C)`, 0-255 | `log_prob`, `bits_per_dim` float32 `(batch,)` |
| `log_prob_float`  | `images` float32 `(batch, H, W, C)` in [0, 1) | `log_prob`, `bits_per_dim` float32 `(batch,)` |
| `sample`          | `temperature` float32 `(batch,)`, `seed` int64 `(batch,)` | `images` float32 `(batch, H, W, C)` |
| `encode`          | `images` float32 `(batch, H, W, C)` in [0, 1) | `latent` float32 `(batch, D)`         |
| `decode`          | `latent` float32 `(batch, D)`            | `images` float32 `(batch, H, W, C)`       |

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
  (`log u - log1p(-u)` of a stateless uniform in `[1e-6, 1 - 1e-6)`). A row
  depends only on its own seed and temperature, never on the batch.
- `sample` and `decode` return float32 images in data space clipped to
  `[0, 1]`; multiply by 255 and round for 8-bit pixels.
- Requests with a wrong dtype or trailing shape fail with an
  `InvalidArgumentError` naming the expected dtype or shape; the server (or
  the loading process) keeps running.

The SavedModel holds only TF graph functions and variables (no pickled
Python, no `Lambda`): `tf.saved_model.load(path)` works in a process that
never imports tfflows or keras.
"""

import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfflows import distributions

SIGNATURES = ("serving_default", "log_prob_float", "sample", "encode", "decode")
METADATA_FILE = os.path.join("assets.extra", "tfflows.json")


# -- model introspection --------------------------------------------------------
def latent_layout(model):
    """The parts of the flat latent, in order, as a list of dicts.

    Each dict has `name` (`"split_1"`, ..., `"final"`, or `"latent"` for
    flows without a split), `shape` (the part's event shape, HWC), `offset`
    and `size` in the flat `(batch, D)` latent.
    """
    flow = model.flow
    split_shapes = list(getattr(flow, "_split_shapes", []) or [])
    if getattr(flow, "has_split", False) and split_shapes:
        named = [(f"split_{i + 1}", s[1:]) for i, s in enumerate(split_shapes)]
        named.append(("final", flow._final_shape[1:]))
    else:
        named = [("latent", model.latent_shape)]
    parts, offset = [], 0
    for name, shape in named:
        size = int(np.prod(shape))
        parts.append(dict(name=name, shape=[int(d) for d in shape], offset=offset, size=size))
        offset += size
    return parts


def signature_specs(model):
    """`{signature: {"inputs": {name: (dtype, shape)}, "outputs": {...}}}`.

    Dtypes are numpy names, shapes use `None` for the free batch axis.
    """
    image = (None,) + tuple(model.data_shape)
    latent = (None, int(np.prod(model.latent_shape)))
    density = {"log_prob": ("float32", (None,)), "bits_per_dim": ("float32", (None,))}
    return {
        "serving_default": {"inputs": {"images": ("uint8", image)}, "outputs": dict(density)},
        "log_prob_float": {"inputs": {"images": ("float32", image)}, "outputs": dict(density)},
        "sample": {"inputs": {"temperature": ("float32", (None,)), "seed": ("int64", (None,))},
                   "outputs": {"images": ("float32", image)}},
        "encode": {"inputs": {"images": ("float32", image)}, "outputs": {"latent": ("float32", latent)}},
        "decode": {"inputs": {"latent": ("float32", latent)}, "outputs": {"images": ("float32", image)}},
    }


def _base_noise_fn(base):
    """A `(key, shape) -> noise` stateless sampler for the model's base."""
    if isinstance(base, distributions.Normal):
        return lambda key, shape: tf.random.stateless_normal(shape, seed=key, dtype=tf.float32)
    if isinstance(base, distributions.Logistic):
        def logistic(key, shape):
            u = tf.random.stateless_uniform(shape, seed=key, minval=1e-6, maxval=1.0 - 1e-6,
                                            dtype=tf.float32)
            return tf.math.log(u) - tf.math.log1p(-u)
        return logistic
    raise TypeError(
        f"tfflows.export can sample from Normal and Logistic bases only; the model's base "
        f"is a {type(base).__name__}."
    )


def _check_exportable(model):
    if not (hasattr(model, "flow") and hasattr(model, "base") and hasattr(model, "data_shape")):
        raise TypeError(f"tfflows.export.save needs a tfflows FlowModel, got {type(model).__name__}.")
    if model.n_bits > 8:
        raise ValueError(
            f"tfflows.export serves uint8 images, so the model's n_bits must be at most 8. "
            f"Received: n_bits={model.n_bits}"
        )
    if model.needs_initialization:
        raise ValueError(
            f"Model '{model.name}' has ActNorm layers that were never initialised: call "
            f"model.initialize(batch) (or fit, or load trained weights) before exporting."
        )
    _base_noise_fn(model.base)


# -- the serving functions ---------------------------------------------------------
def _endpoints(model):
    """The five serving functions, closed over `model`'s layers and variables."""
    data_shape = tuple(model.data_shape)
    latent_shape = tuple(model.latent_shape)
    dims = int(np.prod(data_shape))
    latent_dim = int(np.prod(latent_shape))
    n_bits = int(model.n_bits)
    bins = float(2 ** n_bits)
    noise = _base_noise_fn(model.base)

    def density(x):
        z, log_det = model.flow.forward(x)
        # Give the latent its full static shape (the base's log_prob counts
        # its event size from it).
        z = tf.ensure_shape(z, (None,) + latent_shape)
        log_p = model.base.log_prob(z) + log_det
        bpd = (-log_p + dims * n_bits * math.log(2.0)) / (dims * math.log(2.0))
        return {"log_prob": tf.identity(log_p, name="log_prob"),
                "bits_per_dim": tf.identity(bpd, name="bits_per_dim")}

    def check_images(images):
        return tf.ensure_shape(images, (None,) + data_shape, name="check_images_shape")

    def log_prob_uint8(images):
        k = tf.bitwise.right_shift(check_images(images), tf.constant(8 - n_bits, tf.uint8))
        return density((tf.cast(k, tf.float32) + 0.5) / bins)

    def log_prob_float(images):
        return density(check_images(images))

    def encode(images):
        z, _ = model.flow.forward(check_images(images))
        return {"latent": tf.reshape(z, (-1, latent_dim), name="latent")}

    def decode_flat(latent):
        z = tf.reshape(latent, (-1,) + latent_shape)
        x, _ = model.flow.inverse(z)
        return tf.clip_by_value(x, 0.0, 1.0, name="images")

    def decode(latent):
        latent = tf.ensure_shape(latent, (None, latent_dim), name="check_latent_shape")
        return {"images": decode_flat(latent)}

    def sample(temperature, seed):
        temperature = tf.ensure_shape(temperature, (None,), name="check_temperature_shape")
        seed = tf.ensure_shape(seed, (None,), name="check_seed_shape")
        same_batch = tf.debugging.assert_equal(
            tf.shape(temperature)[0], tf.shape(seed)[0],
            message="sample needs one temperature per seed (inputs 'temperature' and 'seed' "
                    "must have the same batch size)")
        with tf.control_dependencies([same_batch]):
            seed = tf.identity(seed)

        def one_row(args):
            t, s = args
            key = tf.stack([s, tf.zeros_like(s)])
            return noise(key, latent_shape) * t

        z = tf.map_fn(one_row, (temperature, seed),
                      fn_output_signature=tf.TensorSpec(latent_shape, tf.float32))
        return {"images": decode_flat(tf.reshape(z, (-1, latent_dim)))}

    image_f32 = tf.TensorSpec((None,) + data_shape, tf.float32, name="images")
    return {
        "serving_default": (log_prob_uint8, [tf.TensorSpec((None,) + data_shape, tf.uint8, name="images")]),
        "log_prob_float": (log_prob_float, [image_f32]),
        "sample": (sample, [tf.TensorSpec((None,), tf.float32, name="temperature"),
                            tf.TensorSpec((None,), tf.int64, name="seed")]),
        "encode": (encode, [image_f32]),
        "decode": (decode, [tf.TensorSpec((None, latent_dim), tf.float32, name="latent")]),
    }


def metadata(model):
    """What `save` writes to `assets.extra/tfflows.json` (plain JSON types)."""
    from tfflows import __version__

    specs = signature_specs(model)
    return {
        "format": "tfflows-savedmodel/1",
        "tfflows_version": __version__,
        "model_name": model.name,
        "data_shape": [int(d) for d in model.data_shape],
        "n_bits": int(model.n_bits),
        "base": type(model.base).__name__,
        "latent_shape": [int(d) for d in model.latent_shape],
        "latent_dim": int(np.prod(model.latent_shape)),
        "latent_layout": latent_layout(model),
        "dequantization": "x = ((u8 >> (8 - n_bits)) + 0.5) / 2**n_bits (bin centres)",
        "sample_key": "per row: [seed, 0] for tf.random.stateless_*",
        "images_out": "float32 in data space, clipped to [0, 1]",
        "signatures": {
            name: {side: {k: {"dtype": d, "shape": [-1 if s is None else s for s in shape]}
                          for k, (d, shape) in spec[side].items()}
                   for side in ("inputs", "outputs")}
            for name, spec in specs.items()
        },
    }


# -- writing -------------------------------------------------------------------------
def list_versions(base_path):
    """The numeric version folders under `base_path`, sorted (as TF Serving sees them)."""
    if not tf.io.gfile.isdir(base_path):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base_path)
                  if n.rstrip("/").isdigit())


def _write_archive(model, path):
    archive = keras.export.ExportArchive()
    archive.track(model)
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
    `base_path` never sees a half-written version.
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
    tmp = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=base_path)
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
