"""Coupling layers: one `Coupling(transform, mask, net)` and its presets,
NICE's `AdditiveCoupling` and RealNVP/Glow's `AffineCoupling`.

The structure (which elements condition, which are transformed, the
conditioner net and the context) lives here; the element-wise maps live in
`tfflows.transforms`.
"""

import keras
import numpy as np
from keras import ops

from tfflows import transforms
from tfflows.layers.base import FlowLayer, event_size, register, split_channels, sum_except_batch
from tfflows.layers.nets import conditioner_input, context_channels, default_net

MASKS = ("channel", "checkerboard")
SCALES = transforms.AFFINE_SCALES


def checkerboard_mask(shape, parity=0):
    """A 0/1 float mask over the event `shape` (batch axis excluded).

    For images `(H, W, C)` the mask is `(h + w + parity) % 2` broadcast over
    channels; for vectors `(D,)` it is `(i + parity) % 2`. Ones mark the
    conditioning half (kept unchanged).
    """
    if len(shape) == 3:
        h, w, _ = shape
        grid = (np.arange(h)[:, None] + np.arange(w)[None, :] + parity) % 2
        return grid[:, :, None].astype("float32")
    (d,) = shape
    return ((np.arange(d) + parity) % 2).astype("float32")


@register
class Coupling(FlowLayer):
    """A coupling layer: `x = [x_a, x_b]`, `y_a = x_a`,
    `y_b = T(x_b; h)` with `h = net([x_a, context])`.

    Forward: `y_b = T(x_b; h(x_a, c))`; log-det `sum_b log|T'(x_b)| -> (batch,)`.
    Inverse: `x_b = T^-1(y_b; h(y_a, c))`; log-det the negative at that point.

    `T` is an element-wise `tfflows.transforms.Transform` (`"additive"`,
    `"affine"` with `scale="sigmoid"` or `"exp"`), applied to every
    transformed element with its own `P` parameters. With `mask="channel"`
    the last axis is split in halves (`reverse=True` transforms the first
    half instead of the second); with `mask="checkerboard"` positions
    alternate (pixels for images, features for vectors), the net sees the
    masked input, and `reverse` flips the parity.

    The net sees `[x_a, context]` (`tfflows.layers.nets.conditioner_input`:
    a vector context is broadcast over an image's height and width) and must
    give `P` values per transformed channel, parameter-major (`P * C_b`
    channels, or `P * C` with a checkerboard mask).

    Args:
        transform: a transform name, config dict or `Transform`. Defaults
            to `"affine"` (Glow's sigmoid scale).
        mask: `"channel"` or `"checkerboard"`. Defaults to `"channel"`.
        reverse: swap the roles of the two halves. Defaults to `False`.
        net: a keras Layer, or `None` for the built-in net (`ConvNet` for
            images, `DenseNet` for vectors) whose last layer is
            zero-initialised, so the coupling starts near the identity.
        hidden: width of the built-in net (ignored when `net` is given;
            giving both is an error). Defaults to 64.
        context_shape: event shape of the context, or `None`.

    Input shape: `(batch, D)` or `(batch, H, W, C)`; output shape the same.

    References: Dinh et al., NICE, https://arxiv.org/abs/1410.8516;
    Dinh et al., RealNVP, https://arxiv.org/abs/1605.08803

    >>> import numpy as np
    >>> layer = Coupling("affine", hidden=8, context_shape=(3,))
    >>> x, c = np.random.randn(2, 4).astype("float32"), np.ones((2, 3), "float32")
    >>> y, ld = layer.forward(x, context=c)
    >>> bool(np.allclose(layer.inverse(y, context=c)[0], x, atol=1e-5)), tuple(ld.shape)
    (True, (2,))
    """

    input_ranks = (2, 4)
    accepts_context = True
    local_log_det = True

    def __init__(self, transform="affine", mask="channel", reverse=False, net=None, hidden=None,
                 context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        name = type(self).__name__
        if mask not in MASKS:
            raise ValueError(f"{name} mask must be one of {MASKS}. Received: mask={mask!r}")
        if isinstance(net, dict):
            net = keras.saving.deserialize_keras_object(net)
        if net is not None and not isinstance(net, keras.layers.Layer):
            raise TypeError(
                f"{name} net must be a keras Layer (or None for the "
                f"built-in conditioner). Received: net of type {type(net).__name__}"
            )
        if net is not None and hidden is not None:
            raise ValueError(f"{name} takes a net or a hidden width for the built-in net, not both. "
                             f"Received: net={net.name!r}, hidden={hidden}")
        hidden = 64 if hidden is None else hidden
        if int(hidden) < 1:
            raise ValueError(f"{name} hidden must be positive. Received: hidden={hidden}")
        self.transform = transforms.get(transform)
        self.mask = mask
        self.reverse = bool(reverse)
        self.hidden = int(hidden)
        self.net = net
        self._user_net = net is not None

    def build(self, input_shape):
        self._check_rank(input_shape)
        c = input_shape[-1]
        name = type(self).__name__
        p = self.transform.params_per_dim
        if self.mask == "channel":
            if c is None or c < 2:
                raise ValueError(
                    f"{name} '{self.name}' with a channel mask needs at least 2 "
                    f"channels (features), got {c}."
                )
            self._c_a = c // 2 if not self.reverse else c - c // 2
            c_in, c_b = self._c_a, c - self._c_a
        else:
            event = tuple(input_shape[1:])
            size = event_size((None,) + tuple(event[:-1])) if len(event) == 3 else event[0]
            if size < 2:
                raise ValueError(
                    f"{name} '{self.name}' with a checkerboard mask needs at least 2 "
                    f"positions to alternate over, got event shape {event}."
                )
            self._keep_mask = checkerboard_mask(event, int(self.reverse))
            c_in, c_b = c, c
        c_out = c_b * p
        c_in += context_channels(len(input_shape), self.context_shape)
        in_shape = tuple(input_shape[:-1]) + (c_in,)
        if self.net is None:
            self.net = default_net(len(input_shape), self.hidden, c_out, name="net", dtype=self.dtype_policy)
        if not self.net.built:  # a deserialized user net may arrive built
            self.net.build(in_shape)
        got = tuple(self.net.compute_output_shape(in_shape))
        want = tuple(in_shape[:-1]) + (c_out,)
        if got[1:] != want[1:]:
            raise ValueError(
                f"{name} '{self.name}': its net maps {in_shape[1:]} to {got[1:]}, but "
                f"this coupling needs output shape {want[1:]} "
                f"({p} value(s) per transformed channel)."
            )
        self.transform.build(self, c_b)

    def transformed_mask(self, channels):
        """A 0/1 numpy array (after `build`) marking the event elements this
        coupling transforms, broadcastable to the event shape: `1 - keep`
        for a checkerboard mask, one entry per channel (`channels` of them)
        for a channel mask."""
        if self.mask == "checkerboard":
            return 1.0 - self._keep_mask
        out = np.zeros(int(channels), dtype="float32")
        if self.reverse:  # x_b, the transformed part, comes first
            out[:int(channels) - self._c_a] = 1.0
        else:
            out[self._c_a:] = 1.0
        return out

    def _masks(self, x):
        """`(keep, active)` 0/1 tensors in `x`'s dtype (checkerboard only)."""
        keep = ops.convert_to_tensor(self._keep_mask, dtype=x.dtype)
        return keep, 1.0 - keep

    def _params(self, cond, context):
        # The net may compute in bfloat16/float16 (mixed precision); the
        # coupling's arithmetic and log-det stay in the input's dtype.
        return ops.cast(self.net(conditioner_input(cond, context)), cond.dtype)

    def _split(self, x):
        if self.reverse:
            x_b, x_a = split_channels(x, x.shape[-1] - self._c_a)
            return x_a, x_b
        return split_channels(x, self._c_a)

    def _join(self, x_a, y_b):
        if self.reverse:
            return ops.concatenate([y_b, x_a], axis=-1)
        return ops.concatenate([x_a, y_b], axis=-1)

    def _apply(self, x, context, step):
        if self.mask == "checkerboard":
            keep, active = self._masks(x)
            y, ladj = step(x, self._params(x * keep, context), active)
            return y, sum_except_batch(ladj * active)
        x_a, x_b = self._split(x)
        y_b, ladj = step(x_b, self._params(x_a, context), None)
        return self._join(x_a, y_b), sum_except_batch(ladj)

    def _forward(self, x, context=None, training=False):
        return self._apply(x, context, self.transform.forward)

    def _forward_local(self, x, context=None, training=False):
        # Each transformed element's log-derivative, summed over channels only.
        if self.mask == "checkerboard":
            keep, active = self._masks(x)
            y, ladj = self.transform.forward(x, self._params(x * keep, context), active)
            return y, ops.sum(ladj * active, axis=-1)
        x_a, x_b = self._split(x)
        y_b, ladj = self.transform.forward(x_b, self._params(x_a, context), None)
        return self._join(x_a, y_b), ops.sum(ladj, axis=-1)

    def _inverse(self, y, context=None, training=False):
        return self._apply(y, context, self.transform.inverse)

    def get_config(self):
        config = super().get_config()
        config.update(
            transform=self.transform.get_config(), mask=self.mask, reverse=self.reverse,
            hidden=None if self._user_net else self.hidden,
            net=keras.saving.serialize_keras_object(self.net) if self._user_net else None,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("net") is not None:
            # Configs written before tfflows 0.2 store the unused built-in
            # width beside a user net.
            config.pop("hidden", None)
        return cls(**config)


@register
class AdditiveCoupling(Coupling):
    """NICE's additive coupling: `Coupling("additive", ...)`, volume preserving.

    Forward: `y_a = x_a`, `y_b = x_b + t(x_a, c)`; log-det `0 -> (batch,)`.
    Inverse: `x_b = y_b - t(y_a, c)`.

    Args:
        mask, reverse, net, hidden, context_shape: as in `Coupling`; the net
            gives the shift (`C_b` channels, or `C` with a checkerboard mask).

    Input shape: `(batch, D)` or `(batch, H, W, C)`; output shape the same.

    References: Dinh et al., NICE, https://arxiv.org/abs/1410.8516

    >>> import numpy as np
    >>> layer = AdditiveCoupling(hidden=8)
    >>> x = np.random.randn(2, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-6)), tuple(ld.shape)
    (True, (2,))
    """

    def __init__(self, mask="channel", reverse=False, net=None, hidden=None, context_shape=None, **kwargs):
        kwargs.pop("transform", None)
        super().__init__(transform="additive", mask=mask, reverse=reverse, net=net, hidden=hidden,
                         context_shape=context_shape, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["transform"]
        return config


@register
class AffineCoupling(Coupling):
    """RealNVP / Glow affine coupling: `Coupling(Affine(scale), ...)`.

    The conditioner maps the kept part (and the context) to a shift `t` and
    a raw scale `h`.

    With `scale="sigmoid"` (Glow's choice; the default):
    Forward: `y_b = (x_b + t(x_a)) * sigmoid(h(x_a) + 2)`;
    log-det `sum_{H,W,C_b} log_sigmoid(h + 2) -> (batch,)`.
    Inverse: `x_b = y_b / sigmoid(h(y_a) + 2) - t(y_a)`.

    With `scale="exp"` (RealNVP): `s = g * tanh(h)` with a learned per-channel
    `g` (initialised to 1), `y_b = x_b * exp(s) + t`; log-det `sum s`;
    inverse `x_b = (y_b - t) * exp(-s)`.

    Both keep the scale bounded: the sigmoid in (0, 1), so the forward map
    never expands and starts near the identity (sigmoid(2) = 0.88 with a
    zero-initialised net); the tanh bounds |s| by |g|. We default to the
    sigmoid because it cannot overflow at any learning rate.

    Args:
        mask, reverse, net, hidden, context_shape: as in `Coupling`; the net
            gives `2 * C_b` channels (shift first, raw scale second; `2 * C`
            with a checkerboard mask).
        scale: `"sigmoid"` or `"exp"`. Defaults to `"sigmoid"`.

    Input shape: `(batch, D)` or `(batch, H, W, C)`; output shape the same.

    References: Dinh et al., RealNVP, https://arxiv.org/abs/1605.08803;
    Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039

    >>> import numpy as np
    >>> layer = AffineCoupling(mask="checkerboard", hidden=8)
    >>> x = np.random.randn(2, 4, 4, 2).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-5)), tuple(ld.shape)
    (True, (2,))
    """

    def __init__(self, mask="channel", reverse=False, scale="sigmoid", net=None, hidden=None,
                 context_shape=None, **kwargs):
        kwargs.pop("transform", None)
        if scale not in SCALES:
            raise ValueError(f"AffineCoupling scale must be one of {SCALES}. Received: scale={scale!r}")
        super().__init__(transform=transforms.Affine(scale), mask=mask, reverse=reverse, net=net,
                         hidden=hidden, context_shape=context_shape, **kwargs)
        self.scale = scale

    @property
    def scale_factor(self):
        """RealNVP's per-channel `g` (`scale="exp"` only)."""
        return self.transform.scale_factor

    def get_config(self):
        config = super().get_config()
        del config["transform"]
        config["scale"] = self.scale
        return config


@register
class SplineCoupling(Coupling):
    """Neural spline coupling: `Coupling(Spline(bins, bound), ...)`.

    Forward: `y_a = x_a`, `y_b = RQS(x_b; theta(x_a, c))`, a monotone
    rational-quadratic spline per transformed element on `[-bound, bound]`
    with identity tails; log-det `sum_b log RQS'(x_b) -> (batch,)`.
    Inverse: `x_b = RQS^-1(y_b; theta(y_a, c))` (the stable quadratic root);
    log-det the negative. A zero-initialised net gives the identity.

    Masks as in `Coupling` (`"channel"` or `"checkerboard"`, vectors with a
    dense net or images with a conv net).

    Args:
        bins: spline bins, at least 2. Defaults to 8.
        bound: half-width `B` of the spline's interval. Defaults to 3.
        mask, reverse, net, hidden, context_shape: as in `Coupling`; the net
            gives `(3 * bins - 1) * C_b` channels (`* C` with a checkerboard
            mask), parameter-major.

    Input shape: `(batch, D)` or `(batch, H, W, C)`; output shape the same.

    References: Durkan et al., Neural Spline Flows, https://arxiv.org/abs/1906.04032

    >>> import numpy as np
    >>> layer = SplineCoupling(bins=4, hidden=8)
    >>> x = np.random.randn(2, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-5)), tuple(ld.shape)
    (True, (2,))
    """

    def __init__(self, bins=8, bound=3.0, mask="channel", reverse=False, net=None, hidden=None,
                 context_shape=None, **kwargs):
        kwargs.pop("transform", None)
        super().__init__(transform={"name": "spline", "bins": int(bins), "bound": float(bound)}, mask=mask,
                         reverse=reverse, net=net, hidden=hidden, context_shape=context_shape, **kwargs)
        self.bins = int(bins)
        self.bound = float(bound)

    def get_config(self):
        config = super().get_config()
        del config["transform"]
        config.update(bins=self.bins, bound=self.bound)
        return config
