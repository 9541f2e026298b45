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
    t.add_argument("--test-data", default=None, help="source of the test split (default: --data)")
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


def _builder_kwargs(model_name, overrides):
    if "preprocess" in overrides and model_name != "glow":
        raise SystemExit(f"tfflows: --preprocess applies to --model glow, not {model_name} "
                         f"(realnvp always uses the logit transform, nice none).")
    if model_name == "nice":  # NICE's K is `couplings`; everything else passes through
        mapped = {k: v for k, v in overrides.items() if k != "steps"}
        if "steps" in overrides:
            mapped["couplings"] = overrides["steps"]
        return mapped
    return dict(overrides)


def build_model(model_name, preset, overrides, pretrained=False):
    from tfflows.zoo.builders import BUILDERS

    return BUILDERS[model_name](preset=preset, pretrained=pretrained, **_builder_kwargs(model_name, overrides))


def _load_weights(model, path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path} does not fit {what}: {err}") from err


def load_model_from_args(args):
    """The model named by --run, --keras, or --model/--preset with --weights/--pretrained."""
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

        import tfflows  # noqa: F401  (registers the tfflows classes)

        if not os.path.exists(args.keras):
            raise FileNotFoundError(f"model file {args.keras} not found")
        model = keras.saving.load_model(args.keras, compile=False, safe_mode=True)
        return model, dict(model=type(model).__name__, preset=None, overrides={})
    if args.run:
        with open(os.path.join(args.run, "config.json")) as f:
            cfg = json.load(f)
        model = build_model(cfg["model"], cfg["preset"], cfg.get("overrides", {}))
        _load_weights(model, os.path.join(args.run, "model.weights.h5"), f"the run's {cfg['model']}")
        return model, cfg
    preset = args.preset or "mnist"
    cfg = dict(model=args.model, preset=preset, overrides=_overrides(args))
    model = build_model(args.model, preset, cfg["overrides"], pretrained=args.pretrained)
    if args.weights:
        _load_weights(model, args.weights, f"--model {args.model} --preset {preset} with overrides "
                                           f"{cfg['overrides'] or 'none'} (pass the training architecture)")
    elif not args.pretrained:
        raise SystemExit("tfflows: give --run DIR, --weights FILE, --pretrained"
                         + (" or --keras FILE." if hasattr(args, "keras") else "."))
    return model, cfg


def write_samples(model, path, temperatures=(0.5, 0.7, 1.0), n=10, seed=0):
    """A PNG grid: one row per temperature."""
    from tfflows.images import grid, to_uint8, write_png
    import keras

    rows = []
    for i, t in enumerate(temperatures):
        x = model.sample(n, temperature=float(t), seed=seed + i)
        img = to_uint8(keras.ops.convert_to_numpy(x))
        if img.shape[-1] == 2:
            img = img[..., :1]
        rows.append(img)
    write_png(path, grid(rows))
    return path


def _learning_rate(args):
    import keras

    if args.decay == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, args.decay_steps, alpha=0.05, warmup_target=args.lr, warmup_steps=max(1, args.warmup_steps))
    elif args.warmup_steps > 0:
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, 1, alpha=1.0, warmup_target=args.lr, warmup_steps=args.warmup_steps)
    else:
        lr = args.lr
    return lr


# -- commands --------------------------------------------------------------------
def cmd_train(args):
    import keras

    policy = keras.config.dtype_policy()
    try:
        return _train(args)
    finally:  # the dtype policy is global: leave it as the caller had it
        keras.config.set_dtype_policy(policy)


def _checkpoint_config(ckpt_dir):
    """The training config stored in the newest checkpoint of `ckpt_dir` (`{}` if none)."""
    from tfflows import training

    path = training.latest_checkpoint(ckpt_dir)
    return (training.read_state(path).get("config") or {}) if path is not None else {}


# Training-config keys a resumed run takes from its checkpoint (cfg key = train option).
_RESUMED = ("model", "preset", "data", "batch_size", "lr", "warmup_steps", "decay", "decay_steps", "clipnorm",
            "ema", "seed", "n_bits", "jit", "dtype", "train_images")


