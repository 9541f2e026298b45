"""Zoo architectures (NICE, RealNVP, Glow) and their presets, kept as data.

Each builder takes a preset name and keyword overrides, and returns an
uncompiled `FlowModel`; `pretrained=True` loads the shipped weights after
checking their sha256.
"""

import copy
import numbers

from tfflows import distributions
from tfflows import layers as L
from tfflows.models import FlowModel
from tfflows.zoo.presets import (PRESETS, PRESETS_FILE, WEIGHTS_DIR, WeightsError,  # noqa: F401
                                 list_models, read_manifest, read_presets, sha256_file, verified_weights_path)


def _config(model, preset, overrides, optional=()):
    """The preset's architecture with the non-`None` `overrides` applied;
    `optional` names keys a preset may leave out (then the builder's default)."""
    if preset not in PRESETS[model]:
        raise ValueError(
            f"Unknown {model} preset {preset!r}; choose one of {sorted(PRESETS[model])}."
        )
    config = copy.deepcopy(PRESETS[model][preset])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    known = set(config) | {"n_bits"} | set(optional)
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"{model}() got unexpected keyword(s) {sorted(unknown)}; "
                        f"it takes {sorted(known)}.")
    config.update(overrides)
    config["data_shape"] = tuple(config["data_shape"])
    return config


def _check_divisible(name, data_shape, levels):
    h, w = data_shape[:2]
    f = 2 ** levels
    if h % f or w % f:
        raise ValueError(
            f"{name} with levels={levels} needs height and width divisible by {f}, "
            f"got {h}x{w}."
        )


GLOW_PREPROCESS = ("center", "logit")


def glow_widths(hidden, levels):
    """`hidden` as one coupling width per level: an int (every level) or a
    list/tuple of `levels` positive ints (level 0 first)."""
    if isinstance(hidden, (list, tuple)):
        widths = list(hidden)
        if len(widths) != levels:
            raise ValueError(f"glow hidden={hidden!r} gives {len(widths)} widths for levels={levels}; "
                             f"give one int or one width per level.")
    else:
        widths = [hidden] * levels
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1:
            raise ValueError(f"glow hidden must be a positive int or a list of them, one per level. "
                             f"Received: hidden={hidden!r}")
    return [int(w) for w in widths]


GLOW_COUPLINGS = ("affine", "spline")


def glow_flow(data_shape, levels, steps, hidden, lu=True, learned_prior=True, preprocess="center",
              alpha=0.05, context_shape=None, class_couplings=False, coupling="affine", bins=8, bound=3.0):
    """Glow (Kingma & Dhariwal 2018): per level, squeeze, then `steps` x
    (ActNorm, invertible 1x1 conv, affine coupling), then split (not after
    the last level). Data in [0, 1) is first shifted to [-0.5, 0.5)
    (`preprocess="center"`, Glow's own) or taken through RealNVP's logit
    transform with squashing `alpha` (`preprocess="logit"`). The 1x1
    rotations are seeded by position (`1000 * level + step`), so every build
    starts from the same rotations whatever the Keras seed; the coupling
    nets' initial weights follow `keras.utils.set_random_seed`. `hidden` is
    the coupling width: one int, or one per level (`[160, 128]` widens only
    the first level's nets). With a `context_shape` (class-conditional
    Glow: a one-hot class), the split priors read the context, and so do
    the couplings' nets if `class_couplings`. `coupling="spline"` puts
    rational-quadratic spline couplings (`SplineCoupling`, `bins` bins on
    `[-bound, bound]`, identity tails; Durkan et al. 2019) in place of the
    affine ones."""
    _check_divisible("glow", data_shape, levels)
    if coupling not in GLOW_COUPLINGS:
        raise ValueError(f"glow coupling must be one of {GLOW_COUPLINGS}. Received: coupling={coupling!r}")
    widths = glow_widths(hidden, levels)
    if preprocess == "center":
        flow = [L.Rescale(1.0, -0.5, name="center")]
    elif preprocess == "logit":
        flow = [L.LogitTransform(alpha=alpha, name="logit")]
    else:
        raise ValueError(f"glow preprocess must be one of {GLOW_PREPROCESS}. Received: {preprocess!r}")
    for i in range(levels):
        flow.append(L.Squeeze(name=f"squeeze{i}"))
        for k in range(steps):
            flow += [
                L.ActNorm(name=f"actnorm{i}_{k}"),
                L.Invertible1x1Conv(lu=lu, seed=1000 * i + k, name=f"invconv{i}_{k}"),
                (L.AffineCoupling(mask="channel", scale="sigmoid", hidden=widths[i],
                                  context_shape=context_shape if class_couplings else None,
                                  name=f"coupling{i}_{k}") if coupling == "affine" else
                 L.SplineCoupling(bins=bins, bound=bound, mask="channel", hidden=widths[i],
                                  context_shape=context_shape if class_couplings else None,
                                  name=f"coupling{i}_{k}")),
            ]
        if i < levels - 1:
            flow.append(L.Split(learned_prior=learned_prior,
                                context_shape=context_shape if learned_prior else None, name=f"split{i}"))
    return L.FlowSequence(flow, name="glow")


