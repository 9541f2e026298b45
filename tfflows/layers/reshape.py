"""Shape-changing flow layers: Squeeze, Unsqueeze, Reshape, and Split."""

from keras import layers as kl
from keras import ops

from tfflows.layers.base import (FactorOut, FlowLayer, shape_str, event_size, register, split_channels,
                                 sum_except_batch, zeros_log_det)
from tfflows.layers.nets import conditioner_input, context_channels


def squeeze_nhwc(x, factor=2):
    """`(B, H, W, C) -> (B, H/f, W/f, f*f*C)`, ordered as `tf.nn.space_to_depth`."""
    _, h, w, c = x.shape
    x = ops.reshape(x, (-1, h // factor, factor, w // factor, factor, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, h // factor, w // factor, factor * factor * c))


def unsqueeze_nhwc(x, factor=2):
    """The inverse of `squeeze_nhwc` (`tf.nn.depth_to_space` ordering)."""
    _, h, w, c = x.shape
    x = ops.reshape(x, (-1, h, w, factor, factor, c // (factor * factor)))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, h * factor, w * factor, c // (factor * factor)))


@register
class Squeeze(FlowLayer):
    """RealNVP's squeeze: 2x2 space-to-depth, volume preserving.

    Forward: `(B, H, W, C) -> (B, H/2, W/2, 4C)` (the `tf.nn.space_to_depth`
    channel order); log-det 0. Inverse: depth-to-space.

    Raises:
        ValueError: for non-image inputs, or odd height or width.

    References: Dinh et al., RealNVP, https://arxiv.org/abs/1605.08803

    >>> import numpy as np
    >>> y, ld = Squeeze().forward(np.zeros((2, 4, 6, 3), "float32"))
    >>> tuple(y.shape), tuple(ld.shape)
    ((2, 2, 3, 12), (2,))
    """

    input_ranks = (4,)

    def build(self, input_shape):
        self._check_rank(input_shape)
        _, h, w, _ = input_shape
        if h is None or w is None or h % 2 or w % 2:
            raise ValueError(
                f"Squeeze '{self.name}' needs even height and width, got "
                f"{shape_str((h, w))} (input shape {shape_str(tuple(input_shape))})."
            )

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, h // 2, w // 2, c * 4)

    def compute_inverse_shape(self, output_shape):
        b, h, w, c = output_shape
        if c % 4:
            raise ValueError(
                f"Squeeze '{self.name}' inverse needs channels divisible by 4, got {c}."
            )
        return (b, h * 2, w * 2, c // 4)

    def _forward(self, x, context=None, training=False):
        return squeeze_nhwc(x), zeros_log_det(x)

    def _inverse(self, y, context=None, training=False):
        return unsqueeze_nhwc(y), zeros_log_det(y)


@register
class Unsqueeze(FlowLayer):
    """Depth-to-space: the inverse of `Squeeze` as a forward map.

    Forward: `(B, H, W, C) -> (B, 2H, 2W, C/4)`; log-det 0.

    Raises:
        ValueError: for non-image inputs or channels not divisible by 4.

    >>> import numpy as np
    >>> tuple(Unsqueeze().forward(np.zeros((1, 2, 2, 8), "float32"))[0].shape)
    (1, 4, 4, 2)
    """

    input_ranks = (4,)

    def build(self, input_shape):
        self._check_rank(input_shape)
        if input_shape[-1] % 4:
            raise ValueError(
                f"Unsqueeze '{self.name}' needs channels divisible by 4, got "
                f"{input_shape[-1]} (input shape {shape_str(tuple(input_shape))})."
            )

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, h * 2, w * 2, c // 4)

    def compute_inverse_shape(self, output_shape):
        b, h, w, c = output_shape
        return (b, h // 2, w // 2, c * 4)

    def _forward(self, x, context=None, training=False):
        return unsqueeze_nhwc(x), zeros_log_det(x)

    def _inverse(self, y, context=None, training=False):
        return squeeze_nhwc(y), zeros_log_det(y)


@register
class Reshape(FlowLayer):
    """Reshapes the event, e.g. images to vectors for NICE; log-det 0.

    Args:
        target_shape: the event shape of the output (batch axis excluded).

    >>> import numpy as np
    >>> tuple(Reshape((12,)).forward(np.zeros((2, 2, 2, 3), "float32"))[0].shape)
    (2, 12)
    """

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)

    def build(self, input_shape):
        n_in, n_out = event_size(input_shape), event_size((None,) + self.target_shape)
        if n_in != n_out:
            raise ValueError(
                f"Reshape '{self.name}' cannot reshape event {shape_str(tuple(input_shape[1:]))} "
                f"({n_in} values) to {shape_str(self.target_shape)} ({n_out} values)."
            )
        self._source_shape = tuple(input_shape[1:])

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.target_shape

    def compute_inverse_shape(self, output_shape):
        if not self.built:
            raise ValueError(f"Reshape '{self.name}' must be built on data before inverse.")
        return (output_shape[0],) + self._source_shape

    def _forward(self, x, context=None, training=False):
        return ops.reshape(x, (-1,) + self.target_shape), zeros_log_det(x)

    def _inverse(self, y, context=None, training=False):
        return ops.reshape(y, (-1,) + self._source_shape), zeros_log_det(y)

    def get_config(self):
        config = super().get_config()
        config["target_shape"] = list(self.target_shape)
        return config


@register
class Split(FactorOut):
    """Multi-scale factor-out (RealNVP) with Glow's learned conditional prior.

    `Split` marks where a `FlowSequence` sets channels aside: the first
    `keep` channels continue through the flow, the rest become latents.

    With `learned_prior=True` the factored half `x_b` gets a Gaussian whose
    mean and log-std depend on the kept half (Glow's `split2d`), written as
    a bijection onto a standard-normal latent:
    Forward: `y_a = x_a`, `z_b = (x_b - mu(x_a)) * exp(-log_sigma(x_a))`;
    log-det `-sum log_sigma -> (batch,)`. Inverse:
    `x_b = mu(y_a) + z_b * exp(log_sigma(y_a))`. With a standard-normal base
    this is exactly `log N(x_b; mu, sigma)`, and sampling at temperature T
    draws `x_b = mu + T * sigma * eps` as in Glow. With `learned_prior=False`
    it is the identity (RealNVP's fixed prior on the factored half).

    The prior's net is one zero-initialised convolution (dense layer for
    vectors), so it starts as the standard normal.

    Args:
        keep: channels kept, or `None` for the first half. Defaults to `None`.
        learned_prior: learn `mu`, `log_sigma` from the kept half. Defaults to
            `True`.

    Input shape: `(batch, H, W, C)` or `(batch, D)`; `forward` keeps the
    shape; `FlowSequence` then factors out channels `keep:`.

    References: Dinh et al., RealNVP, https://arxiv.org/abs/1605.08803;
    Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039

    >>> import numpy as np
    >>> layer = Split()
    >>> x = np.random.randn(2, 4, 4, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> [tuple(p.shape) for p in layer.separate(y)]
    [(2, 4, 4, 2), (2, 4, 4, 2)]
    """

    input_ranks = (2, 4)
    accepts_context = True

    def __init__(self, keep=None, learned_prior=True, context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        if context_shape is not None and not learned_prior:
            raise ValueError(f"Split with learned_prior=False has no prior to condition on a context. "
                             f"Received: context_shape={context_shape}")
        if keep is not None and int(keep) < 1:
            raise ValueError(f"Split keep must be a positive channel count. Received: keep={keep}")
        self.keep = None if keep is None else int(keep)
        self.learned_prior = bool(learned_prior)

    def build(self, input_shape):
        self._check_rank(input_shape)
        c = input_shape[-1]
        keep = c // 2 if self.keep is None else self.keep
        if c < 2 or not 0 < keep < c:
            raise ValueError(
                f"Split '{self.name}' must keep between 1 and C-1 channels; got "
                f"keep={keep} with C={c} (input shape {shape_str(tuple(input_shape))})."
            )
        self._keep = keep
        if self.learned_prior:
            out = 2 * (c - keep)
            dtype = self.dtype_policy
            if len(input_shape) == 4:
                self.prior = kl.Conv2D(out, 3, padding="same", kernel_initializer="zeros", name="prior", dtype=dtype)
            else:
                self.prior = kl.Dense(out, kernel_initializer="zeros", name="prior", dtype=dtype)
            c_in = keep + context_channels(len(input_shape), self.context_shape)
            self.prior.build(tuple(input_shape[:-1]) + (c_in,))

    def split_shapes(self, shape):
        """`(kept_shape, factored_shape)` for a forward output of `shape`."""
        k = self._keep
        return tuple(shape[:-1]) + (k,), tuple(shape[:-1]) + (shape[-1] - k,)

    def separate(self, y):
        """Splits a forward output into `(kept, factored)`."""
        return split_channels(y, self._keep)

    def merge(self, kept, factored):
        """Inverse of `separate`."""
        return ops.concatenate([kept, factored], axis=-1)

    def _prior(self, x_a, context):
        # The conv may run in a mixed-precision dtype; the arithmetic stays in x's.
        h = ops.cast(self.prior(conditioner_input(x_a, context)), x_a.dtype)
        return split_channels(h, h.shape[-1] // 2)

    def _forward(self, x, context=None, training=False):
        if not self.learned_prior:
            return x, zeros_log_det(x)
        x_a, x_b = self.separate(x)
        mu, log_sigma = self._prior(x_a, context)
        z_b = (x_b - mu) * ops.exp(-log_sigma)
        return self.merge(x_a, z_b), -sum_except_batch(log_sigma)

    def _inverse(self, y, context=None, training=False):
        if not self.learned_prior:
            return y, zeros_log_det(y)
        y_a, z_b = self.separate(y)
        mu, log_sigma = self._prior(y_a, context)
        return self.merge(y_a, mu + z_b * ops.exp(log_sigma)), sum_except_batch(log_sigma)

    def get_config(self):
        config = super().get_config()
        config.update(keep=self.keep, learned_prior=self.learned_prior)
        return config
