"""The training recipe behind `tfflows train`, as a library function.

`train(TrainOptions(...))` builds (or resumes) a zoo model, trains it on
seeded tf.data pipelines within a wall-clock budget with atomic, resumable
checkpoints and a test-bits/dim learning curve, and writes the run folder:
`model.weights.h5` (checksummed), `config.json`, `metrics.json`,
`samples.png`, `checkpoints/` and (unless `no_export`) `savedmodel/`.

The strategy scope and the global Keras dtype policy are entered with
`with` blocks, so an exception anywhere leaves neither behind.

>>> TrainOptions().preset is None and TrainOptions().out
'tfflows_out'
"""

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Optional

from tfflows import checkpoint, images, training
from tfflows.errors import UsageError  # noqa: F401  (raised here; importable from here as before)
from tfflows.models import TrainingDivergedError, default_optimizer
from tfflows.zoo import builders

HOLDOUT = "holdout"
# The main job's model (`tfflows train` with no arguments): chosen by measurement
# for recognisable samples within about 4 minutes of training (presets.json note).
DEFAULT_PRESET = "mnist-quick"

# What `train` writes into `out`. A folder holding any of the markers holds
# a run: training into it needs `resume` (same folder) or `overwrite`.
RUN_OUTPUTS = ("config.json", "model.weights.h5", "metrics.json", "samples.png", "checkpoints", "savedmodel",
               "dist_checkpoints")
RUN_MARKERS = ("config.json", "model.weights.h5", "metrics.json", "checkpoints", "savedmodel")

# Training-config keys a resumed run takes from its checkpoint (config key = option).
RESUMED = ("model", "preset", "data", "batch_size", "lr", "warmup_steps", "decay", "decay_steps", "clipnorm",
           "ema", "seed", "n_bits", "jit", "dtype", "train_images", "test_data", "eval_images")


@dataclasses.dataclass
class TrainOptions:
    """Everything `train` takes; the `tfflows train` options, one to one.

    `overrides` holds the builder keywords (`levels`, `steps`, `hidden`,
    `preprocess` and `--arch KEY=VALUE`s). See `tfflows train --help` for
    the meaning of each field.
    """

    model: str = "glow"
    preset: Optional[str] = None  # None: DEFAULT_PRESET
    overrides: dict = dataclasses.field(default_factory=dict)
    data: str = "mnist"
    test_data: Optional[str] = None
    epochs: int = 14
    minutes: Optional[float] = None
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 200
    decay: str = "cosine"
    decay_steps: Optional[int] = None  # None: the run's steps after the warm-up
    clipnorm: float = 100.0
    ema: Optional[float] = None
    n_bits: int = 8
    seed: int = 0
    out: Optional[str] = None  # None: the resumed run's folder, else "tfflows_out"
    resume: Optional[str] = None
    overwrite: bool = False
    init_from: Optional[str] = None
    checkpoint_minutes: float = 5.0
    eval_minutes: float = 2.0
    eval_images: int = 2000
    train_images: Optional[int] = None
    jit: str = "auto"
    strategy: str = "default"
    dtype: str = "auto"
    no_export: bool = False
    verbose: int = 1

    def __post_init__(self):
        # A resumed run writes its outputs into its own folder unless told otherwise.
        if self.out is None:
            self.out = self.resume or "tfflows_out"


