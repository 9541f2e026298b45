"""VAEs with flow posteriors, as in the Sylvester-flows paper's MNIST table.

`vae(posterior=..., latent_dim=64, ...)` returns an uncompiled
`tfflows.vae.VAE` whose posterior `q(z | x)` is amortised through the
encoder's output `h` (`context_dim` features): a diagonal Gaussian `q0`
whose mean and scale come from `h` (`ConditionalNormal`), then the flow:

| `posterior` | flow after `q0` | amortised from `h` |
| --- | --- | --- |
| `"gaussian"` | none (the plain VAE) | - |
| `"planar"` | `flows` planar layers | every `u`, `w`, `b` |
| `"iaf"` | `flows` IAF layers (affine, MADE `made_hidden`, orders alternating) | the MADEs take `h` as context |
| `"householder"` | `flows` Householder reflections (Tomczak & Welling 2016) | no: shared reflections |
| `"sylvester-orthogonal"` | `flows` O-SNF layers, `m` orthonormal columns | `R`, `R~`, `Q`, `b` |
| `"sylvester-householder"` | `flows` H-SNF layers, `n_reflections` reflections | `R`, `R~`, reflections, `b` |
| `"sylvester-triangular"` | `flows` T-SNF layers (`Q` identity / reversal, alternating) | `R`, `R~`, `b` |

The defaults follow the Sylvester paper's code (riannevdberg/sylvester-flows):
`latent_dim=64`, an encoder output of 256 features, 4 flows, `m = 8`
orthonormal columns, 8 reflections, MADEs of 320 hidden units; but the
encoder and decoder are MLPs (784-300-300-256 and 64-300-300-784) rather
than the paper's gated convolutions.

>>> import numpy as np
>>> model = vae("planar", latent_dim=2, flows=2, hidden=(16,), context_dim=8, data_shape=(6,), seed=0)
>>> model.neg_elbo(np.ones((3, 6), "float32"), seed=0).shape
(3,)
"""

import sys
import types

import keras
import numpy as np

from tfflows import distributions
from tfflows import layers as L
from tfflows.models import FlowModel
from tfflows.vae import VAE
from tfflows.zoo.vectors import check_sizes

POSTERIORS = ("gaussian", "planar", "iaf", "householder", "sylvester-orthogonal", "sylvester-householder",
              "sylvester-triangular")
#: Default flow counts, orthonormal columns, reflections and MADE widths (the paper's code's defaults).
DEFAULT_FLOWS = 4
DEFAULT_M = 8
DEFAULT_REFLECTIONS = 8
DEFAULT_MADE_HIDDEN = (320,)


def _seed(seed, k):
    return None if seed is None else int(seed) + k


def posterior_flow(posterior, latent_dim, context_dim, flows=None, m=None, n_reflections=None, made_hidden=None,
                   seed=None):
    """The posterior `FlowModel` `q(z | h)` of `vae` alone: over
    `(latent_dim,)`, `context_shape=(context_dim,)`, a `ConditionalNormal`
    start and the flow of `posterior` (see the module's table)."""
    if posterior not in POSTERIORS:
        raise ValueError(f"vae posterior must be one of {POSTERIORS}. Received: posterior={posterior!r}")
    flows = DEFAULT_FLOWS if flows is None else flows
    context_shape = check_sizes(f"vae({posterior!r})", latent_dim, flows, context_dim)
    if context_shape is None:
        raise ValueError("vae needs a positive integer context_dim (the encoder's output size).")
    if posterior == "gaussian":
        layers = []
    elif posterior == "planar":
        layers = [L.Planar(seed=_seed(seed, k), context_shape=context_shape, name=f"planar{k}")
                  for k in range(flows)]
    elif posterior == "iaf":
        hidden = DEFAULT_MADE_HIDDEN if made_hidden is None else made_hidden
        layers = [L.MaskedAutoregressive(transform="affine", direction="iaf", hidden=hidden,
                                         order="natural" if k % 2 == 0 else "reverse", seed=_seed(seed, k),
                                         context_shape=context_shape, name=f"iaf{k}")
                  for k in range(flows)]
    elif posterior == "householder":
        layers = [L.Householder(flows, seed=seed, name="householder")]
    else:
        kind = posterior.split("-", 1)[1]
        extra = {}
        if kind == "orthogonal":
            extra["m"] = min(DEFAULT_M, latent_dim) if m is None else m
        elif kind == "householder":
            extra["n_reflections"] = min(DEFAULT_REFLECTIONS, latent_dim) if n_reflections is None else n_reflections
        if isinstance(extra.get("m"), int) and extra["m"] > latent_dim:
            raise ValueError(f"vae('sylvester-orthogonal') needs m <= latent_dim. Received: m={extra['m']}, "
                             f"latent_dim={latent_dim}")
        layers = []
        for k in range(flows):
            reverse = {"reverse": bool(k % 2)} if kind == "triangular" else {}
            layers.append(L.Sylvester(kind, seed=_seed(seed, k), context_shape=context_shape,
                                      name=f"sylvester{k}", **extra, **reverse))
    name = posterior.replace("-", "_")
    q = FlowModel(L.FlowSequence(layers, name=f"{name}_flow"), base=distributions.ConditionalNormal(context_shape),
                  data_shape=(latent_dim,), n_bits=None, context_shape=context_shape, name=f"q_{name}")
    _random_amortisation_bias(layers, seed)
    return q


