"""Conditioner networks for coupling layers and learned priors.

Each built-in net zero-initialises its last layer, so a coupling layer starts
as the identity map (Glow, Kingma & Dhariwal 2018, section 3.3): the flow then
begins training from a well-conditioned point instead of a random bijection.
"""

import keras
import numpy as np
from keras import layers as kl
from keras import ops

from tfflows.layers.base import event_size

# A k x k convolution runs as matmuls when one side is narrow (k*k*C <= 128),
# as in the first and last convs of every coupling net.
# `benchmarks/bench_tfflows_glow.py` measured the Glow train step on 2 CPU
# cores against plain `Conv2D`s at widths 64, 128 and 400.
_MATMUL_CONV_MAX_COLS = 128


def _tap_selector(kh, kw, c):
    """`(kh, kw, c, kh * kw * c)` 0/1 array: tap `t = ky * kw + kx`, channel
    `i` -> channel `t * c + i`."""
    p = np.zeros((kh, kw, c, kh * kw * c), dtype="float32")
    for ky in range(kh):
        for kx in range(kw):
            t = ky * kw + kx
            p[ky, kx, np.arange(c), t * c + np.arange(c)] = 1.0
    return p


def _im2col(x, kh, kw):
    """`(N, H, W, C) -> (N, H, W, kh * kw * C)`: channel `t * C + i` holds
    input channel `i` at tap `t = ky * kw + kx`, i.e. `x[n, y + ky - kh // 2,
    x + kx - kw // 2, i]`, zero outside. One "same" convolution with a
    constant 0/1 kernel (and one for its gradient) instead of `kh * kw`
    slices and pads: on CPU the op count, not the FLOPs, is what costs here.
    """
    sel = ops.convert_to_tensor(_tap_selector(kh, kw, x.shape[-1]), dtype=x.dtype)
    return ops.conv(x, sel, padding="same")


def _sum_taps(z, kh, kw, c):
    """`(N, H, W, kh * kw * c) -> (N, H, W, c)`: `out[n, y, x, i] = sum_t
    z[n, y + ky_t - kh // 2, x + kx_t - kw // 2, t * c + i]`, zero outside;
    one "same" convolution with the transposed 0/1 kernel of `_im2col`."""
    sel = np.transpose(_tap_selector(kh, kw, c), (0, 1, 3, 2))
    return ops.conv(z, ops.convert_to_tensor(sel, dtype=z.dtype), padding="same")


def _conv_same_as_matmul(conv, x):
    """`conv(x)` for a stride-1 "same" channels-last `Conv2D`, computed with matmuls.

    Same weights and, up to float32 summation order, the same result. On CPU
    a matmul runs at the fp32 peak, while convolutions with 2-8 channels on
    one side run at 20-50 % of it, and XLA adds layout transposes around its
    convolutions:
    1x1: `(N*H*W, C_in) @ (C_in, C_out)`.
    k x k, few input channels: im2col, `(N*H*W, k*k*C_in) @ (k*k*C_in, C_out)`.
    k x k, few output channels: `(N*H*W, C_in) @ (C_in, k*k*C_out)`, then the
    k*k maps are shifted and summed.
    Other convolutions, even kernels and unknown H, W fall back to `conv(x)`.
    """
    kh, kw, c_in, c_out = conv.kernel.shape
    _, h, w, _ = x.shape
    if h is None or w is None or kh % 2 == 0 or kw % 2 == 0:
        return conv(x)
    k = ops.cast(conv.kernel, x.dtype)
    if (kh, kw) == (1, 1):
        y = ops.matmul(ops.reshape(x, (-1, c_in)), ops.reshape(k, (c_in, c_out)))
    elif kh * kw * min(c_in, c_out) > _MATMUL_CONV_MAX_COLS:
        return conv(x)
    else:
        if c_in <= c_out:  # im2col of the narrow input, then one matmul
            cols = _im2col(x, kh, kw)
            y = ops.matmul(ops.reshape(cols, (-1, kh * kw * c_in)), ops.reshape(k, (kh * kw * c_in, c_out)))
        else:  # every tap's narrow output in one matmul, then a shifted sum
            kk = ops.reshape(ops.transpose(k, (2, 0, 1, 3)), (c_in, kh * kw * c_out))
            z = ops.reshape(ops.matmul(ops.reshape(x, (-1, c_in)), kk), (-1, h, w, kh * kw * c_out))
            y = _sum_taps(z, kh, kw, c_out)
            y = ops.reshape(y, (-1, c_out))
    # Bias and activation on the matmul's own 2-D output, then the reshape:
    # TF's graph optimiser fuses MatMul + bias + ReLU into one oneDNN call
    # only when nothing stands between them.
    if conv.use_bias:
        y = y + ops.cast(conv.bias, y.dtype)
    if conv.activation is not None:
        y = conv.activation(y)
    return ops.reshape(y, (-1, h, w, c_out))