def write_json(path, obj):
    """Writes `obj` as JSON to `path` under a temporary name, then moves it into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def load_weights(model, path, what, log=print):
    """Loads the `.weights.h5` file `path` into `model`; `FlowModel.load_weights`
    checks its tfflows checksum first (`WeightsFileError` for a missing,
    truncated or corrupted file). `what` names the architecture in a
    does-not-fit message; a file without a checksum is noted through `log`."""
    from tfflows import weights_file

    if not weights_file.verify(path, what="weights file"):
        log(f"[tfflows] note: {path} carries no tfflows checksum (written by plain Keras or an older "
            f"tfflows); loading it unchecked.")
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as err:
        if isinstance(err, weights_file.WeightsFileError):
            raise
        raise ValueError(f"{path} does not fit {what}: {err}") from err


def decay_steps(options, total_steps):
    """The cosine's length: `options.decay_steps`, or by default the run's
    steps after the warm-up, so the rate reaches its floor as training ends."""
    if options.decay_steps is not None:
        return int(options.decay_steps)
    return max(1, int(total_steps) - int(options.warmup_steps))


def learning_rate(options, total_steps=None):
    """The learning rate or schedule: linear warm-up, then constant or cosine
    decay (to 5 % of the peak) over `decay_steps(options, total_steps)`."""
    import keras

    if options.decay == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps(options, total_steps or 100000), alpha=0.05, warmup_target=options.lr,
            warmup_steps=max(1, options.warmup_steps))
    if options.warmup_steps > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, 1, alpha=1.0, warmup_target=options.lr, warmup_steps=options.warmup_steps)
    return options.lr


# -- resuming -------------------------------------------------------------------------
def checkpoint_config(ckpt_dir):
    """The training config stored in the newest checkpoint of `ckpt_dir` (`{}` if none)."""
    path = checkpoint.latest_checkpoint(ckpt_dir)
    return (checkpoint.read_state(path).get("config") or {}) if path is not None else {}


def adopt_checkpoint_config(options, saved):
    """Makes `options` continue the checkpoint's training config `saved`.

    An option left at its default takes the checkpoint's value (a resumed run
    keeps its data, batch size, learning-rate schedule, dtype...); one given
    with a value other than the checkpoint's is refused (`UsageError`),
    naming it. Returns `{key: value}` for the defaults that the checkpoint
    replaced.
    """
    if not saved:  # no checkpoint (reported later) or one without a config
        return {}
    defaults = TrainOptions()
    conflicts, adopted = [], {}
    for key in RESUMED:
        if key not in saved:
            continue
        given, default, value = getattr(options, key), getattr(defaults, key), saved[key]
        if key == "preset" and given is None:
            given = default = DEFAULT_PRESET
        if given == value:
            continue
        if given != default:
            conflicts.append(f"--{key.replace('_', '-')} {given} (checkpoint: {value})")
        else:
            setattr(options, key, value)
            adopted[key] = value
    given = options.overrides
    if given and "overrides" in saved and given != saved["overrides"]:
        conflicts.append(f"architecture {given} (checkpoint: {saved['overrides']})")
    if conflicts:
        raise UsageError(f"--resume {options.resume} continues the checkpoint's training config; "
                         f"these options differ from it: {'; '.join(conflicts)}. Drop them or pass the "
                         f"checkpoint's values (a new run: --init-from DIR/model.weights.h5).")
    return adopted


# -- the run folder and the data ----------------------------------------------------------
def _same_folder(a, b):
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def claim_out_folder(options):
    """Refuses an `out` that holds another run (a run is never overwritten
    silently), unless `resume` continues that run or `overwrite` replaces
    it; with `overwrite`, removes the old run's outputs (its checkpoints
    first, so they never mix with the new run's). Returns the removed names."""
    out = options.out
    resumed_here = _same_folder(options.resume, out)
    if options.overwrite and resumed_here:
        raise UsageError(f"--overwrite would delete the run in {out} that --resume {options.resume} continues; "
                         f"drop --overwrite to continue it, or --resume to replace it.")
    found = [name for name in RUN_MARKERS if os.path.exists(os.path.join(out, name))]
    if not found or resumed_here:
        return []
    if not options.overwrite:
        raise UsageError(f"--out {out} already holds another run ({', '.join(found)}); continue it with "
                         f"--resume {out} --out {out}, or replace it with --overwrite (or choose another --out).")
    removed = []
    for name in RUN_OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def is_tfds(source):
    """True for a tensorflow-datasets name (not 'mnist', not a path)."""
    return isinstance(source, str) and source != "mnist" and not os.path.exists(source)


def _same_source(a, b):
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and _same_folder(a, b)