def _adopt_checkpoint_config(args, saved):
    """Makes `args` continue the checkpoint's training config `saved`.

    An option left at its default takes the checkpoint's value (a resumed run
    keeps its data, batch size, learning-rate schedule, dtype...); one given
    with a value other than the checkpoint's is refused, naming it. Returns
    `{key: value}` for the defaults that the checkpoint replaced.
    """
    if not saved:  # no checkpoint (reported later) or one without a config
        return {}
    defaults = vars(build_parser().parse_args(["train"]))
    conflicts, adopted = [], {}
    for key in _RESUMED:
        if key not in saved:
            continue
        given, default, value = getattr(args, key), defaults[key], saved[key]
        if key == "preset" and given is None:
            given = default = "mnist-tiny"
        if given == value:
            continue
        if given != default:
            conflicts.append(f"--{key.replace('_', '-')} {given} (checkpoint: {value})")
        else:
            setattr(args, key, value)
            adopted[key] = value
    given = _overrides(args)
    if given and "overrides" in saved and given != saved["overrides"]:
        conflicts.append(f"architecture {given} (checkpoint: {saved['overrides']})")
    if conflicts:
        raise SystemExit(f"tfflows: --resume {args.resume} continues the checkpoint's training config; "
                         f"these options differ from it: {'; '.join(conflicts)}. Drop them or pass the "
                         f"checkpoint's values (a new run: --init-from DIR/model.weights.h5).")
    return adopted


