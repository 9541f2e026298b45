"""Free-form-Jacobian flows: `resflow` (residual flows) and `ffjord`
(continuous flows), for vectors and images.

Vectors (`data_shape=(D,)`): uncompiled `FlowModel`s for continuous data
(`n_bits=None`, loss in nats). Images (`data_shape=(H, W, C)`, values in
[0, 1)): `n_bits=8` models in bits/dim, with RealNVP's logit preprocessing
(`alpha`), as Residual Flows and FFJORD preprocess MNIST.

>>> import numpy as np
>>> model = resflow((2,), blocks=2, hidden=(16,), log_det="exact")
>>> tuple(model.log_prob(np.zeros((3, 2), "float32")).shape)
(3,)
"""

from tfflows import layers as L
from tfflows.models import FlowModel
from tfflows.zoo.vectors import check_sizes


def _shape(name, data_shape):
    shape = tuple(int(d) for d in data_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"{name} takes data_shape=(D,) for vectors or (H, W, C) for images. "
                         f"Received: data_shape={data_shape!r}")
    return shape


def resflow(data_shape, blocks=4, hidden=(64, 64), lipschitz=0.97, log_det="roulette", squeeze=False,
            alpha=1e-5, context_dim=None, seed=None, **block_kwargs):
    """Residual Flow (Chen et al. 2019; i-ResNet, Behrmann et al. 2019):
    `blocks` x (`ResidualBlock`, `ActNorm`), data to latent.

    Each block is `x + g(x)` with a spectrally normalised LipSwish net
    (`hidden`; convolutions 3-1-3 for images) of Lipschitz constant at most
    `lipschitz`, and its log-det by `log_det` (`"roulette"`: unbiased;
    `"series"`: i-ResNet's truncated series; `"exact"`: small `D` only).
    For images, `squeeze=True` first trades space for channels (2x2 ->
    4 channels, as Residual Flows' first stage). Other keyword arguments go
    to every `ResidualBlock` (e.g. `n_exact_terms`, `tolerance`).

    References: https://arxiv.org/abs/1906.02735, https://arxiv.org/abs/1811.00995
    """
    shape = _shape("resflow", data_shape)
    context_shape = check_sizes("resflow", shape[0], blocks, context_dim)
    flow = []
    if len(shape) == 3:
        flow.append(L.LogitTransform(alpha=alpha, name="logit"))
        if squeeze:
            flow.append(L.Squeeze(name="squeeze"))
    for k in range(blocks):
        flow += [L.ResidualBlock(hidden=hidden, lipschitz=lipschitz, log_det=log_det,
                                 seed=None if seed is None else seed + k, context_shape=context_shape,
                                 name=f"block{k}", **block_kwargs),
                 L.ActNorm(name=f"actnorm{k}")]
    return FlowModel(L.FlowSequence(flow, name="resflow_flow"), data_shape=shape,
                     n_bits=8 if len(shape) == 3 else None, context_shape=context_shape, name="resflow")


def ffjord(data_shape, flows=1, hidden=(64, 64), trace="hutchinson", time_length=1.0, rtol=1e-5, atol=1e-5,
           activation="tanh", gradient="adjoint", squeeze=False, alpha=1e-5, context_dim=None, seed=None,
           **flow_kwargs):
    """FFJORD (Grathwohl et al. 2019): `flows` continuous flows (`ContinuousFlow`,
    each with `ActNorm` after it), data to latent.

    The dynamics net is an MLP (`hidden`) for vectors, a "same"
    convolution stack for images, taking `t` at every layer. `trace`:
    `"hutchinson"` (FFJORD's, one probe per solve) or `"exact"` (small `D`).
    `rtol`, `atol`: the adaptive solver's tolerances (FFJORD: 1e-5).
    For images, `squeeze=True` first trades space for channels (2x2 -> 4
    channels, as FFJORD's multiscale MNIST model starts; 4x fewer positions
    per dynamics evaluation). Other keyword arguments go to every
    `ContinuousFlow`.

    References: https://arxiv.org/abs/1810.01367, https://arxiv.org/abs/1806.07366
    """
    shape = _shape("ffjord", data_shape)
    context_shape = check_sizes("ffjord", shape[0], flows, context_dim)
    flow = [L.LogitTransform(alpha=alpha, name="logit")] if len(shape) == 3 else []
    if squeeze and len(shape) == 3:
        flow.append(L.Squeeze(name="squeeze"))
    for k in range(flows):
        flow += [L.ContinuousFlow(hidden=hidden, trace=trace, time_length=time_length, rtol=rtol, atol=atol,
                                  activation=activation, gradient=gradient, seed=None if seed is None else seed + k,
                                  context_shape=context_shape, name=f"cnf{k}", **flow_kwargs),
                 L.ActNorm(name=f"actnorm{k}")]
    return FlowModel(L.FlowSequence(flow, name="ffjord_flow"), data_shape=shape,
                     n_bits=8 if len(shape) == 3 else None, context_shape=context_shape, name="ffjord")