@keras.saving.register_keras_serializable(package="tfflows")
class ConvNet(keras.layers.Layer):
    """Glow's coupling net: conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3.

    Args:
        hidden: width of the two hidden convolutions.
        out_channels: channels of the output.
        kernel_sizes: kernel sizes of the three convolutions. Defaults to
            `(3, 1, 3)`.
        zero_init: zero-initialise the last convolution. Defaults to `True`.

    Input shape: `(batch, H, W, C_in)`. Output shape: `(batch, H, W, out_channels)`.
    """

    def __init__(self, hidden, out_channels, kernel_sizes=(3, 1, 3), zero_init=True, **kwargs):
        super().__init__(**kwargs)
        if int(hidden) < 1 or int(out_channels) < 1:
            raise ValueError(
                f"ConvNet needs positive hidden and out_channels. Received: "
                f"hidden={hidden}, out_channels={out_channels}"
            )
        if len(kernel_sizes) != 3:
            raise ValueError(f"ConvNet takes three kernel sizes. Received: kernel_sizes={kernel_sizes}")
        self.hidden = int(hidden)
        self.out_channels = int(out_channels)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.zero_init = bool(zero_init)
        k1, k2, k3 = self.kernel_sizes
        # The convolutions compute in this net's dtype policy (float64 in a
        # float64 flow, bfloat16 under mixed precision).
        dtype = self.dtype_policy
        self.conv1 = kl.Conv2D(self.hidden, k1, padding="same", activation="relu", name="conv1", dtype=dtype)
        self.conv2 = kl.Conv2D(self.hidden, k2, padding="same", activation="relu", name="conv2", dtype=dtype)
        self.conv3 = kl.Conv2D(
            self.out_channels, k3, padding="same", name="conv_out", dtype=dtype,
            kernel_initializer="zeros" if self.zero_init else "glorot_uniform",
        )

    def build(self, input_shape):
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.conv2.build(shape)
        self.conv3.build(self.conv2.compute_output_shape(shape))

    def call(self, x):
        # The convolutions run as matmuls (same weights, same map): faster on
        # CPU, much faster under XLA (benchmarks/ab_convnet.py).
        for conv in (self.conv1, self.conv2, self.conv3):
            x = _conv_same_as_matmul(conv, x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, out_channels=self.out_channels,
                      kernel_sizes=list(self.kernel_sizes), zero_init=self.zero_init)
        return config


@keras.saving.register_keras_serializable(package="tfflows")
class DenseNet(keras.layers.Layer):
    """An MLP conditioner for vector inputs (NICE's coupling function).

    Args:
        hidden: width of each hidden layer.
        out_features: size of the output.
        depth: number of hidden layers. Defaults to 2.
        zero_init: zero-initialise the output layer. Defaults to `True`.

    Input shape: `(batch, D_in)`. Output shape: `(batch, out_features)`.
    """

    def __init__(self, hidden, out_features, depth=2, zero_init=True, **kwargs):
        super().__init__(**kwargs)
        if int(hidden) < 1 or int(out_features) < 1 or int(depth) < 1:
            raise ValueError(
                f"DenseNet needs positive hidden, out_features and depth. Received: "
                f"hidden={hidden}, out_features={out_features}, depth={depth}"
            )
        self.hidden = int(hidden)
        self.out_features = int(out_features)
        self.depth = int(depth)
        self.zero_init = bool(zero_init)
        dtype = self.dtype_policy
        self.hidden_layers = [
            kl.Dense(self.hidden, activation="relu", name=f"dense{i}", dtype=dtype) for i in range(self.depth)
        ]
        self.out = kl.Dense(
            self.out_features, name="dense_out", dtype=dtype,
            kernel_initializer="zeros" if self.zero_init else "glorot_uniform",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.out.build(shape)

    def call(self, x):
        for layer in self.hidden_layers:
            x = layer(x)
        return self.out(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_features,)

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, out_features=self.out_features,
                      depth=self.depth, zero_init=self.zero_init)
        return config


def default_net(rank, hidden, out_channels, name, dtype=None):
    """The built-in conditioner for inputs of `rank` (batch axis included)."""
    if rank == 4:
        return ConvNet(hidden, out_channels, name=name, dtype=dtype)
    return DenseNet(hidden, out_channels, name=name, dtype=dtype)


# -- context ---------------------------------------------------------------------
def context_channels(rank, context_shape):
    """How many channels a context of event shape `context_shape` adds to
    a conditioner input of `rank` (see `conditioner_input`)."""
    if context_shape is None:
        return 0
    context_shape = tuple(context_shape)
    if rank == 4 and len(context_shape) == 3:
        return int(context_shape[-1])
    return event_size((None,) + context_shape)


def conditioner_input(x, context):
    """`x` with the context appended on the last axis: what a conditioner sees.

    Vectors `(B, D)`: the context, flattened, is concatenated,
    `(B, D + prod(context_shape))`. Images `(B, H, W, C)`: a vector context
    `(B, k)` is broadcast over `H, W`; an image context `(B, H, W, k)` is
    concatenated as is. As in zuko and FrEIA, any net then conditions on
    the context without knowing about it.
    """
    if context is None:
        return x
    context = ops.cast(context, x.dtype)
    if len(x.shape) == 4:
        if len(context.shape) == 4:
            if tuple(context.shape[1:3]) != tuple(x.shape[1:3]):
                raise ValueError(
                    f"An image context must have the height and width of the input it "
                    f"conditions: got context {tuple(context.shape)} for input {tuple(x.shape)}."
                )
            return ops.concatenate([x, context], axis=-1)
        k = event_size(context.shape)
        flat = ops.reshape(context, (ops.shape(context)[0], 1, 1, k))
        tiled = ops.broadcast_to(flat, (ops.shape(x)[0], x.shape[1], x.shape[2], k))
        return ops.concatenate([x, tiled], axis=-1)
    flat = ops.reshape(context, (ops.shape(context)[0], -1))
    return ops.concatenate([x, flat], axis=-1)
