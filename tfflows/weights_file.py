"""A checksum inside Keras `.weights.h5` files, so a damaged file is refused.

`sign(path)` computes a sha256 over the file's weights and stores it in the
file as the root attribute `tfflows_sha256` (with
`tfflows_checksum_version = 1`); `verify(path)` recomputes it before a load.
Every weights file tfflows writes is signed
(`training.save_inference_weights`, `FlowModel.save_weights`) and every
tfflows loader verifies it (`FlowModel.load_weights`, the CLI's `--weights`,
`--run`, `--init-from`). A signed file still loads with plain Keras
`model.load_weights`, which ignores the attribute.

The digest covers every dataset in the file: for each dataset path, in
sorted order, the path, its dtype, its shape and its raw bytes. Attributes
(the digest itself, Keras' metadata) are not covered, so signing does not
change what it signs.

What it protects against: accidental damage, such as a truncated copy, a
flipped bit on disk or in transfer, or a file overwritten half-way. It is no
protection against tampering: the digest travels inside the file, so whoever
changes the weights can recompute it.

Imports only the standard library, numpy and h5py (no TensorFlow, Keras or
other tfflows modules), so `tfflows.models` can import it.
"""

import hashlib
import os

import h5py
import numpy as np

DIGEST_ATTR = "tfflows_sha256"
VERSION_ATTR = "tfflows_checksum_version"
CHECKSUM_VERSION = 1


class WeightsFileError(ValueError):
    """A weights file is missing, unreadable (truncated, not HDF5) or fails its checksum."""


def _dataset_bytes(data):
    """The raw bytes of a dataset's value, deterministic for every dtype."""
    data = np.asarray(data)
    if data.dtype.kind == "O":  # variable-length strings or bytes: hash the values, not pointers
        parts = []
        for item in data.ravel():
            b = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(len(b).to_bytes(8, "little") + b)
        return b"".join(parts)
    return np.ascontiguousarray(data).tobytes()


def digest(h5):
    """The sha256 (hex) of every dataset in the open `h5py.File` `h5`.

    Dataset paths are sorted; each contributes its path, dtype, shape and
    raw bytes, each length-prefixed so no two layouts hash alike.
    """
    names = []
    h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    h = hashlib.sha256(f"tfflows-weights-v{CHECKSUM_VERSION}".encode())
    for name in sorted(names):
        ds = h5[name]
        raw = _dataset_bytes(ds[()])
        for part in (name.encode("utf-8"), ds.dtype.str.encode(), repr(tuple(ds.shape)).encode(), raw):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def sign(path):
    """Stores the sha256 of the weights in the `.weights.h5` file `path`.

    Writes the root attributes `tfflows_sha256` and
    `tfflows_checksum_version` (replacing earlier ones). Returns the digest.
    The file still loads with Keras' `load_weights`.
    """
    with h5py.File(path, "r+") as f:
        value = digest(f)
        f.attrs[DIGEST_ATTR] = value
        f.attrs[VERSION_ATTR] = CHECKSUM_VERSION
    return value


def verify(path, what="weights file"):
    """Checks the `.weights.h5` file `path` before it is loaded.

    Args:
        path: the file.
        what: how messages name the file, e.g. `"--weights file"`.

    Returns:
        `True` when the file carries a tfflows checksum and it matches;
        `False` when it carries none (a file written by plain Keras or an
        older tfflows: the caller may warn).

    Raises:
        WeightsFileError: one line naming `path`, when the file is missing,
            is not a readable HDF5 file (truncated, or another format), or
            its weights no longer match the stored checksum.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsFileError(f"{what} {path} not found.")
    if os.path.isdir(path):
        raise WeightsFileError(f"{what} {path} is a folder, not a .weights.h5 file.")
    try:
        with h5py.File(path, "r") as f:
            stored = f.attrs.get(DIGEST_ATTR)
            version = f.attrs.get(VERSION_ATTR)
            if stored is None:
                return False
            if isinstance(stored, bytes):
                stored = stored.decode("ascii", "replace")
            if version is not None and int(version) > CHECKSUM_VERSION:
                raise WeightsFileError(
                    f"{what} {path} has a tfflows checksum of version {int(version)}; this tfflows reads "
                    f"version {CHECKSUM_VERSION}. Upgrade tfflows."
                )
            actual = digest(f)
    except WeightsFileError:
        raise
    except (OSError, KeyError, RuntimeError) as err:  # h5py: truncated file, not HDF5, unreadable chunk
        raise WeightsFileError(
            f"{what} {path} is not a readable .weights.h5 file (truncated or another format): "
            f"{_first_line(err)}"
        ) from None
    if actual != str(stored):
        raise WeightsFileError(
            f"{what} {path} failed its checksum: the file is corrupted (stored sha256 {str(stored)[:16]}..., "
            f"its weights give {actual[:16]}...); refusing to load it."
        )
    return True
