"""`tfflows train | evaluate | sample | export | list`: the command line.

`tfflows train` with no arguments is the main job: it trains a small Glow
on the MNIST subset shipped in the package and writes samples, weights,
metrics and a SavedModel to `./tfflows_out`.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import threading
import time

# TensorFlow's C++ start-up log: absl lines (`I0000 00:00:... port.cc:153] oneDNN
# custom operations are on`, `E0000 ... failed call to cuInit` on a machine
# without a GPU, ...), written to fd 2 before any setting can silence them.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "
                      r"\S+:\d+\]|To enable the following instructions:|WARNING: Logging before InitGoogle)")


@contextlib.contextmanager
def quiet_tensorflow(pattern=TF_NOISE):
    """Drops TensorFlow's start-up log lines from this process's stderr (file
    descriptor 2, so C++ writes too) and passes every other line through.

    A no-op when stderr is not a real file (under pytest's capture, in a
    notebook).
    """
    try:
        fd = sys.stderr.fileno()
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, "rb") as src, os.fdopen(os.dup(saved), "wb", buffering=0) as dst:
            for line in src:
                if not pattern.match(line.decode("utf-8", "replace")):
                    dst.write(line)

    thread = threading.Thread(target=pump, name="tfflows-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(saved, fd)  # the pipe's last write end closes: the pump drains and ends
            os.close(saved)
            thread.join(timeout=10)


def _common_model_args(p, command):
    p.add_argument("--model", default="glow", choices=["glow", "realnvp", "nice"],
                   help="zoo architecture (default: %(default)s)")
    p.add_argument("--preset", default=None,
                   help="zoo preset: mnist, mnist-quick, mnist-tiny or cifar10 (see tfflows list; default: "
                        + ("mnist-quick, the few-minute main job)" if command == "train" else "mnist)"))
    p.add_argument("--levels", type=int, default=None, help="multi-scale levels (default: the preset's)")
    p.add_argument("--steps", type=int, default=None,
                   help="Glow's K per level, RealNVP's couplings per block, NICE's couplings (default: the preset's)")
    p.add_argument("--hidden", type=int, default=None, help="coupling net width (default: the preset's)")
    p.add_argument("--preprocess", default=None, choices=["center", "logit"],
                   help="glow only: x - 0.5 (Glow's) or RealNVP's logit transform (default: the preset's)")
    p.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other builder keyword, e.g. --arch lu=False --arch 'data_shape=(8,8,1)'; "
                        "repeatable (default: none)")
    if command != "train":
        p.add_argument("--run", default=None,
                       help="a tfflows train output folder: its config.json and model.weights.h5 (default: none)")
        p.add_argument("--weights", default=None,
                       help="a .weights.h5 file for --model/--preset, checksum-verified (default: none)")
        p.add_argument("--pretrained", action="store_true",
                       help="use the shipped weights of --model/--preset, sha256-checked (default: off)")
    p.add_argument("--backend", default=None, choices=["tensorflow", "jax"],
                   help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")


def build_parser():
    parser = argparse.ArgumentParser(prog="tfflows", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a flow (no arguments: the few-minute main job)",
                       description="Train a zoo flow on images within a budget, with resumable checkpoints, "
                                   "a test-bits/dim learning curve, and a run folder of outputs (--out).")
    _common_model_args(t, "train")
    t.add_argument("--data", default="mnist",
                   help="'mnist' (the embedded 8k/2k subset), an .npz path, an image folder, or a "
                        "tensorflow-datasets name (default: %(default)s)")
    t.add_argument("--test-data", default=None,
                   help="source of the test images for the learning curve and the final test bits/dim "
                        "(default: --data's test split). Training images are never used as test images: "
                        "when the source has no test split (an .npz with only x, images or arr_0; an image "
                        "folder), the curve and test bits/dim are skipped and the log and metrics.json say "
                        "so. 'holdout' holds out the last --eval-images training images instead (not "
                        "trained on; named in the log and metrics.json); an .npz or folder other than "
                        "--data gives its test split, or all its images if it has none")
    t.add_argument("--epochs", type=int, default=14, help="passes over the training images (default: %(default)s)")
    t.add_argument("--minutes", type=float, default=None,
                   help="wall-clock training budget for this run; stops with a checkpoint (default: none)")
    t.add_argument("--batch-size", type=int, default=64, help="images per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (default: %(default)s)")
    t.add_argument("--warmup-steps", type=int, default=200,
                   help="linear learning-rate warm-up steps (default: %(default)s)")
    t.add_argument("--decay", default="cosine", choices=["none", "cosine"],
                   help="learning-rate decay after the warm-up, to 5%% of --lr (default: %(default)s)")
    t.add_argument("--decay-steps", type=int, default=None,
                   help="length of the cosine decay in steps (default: the run's steps after the warm-up)")
    t.add_argument("--clipnorm", type=float, default=100.0, help="global gradient-norm clip (default: %(default)s)")
    t.add_argument("--ema", type=float, default=None, metavar="MOMENTUM",
                   help="keep a moving average of the weights (e.g. 0.999): the curve evaluates it "
                        "and the written weights are the average (default: off)")
    t.add_argument("--n-bits", type=int, default=8, help="bits per pixel kept, 1-8 (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and init (default: %(default)s)")
    t.add_argument("--out", default=None,
                   help="the run folder: weights, config, metrics, samples, checkpoints, SavedModel "
                        "(default: the --resume folder, else tfflows_out)")
    t.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its last checkpoint, with its training config (default: none)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its weights, config, metrics, samples, "
                        "checkpoints and SavedModel); without it such a folder is refused (default: off)")
    t.add_argument("--init-from", default=None,
                   help="start from a .weights.h5 file, or 'pretrained' for the shipped weights (default: none)")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0,
                   help="minutes between checkpoints (default: %(default)s)")
    t.add_argument("--eval-minutes", type=float, default=2.0,
                   help="training minutes between points of the test-bits/dim curve (default: %(default)s)")
    t.add_argument("--eval-images", type=int, default=2000,
                   help="test images for the curve and the final figure (default: %(default)s)")
    t.add_argument("--train-images", type=int, default=None, help="use only the first N training images (default: all)")
    t.add_argument("--jit", default="auto", choices=["auto", "on", "off"],
                   help="XLA-compile the train step (default: %(default)s, Keras' choice)")
    t.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker", "tpu"],
                   help="tf.distribute strategy (default: %(default)s, one device)")
    t.add_argument("--dtype", default="auto", choices=["auto", "float32", "mixed_bfloat16"],
                   help="mixed_bfloat16: coupling nets in bfloat16; weights, log-dets and loss float32. "
                        "auto (default): mixed_bfloat16 on the TF backend on a CPU with AVX512_BF16/AMX "
                        "(faster there, benchmarks/README.md), else float32")
    t.add_argument("--no-export", action="store_true", help="skip writing the SavedModel (default: off)")
    t.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                   help="0 quiet, 1 progress bar (one line per epoch when not on a terminal), "
                        "2 one line per epoch (default: %(default)s)")

    e = sub.add_parser("evaluate", help="test bits/dim over several dequantization draws",
                       description="Bits/dim of a model on a split, averaged over uniform dequantization draws, "
                                   "with the standard error over images.")
    _common_model_args(e, "evaluate")
    e.add_argument("--data", default="mnist",
                   help="'mnist' (embedded subset), an .npz path or an image folder (default: %(default)s)")
    e.add_argument("--split", default="test", help="split of --data (default: %(default)s)")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    e.add_argument("--draws", type=int, default=4, help="dequantization noise draws (default: %(default)s)")
    e.add_argument("--seed", type=int, default=1234, help="seed of the noise (default: %(default)s)")
    e.add_argument("--importance", type=int, default=None, metavar="K",
                   help="also the importance-weighted bound with K noise draws per image (Burda et al.), "
                        "tighter than the plain one; for learned (variational) or uniform dequantization "
                        "(default: off)")
    e.add_argument("--json", action="store_true", help="print one JSON line only (default: off)")

    s = sub.add_parser("sample", help="sample a grid at several temperatures",
                       description="A PNG grid of samples, one row per temperature, labelled.")
    _common_model_args(s, "sample")
    s.add_argument("--n", type=int, default=10, help="samples per temperature (default: %(default)s)")
    s.add_argument("--temperatures", default="0.5,0.7,1.0",
                   help="comma-separated temperatures, one row each (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the first row; row i uses seed + i (default: %(default)s)")
    s.add_argument("--out", default="samples.png", help="PNG file to write (default: %(default)s)")

    x = sub.add_parser("export", help="write a SavedModel for TF Serving",
                       description="A SavedModel for TF Serving in --out/<version>/ (signatures: docs/serving.md).")
    _common_model_args(x, "export")
    x.add_argument("--keras", default=None, metavar="PATH",
                   help="a whole saved model (.keras, loaded in Keras' safe mode) instead of --run/--weights "
                        "(default: none)")
    x.add_argument("--out", required=True, help="SavedModel base folder (a version folder goes inside; required)")
    x.add_argument("--version", type=int, default=None, help="version folder (default: the next free number)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing version folder (default: off)")

    sub.add_parser("list", help="list zoo models and presets: builder call, CLI flags, shipped weights",
                   description="Every zoo model and preset: its Python call, its CLI flags, whether weights "
                               "ship and their measured test bits/dim.")
    return parser


# -- helpers --------------------------------------------------------------------
def _log(msg):
    print(msg, flush=True)


def parse_arch(items):
    """`["hidden=8", "data_shape=(8,8,1)"]` -> `{"hidden": 8, "data_shape": (8, 8, 1)}`
    (Python literals; anything else stays a string)."""
    import ast

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arch takes KEY=VALUE. Received: --arch {item!r}")
        value = value.strip()
        words = {"true": True, "false": False, "none": None}
        if value.lower() in words:  # --arch lu=false as well as lu=False
            out[key.strip()] = words[value.lower()]
            continue
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _overrides(args):
    out = parse_arch(getattr(args, "arch", None))
    out.update({k: getattr(args, k) for k in ("levels", "steps", "hidden", "preprocess")
                if getattr(args, k, None) is not None})
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _note(msg):
    print(msg, file=sys.stderr, flush=True)


def load_model_from_args(args):
    """The model named by --run, --keras, or --model/--preset with --weights/--pretrained."""
    from tfflows.recipe import load_weights
    from tfflows.zoo import builders

    sources = [name for name, given in (("--run", args.run), ("--weights", args.weights),
                                        ("--pretrained", args.pretrained),
                                        ("--keras", getattr(args, "keras", None))) if given]
    if len(sources) > 1:
        raise ValueError(f"give one of --run, --weights, --pretrained, --keras; got {' and '.join(sources)}.")
    if getattr(args, "keras", None):
        given = [f"--{k}" for k in ("levels", "steps", "hidden", "preprocess") if getattr(args, k, None) is not None]
        given += ["--arch"] if args.arch else []
        given += ["--preset"] if args.preset else []
        if given:
            raise ValueError(f"--keras loads a whole model with its architecture; drop {' '.join(given)}.")
        import keras

        from tfflows import models  # noqa: F401  (registers the tfflows classes)

        if not os.path.exists(args.keras):
            raise FileNotFoundError(f"model file {args.keras} not found")
        model = keras.saving.load_model(args.keras, compile=False, safe_mode=True)
        return model, dict(model=type(model).__name__, preset=None, overrides={})
    if args.run:
        with open(os.path.join(args.run, "config.json")) as f:
            cfg = json.load(f)
        model = builders.build(cfg["model"], cfg["preset"], cfg.get("overrides", {}))
        load_weights(model, os.path.join(args.run, "model.weights.h5"), f"the run's {cfg['model']}", _note)
        return model, cfg
    preset = args.preset or "mnist"
    cfg = dict(model=args.model, preset=preset, overrides=_overrides(args))
    model = builders.build(args.model, preset, cfg["overrides"], pretrained=args.pretrained)
    if args.weights:
        load_weights(model, args.weights, f"--model {args.model} --preset {preset} with overrides "
                                          f"{cfg['overrides'] or 'none'} (pass the training architecture)", _note)
    elif not args.pretrained:
        raise SystemExit("tfflows: give --run DIR, --weights FILE, --pretrained"
                         + (" or --keras FILE." if hasattr(args, "keras") else "."))
    return model, cfg


# -- commands --------------------------------------------------------------------
def train_options(args):
    """The `TrainOptions` of parsed `tfflows train` arguments."""
    import dataclasses

    from tfflows.recipe import TrainOptions

    fields = {f.name for f in dataclasses.fields(TrainOptions)} - {"overrides"}
    return TrainOptions(overrides=_overrides(args), **{k: getattr(args, k) for k in fields})


def cmd_train(args):
    from tfflows import recipe
    from tfflows.models import TrainingDivergedError

    try:
        return recipe.train(train_options(args), log=_log)
    except TrainingDivergedError as err:
        _error("train", str(err))
        return 2


def cmd_evaluate(args):
    from tfflows import training
    from tfflows.zoo import data as zdata

    model, cfg = load_model_from_args(args)
    images = zdata.load_arrays(args.data, args.split, limit=args.limit)
    mean, se, draws = training.evaluate_bpd(model, images, draws=args.draws, seed=args.seed, n_bits=model.n_bits)
    result = dict(model=cfg["model"], preset=cfg["preset"], data=args.data, split=args.split,
                  images=int(images.shape[0]), draws=args.draws, bpd=round(mean, 5), stderr=round(se, 5),
                  per_draw=[round(d, 6) for d in draws])
    learned = getattr(model, "dequantizer", None) is not None
    result["dequantization"] = "variational" if learned else "uniform"
    if not args.json:
        _log(f"test bits/dim {mean:.4f} ± {se:.4f} (standard error over {images.shape[0]} images, "
             f"{args.draws} {'draws of the learned dequantizer: its variational bound' if learned else 'noise draws'})")
    if args.importance is not None:
        if args.importance < 1:
            raise ValueError(f"--importance needs K >= 1. Received: {args.importance}")
        if model.n_bits is None:
            raise ValueError("--importance bounds the likelihood of discrete images; this model is continuous.")
        import numpy as np

        u8 = images if images.ndim == 4 else images[..., None]
        pixels = np.right_shift(u8.astype(np.int32), 8 - model.n_bits)
        iw = np.concatenate([model.dequantized_bound(pixels[i:i + 100], draws=args.importance, importance=True,
                                                     seed=args.seed + i) for i in range(0, len(pixels), 100)])
        result.update(importance_k=args.importance, importance_bpd=round(float(iw.mean()), 5),
                      importance_stderr=round(float(iw.std(ddof=1) / np.sqrt(len(iw))) if len(iw) > 1 else 0.0, 5))
        if not args.json:
            _log(f"importance-weighted bound, K = {args.importance}: {iw.mean():.4f} ± {result['importance_stderr']:.4f}")
    print(json.dumps(result))
    return result


def cmd_sample(args):
    from tfflows.images import write_samples

    model, _ = load_model_from_args(args)
    temps = [float(t) for t in args.temperatures.split(",")]
    write_samples(model, args.out, temps, n=args.n, seed=args.seed)
    _log(f"wrote {args.out} ({len(temps)} rows x {args.n}, temperatures {temps})")


def cmd_export(args):
    from tfflows import export

    model, _ = load_model_from_args(args)
    start = time.time()
    path = export.save(model, args.out, version=args.version, overwrite=args.overwrite)
    _log(f"wrote SavedModel {path} ({model.name}, {time.time() - start:.1f} s)")
    for name, spec in export.signature_specs(model).items():
        ins = ", ".join(f"{k}: {d}{list(s)}" for k, (d, s) in spec["inputs"].items())
        outs = ", ".join(f"{k}: {d}{list(s)}" for k, (d, s) in spec["outputs"].items())
        _log(f"  {name}({ins}) -> {outs}")
    _log(f"serve with: tensorflow_model_server --model_name={model.name} "
         f"--model_base_path={os.path.abspath(args.out)} --rest_api_port=8501")


VECTOR_BUILDERS = (
    ("tfflows.zoo.maf(dim, flows=5, hidden=(64, 64), context_dim=None)", "MAF for vectors"),
    ("tfflows.zoo.iaf(dim, flows=5, hidden=(64, 64), context_dim=None)", "IAF for vectors"),
    ("tfflows.zoo.nsf(dim, kind='coupling', flows=5, bins=8)", "neural spline flow for vectors"),
    ("tfflows.zoo.realnvp(data_shape=(dim,))", "RealNVP for vectors"),
)
VI_BUILDERS = (
    ("tfflows.zoo.planar(dim, flows=8, context_dim=None)", "planar flow (Rezende & Mohamed 2015)"),
    ("tfflows.zoo.radial(dim, flows=8, context_dim=None)", "radial flow (Rezende & Mohamed 2015)"),
    ("tfflows.zoo.sylvester(dim, flows=4, kind='orthogonal', m=None)", "O/H/T-Sylvester flow (van den Berg 2018)"),
    ("tfflows.zoo.householder(dim, flows=1, n_reflections=None)", "Householder flow (Tomczak & Welling 2016)"),
    ("tfflows.zoo.vae(posterior='gaussian', latent_dim=64)", "VAE with a flow posterior (tfflows.vae)"),
)


def cmd_list(args):
    from tfflows.zoo.presets import list_models

    rows = list_models()
    width = max(len(r["call"]) for r in rows)
    flags = max(len(r["flags"]) for r in rows)
    print(f"{'Python':{width}s}  {'tfflows CLI':{flags}s}  shipped weights and their measured test figures")
    for row in rows:
        m = row["metrics"]
        if row["pretrained"] and row["test_bpd"] is not None:
            what = (f"shipped: {row['test_bpd']:.4f} ± {row['test_bpd_stderr']:.4f} bits/dim on MNIST's 10k "
                    f"test images (card: {row['card']})")
        elif row["pretrained"] and "test_neg_elbo" in m:  # a VAE
            what = (f"shipped: test -ELBO {m['test_neg_elbo']:.2f} ± {m['test_neg_elbo_stderr']:.2f} nats, "
                    f"NLL {m['test_nll']:.2f} ± {m['test_nll_stderr']:.2f} (importance-sampled) on binarized MNIST "
                    f"(card: {row['card']})")
        else:
            what = "no weights ship (train with tfflows train)"
        print(f"{row['call']:{width}s}  {row['flags']:{flags}s}  {what}")
    from tfflows.zoo.presets import read_manifest

    uniform = [(k, e) for k, e in read_manifest().items() if e.get("build") == {"dequantize": "uniform"}]
    if uniform:
        print()
        print("Trained with uniform noise, beside weights with a learned dequantizer (for the apps and export):")
        for key, e in uniform:
            call = f"tfflows.zoo.{e['model']}(preset={e['preset']!r}, pretrained=True, dequantize='uniform')"
            flags = f"--model {e['model']} --preset {e['preset']} --pretrained --arch dequantize=uniform"
            print(f"  {call}  {flags}  shipped: {e['test_bpd']:.4f} ± {e['test_bpd_stderr']:.4f} "
                  f"bits/dim (card: {e['card']})")
    conditional = [(k, e) for k, e in read_manifest().items() if "num_classes" in e["architecture"]]
    if conditional:
        print()
        print("Class-conditional (Python only; see docs/apps.md):")
        for key, e in conditional:
            call = (f"tfflows.zoo.{e['model']}(preset={e['preset']!r}, num_classes={e['architecture']['num_classes']}"
                    + (", class_couplings=True" if e["architecture"].get("class_couplings") else "")
                    + ", pretrained=True)")
            print(f"  {call}  shipped: {e['test_bpd']:.4f} ± {e['test_bpd_stderr']:.4f} bits/dim given the label, "
                  f"Bayes classifier {100 * e['bayes_accuracy']:.1f} % on {e['bayes_images']:,} test images "
                  f"(card: {e['card']})")
    print()
    print("Vector flows (no presets, Python only; see docs/vectors.md):")
    width = max(len(c) for c, _ in VECTOR_BUILDERS + VI_BUILDERS)
    for call, what in VECTOR_BUILDERS:
        print(f"  {call:{width}s}  {what}")
    print()
    print("Variational inference (no presets, Python only; see docs/vi.md):")
    for call, what in VI_BUILDERS:
        print(f"  {call:{width}s}  {what}")


# The user's input, not a tfflows bug: bad options or values (ValueError,
# TypeError; DataError, WeightsError, WeightsFileError, recipe.UsageError are
# ValueErrors), files that are missing, unreadable or unwritable (OSError,
# h5py's OSError for a truncated file, zipfile.BadZipFile). `main` prints
# these as one line and returns 2; anything else is a bug and keeps its
# traceback.
USER_ERRORS = (ValueError, TypeError, OSError)


def _is_user_error(err):
    import zipfile

    if isinstance(err, USER_ERRORS + (zipfile.BadZipFile,)):
        return True
    tf = sys.modules.get("tensorflow")  # TF's own file errors (an unwritable export path, ...)
    errors = getattr(tf, "errors", None) if tf is not None else None
    file_errors = tuple(getattr(errors, name) for name in (
        "NotFoundError", "PermissionDeniedError", "AlreadyExistsError", "FailedPreconditionError")
        if errors is not None and hasattr(errors, name))
    return bool(file_errors) and isinstance(err, file_errors)


def _one_line(err):
    text = getattr(err, "message", None)
    text = text if isinstance(text, str) and text.strip() else str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if text.startswith("tfflows: "):
        text = text[len("tfflows: "):]
    return text


def _error(command, text):
    print(f"tfflows {command}: error: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    """Runs one command. Returns its exit status: 0, or 2 after printing an
    ordinary user error (a bad option, a missing, corrupted or unwritable
    file, unusable data) as one line `tfflows <command>: error: ...` on
    stderr. Argument errors and refusals that raise `SystemExit` exit with 2
    too; other exceptions (bugs) propagate with their traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    if getattr(args, "backend", None):
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = dict(train=cmd_train, evaluate=cmd_evaluate, sample=cmd_sample, export=cmd_export, list=cmd_list)
    from tfflows.errors import UsageError

    try:
        try:
            with quiet_tensorflow():
                rc = commands[args.command](args)
        except UsageError as err:  # a refusal of the options: like argparse's, SystemExit(2)
            raise SystemExit(f"tfflows: {err}") from None
    except SystemExit as err:
        if isinstance(err.code, str):  # a refusal with its message: one line, status 2
            _error(args.command, _one_line(err.code))
            err.code = 2
        raise
    except Exception as err:
        if not _is_user_error(err):
            raise
        _error(args.command, _one_line(err))
        return 2
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
