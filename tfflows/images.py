"""Sample grids as PNG, written with zlib only (no imaging dependency).

Public helpers: `to_uint8` (float images to pixels, refusing NaN), `grid`
(tile rows of images, optionally with a text label per row), `label`
(render a short label in a built-in 3x5 pixel font), `write_png`, and
`write_samples` (a model's samples at several temperatures as a labelled
PNG grid, what `tfflows sample` and `tfflows train` write).

>>> import numpy as np
>>> rows = [np.zeros((2, 4, 4, 1), np.uint8), np.full((2, 4, 4, 1), 255, np.uint8)]
>>> grid(rows, labels=["T=0.5", "T=1"]).shape
(14, 56, 1)
"""

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


# A 3x5 pixel font for row labels: rows of 3 bits, top to bottom.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "=": "000111000111000",
    "T": "111010010010010", " ": "000000000000000", "-": "000000111000000",
}


def label(text, height, scale=2):
    """`text` (digits, '.', '=', '-', 'T', space) rendered black on white as a
    uint8 `(height, width)` image, each glyph 3x5 pixels times `scale`,
    vertically centred."""
    unknown = sorted(set(text) - set(_FONT))
    if unknown:
        raise ValueError(f"label: no glyph for {unknown}; the font has {''.join(sorted(_FONT))!r}.")
    glyphs = [np.array([int(b) for b in _FONT[ch]], np.uint8).reshape(5, 3) for ch in text]
    line = np.concatenate([np.pad(g, ((0, 0), (0, 1))) for g in glyphs], axis=1) if glyphs else np.zeros((5, 0))
    line = np.kron(line, np.ones((scale, scale), np.uint8))
    out = np.full((height, line.shape[1]), 255, np.uint8)
    top = max(0, (height - line.shape[0]) // 2)
    h = min(line.shape[0], height)
    out[top:top + h][line[:h] == 1] = 0
    return out


def grid(rows, pad=2, labels=None):
    """Tiles a list of rows, each `(n, H, W, C)` uint8, into one `(H', W', C)`
    image; with `labels` (one string per row, e.g. `"T=0.7"`), each row
    starts with its label."""
    rows = [np.asarray(r) for r in rows]
    n = max(r.shape[0] for r in rows)
    _, h, w, c = rows[0].shape
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"grid: {len(labels)} labels for {len(rows)} rows.")
    tags = [label(t, h) for t in labels] if labels is not None else []
    left = max((t.shape[1] for t in tags), default=0) + (pad if tags else 0)
    out = np.full((len(rows) * (h + pad) + pad, left + n * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad)
        if tags:
            out[y:y + h, pad:pad + tags[i].shape[1]] = tags[i][..., None]
        for j, img in enumerate(row):
            x = left + pad + j * (w + pad)
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
    one row per temperature, each row labelled `T=<t>` (images clipped to
    [0, 1] for display).

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
    write_png(path, grid(rows, labels=[f"T={float(t):g}" for t in temperatures]))
    return path
