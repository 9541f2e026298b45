"""The coupling nets' matmul convolutions against Keras' own `Conv2D`.

`ConvNet` runs its convolutions as matmuls (`_conv_same_as_matmul`) for
speed on CPU. These tests check that the matmul path is the same map as
`Conv2D.__call__` with the same weights, with the same gradients, in every
branch (1x1, im2col, shifted sum, fallback), on the active backend;
`test_nets_under_jax` reruns the file with KERAS_BACKEND=jax.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from tfflows.layers import nets
from tfflows.layers.nets import ConvNet, _conv_same_as_matmul


def _conv(c_in, c_out, k, seed, h=7, w=5):
    keras.utils.set_random_seed(seed)
    conv = keras.layers.Conv2D(c_out, k, padding="same", activation=None)
    conv.build((None, h, w, c_in))
    # Non-zero bias so a dropped bias would show.
    conv.bias.assign(np.random.default_rng(seed).normal(size=(c_out,)).astype("float32"))
    x = np.random.default_rng(seed + 1).normal(size=(3, h, w, c_in)).astype("float32")
    return conv, x


def _branch(c_in, c_out, k):
    if k == 1:
        return "matmul"
    if k * k * min(c_in, c_out) > nets._MATMUL_CONV_MAX_COLS:
        return "fallback"
    return "im2col" if c_in <= c_out else "shifted-sum"


# (c_in, c_out, kernel): Glow's first conv (narrow in), last conv (narrow out),
# the hidden 1x1, narrow nets (RealNVP's width 64, both sides narrow), a 5x5,
# and one that falls back to Conv2D (9 * 20 columns is too many).
CASES = [(2, 400, 3), (400, 4, 3), (400, 400, 1), (4, 128, 3), (64, 8, 3), (8, 12, 3),
         (3, 300, 5), (20, 400, 3)]


@pytest.mark.parametrize("c_in,c_out,k", CASES)
def test_matmul_conv_equals_conv2d(c_in, c_out, k):
    conv, x = _conv(c_in, c_out, k, seed=c_in + c_out + k)
    expected = ops.convert_to_numpy(conv(x))
    got = ops.convert_to_numpy(_conv_same_as_matmul(conv, ops.convert_to_tensor(x)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_cases_cover_every_branch():
    assert {_branch(*c) for c in CASES} == {"matmul", "im2col", "shifted-sum", "fallback"}


def _grads(fn, conv, x):
    """Gradients of sum(fn(x) * r) with respect to x, kernel and bias."""
    r = np.random.default_rng(0).normal(size=fn(ops.convert_to_tensor(x)).shape).astype("float32")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(fn(xt) * r)
        gx, gk, gb = tape.gradient(loss, [xt, conv.kernel.value, conv.bias.value])
        return [np.asarray(g) for g in (gx, gk, gb)]
    import jax

    def loss(xv, kv, bv):
        with keras.StatelessScope(state_mapping=[(conv.kernel, kv), (conv.bias, bv)]):
            return (fn(xv) * r).sum()

    return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2))(x, conv.kernel.value, conv.bias.value)]


@pytest.mark.parametrize("c_in,c_out,k", CASES[:6])
def test_matmul_conv_gradients_equal_conv2d(c_in, c_out, k):
    conv, x = _conv(c_in, c_out, k, seed=7)
    want = _grads(conv, conv, x)
    got = _grads(lambda v: _conv_same_as_matmul(conv, v), conv, x)
    for name, g, w in zip(("input", "kernel", "bias"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * np.abs(w).max(), err_msg=name)


def test_convnet_width_400_equals_stacked_conv2d():
    """Glow's 3x3-1x1-3x3 net at width 400 (every conv on the matmul path)."""
    keras.utils.set_random_seed(3)
    net = ConvNet(400, 4, zero_init=False)
    x = np.random.default_rng(3).normal(size=(2, 14, 14, 2)).astype("float32")
    got = ops.convert_to_numpy(net(x))
    expected = ops.convert_to_numpy(net.conv3(net.conv2(net.conv1(x))))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_nets_under_jax():
    if keras.backend.backend() == "jax":
        pytest.skip("already running under JAX")
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install 'jax[cpu]')")
    from conftest import jax_rerun

    returncode, stdout, stderr = jax_rerun("test_nets.py::test_nets_under_jax")
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
