"""Variational families: `planar`, `radial`, `sylvester` and `householder`.

Each builder returns an uncompiled `FlowModel` over vectors (`n_bits=None`)
with a standard normal base, whose `sample_and_log_prob(n, context=None,
seed=None)` is one pass (every layer's latent -> data direction is
analytic): what `tfflows.vi.fit_to_density` and a VAE's ELBO need. IAF,
the other classic posterior flow, is `tfflows.zoo.iaf`.

`affine=True` (the default) makes the first map of the sample path a
learned diagonal affine `z0 = mu + sigma * eps` (an `ActNorm` started at
the identity), i.e. a learned diagonal-Gaussian start `q0`, as in the
papers' VI experiments. With `context_dim=k`, `q0` is instead
`tfflows.distributions.ConditionalNormal` (mean and scale from the
context, like a VAE encoder's Gaussian) and the planar, radial and
Sylvester layers take their parameters from the context too (amortised).

>>> import numpy as np
>>> q = planar(2, flows=4)
>>> z, log_q = q.sample_and_log_prob(3, seed=0)
>>> tuple(z.shape), tuple(log_q.shape)
((3, 2), (3,))
"""

from tfflows import distributions
from tfflows import layers as L
from tfflows.models import FlowModel
from tfflows.zoo.vectors import check_sizes


def _identity_affine(dim):
    # ActNorm's map with loc = 0, log_scale = 0, marked initialised: a
    # trainable diagonal affine that starts as the identity (no data here
    # to initialise it from).
    layer = L.ActNorm(name="affine")
    layer.build((None, dim))
    layer.initialized.assign(1.0)
    return layer


def _model(name, layers, dim, context_shape, affine):
    base = "normal"
    if affine:
        if context_shape is None:
            layers = layers + [_identity_affine(dim)]  # the last layer of forward: nearest the latent
        else:
            base = distributions.ConditionalNormal(context_shape)
    return FlowModel(L.FlowSequence(layers, name=f"{name}_flow"), base=base, data_shape=(dim,), n_bits=None,
                     context_shape=context_shape, name=name)


def _seed(seed, k):
    return None if seed is None else int(seed) + k


def planar(dim, flows=8, context_dim=None, affine=True, seed=None):
    """`flows` planar layers (Rezende & Mohamed 2015): `x = z + u_hat tanh(w^T z + b)`.

    Sampling and `sample_and_log_prob` are one pass; `log_prob` of given
    points solves one scalar equation per layer (`Planar`, iterative).

    Args:
        dim: dimension of `z`.
        flows: number of layers `K`. Defaults to 8.
        context_dim: context size for amortised parameters, or `None`.
        affine: learn the start `q0` (see the module). Defaults to `True`.
        seed: seed of the free parameters' initial values.

    References: https://arxiv.org/abs/1505.05770
    """
    context_shape = check_sizes("planar", dim, flows, context_dim)
    layers = [L.Planar(seed=_seed(seed, k), context_shape=context_shape, name=f"planar{k}") for k in range(flows)]
    return _model("planar", layers, dim, context_shape, affine)


def radial(dim, flows=8, context_dim=None, affine=True, seed=None):
    """`flows` radial layers (Rezende & Mohamed 2015):
    `x = z + beta / (alpha + |z - z0|) (z - z0)`; both directions one pass.

    Args: as `planar`.

    References: https://arxiv.org/abs/1505.05770
    """
    context_shape = check_sizes("radial", dim, flows, context_dim)
    layers = [L.Radial(seed=_seed(seed, k), context_shape=context_shape, name=f"radial{k}") for k in range(flows)]
    return _model("radial", layers, dim, context_shape, affine)


def sylvester(dim, flows=4, kind="orthogonal", m=None, n_reflections=None, context_dim=None, affine=True,
              seed=None):
    """`flows` Sylvester layers (van den Berg et al. 2018):
    `x = z + Q R tanh(R~ Q^T z + b)`.

    `kind="orthogonal"` (O-SNF, `m` orthonormal columns), `"householder"`
    (H-SNF, `n_reflections` reflections) or `"triangular"` (T-SNF: `Q` the
    identity and the reversal permutation, alternating). Sampling and
    `sample_and_log_prob` are one pass; `log_prob` of given points is not
    available (the Sylvester map has no cheap inverse).

    Args:
        dim: dimension of `z`.
        flows: number of layers `K`. Defaults to 4.
        kind: `"orthogonal"` (default), `"householder"` or `"triangular"`.
        m: orthonormal columns per layer, `1 <= m <= dim`. Defaults to
            `None`: `dim`.
        n_reflections: reflections per layer (`"householder"`). Defaults to
            `None`: `dim`.
        context_dim, affine, seed: as `planar`.

    References: https://arxiv.org/abs/1803.05649
    """
    context_shape = check_sizes("sylvester", dim, flows, context_dim)
    if m is not None and not isinstance(m, bool) and isinstance(m, int) and m > dim:
        raise ValueError(f"sylvester needs m <= dim (at most as many orthonormal columns as dimensions). "
                         f"Received: m={m}, dim={dim}")
    layers = []
    for k in range(flows):
        extra = {"reverse": bool(k % 2)} if kind == "triangular" else {}
        layers.append(L.Sylvester(kind, m=m, n_reflections=n_reflections, seed=_seed(seed, k),
                                  context_shape=context_shape, name=f"sylvester{k}", **extra))
    return _model("sylvester", layers, dim, context_shape, affine)


def householder(dim, flows=1, n_reflections=None, context_dim=None, seed=None):
    """A Householder flow (Tomczak & Welling 2016): a learned diagonal
    Gaussian `q0` followed by `flows` products of `n_reflections`
    Householder reflections, so `q` is a full-covariance Gaussian
    `N(Q mu, Q diag(sigma^2) Q^T)`.

    Reflections preserve volume (log-det 0), so the start must not be
    isotropic: `q0` is always learned here (`affine` is not optional).
    With `context_dim`, `q0`'s mean and scale come from the context
    (`ConditionalNormal`); the reflections are shared (the `Householder`
    layer has free vectors only).

    Args:
        dim: dimension of `z`.
        flows: number of `Householder` layers. Defaults to 1.
        n_reflections: reflections per layer. Defaults to `None`: `dim`.
        context_dim: context size for the conditional `q0`, or `None`.
        seed: seed of the initial reflection vectors.

    References: https://arxiv.org/abs/1611.09630
    """
    context_shape = check_sizes("householder", dim, flows, context_dim)
    n = dim if n_reflections is None else n_reflections
    layers = [L.Householder(n, seed=_seed(seed, k), name=f"householder{k}") for k in range(flows)]
    return _model("householder", layers, dim, context_shape, affine=True)