def realnvp_flow(data_shape, levels, steps, hidden, alpha=0.05, context_shape=None):
    """RealNVP (Dinh et al. 2017): logit preprocessing, then per scale
    `steps` checkerboard couplings, squeeze, `steps` channel couplings and a
    split; the last scale has `steps + 1` checkerboard couplings. ActNorm
    (not batch norm) precedes each coupling; scales are `g * tanh(h)`. With
    a `context_shape` (a one-hot class) every coupling net reads the context."""
    _check_divisible("realnvp", data_shape, levels - 1)
    flow = [L.LogitTransform(alpha=alpha, name="logit")]

    def couplings(prefix, n, mask):
        out = []
        for k in range(n):
            out += [
                L.ActNorm(name=f"{prefix}_actnorm{k}"),
                L.AffineCoupling(mask=mask, reverse=bool(k % 2), scale="exp", hidden=hidden,
                                 context_shape=context_shape, name=f"{prefix}_coupling{k}"),
            ]
        return out

    for i in range(levels - 1):
        flow += couplings(f"s{i}_cb", steps, "checkerboard")
        flow.append(L.Squeeze(name=f"squeeze{i}"))
        flow += couplings(f"s{i}_ch", steps, "channel")
        flow.append(L.Split(learned_prior=False, name=f"split{i}"))
    flow += couplings(f"s{levels - 1}_cb", steps + 1, "checkerboard")
    return L.FlowSequence(flow, name="realnvp")


def nice_flow(data_shape, couplings, hidden, depth):
    """NICE (Dinh et al. 2015): flatten, `couplings` additive couplings with
    alternating (odd/even) partitions and MLP nets, then diagonal scaling."""
    d = 1
    for s in data_shape:
        d *= s
    flow = [L.Reshape((d,), name="flatten")]
    for k in range(couplings):
        flow.append(L.AdditiveCoupling(
            mask="checkerboard", reverse=bool(k % 2),
            net=L.DenseNet(hidden, d, depth=depth, name=f"net{k}"), name=f"coupling{k}"))
    flow.append(L.DiagonalScaling(name="scaling"))
    return L.FlowSequence(flow, name="nice")


def _dequantizer(config, dequantize):
    """The model's `VariationalDequantizer` for `dequantize="variational"`, else `None`."""
    if dequantize in (None, "uniform"):
        return None
    if dequantize != "variational":
        raise ValueError(f"dequantize must be 'uniform' (the data pipeline's noise) or 'variational' (a learned "
                         f"dequantizer inside the model). Received: dequantize={dequantize!r}")
    return L.VariationalDequantizer(config["data_shape"], n_bits=config.get("n_bits", 8), name="dequantizer")