def train_and_test_images(options, zdata):
    """`(train_u8, test_u8, test_source, no_test)` for a run.

    `train_u8` is `None` for a tensorflow-datasets `data` (streamed).
    Training images are never test images: with no test split, `test_u8`
    and `test_source` are `None` and `no_test` says why; `test_data="holdout"`
    takes the last `eval_images` training images out of training and names
    them in `test_source`.
    """
    for name in ("eval_images", "train_images"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number of images, got {value}.")
    if options.test_data == HOLDOUT:
        if is_tfds(options.data):
            raise UsageError(f"--test-data holdout needs --data as arrays ('mnist', an .npz or an image folder), "
                             f"not the tensorflow-datasets source {options.data!r}.")
        all_train = zdata.load_arrays(options.data, "train")
        n, total = options.eval_images, all_train.shape[0]
        if n >= total:
            raise UsageError(f"--test-data holdout: --eval-images {n} would hold out all {total} training "
                             f"images of {options.data}; give --eval-images below {total}.")
        train = all_train[:-n] if options.train_images is None else all_train[:-n][:options.train_images]
        return (train, all_train[-n:],
                f"held-out last {n} of the {total} {options.data} train images (not trained on)", None)
    train = None if is_tfds(options.data) else zdata.load_arrays(options.data, "train", limit=options.train_images)
    src = options.test_data or options.data
    if is_tfds(src):
        return train, None, None, (f"{src} is a tensorflow-datasets source, which train does not evaluate "
                                   f"(run tfflows evaluate on it after training)")
    explicit = options.test_data is not None and not _same_source(options.test_data, options.data)
    if os.path.isdir(src):
        if not explicit:
            return train, None, None, f"{src} is an image folder, one unsplit set with no test split"
        return train, zdata.load_arrays(src, limit=options.eval_images), f"the images of folder {src}", None
    try:
        return train, zdata.load_arrays(src, "test", limit=options.eval_images), f"{src} test split", None
    except zdata.MissingSplitError as err:
        if not explicit:
            return train, None, None, str(err)
    # An explicit test_data file without splits: its images are the test set.
    return (train, zdata.load_arrays(src, "train", limit=options.eval_images),
            f"{src} (all its images: it has no split named test)", None)


@contextlib.contextmanager
def dtype_policy(name):
    """Sets Keras' global dtype policy inside the block; the caller's comes back after."""
    import keras

    from tfflows import distribute

    previous = keras.config.dtype_policy()
    distribute.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# -- the recipe ---------------------------------------------------------------------------
def train(options, log=print):
    """Runs `tfflows train` with `options` (a `TrainOptions`); returns the
    metrics dict (also written to `out/metrics.json`).

    Raises:
        UsageError: conflicting options or an `out` folder holding another run.
        TrainingDivergedError: the loss became NaN; the last good checkpoint
            stays in `out/checkpoints` (or the resumed run's).
    """
    from tfflows import distribute

    out = options.out
    removed = claim_out_folder(options)
    if removed:
        log(f"[tfflows] --overwrite: removed the previous run's {', '.join(removed)} from {out}")
    os.makedirs(out, exist_ok=True)
    ckpt_dir = os.path.join(options.resume or out, "checkpoints")
    adopted = {}
    custom_loop = options.strategy in ("multiworker", "tpu")
    if options.resume and not custom_loop:
        adopted = adopt_checkpoint_config(options, checkpoint_config(ckpt_dir))
        if adopted:
            log("[tfflows] --resume continues the checkpoint's " + ", ".join(f"{k}={v}" for k, v in adopted.items()))
    if custom_loop and options.ema is not None:
        raise UsageError(f"--ema works with Keras fit (--strategy default or mirrored), "
                         f"not with --strategy {options.strategy}.")
    strategy = distribute.get_strategy(options.strategy)  # before any other TF op (multi-worker)
    dtype, why = distribute.resolve_dtype(options.dtype)
    if "dtype" in adopted:
        why = "from the checkpoint"
    with dtype_policy(dtype):
        return _train(options, log, strategy, dtype, why, ckpt_dir, custom_loop)


def _train(options, log, strategy, dtype, why, ckpt_dir, custom_loop):
    import keras

    from tfflows import distribute
    from tfflows.zoo import data as zdata

    out = options.out
    preset = options.preset or DEFAULT_PRESET
    cfg = dict(model=options.model, preset=preset, overrides=dict(options.overrides), data=options.data,
               batch_size=options.batch_size, lr=options.lr, warmup_steps=options.warmup_steps,
               decay=options.decay, decay_steps=options.decay_steps, clipnorm=options.clipnorm, ema=options.ema,
               seed=options.seed, n_bits=options.n_bits, backend=keras.backend.backend(), jit=options.jit,
               strategy=options.strategy, dtype=dtype, train_images=options.train_images,
               test_data=options.test_data, eval_images=options.eval_images)
    chief = distribute.is_chief(strategy)
    keras.utils.set_random_seed(options.seed)

    # Data: arrays in memory (uint8) -> seeded tf.data pipelines.
    train_u8, test_u8, test_source, no_test = train_and_test_images(options, zdata)
    if no_test:
        log(f"[tfflows] no test split: {no_test}. The learning curve and test bits/dim are skipped "
            f"(give --test-data FILE, or --test-data holdout to hold out training images).")
    else:
        log(f"[tfflows] test images: {test_u8.shape[0]} from {test_source}")
    n_train = train_u8.shape[0] if train_u8 is not None else 60000
    steps_per_epoch = max(1, n_train // options.batch_size)

    state = {}
    with strategy.scope():
        if options.resume and not custom_loop:
            path = checkpoint.latest_checkpoint(ckpt_dir)
            if path is None:
                raise UsageError(f"--resume {options.resume}: no checkpoint in {ckpt_dir}.")
            model, state = checkpoint.load_checkpoint(path)
            cfg = state.get("config", cfg)
            log(f"[tfflows] resumed {path}: step {state['step']}, {state['minutes']:.1f} min trained")
        else:
            model = builders.build(options.model, preset, cfg["overrides"],
                                   pretrained=options.init_from == "pretrained")
            if getattr(model, "dequantizer", None) is not None:
                # pretrained=True follows the shipped weights: record their dequantizer, so that
                # config.json (evaluate/sample --run, resume, ship) rebuilds the same model.
                cfg["overrides"]["dequantize"] = "variational"
            if options.init_from and options.init_from != "pretrained":
                load_weights(model, options.init_from,
                             f"--model {options.model} --preset {preset} with {cfg['overrides']}", log)
                log(f"[tfflows] initialised from {options.init_from}")
            jit = {"auto": "auto", "on": True, "off": False}[options.jit]
            model.compile(optimizer=default_optimizer(learning_rate(options, options.epochs * steps_per_epoch),
                                                      options.clipnorm, dims=model.dims,
                                                      ema_momentum=options.ema),
                          jit_compile=jit)
    log(f"[tfflows] {cfg['model']} preset={cfg['preset']} params={model.count_params():,} "
        f"backend={keras.backend.backend()} dtype={dtype} ({why}) train images={n_train} "
        f"batch={options.batch_size}")

    step0 = int(state.get("step", 0))
    # A model with a learned dequantizer takes the pixel values and adds its own noise.
    dequantize = "variational" if getattr(model, "dequantizer", None) is not None else "uniform"
    ds = zdata.load(train_u8 if train_u8 is not None else options.data, split="train",
                    batch_size=options.batch_size, seed=options.seed, repeat=True, drop_remainder=True,
                    n_bits=options.n_bits, skip=step0 * options.batch_size, dequantize=dequantize)
    if model.needs_initialization:
        init_batch = next(iter(zdata.load(train_u8, batch_size=512, seed=options.seed + 1, n_bits=options.n_bits,
                                          dequantize=dequantize)))
        bpd0 = model.initialize(init_batch)
        log(f"[tfflows] data-dependent init on {init_batch.shape[0]} images: {bpd0:.4f} bits/dim")

    eval_fn = None
    if test_u8 is not None:
        def eval_fn(m):
            return training.evaluate_bpd(m, test_u8, draws=1, n_bits=options.n_bits)[0]

    tracker = training.TrainState(None if custom_loop else ckpt_dir, state, minutes=options.minutes,
                                  every_minutes=options.checkpoint_minutes, eval_fn=eval_fn,
                                  eval_minutes=options.eval_minutes, log=log, extra_state=dict(config=cfg))
    target = options.epochs * steps_per_epoch
    tracker.max_steps = target
    epoch0 = step0 // steps_per_epoch
    # Keras' progress bar redraws a line with carriage returns and ANSI codes:
    # fine on a terminal, noise in a log file. Off a terminal: one line per epoch.
    verbose = options.verbose
    if verbose == 1 and not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()):
        verbose = 2
    t0 = time.time()
    if step0 < target:
        log("[tfflows] tracing and compiling the train step (the first step takes longer); training follows")
        try:
            if custom_loop:  # tfflows' distributed loop, with its own resumable checkpoints
                distribute.train(model, ds, strategy, epochs=options.epochs, steps_per_epoch=steps_per_epoch,
                                 callbacks=[tracker], verbose=verbose,
                                 checkpoint_dir=os.path.join(options.resume or out, "dist_checkpoints"),
                                 save_seconds=60 * options.checkpoint_minutes)
            else:
                with training.live_weights_after_fit(model):  # the checkpoint below holds the live weights
                    model.fit(ds, epochs=options.epochs + (1 if step0 % steps_per_epoch else 0),
                              initial_epoch=epoch0, steps_per_epoch=steps_per_epoch, callbacks=[tracker],
                              verbose=verbose, shuffle=False)
        except TrainingDivergedError as err:
            raise TrainingDivergedError(f"{err} The last good checkpoint is kept in {ckpt_dir}.") from err
    wall = time.time() - t0
    tracker.checkpoint()
    training.finalize_ema(model)  # outputs from here on use the moving average, as after Keras' fit
    final = tracker.finish()
    if tracker.stop_signal:
        log(f"[tfflows] stopped by {tracker.stop_signal} at step {final['step']}; continue with "
            f"--resume {options.resume or out}")
    if not chief:  # multi-worker: only the chief writes the outputs
        return dict(step=final["step"])

    # Weights, config, metrics and samples first: a kill during the export
    # (the slowest part) loses none of them.
    weights_path = os.path.join(out, "model.weights.h5")
    training.save_inference_weights(model, weights_path)
    write_json(os.path.join(out, "config.json"), cfg)
    metrics = dict(step=final["step"], epochs=final["epoch"], train_minutes=final["minutes"],
                   this_run_seconds=round(wall, 1), train_bpd=final.get("train_bpd", []),
                   curve=final["curve"], params=int(model.count_params()), test_source=test_source)
    if test_u8 is not None:
        mean, se, _ = training.evaluate_bpd(model, test_u8, draws=2, n_bits=options.n_bits)
        metrics.update(test_bpd=round(mean, 5), test_bpd_stderr=round(se, 5), test_images=int(test_u8.shape[0]))
        # The learning curve ends where training did (the written weights, 2 noise draws).
        if not metrics["curve"] or metrics["curve"][-1]["step"] != final["step"]:
            metrics["curve"] = metrics["curve"] + [dict(minutes=round(final["minutes"], 3), step=final["step"],
                                                        test_bpd=round(mean, 5), draws=2, final=True)]
        log(f"[tfflows] test bits/dim {mean:.4f} ± {se:.4f} on {test_u8.shape[0]} images ({test_source})")
    else:
        metrics["test_skipped"] = f"no test split: {no_test}; learning curve and test bits/dim skipped"
    samples_path = os.path.join(out, "samples.png")
    try:
        images.write_samples(model, samples_path, seed=options.seed)
    except ValueError as err:  # NaN samples: say so, keep the run's other outputs
        if os.path.exists(samples_path):
            os.remove(samples_path)  # not an earlier run's grid
        metrics["samples_error"] = str(err)
        log(f"[tfflows] samples.png not written: {err}")
    write_json(os.path.join(out, "metrics.json"), metrics)
    exported = not options.no_export and getattr(model, "dequantizer", None) is None
    if not options.no_export and not exported:
        metrics["savedmodel"] = None
        log("[tfflows] no savedmodel/: tfflows.export does not serve models with a variational dequantizer yet "
            "(the weights and the .keras-loadable config are in the run folder)")
        write_json(os.path.join(out, "metrics.json"), metrics)
    if exported:
        from tfflows import export

        export_model = model
        if dtype != "float32":
            # Serve in float32: a SavedModel with bfloat16 nets would run slowly
            # (emulated) on CPUs without bfloat16 instructions.
            with dtype_policy("float32"):
                export_model = builders.build(cfg["model"], cfg["preset"], cfg["overrides"])
            load_weights(export_model, weights_path, f"the run's {cfg['model']}", log)
        path = export.save(export_model, os.path.join(out, "savedmodel"))
        metrics["savedmodel"] = str(path)
        write_json(os.path.join(out, "metrics.json"), metrics)
    written = [n for n in ("samples.png", "model.weights.h5", "metrics.json", "config.json")
               if os.path.exists(os.path.join(out, n))]
    log(f"[tfflows] wrote {out}/: {' '.join(written)}" + (" savedmodel/" if exported else "")
        + " checkpoints/")
    return metrics
