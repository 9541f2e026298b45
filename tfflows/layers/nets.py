"""Conditioner networks for coupling layers and learned priors.

Each built-in net zero-initialises its last layer, so a coupling layer starts
as the identity map (Glow, Kingma & Dhariwal 2018, section 3.3): the flow then
begins training from a well-conditioned point instead of a random bijection.
"""

import keras
from keras import layers as kl


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
        self.conv1 = kl.Conv2D(self.hidden, k1, padding="same", activation="relu", name="conv1")
        self.conv2 = kl.Conv2D(self.hidden, k2, padding="same", activation="relu", name="conv2")
        self.conv3 = kl.Conv2D(
            self.out_channels, k3, padding="same", name="conv_out",
            kernel_initializer="zeros" if self.zero_init else "glorot_uniform",
        )

    def build(self, input_shape):
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.conv2.build(shape)
        self.conv3.build(self.conv2.compute_output_shape(shape))

    def call(self, x):
        return self.conv3(self.conv2(self.conv1(x)))

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
        self.hidden_layers = [
            kl.Dense(self.hidden, activation="relu", name=f"dense{i}") for i in range(self.depth)
        ]
        self.out = kl.Dense(
            self.out_features, name="dense_out",
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


def default_net(rank, hidden, out_channels, name):
    """The built-in conditioner for inputs of `rank` (batch axis included)."""
    if rank == 4:
        return ConvNet(hidden, out_channels, name=name)
    return DenseNet(hidden, out_channels, name=name)