def shipped_dequantize(key):
    """`"variational"` when the shipped weights `key` include a learned
    dequantizer (their presets-table entry says `"dequantize": "variational"`
    beside the file's sha256), else `"uniform"`."""
    return read_manifest().get(key, {}).get("dequantize", "uniform")


def copy_flow_weights(src, dst):
    """Copies `src`'s flow and prior weights into `dst`, a `FlowModel` of the
    same flow and prior (built by the same builder); a dequantizer on either
    side is left alone. Returns `dst`."""
    for what, a, b in (("flow", src.flow.weights, dst.flow.weights), ("prior", src.base.weights, dst.base.weights)):
        if len(a) != len(b):
            raise ValueError(f"copy_flow_weights: {src.name}'s {what} has {len(a)} weights, {dst.name}'s {len(b)}.")
        for var_src, var_dst in zip(a, b):
            if tuple(var_src.shape) != tuple(var_dst.shape):
                raise ValueError(f"copy_flow_weights: {var_dst.path} has shape {tuple(var_dst.shape)} in "
                                 f"{dst.name} and {tuple(var_src.shape)} in {src.name}.")
            var_dst.assign(var_src)
    return dst


def _shipped_key(model_name, preset, pretrained, dequantize, key=None):
    """`(key of the shipped weights to load, dequantize)` for an image model
    (`key`, default `<model>-<preset>`): with `pretrained=True`,
    `dequantize=None` follows the shipped weights, and `"uniform"` beside
    weights with a learned dequantizer takes the uniform-noise weights
    shipped with them (`<key>-uniform`)."""
    key = key or f"{model_name}-{preset}"
    if not pretrained:
        return key, dequantize
    shipped = shipped_dequantize(key)
    if dequantize is None:
        return key, shipped
    if dequantize == "variational" and shipped != "variational":
        raise WeightsError(f"No shipped {model_name} {preset!r} weights have a variational dequantizer; use "
                           f"pretrained=False, or dequantize='uniform' for the shipped model.")
    if dequantize == "uniform" and shipped == "variational":
        key = f"{key}-uniform"
        if key not in read_manifest():
            raise WeightsError(
                f"No uniform-noise weights ship beside the {model_name} {preset!r} weights, which have a learned "
                f"dequantizer; their flow alone was trained only where that dequantizer puts its noise and is "
                f"no density to use off the data (copy it with builders.copy_flow_weights if you must).")
    return key, dequantize


def _finish(model_name, preset, config, flow, base, pretrained, dequantize=None, key=None, num_classes=None):
    """The zoo's `FlowModel` around `flow`, the shipped weights `key` loaded
    if `pretrained`. With `num_classes` it is class-conditional: `base` a
    `ConditionalNormal` on the one-hot class, `num_classes` in the name and
    in the architecture the weights are checked against."""
    key = key or f"{model_name}-{preset}"
    name = f"{model_name}_{preset}" + (f"_classes{num_classes}" if num_classes else "")
    if num_classes:
        config = dict(config, num_classes=num_classes)
    model = FlowModel(flow, base=base, data_shape=config["data_shape"], n_bits=config.get("n_bits", 8),
                      num_classes=num_classes, dequantizer=_dequantizer(config, dequantize),
                      name=name.replace("-", "_"))
    if pretrained:
        load_pretrained(model, key, config)
    return model


