"""Sample grids as PNG, written with zlib only (no imaging dependency)."""

import struct
import zlib

import numpy as np


def to_uint8(x):
    """Float images in [0, 1) to uint8 (clipped; NaN as 0, +inf as 255)."""
    x = np.nan_to_num(np.asarray(x, dtype="float64"), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.floor(x * 256.0), 0, 255).astype(np.uint8)


def grid(rows, pad=2):
    """Tiles a list of rows, each `(n, H, W, C)` uint8, into one `(H', W', C)` image."""
    rows = [np.asarray(r) for r in rows]
    n = max(r.shape[0] for r in rows)
    _, h, w, c = rows[0].shape
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = img
    return out


def write_png(path, image):
    """Writes a uint8 `(H, W)` or `(H, W, C)` array (C = 1, 3 or 4) as PNG."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    h, w, c = image.shape
    color = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
