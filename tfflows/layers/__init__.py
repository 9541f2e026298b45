"""Keras 3 flow layers (keras.ops only; TensorFlow and JAX backends)."""

from tfflows.layers.base import LAYER_REGISTRY, FlowLayer, FlowSequence, sum_except_batch
from tfflows.layers.coupling import AdditiveCoupling, AffineCoupling, checkerboard_mask
from tfflows.layers.linear import Invertible1x1Conv, Permute, Reverse
from tfflows.layers.nets import ConvNet, DenseNet
from tfflows.layers.normalization import ActNorm, DiagonalScaling
from tfflows.layers.preprocess import LogitTransform, Rescale
from tfflows.layers.reshape import Reshape, Split, Squeeze, Unsqueeze

__all__ = [
    "LAYER_REGISTRY", "FlowLayer", "FlowSequence", "sum_except_batch",
    "AdditiveCoupling", "AffineCoupling", "checkerboard_mask",
    "Invertible1x1Conv", "Permute", "Reverse", "ConvNet", "DenseNet",
    "ActNorm", "DiagonalScaling", "LogitTransform", "Rescale",
    "Reshape", "Split", "Squeeze", "Unsqueeze",
]