def glow(preset="mnist", pretrained=False, levels=None, steps=None, hidden=None, lu=None,
         learned_prior=True, data_shape=None, n_bits=None, preprocess=None, alpha=None,
         num_classes=None, class_couplings=None, coupling=None, bins=None, bound=None, dequantize=None):
    """Glow, as `FlowModel`. `levels` L, `steps` K per level, `hidden` the
    coupling width (an int, or a list with one width per level), `lu` the
    1x1-conv parametrisation, `preprocess` `"center"` or `"logit"` (with
    squashing `alpha`, default 0.05); `None` keeps the preset's value.
    Presets: see `PRESETS["glow"]`.

    `num_classes` makes it class-conditional, as openai/glow's
    y-conditioning: the class (integer labels `(batch,)`, the model's
    context) sets the mean and scale of the top prior
    (`distributions.ConditionalNormal`) and of every split prior (with
    `learned_prior=True`, the default), all zero-initialised, and with `class_couplings=True` it also feeds every
    coupling net. `model.log_prob(x, context=labels)`,
    `model.sample(n, context=labels)`. `pretrained=True` with
    `num_classes=10` loads the shipped class-conditional MNIST weights,
    trained from the unconditional ones (`tfflows.zoo.grow.condition_glow`);
    `class_couplings=None` (the default) then follows them (`False` without
    `pretrained`).

    `coupling="spline"` (with `bins`, default 8, and `bound`, default 3)
    uses rational-quadratic spline couplings instead of affine ones (NSF's
    Glow). `dequantize="variational"` gives the model a learned
    dequantizer (`tfflows.layers.VariationalDequantizer`, Flow++): it then
    takes integer pixel values and its bits/dim is the variational bound.

    With `pretrained=True`, `dequantize=None` (the default) follows the
    shipped weights: a model with the shipped dequantizer if they have one.
    `dequantize="uniform"` then gives the Glow shipped beside it that was
    trained with uniform noise (`glow-<preset>-uniform` in the presets
    table; for MNIST the run's stage before the dequantizer was added), a
    density on `[0, 1)^D` for uniformly dequantized floats: what the
    applications (`ood_score`, `inpaint`, ...) and the SavedModel export
    take. Its bits/dim is the uniform-noise bound, above the dequantizer's.
    (The dequantized model's flow alone is not that density: it was trained
    only where its dequantizer puts the noise.)"""
    config = _config("glow", preset, dict(levels=levels, steps=steps, hidden=hidden, lu=lu,
                                          data_shape=data_shape, n_bits=n_bits,
                                          preprocess=preprocess, alpha=alpha, coupling=coupling, bins=bins,
                                          bound=bound),
                     optional=("alpha", "coupling", "bins", "bound"))
    if config.get("coupling", "affine") != "spline" and ("bins" in config or "bound" in config):
        raise ValueError("glow bins and bound set the spline couplings: pass coupling='spline' too.")
    spline = dict(coupling=config.get("coupling", "affine"), bins=config.get("bins", 8),
                  bound=config.get("bound", 3.0))
    if "alpha" in config and config["preprocess"] != "logit":
        raise ValueError(f"glow alpha={config['alpha']} needs preprocess='logit'; "
                         f"this model uses preprocess={config['preprocess']!r}.")
    if num_classes is None:
        if class_couplings:
            raise ValueError("glow class_couplings=True needs num_classes (the classes to condition on).")
        key, dequantize = _shipped_key("glow", preset, pretrained, dequantize)
        flow = glow_flow(config["data_shape"], config["levels"], config["steps"], config["hidden"],
                         lu=config["lu"], learned_prior=learned_prior, preprocess=config["preprocess"],
                         alpha=config.get("alpha", 0.05), **spline)
        return _finish("glow", preset, config, flow, "normal", pretrained, dequantize, key=key)
    context_shape = _class_context("glow", num_classes)
    if class_couplings is None:  # follow the shipped weights
        class_couplings = bool(pretrained) and f"glow-{preset}-classes{num_classes}-couplings" in read_manifest()
    key, dequantize = _class_key("glow", preset, num_classes, "-couplings" if class_couplings else "", pretrained,
                                 dequantize, f"class_couplings={class_couplings}")
    flow = glow_flow(config["data_shape"], config["levels"], config["steps"], config["hidden"],
                     lu=config["lu"], learned_prior=learned_prior, preprocess=config["preprocess"],
                     alpha=config.get("alpha", 0.05), context_shape=context_shape,
                     class_couplings=class_couplings, **spline)
    return _finish("glow", preset, dict(config, class_couplings=bool(class_couplings)), flow,
                   distributions.ConditionalNormal(context_shape, name="prior"), pretrained, dequantize, key,
                   num_classes)


