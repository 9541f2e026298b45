"""Deepen or widen a trained Glow without changing the function it computes.

`deepen_glow(old, new)` copies a trained zoo Glow with K steps per level
into a zoo Glow with K' steps per level, K < K' <= 2K, inserting one new
step before K' - K of the trained ones, spread evenly (before every one
for K' = 2K, before every other one for K' = 3K/2). The new model
computes exactly the same density (up to float32 rounding), so training
continues from the old model's bits/dim with more depth, instead of from
scratch:

- the new step's ActNorm is the identity, its invertible 1x1 conv keeps
  its random rotation `R`, and its affine coupling's net ends in a
  zero-initialised conv, so the coupling is a fixed channel scaling `D`
  (shift 0, scale `sigmoid(2)` on the transformed half): at the start the
  whole new step is the linear map `M = D R`;
- the trained step after it absorbs `M^-1`: with the trained ActNorm
  `(x + loc) * s` and 1x1 conv `W`, it becomes ActNorm `(u + M loc) * 1`
  and 1x1 conv `W diag(s) M^-1`, so `W' A'(M x) = W diag(s) (x + loc)`,
  and the log-dets add up to the old one.

The new couplings then learn from zero while the trained ones keep
going (net2net-style growth, Chen et al. 2016,
https://arxiv.org/abs/1511.05641).

`widen_glow(old, new)` copies it into a Glow with wider coupling nets
(`hidden` H > h), again with the same density: each net's old units keep
their weights; the new units of the first conv keep their random init;
the second conv's new units read every unit (random init) but the old
units do not read the new ones (zeros); the last conv does not read the
new units (zeros). The new units' outputs therefore start at zero weight
and get gradients from the first step (net2net's wider net, with zeros in
place of Chen et al.'s replicated units).

Command line (writes a `.weights.h5` for `tfflows train --steps K'
--init-from FILE`, K' = 2K unless `--deepen K'` says otherwise, or with
`--widen H` for `tfflows train --hidden H`; `--widen 160,128` gives one
width per level, for `tfflows train --arch 'hidden=(160,128)'`):

    python -m tfflows.zoo.grow --preset mnist --from pretrained --out grown.weights.h5
    python -m tfflows.zoo.grow --preset mnist --from pretrained --deepen 64 --out k64.weights.h5
    python -m tfflows.zoo.grow --preset mnist --from pretrained --widen 176,128 --out wide.weights.h5
    python -m tfflows.zoo.grow --preset mnist --hidden 128 --from k48.weights.h5 --widen 160,128 \
        --out wide1.weights.h5   # the shipped model's last growth, from the width-128 stage-13 file

`add_dequantizer(old, new)` (`--dequantize variational`) copies a trained
zoo model (Glow, RealNVP or NICE, `--model`) into the same model with a
learned dequantizer (Flow++), which starts near uniform noise, so
training goes on from the old bits/dim:

    python -m tfflows.zoo.grow --preset mnist --from pretrained --dequantize variational \
        --out vd.weights.h5   # then tfflows train ... --arch dequantize=variational --init-from vd.weights.h5
    python -m tfflows.zoo.grow --model realnvp --preset mnist --from pretrained --dequantize variational \
        --out realnvp-vd.weights.h5

The new units' random init follows `--seed` (default 0): the same command
writes the same file.
"""

import argparse
import re

import numpy as np

_STEP = re.compile(r"^(actnorm|invconv|coupling)(\d+)_(\d+)$")


def _np(v):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(v), dtype="float64")


def _steps_per_level(model):
    ks = {}
    for layer in model.flow.flow_layers:
        m = _STEP.match(layer.name)
        if m and m.group(1) == "coupling":
            ks.setdefault(int(m.group(2)), set()).add(int(m.group(3)))
    if not ks:
        raise ValueError(f"{model.name} has no Glow steps (layers named coupling<level>_<k>); "
                         f"deepen_glow takes models built by tfflows.zoo.glow().")
    counts = {len(v) for v in ks.values()}
    if len(counts) != 1:
        raise ValueError(f"{model.name} has different step counts per level: "
                         f"{ {i: len(v) for i, v in sorted(ks.items())} }.")
    return len(ks), counts.pop()


