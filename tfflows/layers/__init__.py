"""Keras 3 flow layers (keras.ops only; TensorFlow and JAX backends)."""

from tfflows.layers.base import (LAYER_REGISTRY, FactorOut, FlowLayer, FlowSequence, event_size,
                                 sum_except_batch)
from tfflows.layers.autoregressive import MADE, MaskedAutoregressive, MaskedDense
from tfflows.layers.continuous import ContinuousFlow
from tfflows.layers.dequantize import VariationalDequantizer
from tfflows.layers.coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling, checkerboard_mask
from tfflows.layers.elementwise import ElementwiseSpline, PiecewiseLinear
from tfflows.layers.linear import Householder, Invertible1x1Conv, LULinear, Permute, QRLinear, Reverse
from tfflows.layers.nets import ConvNet, DenseNet, conditioner_input
from tfflows.layers.normalization import ActNorm, DiagonalScaling
from tfflows.layers.preprocess import LogitTransform, Rescale
from tfflows.layers.residual import ResidualBlock
from tfflows.layers.reshape import Reshape, Split, Squeeze, Unsqueeze
from tfflows.layers.vi import Planar, Radial, Sylvester

__all__ = [
    "LAYER_REGISTRY", "FactorOut", "FlowLayer", "FlowSequence", "event_size", "sum_except_batch",
    "Coupling", "AdditiveCoupling", "AffineCoupling", "SplineCoupling", "checkerboard_mask",
    "ElementwiseSpline", "PiecewiseLinear",
    "MADE", "MaskedAutoregressive", "MaskedDense",
    "Invertible1x1Conv", "LULinear", "QRLinear", "Householder", "Permute", "Reverse",
    "ConvNet", "DenseNet", "conditioner_input",
    "ActNorm", "DiagonalScaling", "LogitTransform", "Rescale",
    "Reshape", "Split", "Squeeze", "Unsqueeze",
    "Planar", "Radial", "Sylvester",
    "ResidualBlock", "ContinuousFlow", "VariationalDequantizer",
]