def _class_context(model_name, num_classes):
    """The context shape `(K,)` of a class-conditional image model, after checking `num_classes`."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"{model_name} num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
    return (int(num_classes),)


def _class_key(model_name, preset, num_classes, suffix, pretrained, dequantize, asked):
    """`(key, dequantize)` of the shipped class-conditional weights
    `<model>-<preset>-classes<K><suffix>`; with `pretrained`, refuses (naming
    what ships) when none ship for these settings."""
    key = f"{model_name}-{preset}-classes{num_classes}{suffix}"
    if pretrained and key not in read_manifest():
        shipped = sorted(k for k in read_manifest() if k.startswith(f"{model_name}-{preset}-classes"))
        raise WeightsError(f"No class-conditional {model_name} {preset!r} weights ship with num_classes={num_classes}"
                           f", {asked}; shipped: {shipped or 'none'}. Use pretrained=False, or the shipped settings.")
    return _shipped_key(model_name, preset, pretrained, dequantize, key=key)


def realnvp(preset="mnist", pretrained=False, levels=None, steps=None, hidden=None, alpha=None,
            data_shape=None, n_bits=None, context_dim=None, dequantize=None, num_classes=None):
    """RealNVP, as `FlowModel`. `levels` scales, `steps` couplings per block,
    `hidden` the coupling width, `alpha` the logit squashing.
    `dequantize="variational"` adds a learned dequantizer, and with
    `pretrained=True` `dequantize` follows the shipped weights, as in `glow`.
    `num_classes` makes it class-conditional: the class (integer labels
    `(batch,)`, the model's context) sets the mean and scale of the prior
    (`distributions.ConditionalNormal`) and feeds every coupling net, all
    zero-initialised (`tfflows.zoo.grow.condition_glow` copies a trained
    RealNVP into it).

    With a vector `data_shape=(dim,)` it is RealNVP for continuous vectors
    (`n_bits=None`, loss in nats): `2 * steps` affine couplings over
    alternating halves, each after an ActNorm, conditional on a
    `(batch, context_dim)` context if `context_dim` is given."""
    if data_shape is not None and len(tuple(data_shape)) == 1:
        from tfflows.zoo import vectors

        config = _config("realnvp", preset, dict(steps=steps, hidden=hidden))
        if pretrained:
            raise WeightsError("No pretrained weights ship for a vector RealNVP.")
        if num_classes is not None:
            raise ValueError("realnvp num_classes is for images; a vector RealNVP takes a context_dim context.")
        if dequantize is not None:
            raise ValueError("realnvp dequantize is for images; a vector RealNVP takes continuous vectors.")
        dim = int(tuple(data_shape)[0])
        context_shape = vectors.check_sizes("realnvp", dim, 2 * config["steps"], context_dim)
        flow = vectors.realnvp_vector_flow(dim, 2 * config["steps"], config["hidden"], context_shape)
        return FlowModel(flow, data_shape=(dim,), n_bits=n_bits, context_shape=context_shape, name="realnvp")
    if context_dim is not None:
        raise ValueError("realnvp context_dim is for vector data (data_shape=(dim,)); image RealNVP is unconditional.")
    config = _config("realnvp", preset, dict(levels=levels, steps=steps, hidden=hidden, alpha=alpha,
                                             data_shape=data_shape, n_bits=n_bits))
    if num_classes is None:
        key, dequantize = _shipped_key("realnvp", preset, pretrained, dequantize)
        flow = realnvp_flow(config["data_shape"], config["levels"], config["steps"], config["hidden"],
                            alpha=config["alpha"])
        return _finish("realnvp", preset, config, flow, "normal", pretrained, dequantize, key=key)
    context_shape = _class_context("realnvp", num_classes)
    key, dequantize = _class_key("realnvp", preset, num_classes, "", pretrained, dequantize, "every coupling "
                                 "conditional")
    flow = realnvp_flow(config["data_shape"], config["levels"], config["steps"], config["hidden"],
                        alpha=config["alpha"], context_shape=context_shape)
    return _finish("realnvp", preset, config, flow, distributions.ConditionalNormal(context_shape, name="prior"),
                   pretrained, dequantize, key, num_classes)


def nice(preset="mnist", pretrained=False, couplings=None, hidden=None, depth=None, base=None,
         data_shape=None, n_bits=None, dequantize=None):
    """NICE, as `FlowModel`: `couplings` additive layers with MLPs of
    `depth` x `hidden`, a diagonal scaling and a logistic prior.
    `dequantize` as in `glow`."""
    config = _config("nice", preset, dict(couplings=couplings, hidden=hidden, depth=depth, base=base,
                                          data_shape=data_shape, n_bits=n_bits))
    key, dequantize = _shipped_key("nice", preset, pretrained, dequantize)
    flow = nice_flow(config["data_shape"], config["couplings"], config["hidden"], config["depth"])
    return _finish("nice", preset, config, flow, config["base"], pretrained, dequantize, key=key)


BUILDERS = {"glow": glow, "realnvp": realnvp, "nice": nice}


def builder_kwargs(model_name, overrides):
    """The builder keywords of the CLI's architecture `overrides` (`--steps`,
    `--hidden`, `--arch KEY=VALUE`...): NICE's K is `couplings`; everything
    else passes through."""
    if model_name not in BUILDERS:
        raise ValueError(f"Unknown model {model_name!r}; choose one of {sorted(BUILDERS)}.")
    if "preprocess" in overrides and model_name != "glow":
        raise ValueError(f"--preprocess applies to --model glow, not {model_name} "
                         f"(realnvp always uses the logit transform, nice none).")
    if model_name == "nice":
        mapped = {k: v for k, v in overrides.items() if k != "steps"}
        if "steps" in overrides:
            mapped["couplings"] = overrides["steps"]
        return mapped
    return dict(overrides)


def build(model_name, preset, overrides=None, pretrained=False):
    """The zoo model `model_name` (`"glow"`, `"realnvp"`, `"nice"`) with the
    preset and the architecture overrides a `tfflows train` run records in
    its `config.json`."""
    return BUILDERS[model_name](preset=preset, pretrained=pretrained,
                                **builder_kwargs(model_name, dict(overrides or {})))


# -- shipped weights -------------------------------------------------------------
def load_pretrained(model, key, config=None, weights_dir=None):
    entry = read_manifest().get(key, {})
    path = verified_weights_path(key, weights_dir)
    arch = entry.get("architecture")
    if arch and config:
        mismatch = architecture_mismatch(arch, config)
        if mismatch:
            raise WeightsError(
                f"Pretrained {key!r} weights were trained with a different architecture: "
                f"{ {k: f'shipped {a}, asked {b}' for k, (a, b) in mismatch.items()} }. "
                f"Drop the overrides or use pretrained=False."
            )
    model.load_weights(path)
    return model


def architecture_mismatch(a, b, missing="default"):
    """`{key: (a's value, b's value)}` for every architecture key (but
    `n_bits`, which the weights do not depend on) where two architecture
    dicts differ. A key on one side only (e.g. glow's optional `alpha`) means
    that side used the builder's default, shown as `missing`: a mismatch
    when the other side set it. Lists and tuples compare equal."""
    keys = (set(a) | set(b)) - {"n_bits"}
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(keys)
            if list(_as_list(a.get(k, missing))) != list(_as_list(b.get(k, missing)))}


def _as_list(v):
    return v if isinstance(v, (list, tuple)) else [v]


