"""tf.data pipelines for flows: dequantization, n-bit reduction, logit.

`load(source, ...)` turns numpy arrays, an `.npz` file, a folder of images,
the embedded MNIST subset (`"mnist"`) or a tensorflow-datasets name into a
shuffled, batched, prefetched `tf.data.Dataset` of float32 images in
`[0, 1)`, deterministic given `seed`.

TensorFlow only.
"""

import os

import numpy as np
import tensorflow as tf

EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        "mnist_subset.npz")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DEQUANTIZE = ("uniform", "none", "variational")


class DataError(ValueError):
    """The data handed to a pipeline is unusable (shape, dtype, range, NaN, empty)."""


def validate_images(x, name="data"):
    """Checks an image array and returns it as uint8 `(N, H, W, C)`.

    Accepts uint8 (or other integer types) in [0, 255], or floats in [0, 1]
    (taken as `uint8 / 255`, rounded back to the 256 levels). Rank 3 arrays
    `(N, H, W)` get a channel axis. Raises `DataError` naming the problem.
    """
    x = np.asarray(x)
    if x.dtype == object or x.dtype.kind not in "uif b".replace(" ", ""):
        raise DataError(f"{name}: expected an image array of integers or floats, got dtype {x.dtype}.")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(
            f"{name}: expected images of shape (N, H, W) or (N, H, W, C), got shape {x.shape} "
            f"(rank {x.ndim})."
        )
    if x.shape[0] == 0:
        raise DataError(f"{name}: is empty (shape {x.shape}).")
    if min(x.shape[1:]) == 0 or x.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"{name}: expected 1-4 channels and non-empty images, got shape {x.shape}.")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise DataError(f"{name}: contains {bad} NaN or infinite value(s).")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{name}: float images must lie in [0, 1] (uint8 / 255), got values in "
                f"[{lo:g}, {hi:g}]. Pass uint8 images in [0, 255] instead, or rescale."
            )
        return np.round(x * 255.0).astype(np.uint8)
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise DataError(
            f"{name}: integer images must lie in [0, 255], got values in [{lo}, {hi}]."
        )
    return x.astype(np.uint8)


class MissingSplitError(DataError):
    """The source holds no array for the split asked for (e.g. an `.npz` without a test split)."""


# Keys of an `.npz` that hold unsplit images: they are its train split only,
# never stand-ins for a test split.
UNSPLIT_KEYS = ("x", "images", "arr_0")


def _split_keys(split):
    """The `.npz` keys that hold `split`, in order of preference."""
    keys = (f"x_{split}", split)
    return keys + UNSPLIT_KEYS if split == "train" else keys


def _open_npz(path):
    """`np.load(path)` for an `.npz` archive; `DataError` naming `path` for anything else."""
    import zipfile

    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        # numpy reads an unknown format as a pickle and refuses it ("pickled data").
        why = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{path}: not a readable .npz archive of image arrays ({type(e).__name__}: {why}).") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, not an .npz archive; save the images with "
                        f"np.savez(path, x_train=..., x_test=...).")
    return f


def _npz_array(f, path, key):
    try:
        return f[key]
    except ValueError as e:  # an object (pickled) array; allow_pickle stays off
        raise DataError(f"{path}: array {key!r} cannot be read without pickle ({e}); store images as "
                        f"uint8 or float arrays.") from None


def _from_npz(path, split):
    """The array of `split` in the `.npz` at `path`.

    Looks for `x_<split>` then `<split>`; the train split also accepts the
    unsplit keys `x`, `images` and `arr_0`. A file without the split raises
    `MissingSplitError`: a test split never falls back to training images.
    """
    looked = _split_keys(split)
    with _open_npz(path) as f:
        keys = list(f.keys())
        for key in looked:
            if key in f:
                return _npz_array(f, path, key)
    if split != "train" and set(keys) & set(UNSPLIT_KEYS):
        raise MissingSplitError(
            f"{path}: has no {split} split: it holds {keys}, looked for {' or '.join(looked)} "
            f"({', '.join(UNSPLIT_KEYS)} are its train split, never read as the {split} split).")
    raise MissingSplitError(f"{path}: no array for split {split!r}; it holds {keys} "
                            f"(looked for {', '.join(looked)}).")