def _set_1x1(layer, w):
    """Sets an Invertible1x1Conv's parameters so that `layer.weight() == w`."""
    from tfflows.layers.linear import lu_decompose

    if not layer.lu:
        layer.kernel.assign(w.astype("float32"))
        return
    p, l, u = lu_decompose(w)
    s = np.diag(u)
    if np.any(s == 0):
        raise ValueError(f"{layer.name}: the folded 1x1 conv is singular.")
    layer.permutation.assign(p.astype("float32"))
    layer.sign_s.assign(np.sign(s).astype("float32"))
    layer.lower.assign(np.tril(l, -1).astype("float32"))
    layer.upper.assign(np.triu(u, 1).astype("float32"))
    layer.log_s.assign(np.log(np.abs(s)).astype("float32"))


def _step_matrix(*layers):
    """The `(C, C)` matrix of a step that is linear and the same at every
    position (an inserted step at init): column k is its output for e_k."""
    shape = layers[0].built_input_shape
    c = shape[-1]
    h = np.broadcast_to(np.eye(c, dtype="float32")[:, None, None, :], (c,) + tuple(shape[1:-1]) + (c,))
    for layer in layers:
        h, _ = layer.forward(h)
    out = _np(h)
    if not np.allclose(out, out[:, :1, :1, :], atol=1e-6):
        raise ValueError(f"{layers[-1].name}: the inserted step is not position-independent at init.")
    return out[:, 0, 0, :].T


def _built_and_trained(old, new, sample, verb):
    """Builds both models on `sample` (if given) and checks that they are
    built and that `old`'s ActNorms hold trained (initialised) values."""
    if sample is not None:
        for m in (old, new):
            labels = None if getattr(m, "num_classes", None) is None else np.zeros(len(sample), "int32")
            m.log_prob(sample, context=labels)
    for m in (old, new):
        if not m.flow.built:
            raise ValueError(f"{m.name} is not built; pass sample=a batch of data.")
    if old.needs_initialization:
        raise ValueError(f"{old.name} has ActNorm layers that were never initialised: {verb} a trained "
                         f"(or loaded) model, not a fresh one.")


def _paired_layers(old, new, beyond):
    """`(layer of new, same-named layer of old)` for every flow layer of
    `new`; raises if `old` lacks one of the same type (the models differ
    beyond `beyond`)."""
    old_layers = {layer.name: layer for layer in old.flow.flow_layers}
    for layer in new.flow.flow_layers:
        src = old_layers.get(layer.name)
        if src is None or type(src) is not type(layer):
            raise ValueError(f"{old.name} has no layer {layer.name!r} of type {type(layer).__name__}: "
                             f"the two models differ beyond {beyond}.")
        yield layer, src


