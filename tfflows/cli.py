"""`tfflows train | evaluate | sample | export | list`: the command line.

`tfflows train` with no arguments is the main job: it trains a small Glow
on the MNIST subset shipped in the package and writes samples, weights,
metrics and a SavedModel to `./tfflows_out`.
"""

import argparse
import json
import math
import os
import sys
import time


def _common_model_args(p):
    p.add_argument("--model", default="glow", choices=["glow", "realnvp", "nice"])
    p.add_argument("--preset", default=None, help="zoo preset (train default: mnist-tiny)")
    p.add_argument("--levels", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="glow K per level / realnvp couplings per block")
    p.add_argument("--hidden", type=int, default=None, help="coupling net width")
    p.add_argument("--preprocess", default=None, choices=["center", "logit"],
                   help="glow only: x - 0.5 (Glow's) or RealNVP's logit transform (default: the preset's)")
    p.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other builder keyword, e.g. --arch lu=False --arch 'data_shape=(8,8,1)'; repeatable")
    p.add_argument("--run", default=None, help="a `tfflows train` output folder (reads config.json, model.weights.h5)")
    p.add_argument("--weights", default=None, help="a .weights.h5 file for --model/--preset")
    p.add_argument("--pretrained", action="store_true", help="use the shipped weights (sha256-checked)")
    p.add_argument("--backend", default=None, choices=["tensorflow", "jax"],
                   help="Keras backend (default: $KERAS_BACKEND or tensorflow)")


def build_parser():
    parser = argparse.ArgumentParser(prog="tfflows", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a flow (no arguments: the few-minute main job)")
    _common_model_args(t)
    t.add_argument("--data", default="mnist",
                   help="'mnist' (embedded subset), an .npz path, an image folder, or a tfds name")
    t.add_argument("--test-data", default=None,
                   help="source of the test images for the learning curve and the final test bits/dim "
                        "(default: --data's test split). Training images are never used as test images: "
                        "when the source has no test split (an .npz with only x, images or arr_0; an image "
                        "folder), the curve and test bits/dim are skipped and the log and metrics.json say "
                        "so. 'holdout' holds out the last --eval-images training images instead (not "
                        "trained on; named in the log and metrics.json); an .npz or folder other than "
                        "--data gives its test split, or all its images if it has none")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--minutes", type=float, default=None, help="wall-clock training budget for this run")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=200, help="linear learning-rate warm-up")
    t.add_argument("--decay", default="none", choices=["none", "cosine"],
                   help="learning-rate decay over --decay-steps")
    t.add_argument("--decay-steps", type=int, default=100000)
    t.add_argument("--clipnorm", type=float, default=100.0, help="global gradient-norm clip")
    t.add_argument("--ema", type=float, default=None, metavar="MOMENTUM",
                   help="keep a moving average of the weights (e.g. 0.999): the curve evaluates it "
                        "and the written weights are the average")
    t.add_argument("--n-bits", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="tfflows_out", help="output folder")
    t.add_argument("--resume", default=None, metavar="DIR", help="resume from DIR/checkpoints (a previous --out)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its weights, config, metrics, samples, "
                        "checkpoints and SavedModel); without it such a folder is refused")
    t.add_argument("--init-from", default=None, help="start from a .weights.h5 file or 'pretrained'")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--eval-minutes", type=float, default=2.0, help="test bits/dim period for the curve")
    t.add_argument("--eval-images", type=int, default=2000)
    t.add_argument("--train-images", type=int, default=None, help="use only the first N training images")
    t.add_argument("--jit", default="auto", choices=["auto", "on", "off"])
    t.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker", "tpu"])
    t.add_argument("--dtype", default="auto", choices=["auto", "float32", "mixed_bfloat16"],
                   help="mixed_bfloat16: coupling nets in bfloat16; weights, log-dets and loss float32. "
                        "auto (default): mixed_bfloat16 on the TF backend on a CPU with AVX512_BF16/AMX "
                        "(1.2-1.7x faster there, benchmarks/README.md), else float32")
    t.add_argument("--no-export", action="store_true", help="skip writing the SavedModel")
    t.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])

    e = sub.add_parser("evaluate", help="test bits/dim over several dequantization draws")
    _common_model_args(e)
    e.add_argument("--data", default="mnist")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--draws", type=int, default=4)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--json", action="store_true", help="print one JSON line only")

    s = sub.add_parser("sample", help="sample a grid at several temperatures")
    _common_model_args(s)
    s.add_argument("--n", type=int, default=10, help="samples per temperature")
    s.add_argument("--temperatures", default="0.5,0.7,1.0")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png")

    x = sub.add_parser("export", help="write a SavedModel for TF Serving")
    _common_model_args(x)
    x.add_argument("--keras", default=None, metavar="PATH",
                   help="a whole saved model (.keras, loaded in Keras' safe mode) instead of --run/--weights")
    x.add_argument("--out", required=True, help="SavedModel base folder (a version folder goes inside)")
    x.add_argument("--version", type=int, default=None, help="version folder (default: next free)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing version folder")

    sub.add_parser("list", help="list zoo models and presets")
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
    if not args.json:
        _log(f"test bits/dim {mean:.4f} ± {se:.4f} (standard error over {images.shape[0]} images, "
             f"{args.draws} noise draws)")
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


def cmd_list(args):
    from tfflows.zoo import list_models

    for row in list_models():
        bpd = "" if row["test_bpd"] is None else f"  test bpd {row['test_bpd']:.4f}"
        print(f"{row['name']:22s} {json.dumps(row['architecture'])}{bpd}")


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
    from tfflows.recipe import UsageError

    try:
        try:
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