def _from_folder(path, image_size=None):
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise DataError(f"{path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    images = []
    for file in files:
        try:
            img = tf.io.decode_image(tf.io.read_file(file), expand_animations=False)
        except tf.errors.InvalidArgumentError as e:
            raise DataError(f"{file}: cannot decode image ({e.message.splitlines()[0]}).") from None
        if image_size is not None:
            img = tf.cast(tf.round(tf.image.resize(img, image_size)), tf.uint8)
        images.append(img.numpy())
    channels = {}
    for file, im in zip(files, images):
        channels.setdefault(im.shape[-1], file)
    if len(channels) > 1:
        # Resizing cannot fix this: say which files differ and how to convert them.
        names = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}
        found = ", ".join(f"{c} ({names.get(c, '?')}, e.g. {f})" for c, f in sorted(channels.items()))
        raise DataError(
            f"{path}: images have different channel counts: {found}. Convert them all to one mode "
            f"first (e.g. with Pillow: Image.open(f).convert('L') for grayscale or .convert('RGB'))."
        )
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"{path}: images have different shapes {sorted(shapes)[:4]}; pass image_size=(H, W) "
            f"to resize them."
        )
    return np.stack(images)


def _check_limit_skip(limit, skip=0):
    """`limit` must be a positive int or None, `skip` a non-negative int."""
    import numbers

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ValueError(f"limit must be a positive int (the number of images to keep) or None. "
                         f"Received: limit={limit!r}")
    if isinstance(skip, bool) or not isinstance(skip, numbers.Integral) or skip < 0:
        raise ValueError(f"skip must be a non-negative int (examples to skip). Received: skip={skip!r}")


def _tfds_images(name, split, data_dir, download):
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
    spec = ds.element_spec
    if isinstance(spec, dict):
        key = "image" if "image" in spec else next(
            (k for k, s in spec.items() if len(s.shape) in (2, 3)), None)
        if key is None:
            raise DataError(f"tfds {name!r}: no image feature in {sorted(spec)}.")
        ds = ds.map(lambda e: e[key])
        spec = spec[key]
    if spec.dtype != tf.uint8:
        raise DataError(f"tfds {name!r}: expected uint8 images, got {spec.dtype.name}.")
    if len(spec.shape) == 2:
        ds = ds.map(lambda im: im[..., None])
    return ds


def dequantize_images(images, noise, n_bits=8):
    """`x = ((u8 >> (8 - n_bits)) + noise) / 2^n_bits` in float32.

    The one place tfflows writes the dequantization: `u8` holds 8-bit
    values, the top `n_bits` of each become the bin index `k` (Glow's n-bit
    trick), and `noise` in `[0, 1)` places `x` inside the bin (uniform
    noise; 0.5 for the bin centre). TensorFlow ops on numpy or TF inputs:
    `load`'s pipelines, `tfflows.export`'s uint8 signature and
    `tfflows.training.bpd_per_draw` all call it.
    """
    shift = 8 - int(n_bits)
    k = tf.cast(tf.bitwise.right_shift(tf.cast(images, tf.int32), shift), tf.float32)
    return (k + noise) / float(2 ** int(n_bits))