def inserted_before(k_old, k_new):
    """The trained steps (0-based, per level) that `deepen_glow` inserts a
    new step before, going from `k_old` to `k_new` steps per level: the
    `k_new - k_old` of them spread evenly, all of them for `k_new = 2 k_old`."""
    if not k_old < k_new <= 2 * k_old:
        raise ValueError(f"deepen_glow grows K={k_old} steps per level to between {k_old + 1} and "
                         f"{2 * k_old} (at most one new step before each trained one); got K={k_new}.")
    n = k_new - k_old
    return [j for j in range(k_old) if (j + 1) * n // k_old > j * n // k_old]


def deepen_glow(old, new, sample=None):
    """Copies trained Glow `old` (K steps per level) into `new` (K' steps
    per level, K < K' <= 2K, same levels, width and preprocessing), so that
    `new` computes the same density: a new step goes before each of the
    trained steps `inserted_before(K, K')`. Both are `tfflows.zoo.glow()`
    models; they are built on `sample` (a batch of data in [0, 1)) if not
    built yet. Returns `new`."""
    levels, k_old = _steps_per_level(old)
    levels_new, k_new = _steps_per_level(new)
    _built_and_trained(old, new, sample, "deepen")
    if levels_new != levels or not k_old < k_new <= 2 * k_old:
        raise ValueError(f"deepen_glow needs a new model with {levels} levels of {k_old + 1} to "
                         f"{2 * k_old} steps (more than {k_old}, at most twice); got {levels_new} "
                         f"levels of {k_new}.")
    before = set(inserted_before(k_old, k_new))
    old_layers = {layer.name: layer for layer in old.flow.flow_layers}
    new_layers = {layer.name: layer for layer in new.flow.flow_layers}

    # Everything but the steps (preprocessing, squeezes, split priors): as is.
    for name, layer in new_layers.items():
        if _STEP.match(name):
            continue
        if name not in old_layers:
            raise ValueError(f"{old.name} has no layer {name!r}: the two models differ beyond depth.")
        layer.set_weights(old_layers[name].get_weights())

    for i in range(levels):
        t = 0  # the next step of `new` at this level
        for j in range(k_old):
            a_old, w_old, c_old = (old_layers[f"{kind}{i}_{j}"] for kind in ("actnorm", "invconv", "coupling"))
            insert = j in before
            a_new, w_new, c_new = (new_layers[f"{kind}{i}_{t + insert}"]
                                   for kind in ("actnorm", "invconv", "coupling"))
            if c_new.hidden != c_old.hidden:
                raise ValueError(f"deepen_glow needs the same coupling width: {c_old.hidden} vs {c_new.hidden}.")
            for attr in ("mask", "reverse", "scale"):
                if getattr(c_new, attr) != getattr(c_old, attr):
                    raise ValueError(f"{c_new.name} and {c_old.name} differ in {attr}: "
                                     f"{getattr(c_old, attr)!r} vs {getattr(c_new, attr)!r}.")
            c_new.set_weights(c_old.get_weights())
            t += 1 + insert
            if not insert:
                a_new.set_weights(a_old.get_weights())
                w_new.set_weights(w_old.get_weights())
                continue
            a_ins, w_ins, c_ins = (new_layers[f"{kind}{i}_{t - 2}"] for kind in ("actnorm", "invconv", "coupling"))
            # The inserted step: identity ActNorm, random rotation R, identity coupling.
            a_ins.loc.assign(np.zeros(a_ins.loc.shape, "float32"))
            a_ins.log_scale.assign(np.zeros(a_ins.log_scale.shape, "float32"))
            a_ins.initialized.assign(1.0)
            last = c_ins.net.get_weights()
            if np.any(last[-2]) or np.any(last[-1]):
                raise ValueError(f"{c_ins.name}: its net's last layer is not zero-initialised, "
                                 f"so it is not the identity.")
            r = _step_matrix(a_ins, w_ins, c_ins)
            # The trained step absorbs M^-1.
            loc, s = _np(a_old.loc), np.exp(_np(a_old.log_scale))
            a_new.loc.assign((r @ loc).astype("float32"))
            a_new.log_scale.assign(np.zeros(loc.shape, "float32"))
            a_new.initialized.assign(1.0)
            _set_1x1(w_new, _np(w_old.weight()) @ np.diag(s) @ np.linalg.inv(r))
    return new


def widen_glow(old, new, sample=None):
    """Copies trained Glow `old` into `new`, a Glow with the same levels and
    steps and wider coupling nets (`hidden` larger), so that `new` computes
    the same density. Built on `sample` if not built yet. Returns `new`."""
    _built_and_trained(old, new, sample, "widen")
    shape_old, shape_new = _steps_per_level(old), _steps_per_level(new)
    if shape_old != shape_new:
        raise ValueError(f"widen_glow needs the same levels and steps: {shape_old} (levels, K) "
                         f"vs {shape_new}.")
    for layer, src in _paired_layers(old, new, "width"):
        if not (_STEP.match(layer.name) and layer.name.startswith("coupling")):
            layer.set_weights(src.get_weights())
            continue
        h, wide = src.hidden, layer.hidden
        if wide < h:
            raise ValueError(f"widen_glow: {layer.name} would narrow from {h} to {wide} units.")
        for attr in ("mask", "reverse", "scale"):
            if getattr(layer, attr) != getattr(src, attr):
                raise ValueError(f"{layer.name} differs in {attr}: {getattr(src, attr)!r} vs "
                                 f"{getattr(layer, attr)!r}.")
        o, n = src.net, layer.net
        k1, b1 = (_np(v) for v in (n.conv1.kernel, n.conv1.bias))
        k1[..., :h], b1[:h] = _np(o.conv1.kernel), _np(o.conv1.bias)
        k2, b2 = (_np(v) for v in (n.conv2.kernel, n.conv2.bias))
        k2[..., h:, :h] = 0.0  # the old units do not read the new ones
        k2[..., :h, :h], b2[:h] = _np(o.conv2.kernel), _np(o.conv2.bias)
        k3 = _np(n.conv3.kernel)
        k3[..., :h, :] = _np(o.conv3.kernel)
        k3[..., h:, :] = 0.0  # the output does not read the new units (yet)
        for var, val in ((n.conv1.kernel, k1), (n.conv1.bias, b1), (n.conv2.kernel, k2), (n.conv2.bias, b2),
                         (n.conv3.kernel, k3), (n.conv3.bias, _np(o.conv3.bias))):
            var.assign(val.astype("float32"))
        # Anything of the coupling's own beyond its net (e.g. RealNVP's scale factor): as is.
        new_net, old_net = {id(v) for v in n.weights}, {id(v) for v in o.weights}
        own_new = [v for v in layer.weights if id(v) not in new_net]
        own_old = [v for v in src.weights if id(v) not in old_net]
        for var, val in zip(own_new, own_old):
            var.assign(_np(val).astype("float32"))
    return new


def condition_glow(old, new, sample=None):
    """Copies trained unconditional Glow `old` into `new`, the same Glow made
    class-conditional (`tfflows.zoo.glow(..., num_classes=K)`; a RealNVP
    into `tfflows.zoo.realnvp(..., num_classes=K)` alike), so that
    `new.log_prob(x, context=y)` equals `old.log_prob(x)` for every class
    `y` at the start. Every weight is copied; where `new`'s conditioner
    reads the one-hot class as extra input channels (split priors, and the
    coupling nets with `class_couplings`) those channels' kernel rows are
    zero, and the class prior (`ConditionalNormal`) starts at N(0, I), so
    the class starts out without effect and training on labelled data
    teaches it. Returns `new`."""
    _built_and_trained(old, new, sample, "condition")
    if old.context_shape is not None:
        raise ValueError(f"condition_glow copies an unconditional Glow; {old.name} already has a context.")
    if getattr(new, "num_classes", None) is None:
        raise ValueError(f"condition_glow copies into a class-conditional Glow (num_classes set); "
                         f"{new.name} has none.")
    for layer, src in _paired_layers(old, new, "the class conditioning"):
        if len(src.weights) != len(layer.weights):
            raise ValueError(f"{layer.name}: {len(src.weights)} weights in {old.name}, "
                             f"{len(layer.weights)} in {new.name}.")
        for var_old, var_new in zip(src.weights, layer.weights):
            value = _np(var_old)
            shape = tuple(var_new.shape)
            if value.shape != shape:
                extra = shape[-2] - value.shape[-2] if len(shape) >= 2 and len(shape) == value.ndim else -1
                if extra != new.num_classes or value.shape[:-2] + value.shape[-1:] != shape[:-2] + shape[-1:]:
                    raise ValueError(f"{layer.name}: weight {var_new.path} has shape {shape} in {new.name} "
                                     f"and {value.shape} in {old.name}; only the class's input channels "
                                     f"may differ.")
                value = np.concatenate([value, np.zeros(value.shape[:-2] + (extra,) + value.shape[-1:])], axis=-2)
            var_new.assign(value.astype(keras_dtype(var_new)))
    for var in new.base.weights:
        var.assign(np.zeros(tuple(var.shape), dtype=keras_dtype(var)))
    return new


def add_dequantizer(old, new, sample=None):
    """Copies trained zoo model `old` (uniform dequantization; Glow, RealNVP
    or NICE) into `new`, the same model with a learned dequantizer
    (`tfflows.zoo.glow(..., dequantize="variational")`, Flow++'s variational dequantization, Ho et
    al. 2019): every flow and prior weight is copied, so `new`'s flow gives
    `old`'s density on `[0, 1)^D`, and the dequantizer keeps its fresh init
    (noise `sigmoid(1.702 eps)`, `eps ~ N(0, I)`, near uniform)
    for training to fit `q(u | x)` to the trained flow. `sample` is a batch
    of pixel values (0..255) to build both models on. Returns `new`."""
    if getattr(old, "dequantizer", None) is not None or getattr(new, "dequantizer", None) is None:
        raise ValueError(f"add_dequantizer copies a model without a dequantizer into one with a dequantizer; "
                         f"got {old.name} -> {new.name}.")
    if sample is not None:
        x = np.asarray(sample)
        old.log_prob((x.astype("float32") + 0.5) / float(2 ** old.n_bits))
        new.log_prob(x)
    for m in (old, new):
        if not m.flow.built:
            raise ValueError(f"{m.name} is not built; pass sample=a batch of pixel values.")
    if old.needs_initialization:
        raise ValueError(f"{old.name} has ActNorm layers that were never initialised: add a dequantizer to a "
                         f"trained (or loaded) model, not a fresh one.")
    from tfflows.zoo.builders import copy_flow_weights

    list(_paired_layers(old, new, "the dequantizer"))  # raises unless same layers, names and types
    return copy_flow_weights(old, new)


def keras_dtype(var):
    import keras

    return keras.backend.standardize_dtype(var.dtype)


def _width_arg(text):
    """`"160"` -> 160, `"160,128"` -> [160, 128] (one coupling width per level)."""
    try:
        parts = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a width is an int or ints per level as 160,128; got {text!r}")
    if any(w < 1 for w in parts):
        raise argparse.ArgumentTypeError(f"widths must be positive; got {text!r}")
    return parts[0] if len(parts) == 1 else parts


def _width_text(h):
    return ",".join(str(w) for w in h) if isinstance(h, (list, tuple)) else str(h)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tfflows.zoo.grow", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("glow", "realnvp", "nice"), default="glow",
                   help="the zoo model (default: glow); RealNVP and NICE take --dequantize only")
    p.add_argument("--preset", default="mnist")
    p.add_argument("--from", dest="source", default="pretrained",
                   help="'pretrained' (the shipped weights; where those have a learned dequantizer, the "
                        "uniform-noise weights shipped beside them) or a .weights.h5 file of the preset "
                        "(default: pretrained)")
    p.add_argument("--steps", type=int, default=None, help="K of the source model (default: the preset's)")
    p.add_argument("--hidden", type=_width_arg, default=None,
                   help="coupling width of the source model, one int or one per level as 160,128 "
                        "(default: the preset's)")
    p.add_argument("--deepen", type=int, default=None, metavar="K'",
                   help="steps per level of the grown model, more than K and at most 2K (default: 2K)")
    p.add_argument("--widen", type=_width_arg, default=None, metavar="H",
                   help="widen the coupling nets to H units (same depth) instead of deepening; "
                        "one width per level as 160,128 widens only the first level")
    p.add_argument("--dequantize", choices=("variational",), default=None,
                   help="add a learned dequantizer (same flow, same weights) instead of deepening")
    p.add_argument("--data", default="mnist", help="images to check the two models on (test split)")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--out", required=True, help="where to write the grown model's .weights.h5")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the new units' random init (and the new steps' rotations): the same "
                        "command writes the same file")
    args = p.parse_args(argv)
    if args.dequantize is not None and (args.widen is not None or args.deepen is not None):
        raise SystemExit("tfflows.zoo.grow: give --dequantize alone (not with --deepen or --widen).")
    if args.model != "glow" and args.dequantize is None:
        raise SystemExit(f"tfflows.zoo.grow: --model {args.model} takes --dequantize variational only "
                         f"(deepen and widen are for Glow).")
    import keras

    keras.utils.set_random_seed(args.seed)

    from tfflows import training
    from tfflows.zoo import builders
    from tfflows.zoo import data as zdata

    # Uniform noise (the shipped weights with a learned dequantizer come with uniform-noise ones; those
    # are grown, and --dequantize adds a fresh dequantizer).
    if args.preset not in builders.PRESETS[args.model]:
        raise SystemExit(f"tfflows.zoo.grow: unknown {args.model} preset {args.preset!r}.")
    arch = {k: v for k, v in (("steps", args.steps), ("hidden", args.hidden)) if v is not None}
    old = builders.build(args.model, args.preset, dict(arch, dequantize="uniform"),
                         pretrained=args.source == "pretrained")
    k = args.steps or builders.PRESETS[args.model][args.preset].get(
        "couplings" if args.model == "nice" else "steps")
    h = args.hidden or builders.PRESETS[args.model][args.preset]["hidden"]
    if args.widen is not None:
        levels = builders.PRESETS["glow"][args.preset]["levels"]
        try:
            old_w, new_w = builders.glow_widths(h, levels), builders.glow_widths(args.widen, levels)
        except ValueError as err:
            raise SystemExit(f"tfflows.zoo.grow: {err}") from err
        if any(b < a for a, b in zip(old_w, new_w)) or old_w == new_w:
            raise SystemExit(f"tfflows.zoo.grow: --widen {_width_text(args.widen)} must exceed the source "
                             f"width {_width_text(h)} (per level: {old_w} -> {new_w}) at one level at least, "
                             f"and narrow none.")
    if args.widen is not None and args.deepen is not None:
        raise SystemExit("tfflows.zoo.grow: give --deepen or --widen, not both.")
    if args.deepen is not None and not k < args.deepen <= 2 * k:
        raise SystemExit(f"tfflows.zoo.grow: --deepen {args.deepen} must be more than the source's "
                         f"K={k} and at most {2 * k}.")
    images = zdata.load_arrays(args.data, "test", limit=args.limit)
    x = (images.astype("float32") + 0.5) / 256.0
    if args.dequantize is not None:
        return _add_dequantizer_main(args, old, k, h, images, x)
    k_new, h_new = (k, args.widen) if args.widen else (args.deepen or 2 * k, h)
    new = builders.glow(preset=args.preset, steps=k_new, hidden=h_new)
    _load_source(args, old, x)
    (widen_glow if args.widen else deepen_glow)(old, new, sample=x[:8])
    a, b = (_np(m.bits_per_dim(x)) for m in (old, new))
    diff = np.abs(a - b).max()
    print(f"bits/dim on {len(x)} test images (half-bin dequantization): K={k} hidden={_width_text(h)} "
          f"{a.mean():.5f}, K={k_new} hidden={_width_text(h_new)} {b.mean():.5f}; "
          f"largest per-image difference {diff:.2e}")
    if not diff < 1e-3:
        raise SystemExit(f"tfflows.zoo.grow: the grown model's bits/dim differ by up to "
                         f"{diff:.2e} from the source's; nothing written.")
    training.save_inference_weights(new, args.out)
    _print_train_hint(args, k_new, h_new)