def _random_amortisation_bias(layers, seed):
    """Starts the bias of each layer's amortisation `Dense` at `U(-1/sqrt(H),
    1/sqrt(H))` (PyTorch's `nn.Linear` default, as in the paper's code)
    instead of Keras' zeros: with a zero bias, a context `h = 0` (the ELU
    or ReLU encoder's output for an all-zero image) gives the planar `w`,
    the O-SNF `Q` and the H-SNF reflection vectors all zero, and those
    normalise by their norm (NaN)."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        dense = getattr(layer, "params", None)
        if isinstance(dense, keras.layers.Dense) and dense.use_bias:
            lim = 1.0 / np.sqrt(int(dense.kernel.shape[0]))
            dense.bias.assign(rng.uniform(-lim, lim, tuple(dense.bias.shape)).astype(dense.bias.dtype))


#: The builder's architecture defaults (what a preset's architecture may set).
ARCH_DEFAULTS = dict(posterior="gaussian", latent_dim=64, flows=None, hidden=(300, 300), context_dim=256,
                     data_shape=(784,), m=None, n_reflections=None, made_hidden=None, activation="elu")


def vae(posterior=None, latent_dim=None, flows=None, hidden=None, context_dim=None, data_shape=None,
        m=None, n_reflections=None, made_hidden=None, activation=None, warmup_steps=0, seed=None,
        preset=None, pretrained=False):
    """A VAE for binary data whose posterior is `posterior` (see the module's table).

    `tfflows.zoo.vae(preset="mnist", pretrained=True)` is the shipped MNIST
    VAE (a Householder-flow posterior, trained for 10 CPU-minutes; card:
    `zoo/vae-mnist/README.md`), its weights sha256-checked before loading.

    Args:
        posterior: `"gaussian"`, `"planar"`, `"iaf"`, `"householder"`,
            `"sylvester-orthogonal"`, `"sylvester-householder"` or
            `"sylvester-triangular"`. Defaults to `"gaussian"`.
        latent_dim: dimension of `z`. Defaults to 64.
        flows: flow layers (reflections for `"householder"`). Defaults to 4.
        hidden: the encoder's and decoder's hidden widths. Defaults to
            `(300, 300)`.
        context_dim: the encoder's output size, the posterior's context.
            Defaults to 256.
        data_shape: shape of one example. Defaults to `(784,)`.
        m: orthonormal columns of O-SNF. Defaults to `min(8, latent_dim)`.
        n_reflections: reflections per H-SNF layer. Defaults to
            `min(8, latent_dim)`.
        made_hidden: IAF MADE widths. Defaults to `(320,)`.
        activation: the MLPs' activation. Defaults to `"elu"`.
        warmup_steps: KL warm-up steps (`VAE`). Defaults to 0.
        seed: seed of the initial weights and of the training noise.
        preset: a preset of the presets table (`"mnist"`): its architecture,
            where an argument is left `None`. Defaults to none.
        pretrained: load the preset's shipped weights (`preset` defaults to
            `"mnist"`); an architecture argument that differs from the
            shipped one raises `WeightsError`. Defaults to False.

    Returns:
        an uncompiled `tfflows.vae.VAE`.

    References: van den Berg et al. 2018, https://arxiv.org/abs/1803.05649;
    Rezende & Mohamed 2015; Kingma et al. 2016 (IAF); Tomczak & Welling
    2016 (Householder flow).
    """
    given = dict(posterior=posterior, latent_dim=latent_dim, flows=flows, hidden=hidden, context_dim=context_dim,
                 data_shape=data_shape, m=m, n_reflections=n_reflections, made_hidden=made_hidden,
                 activation=activation)
    arch = dict(ARCH_DEFAULTS)
    if pretrained and preset is None:
        preset = "mnist"
    if preset is not None:
        arch.update(_preset_architecture(preset, given, pretrained))
    arch.update({k: v for k, v in given.items() if v is not None})
    a = types.SimpleNamespace(**arch)
    q = posterior_flow(a.posterior, a.latent_dim, a.context_dim, flows=a.flows, m=a.m, n_reflections=a.n_reflections,
                       made_hidden=a.made_hidden, seed=seed)
    model = VAE(q, data_shape=a.data_shape, hidden=a.hidden, activation=a.activation,
                warmup_steps=warmup_steps, seed=seed, name=f"vae_{a.posterior.replace('-', '_')}")
    if pretrained:
        from tfflows.zoo.presets import verified_weights_path

        # The encoder and decoder are built; the posterior's layers build on a first call.
        model.posterior.log_prob(np.zeros((1, model.latent_dim), "float32"),
                                 context=np.zeros((1, model.context_dim), "float32"))
        model.load_weights(verified_weights_path(f"vae-{preset}"))
    return model


def _preset_architecture(preset, given, pretrained):
    """The preset's architecture (tuples for lists); with `pretrained`, a
    `WeightsError` if a given argument differs from it."""
    from tfflows.zoo.presets import PRESETS, WeightsError

    presets = PRESETS.get("vae", {})
    if preset not in presets:
        raise ValueError(f"Unknown vae preset {preset!r}; choose one of {sorted(presets)}.")
    arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in presets[preset].items()}
    if pretrained:
        shipped = dict(ARCH_DEFAULTS, **arch)
        differ = {k: f"shipped {shipped[k]!r}, asked {v!r}" for k, v in given.items()
                  if v is not None and _as_tuple(v) != _as_tuple(shipped[k])}
        if differ:
            raise WeightsError(f"The pretrained vae {preset!r} weights were trained with another architecture: "
                               f"{differ}. Drop those arguments or use pretrained=False.")
    return arch


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


class _CallableModule(types.ModuleType):
    """This module calls `vae`: importing `tfflows.zoo.vae` as a module (which
    makes the package attribute `tfflows.zoo.vae` the module) must not break
    `tfflows.zoo.vae(...)`, the builder."""

    def __call__(self, *args, **kwargs):
        return vae(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