def dequantize_fn(n_bits=8, dequantize="uniform", logit=None):
    """`(uint8 image, int64 seed) -> float32` map: n-bit reduction, noise, logit.

    `n_bits` keeps the top bits (Glow's 5-bit trick): `k = u8 >> (8 - n_bits)`.
    `uniform`: `x = (k + u) / 2^n_bits`, `u ~ U[0, 1)` (stateless, seeded per
    element). `none`: bin centres `(k + 0.5) / 2^n_bits` (deterministic).
    `variational`: the bin index `k` itself, as float32 (integer values in
    `[0, 2^n_bits)`), which a model with a learned dequantizer
    (`FlowModel(..., dequantizer=VariationalDequantizer(...))`) takes and
    dequantizes itself. With `logit=alpha`, the result is mapped to
    `log p - log(1 - p)`, `p = alpha + (1 - 2 alpha) x` (RealNVP); models then
    see logit-space data, and bits/dim must count that map's log-det (the zoo
    models use the `LogitTransform` layer instead, which does).
    """
    if dequantize not in DEQUANTIZE:
        raise ValueError(f"dequantize must be one of {DEQUANTIZE}. Received: dequantize={dequantize!r}")
    if not 1 <= int(n_bits) <= 8:
        raise ValueError(f"n_bits must be in 1..8 for 8-bit images. Received: n_bits={n_bits}")
    if logit is not None and not 0.0 <= float(logit) < 0.5:
        raise ValueError(f"logit alpha must be in [0, 0.5). Received: logit={logit}")
    if logit is not None and dequantize == "variational":
        raise ValueError("dequantize='variational' yields integer pixel values for the model's own dequantizer; "
                         "it takes no logit (put a LogitTransform in the model).")

    def fn(image, seed):
        if dequantize == "variational":
            shift = 8 - int(n_bits)
            return tf.cast(tf.bitwise.right_shift(tf.cast(image, tf.int32), shift), tf.float32)
        if dequantize == "uniform":
            noise = tf.random.stateless_uniform(tf.shape(image), seed=tf.stack([seed, seed // 7919 + 17]))
        else:
            noise = 0.5
        x = dequantize_images(image, noise, n_bits)
        if logit is not None:
            p = float(logit) + (1.0 - 2.0 * float(logit)) * x
            x = tf.math.log(p) - tf.math.log1p(-p)
        return x

    return fn


def load(source="mnist", split="train", batch_size=64, dequantize="uniform", n_bits=8, logit=None,
         shuffle=True, seed=0, repeat=False, drop_remainder=False, image_size=None, limit=None,
         data_dir=None, download=True, with_labels=False, skip=0):
    """A `tf.data.Dataset` of dequantized float32 image batches in `[0, 1)`
    (with `dequantize="variational"`: the integer pixel values, as floats,
    for a model that dequantizes them itself).

    Args:
        source: `"mnist"` (the MNIST subset shipped in the package: 8000
            train / 2000 test images), a numpy array (or `(images, labels)`
            tuple), a path to an `.npz` (keys `x_<split>`, `x`, `images` or
            `arr_0`, the last three as the train split only), a folder
            of images (one unsplit set: `split` is not used), or a
            tensorflow-datasets name (`tfds.load(source, split=split,
            data_dir=data_dir)`; prefix `"tfds:"` to force it, e.g.
            `"tfds:mnist"` for the full set).
        split: split name. Defaults to `"train"`.
        batch_size: batch size. Defaults to 64.
        dequantize: `"uniform"`, `"none"` or `"variational"` (see
            `dequantize_fn`). Defaults to `"uniform"`.
        n_bits: keep the top `n_bits` of each 8-bit value. Defaults to 8.
        logit: RealNVP logit alpha, or `None`. Defaults to `None`.
        shuffle: shuffle (seeded, reshuffled every epoch). Defaults to `True`.
        seed: seed of the shuffle and of the noise. Defaults to 0.
        repeat: repeat forever (fresh noise and order each pass).
        drop_remainder: drop a last partial batch.
        image_size: `(H, W)` to resize folder images to.
        limit: keep only the first `limit` images (a positive int, or
            `None` for all).
        with_labels: yield `(images, labels)` where labels exist.
        skip: skip this many examples of the (repeated) stream, before the
            dequantization work: resuming at example `skip` yields exactly
            what an uninterrupted run would have from there on. A
            non-negative int.

    Raises:
        DataError: bad data (wrong rank or dtype, values out of range,
            NaN/Inf, empty, mixed image sizes or channel counts, a file
            that is not an `.npz`).
        MissingSplitError: (a `DataError`) the source has no `split`: an
            `.npz` with only `x`, `images` or `arr_0` has a train split
            and no test split.
        ValueError: a bad argument (`limit`, `skip`, `batch_size`, ...).
    """
    _check_limit_skip(limit, skip)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    fn = dequantize_fn(n_bits, dequantize, logit)
    labels = None
    images_ds = None
    if isinstance(source, tuple) and len(source) == 2:
        source, labels = source
    if isinstance(source, str) and source == "mnist":
        with np.load(EMBEDDED, allow_pickle=False) as f:
            if f"x_{split}" not in f:
                raise MissingSplitError(f"the embedded MNIST subset has splits 'train' and 'test', not {split!r}.")
            images, labels = f[f"x_{split}"], f[f"y_{split}"]
    elif isinstance(source, str) and not source.startswith("tfds:") and os.path.isdir(source):
        images = _from_folder(source, image_size)
    elif isinstance(source, str) and not source.startswith("tfds:") and (
            source.endswith(".npz") or os.path.isfile(source)):
        if not os.path.exists(source):
            raise DataError(f"{source}: no such file.")
        images = _from_npz(source, split)
        with _open_npz(source) as f:
            labels = _npz_array(f, source, f"y_{split}") if f"y_{split}" in f else None
    elif isinstance(source, str):
        images = None
        images_ds = _tfds_images(source[5:] if source.startswith("tfds:") else source, split,
                                 data_dir, download)
    else:
        images = source
    if images is not None:
        images = validate_images(images, name=f"{source if isinstance(source, str) else 'images'}")
        if limit is not None:
            images = images[: int(limit)]
            labels = None if labels is None else np.asarray(labels)[: int(limit)]
        if with_labels and labels is None:
            raise DataError("with_labels=True but this source has no labels.")
        ds = tf.data.Dataset.from_tensor_slices((images, labels) if with_labels else images)
        n = images.shape[0]
    else:
        ds = images_ds.take(int(limit)) if limit is not None else images_ds
        if with_labels:
            raise DataError("with_labels is supported for arrays, .npz and 'mnist' sources only.")
        n = 10000
    if shuffle:
        ds = ds.shuffle(min(n, 60000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    noise_seeds = tf.data.Dataset.random(seed=seed)
    ds = tf.data.Dataset.zip((ds, noise_seeds))
    if skip:
        ds = ds.skip(int(skip))
    if with_labels:
        ds = ds.map(lambda il, s: (fn(il[0], s), il[1]), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    else:
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_arrays(source="mnist", split="train", limit=None):
    """The validated uint8 `(N, H, W, C)` images of `source` as numpy (no tf.data).

    `source` and `split` as in `load` (a folder is one unsplit set; an
    `.npz` without the split raises `MissingSplitError`); `limit` keeps the
    first `limit` images (a positive int, or `None` for all).
    """
    _check_limit_skip(limit)
    if isinstance(source, str) and source == "mnist":
        with np.load(EMBEDDED, allow_pickle=False) as f:
            if f"x_{split}" not in f:
                raise MissingSplitError(f"the embedded MNIST subset has splits 'train' and 'test', not {split!r}.")
            images = f[f"x_{split}"]
    elif isinstance(source, str) and os.path.isdir(source):
        images = _from_folder(source)
    elif isinstance(source, str):
        if not os.path.exists(source):
            raise DataError(f"{source}: no such file or folder.")
        images = _from_npz(source, split)
    else:
        images = source
    images = validate_images(images, name=source if isinstance(source, str) else "images")
    return images if limit is None else images[: int(limit)]