def _load_source(args, old, x):
    """Builds `old` on `x` and loads `--from FILE` into it (the shipped weights are already in)."""
    old.log_prob(x[:8])
    if args.source != "pretrained":
        old.load_weights(args.source)


def _print_train_hint(args, k, h, extra=""):
    width = f"--hidden {h}" if not isinstance(h, (list, tuple)) else f"--arch 'hidden=({_width_text(h)})'"
    print(f"wrote {args.out}: train it with tfflows train --model {args.model} --preset {args.preset} "
          f"--steps {k} {width} {extra}--init-from {args.out}")


def _add_dequantizer_main(args, old, k, h, images, x):
    from keras import ops

    from tfflows import training
    from tfflows.zoo import builders

    new = builders.build(args.model, args.preset, dict(steps=k, hidden=h, dequantize="variational"))
    _load_source(args, old, x)
    add_dequantizer(old, new, sample=images[:8])
    # Same flow and prior: the same continuous density at the same points.
    a = _np(old.log_prob(x))
    z, log_det = new.flow.forward(ops.convert_to_tensor(x))
    b = _np(new.base.log_prob(z) + log_det)
    diff = np.abs(a - b).max()
    bound = _np(new.bits_per_dim(images)).mean()
    print(f"log p on {len(x)} test images: largest difference {diff:.2e} nats between the two flows; "
          f"bits/dim with uniform noise (half-bin) {_np(old.loss_from_log_prob(a)).mean():.5f}, "
          f"the variational bound with the fresh dequantizer (one draw) {bound:.5f}")
    if not diff < 1e-2:
        raise SystemExit(f"tfflows.zoo.grow: the copied flow's log p differs by up to {diff:.2e} nats from "
                         f"the source's; nothing written.")
    training.save_inference_weights(new, args.out)
    _print_train_hint(args, k, h, "--arch dequantize=variational ")


if __name__ == "__main__":
    main()
