"""Flows for vectors (2-D densities, tabular data, posteriors): `maf`, `iaf`,
`nsf` and the vector RealNVP, each optionally conditional on a context.

Each builder returns an uncompiled `FlowModel` for continuous data
(`n_bits=None`: `fit` minimises the negative log-likelihood in nats), with a
standard normal base. `context_dim=k` makes every conditioner take a
`(batch, k)` context: `fit` then takes `(x, context)` batches and
`log_prob(x, context)`, `sample(n, context=...)` need one.

>>> import numpy as np
>>> model = maf(2, flows=2, hidden=(16,))
>>> model.compile()
>>> tuple(model.log_prob(np.zeros((3, 2), "float32")).shape)
(3,)
"""

from tfflows import layers as L
from tfflows.models import FlowModel

NSF_KINDS = ("coupling", "autoregressive")


def check_sizes(name, dim, flows, context_dim):
    for arg, value, low in (("dim", dim, 1), ("flows", flows, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} needs a positive integer {arg}. Received: {arg}={value!r}")
    if context_dim is not None and (isinstance(context_dim, bool) or not isinstance(context_dim, int)
                                    or context_dim < 1):
        raise ValueError(f"{name} context_dim must be a positive integer or None. Received: context_dim={context_dim!r}")
    return None if context_dim is None else (int(context_dim),)


def _model(name, flow, dim, context_shape):
    return FlowModel(L.FlowSequence(flow, name=f"{name}_flow"), data_shape=(dim,), n_bits=None,
                     context_shape=context_shape, name=name)


def _autoregressive(name, dim, flows, hidden, transform, direction, context_dim, seed):
    context_shape = check_sizes(name, dim, flows, context_dim)
    flow = [L.MaskedAutoregressive(transform=transform, direction=direction, hidden=hidden,
                                   order="natural" if k % 2 == 0 else "reverse", seed=seed,
                                   context_shape=context_shape, name=f"{direction}{k}")
            for k in range(flows)]
    return _model(name, flow, dim, context_shape)


def maf(dim, flows=5, hidden=(64, 64), transform="affine", context_dim=None, seed=None):
    """Masked Autoregressive Flow (Papamakarios et al. 2017): `flows` MAF
    layers whose MADE orders alternate natural and reverse.

    Density (`log_prob`, `fit`) is one MADE pass per layer; sampling takes
    `dim` passes per layer (exact). `transform="spline"` (or a spline
    config) gives an autoregressive neural spline flow.

    Args:
        dim: data dimension.
        flows: number of layers. Defaults to 5.
        hidden: MADE hidden widths. Defaults to `(64, 64)`.
        transform: `"affine"` (default), `"spline"` or a transform config.
        context_dim: context size, or `None`.

    References: https://arxiv.org/abs/1705.07057
    """
    return _autoregressive("maf", dim, flows, hidden, transform, "maf", context_dim, seed)


def iaf(dim, flows=5, hidden=(64, 64), transform="affine", context_dim=None, seed=None):
    """Inverse Autoregressive Flow (Kingma et al. 2016): `flows` IAF layers.

    Sampling and `sample_and_log_prob` are one MADE pass per layer (what
    variational inference needs); `log_prob` of given data takes `dim`
    passes per layer.

    References: https://arxiv.org/abs/1606.04934
    """
    return _autoregressive("iaf", dim, flows, hidden, transform, "iaf", context_dim, seed)


def nsf(dim, kind="coupling", flows=5, bins=8, bound=3.0, hidden=(64, 64), context_dim=None, seed=None):
    """Neural Spline Flow (Durkan et al. 2019): rational-quadratic spline
    transforms with linear tails outside `[-bound, bound]`.

    `kind="coupling"`: per flow, an `LULinear` mixing then a spline
    coupling (half the features condition the other half; needs `dim >= 2`),
    both directions one pass. `kind="autoregressive"`: spline MAF layers
    (density one pass, sampling `dim` passes).

    References: https://arxiv.org/abs/1906.04032
    """
    if kind not in NSF_KINDS:
        raise ValueError(f"nsf kind must be one of {NSF_KINDS}. Received: kind={kind!r}")
    spline = {"name": "spline", "bins": int(bins), "bound": float(bound)}
    if kind == "autoregressive":
        return _autoregressive("nsf", dim, flows, hidden, spline, "maf", context_dim, seed)
    context_shape = check_sizes("nsf", dim, flows, context_dim)
    if dim < 2:
        raise ValueError(f"nsf(kind='coupling') needs dim >= 2 to split the features; got dim={dim}. "
                         f"Use kind='autoregressive'.")
    width = hidden[0] if isinstance(hidden, (list, tuple)) else int(hidden)
    depth = len(hidden) if isinstance(hidden, (list, tuple)) else 2
    flow = []
    for k in range(flows):
        flow.append(L.LULinear(seed=None if seed is None else seed + k, name=f"lu{k}"))
        net = L.DenseNet(width, (dim - dim // 2 if k % 2 == 0 else dim // 2) * (3 * int(bins) - 1),
                         depth=depth, name=f"net{k}")
        flow.append(L.Coupling(spline, mask="channel", reverse=bool(k % 2), net=net,
                               context_shape=context_shape, name=f"coupling{k}"))
    return _model("nsf", flow, dim, context_shape)


def realnvp_vector_flow(dim, couplings, hidden, context_shape=None):
    """RealNVP for vectors: `couplings` affine couplings (RealNVP's
    `g * tanh` scale) alternating halves, each after an ActNorm."""
    flow = []
    for k in range(couplings):
        flow += [L.ActNorm(name=f"actnorm{k}"),
                 L.AffineCoupling(mask="channel", reverse=bool(k % 2), scale="exp", hidden=hidden,
                                  context_shape=context_shape, name=f"coupling{k}")]
    return L.FlowSequence(flow, name="realnvp")
