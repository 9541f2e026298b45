"""Sample grids as PNG, written with zlib only (no imaging dependency)."""

import struct
import zlib

import numpy as np


def to_uint8(x):
    """Float images in [0, 1) to uint8, `floor(256 x)` clipped to [0, 255].

    Raises `ValueError` for NaN or infinite values (a sample the flow could
    not invert), instead of drawing them as black or white pixels.
    """
    x = np.asarray(x, dtype="float64")
    finite = np.isfinite(x)
    if not np.all(finite):
        rows = np.flatnonzero(~finite.reshape(x.shape[0], -1).all(axis=1)) if x.ndim > 1 else []
        where = f" in image(s) {[int(r) for r in rows[:8]]}" + ("..." if len(rows) > 8 else "") if len(rows) else ""
        raise ValueError(f"to_uint8: {int(np.size(x) - np.count_nonzero(finite))} NaN or infinite value(s){where}; "
                         f"refusing to write them as pixels.")
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


def write_samples(model, path, temperatures=(0.5, 0.7, 1.0), n=10, seed=0):
    """Writes a PNG grid of `model.sample(n, temperature=t, seed=seed + i)`,
    one row per temperature (images clipped to [0, 1] for display).

    Raises `ValueError` (and writes nothing) if any sample is NaN or
    infinite, naming the temperature, instead of drawing black tiles.
    """
    rows = []
    for i, t in enumerate(temperatures):
        x = np.asarray(model.sample(n, temperature=float(t), seed=seed + i))
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
        if bad.any():  # never draw NaN as black tiles
            raise ValueError(f"{int(bad.sum())} of {n} samples at temperature {t:g} are NaN or infinite (the "
                             f"inverse overflowed); lower the temperature. {path} was not written.")
        img = to_uint8(x)
        if img.shape[-1] == 2:
            img = img[..., :1]
        rows.append(img)
    write_png(path, grid(rows))
    return path
