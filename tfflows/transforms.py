"""Element-wise transforms: pure `keras.ops` maps that return `(y, ladj)`.

`ladj` is the element-wise log|dy/dx| (same shape as `y`); a layer sums it
over the event. Each map has its inverse, whose `ladj` is that of the
inverse map (the negative of the forward one at the same point).

The functions are what the flow layers compute; the small `Transform`
classes bind them to a conditioner's output `h` so one `Coupling` (and, in
later families, an autoregressive layer) can carry any of them:
`Additive` (NICE), `Affine` in the two scale forms in use (Glow's
`sigmoid(h + 2)` with the shift first, RealNVP's `g * tanh(h)`).

The conditioner output is laid out parameter-major: for `C` transformed
channels and `P` parameters per channel, `h` has `P * C` channels and
parameter `p` of channel `c` is `h[..., p * C + c]` (an affine coupling's
net gives all shifts, then all raw scales).
"""

from keras import ops


# -- pure maps --------------------------------------------------------------------
def additive(x, shift):
    """`y = x + shift`; `ladj = 0`."""
    return x + shift, ops.zeros_like(x)


def additive_inverse(y, shift):
    """`x = y - shift`; `ladj = 0`."""
    return y - shift, ops.zeros_like(y)


def affine(x, shift, log_scale, shift_first=False):
    """`y = x * exp(log_scale) + shift`, or with `shift_first`
    `y = (x + shift) * exp(log_scale)` (Glow's order); `ladj = log_scale`."""
    if shift_first:
        return (x + shift) * ops.exp(log_scale), log_scale
    return x * ops.exp(log_scale) + shift, log_scale


def affine_inverse(y, shift, log_scale, shift_first=False):
    """The inverse of `affine`: `x = y * exp(-log_scale) - shift` (with
    `shift_first`) or `x = (y - shift) * exp(-log_scale)`; `ladj = -log_scale`."""
    if shift_first:
        return y * ops.exp(-log_scale) - shift, -log_scale
    return (y - shift) * ops.exp(-log_scale), -log_scale


# -- transforms bound to a conditioner ---------------------------------------------
class Transform:
    """An element-wise bijection whose parameters come from a conditioner.

    `params_per_dim` values per transformed element (`P`); `build(layer, n)`
    may add weights to the owning layer for `n` transformed channels;
    `forward(x, h, active)` and `inverse(y, h, active)` return `(out, ladj)`
    element-wise. `active` is `None` (every element is transformed) or a 0/1
    tensor broadcastable to `x` marking the transformed elements; inactive
    elements pass through unchanged with `ladj = 0`.
    """

    name = None
    params_per_dim = 1

    def build(self, layer, channels):
        pass

    def forward(self, x, h, active=None):
        raise NotImplementedError

    def inverse(self, y, h, active=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}


class Additive(Transform):
    """NICE's shift: `y = x + t`, volume preserving."""

    name = "additive"
    params_per_dim = 1

    def _shift(self, h, active):
        return h if active is None else h * active

    def forward(self, x, h, active=None):
        return additive(x, self._shift(h, active))

    def inverse(self, y, h, active=None):
        return additive_inverse(y, self._shift(h, active))


AFFINE_SCALES = ("sigmoid", "exp")


class Affine(Transform):
    """Affine map with a bounded scale, in the two forms in use.

    `scale="sigmoid"` (Glow): `y = (x + t) * sigmoid(h_s + 2)`, so
    `log_scale = log_sigmoid(h_s + 2)` in `(-inf, 0)`: the forward map never
    expands, and a zero conditioner gives `sigmoid(2) = 0.88`.
    `scale="exp"` (RealNVP): `y = x * exp(s) + t` with `s = g * tanh(h_s)`,
    `g` a learned per-channel factor (the owning layer's `scale_factor`,
    initialised to 1), so `|s| <= |g|`.
    """

    name = "affine"
    params_per_dim = 2

    def __init__(self, scale="sigmoid"):
        if scale not in AFFINE_SCALES:
            raise ValueError(f"Affine scale must be one of {AFFINE_SCALES}. Received: scale={scale!r}")
        self.scale = scale
        self.scale_factor = None

    def build(self, layer, channels):
        if self.scale == "exp":
            self.scale_factor = layer.add_weight(shape=(channels,), initializer="ones", name="scale_factor")

    def _params(self, h, active):
        # One split op (its gradient is a concatenation; strided slices cost
        # more on CPU).
        t, raw = ops.split(h, [h.shape[-1] // 2], axis=-1)
        if self.scale == "sigmoid":
            log_s = ops.log_sigmoid(raw + 2.0)
        else:
            log_s = ops.cast(self.scale_factor, raw.dtype) * ops.tanh(raw)
        if active is not None:
            t, log_s = t * active, log_s * active
        return t, log_s

    def forward(self, x, h, active=None):
        t, log_s = self._params(h, active)
        return affine(x, t, log_s, shift_first=self.scale == "sigmoid")

    def inverse(self, y, h, active=None):
        t, log_s = self._params(h, active)
        return affine_inverse(y, t, log_s, shift_first=self.scale == "sigmoid")

    def get_config(self):
        return {"name": self.name, "scale": self.scale}


TRANSFORMS = {"additive": Additive, "affine": Affine}


def get(transform):
    """A fresh `Transform` from a name (`"affine"`), a config dict
    (`{"name": "affine", "scale": "exp"}`) or a `Transform` (whose config is
    copied, so layers never share one)."""
    if isinstance(transform, Transform):
        transform = transform.get_config()
    if isinstance(transform, str):
        transform = {"name": transform}
    if not isinstance(transform, dict) or transform.get("name") not in TRANSFORMS:
        raise ValueError(
            f"transform must be one of {sorted(TRANSFORMS)} (a name, a config dict or a Transform). "
            f"Received: transform={transform!r}"
        )
    kwargs = {k: v for k, v in transform.items() if k != "name"}
    return TRANSFORMS[transform["name"]](**kwargs)


__all__ = ["additive", "additive_inverse", "affine", "affine_inverse", "Transform", "Additive",
           "Affine", "AFFINE_SCALES", "TRANSFORMS", "get"]