def _train(args):
    import keras
    import numpy as np

    import tfflows
    from tfflows import training
    from tfflows.zoo import data as zdata

    out = args.out
    os.makedirs(out, exist_ok=True)
    ckpt_dir = os.path.join(args.resume or out, "checkpoints")
    adopted = {}
    if args.resume and args.strategy not in ("multiworker", "tpu"):
        adopted = _adopt_checkpoint_config(args, _checkpoint_config(ckpt_dir))
        if adopted:
            _log("[tfflows] --resume continues the checkpoint's " + ", ".join(f"{k}={v}" for k, v in adopted.items()))
    preset = args.preset or "mnist-tiny"
    cfg = dict(model=args.model, preset=preset, overrides=_overrides(args), data=args.data,
               batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, decay=args.decay,
               decay_steps=args.decay_steps, clipnorm=args.clipnorm, ema=args.ema, seed=args.seed, n_bits=args.n_bits,
               backend=keras.backend.backend(), jit=args.jit, strategy=args.strategy, dtype=args.dtype,
               train_images=args.train_images)
    from tfflows import distribute

    custom_loop = args.strategy in ("multiworker", "tpu")
    if custom_loop and args.ema is not None:
        raise SystemExit(f"tfflows: --ema works with Keras fit (--strategy default or mirrored), "
                         f"not with --strategy {args.strategy}.")
    strategy = distribute.get_strategy(args.strategy)  # before any other TF op (multi-worker)
    chief = distribute.is_chief(strategy)
    keras.utils.set_random_seed(args.seed)
    dtype, why = distribute.resolve_dtype(args.dtype)
    if "dtype" in adopted:
        why = "from the checkpoint"
    cfg["dtype"] = dtype
    distribute.set_dtype_policy(dtype)

    # Data: arrays in memory (uint8) -> seeded tf.data pipelines.
    train_u8 = zdata.load_arrays(args.data, "train", limit=args.train_images) if not _is_tfds(args.data) else None
    test_src = args.test_data or args.data
    try:
        test_u8 = zdata.load_arrays(test_src, "test", limit=args.eval_images) if not _is_tfds(test_src) else None
    except (ValueError, KeyError):
        test_u8 = None
    n_train = train_u8.shape[0] if train_u8 is not None else 60000
    steps_per_epoch = max(1, n_train // args.batch_size)

    state = {}
    scope = strategy.scope()
    scope.__enter__()
    if args.resume and not custom_loop:
        path = training.latest_checkpoint(ckpt_dir)
        if path is None:
            raise SystemExit(f"tfflows: --resume {args.resume}: no checkpoint in {ckpt_dir}.")
        model, state = training.load_checkpoint(path)
        cfg = state.get("config", cfg)
        _log(f"[tfflows] resumed {path}: step {state['step']}, {state['minutes']:.1f} min trained")
    else:
        model = build_model(args.model, preset, cfg["overrides"], pretrained=args.init_from == "pretrained")
        if args.init_from and args.init_from != "pretrained":
            _load_weights(model, args.init_from, f"--model {args.model} --preset {preset} with {cfg['overrides']}")
            _log(f"[tfflows] initialised from {args.init_from}")
        jit = {"auto": "auto", "on": True, "off": False}[args.jit]
        model.compile(optimizer=tfflows.default_optimizer(_learning_rate(args), args.clipnorm, dims=model.dims,
                                                          ema_momentum=args.ema),
                      jit_compile=jit)
    scope.__exit__(None, None, None)
    _log(f"[tfflows] {cfg['model']} preset={cfg['preset']} params={model.count_params():,} "
         f"backend={keras.backend.backend()} dtype={dtype} ({why}) train images={n_train} batch={args.batch_size}")

    step0 = int(state.get("step", 0))
    ds = zdata.load(train_u8 if train_u8 is not None else args.data, split="train",
                    batch_size=args.batch_size, seed=args.seed, repeat=True, drop_remainder=True,
                    n_bits=args.n_bits, skip=step0 * args.batch_size)
    if model.needs_initialization:
        init_batch = next(iter(zdata.load(train_u8, batch_size=512, seed=args.seed + 1, n_bits=args.n_bits)))
        bpd0 = model.initialize(init_batch)
        _log(f"[tfflows] data-dependent init on {init_batch.shape[0]} images: {bpd0:.4f} bits/dim")

    eval_fn = None
    if test_u8 is not None:
        def eval_fn(m):
            return training.evaluate_bpd(m, test_u8, draws=1, n_bits=args.n_bits)[0]

    tracker = training.TrainState(None if custom_loop else ckpt_dir, state, minutes=args.minutes, every_minutes=args.checkpoint_minutes,
                                  eval_fn=eval_fn, eval_minutes=args.eval_minutes, log=_log,
                                  extra_state=dict(config=cfg))
    target = args.epochs * steps_per_epoch
    tracker.max_steps = target
    epoch0 = step0 // steps_per_epoch
    t0 = time.time()
    error = None
    if step0 < target:
        try:
            if custom_loop:  # tfflows' distributed loop, with its own resumable checkpoints
                distribute.train(model, ds, strategy, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
                                 callbacks=[tracker], verbose=args.verbose,
                                 checkpoint_dir=os.path.join(args.resume or out, "dist_checkpoints"),
                                 save_seconds=60 * args.checkpoint_minutes)
            else:
                with training.live_weights_after_fit(model):  # the checkpoint below holds the live weights
                    model.fit(ds, epochs=args.epochs + (1 if step0 % steps_per_epoch else 0), initial_epoch=epoch0,
                              steps_per_epoch=steps_per_epoch, callbacks=[tracker], verbose=args.verbose,
                              shuffle=False)
        except tfflows.TrainingDivergedError as e:
            error = e
    wall = time.time() - t0
    if error is not None:
        _log(f"[tfflows] {error}")
        _log(f"[tfflows] the last good checkpoint is kept in {ckpt_dir}")
        raise SystemExit(2)
    tracker.checkpoint()
    training.finalize_ema(model)  # outputs from here on use the moving average, as after Keras' fit
    final = tracker.finish()
    if tracker.stop_signal:
        _log(f"[tfflows] stopped by {tracker.stop_signal} at step {final['step']}; continue with "
             f"--resume {args.resume or out}")
    if not chief:  # multi-worker: only the chief writes the outputs
        return dict(step=final["step"])

    training.save_inference_weights(model, os.path.join(out, "model.weights.h5"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    metrics = dict(step=final["step"], epochs=final["epoch"], train_minutes=final["minutes"],
                   this_run_seconds=round(wall, 1), train_bpd=final.get("train_bpd", []),
                   curve=final["curve"], params=int(model.count_params()))
    if test_u8 is not None:
        mean, se, _ = training.evaluate_bpd(model, test_u8, draws=2, n_bits=args.n_bits)
        metrics.update(test_bpd=round(mean, 5), test_bpd_stderr=round(se, 5), test_images=int(test_u8.shape[0]))
        _log(f"[tfflows] test bits/dim {mean:.4f} ± {se:.4f} on {test_u8.shape[0]} images")
    write_samples(model, os.path.join(out, "samples.png"), seed=args.seed)
    if not args.no_export:
        from tfflows import export

        export_model = model
        if dtype != "float32":
            # Serve in float32: a SavedModel with bfloat16 nets would run slowly
            # (emulated) on CPUs without bfloat16 instructions.
            keras.config.set_dtype_policy("float32")
            export_model = build_model(cfg["model"], cfg["preset"], cfg["overrides"])
            export_model.load_weights(os.path.join(out, "model.weights.h5"))
        path = export.save(export_model, os.path.join(out, "savedmodel"))
        metrics["savedmodel"] = str(path)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    _log(f"[tfflows] wrote {out}/: samples.png model.weights.h5 metrics.json config.json"
         + ("" if args.no_export else " savedmodel/") + " checkpoints/")
    return metrics


def _is_tfds(source):
    return isinstance(source, str) and source != "mnist" and not os.path.exists(source)


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
    model, _ = load_model_from_args(args)
    temps = [float(t) for t in args.temperatures.split(",")]
    write_samples(model, args.out, temps, n=args.n, seed=args.seed)
    _log(f"wrote {args.out} ({len(temps)} rows x {args.n}, temperatures {temps})")


def cmd_export(args):
    from tfflows import export

    try:
        model, _ = load_model_from_args(args)
        start = time.time()
        path = export.save(model, args.out, version=args.version, overwrite=args.overwrite)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, OSError) as err:
        print(f"tfflows export: error: {err}", file=sys.stderr)
        return 2
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    if getattr(args, "backend", None):
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = dict(train=cmd_train, evaluate=cmd_evaluate, sample=cmd_sample, export=cmd_export, list=cmd_list)
    rc = commands[args.command](args)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
