"""Ships a `tfflows train` run as pretrained weights with a model card.

    python tools/ship.py --run RUN_DIR --key glow-mnist --data ../shared/data/mnist.npz \
        --command "tfflows train ..." [--draws 4] [--continues [--cooldown | --resumed]]

Evaluates the run on the full test split (`--draws` dequantization draws),
copies the weights into `tfflows/zoo/weights/`, records sha256, bits/dim,
metrics and card in the presets table (`tfflows/zoo/presets.json`), the
recipe, stages, CPU time and hardware in `zoo/<key>/history.json`, and
writes `zoo/<key>/` (learning curve, sample grid, README model card).
"""

import argparse
import datetime
import json
import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tfflows import images, training  # noqa: E402
from tfflows.zoo import builders  # noqa: E402
from tfflows.zoo import data as zdata  # noqa: E402

NORMFLOWS = {  # measured on this 2-core machine (issue #11)
    "width 400 (3.09M params, 55 img/s)": [(4, 3.32), (12.5, 2.20), (20, 1.97)],
    "width 128 (0.43M params, 194 img/s)": [(4, 2.41), (8, 2.05), (12, 1.94)],
}
PUBLISHED = {"glow": 1.05, "realnvp": 1.06, "nice": None}
TARGETS = {"glow": 1.15, "realnvp": 1.25}  # issue #11, full 10k test set


PREPROCESSING = {
    "uniform, 8-bit": "uint8 -> uniform dequantization `(x + U[0,1)) / 256` (8 bits); then the model's own "
                      "bijective preprocessing (counted in bits/dim)",
    "variational (Flow++), 8-bit": "uint8 in; the model's learned dequantizer draws `u ~ q(u | x)` in (0, 1) "
                                   "(`tfflows.layers.VariationalDequantizer`, Flow++), `(x + u) / 256`; then the "
                                   "model's own bijective preprocessing. Its bits/dim is the variational bound "
                                   "`E_q[-log p((x + u) / 256) + log q(u | x)] / (D ln 2) + 8`, an upper bound on the "
                                   "discrete NLL; `dequantize='uniform'` gives the uniform-noise model shipped beside it (`<key>-uniform` in the presets table), for the applications and the SavedModel export",
}
HISTORY_KEYS = ("command", "recipe", "stages", "hardware", "storage")
METRIC_KEYS = ("test_bpd", "test_bpd_stderr", "test_bpd_per_draw", "test_images", "test_draws",
               "embedded_test500_bpd", "embedded_test500_centres_bpd", "params", "train_steps", "train_minutes",
               "cpu_hours", "date")


def history_path(key):
    return os.path.join(ROOT, "zoo", key, "history.json")


def read_record(key):
    """The shipped entry of `key` (presets table) with its training record
    (`zoo/<key>/history.json`), or `None` when no weights ship for it."""
    entry = builders.read_manifest().get(key)
    if entry is None:
        return None
    if os.path.exists(history_path(key)):
        with open(history_path(key)) as f:
            entry.update(json.load(f))
    return entry


def dump_table(obj):
    """JSON with an indent, short lists of numbers on one line."""
    import re

    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_record(key, entry):
    """Splits `entry` into the presets table row (weights, metrics, card) and
    the training record `zoo/<key>/history.json`."""
    table = builders.read_presets()
    row = table[entry["model"]][entry["preset"]]
    row["weights"] = {k: entry[k] for k in ("file", "sha256", "size_bytes", "dequantize") if k in entry}
    if "dequantize" not in entry and row.get("uniform"):
        # Uniform-noise weights replace ones with a learned dequantizer: the uniform entry beside them goes.
        stale = os.path.join(builders.WEIGHTS_DIR, row.pop("uniform")["weights"]["file"])
        if os.path.exists(stale):
            os.remove(stale)
    row["metrics"] = {k: entry[k] for k in METRIC_KEYS if k in entry}
    row["card"] = f"zoo/{key}/README.md"
    with open(builders.PRESETS_FILE, "w") as f:
        f.write(dump_table(table))
    os.makedirs(os.path.dirname(history_path(key)), exist_ok=True)
    with open(history_path(key), "w") as f:
        json.dump({k: entry[k] for k in HISTORY_KEYS if k in entry}, f, indent=1, sort_keys=True)
        f.write("\n")


def keep_uniform(key):
    """Before weights with a learned dequantizer replace the uniform-noise
    weights shipped as `key`, keeps those as `<key>-uniform` (file renamed,
    sha256 and metrics moved to the row's `uniform` entry), so that
    `pretrained=True, dequantize="uniform"` still loads a density on
    [0, 1)^D for the apps and the export."""
    table = builders.read_presets()
    model, preset = key.split("-", 1)
    row = table[model][preset]
    src = os.path.join(builders.WEIGHTS_DIR, row["weights"]["file"])
    fname = f"{key}-uniform.weights.h5"
    os.replace(src, os.path.join(builders.WEIGHTS_DIR, fname))
    stages = len((read_record(key) or {}).get("stages") or [None])
    row["uniform"] = dict(weights=dict(row["weights"], file=fname), metrics=dict(row.get("metrics", {})),
                          card=row.get("card"),
                          note=f"Stage {stages} of the same run (uniform noise): the weights before a learned "
                               f"dequantizer was added. For the applications and the SavedModel export, which "
                               f"need a density on [0, 1)^D.")
    with open(builders.PRESETS_FILE, "w") as f:
        f.write(dump_table(table))
    print(f"{key}: kept the uniform-noise weights as {fname} ({key}-uniform)")


def base_stage(stages, i):
    """Index of the stage whose weights stage `i` starts from: the one before it,
    except for a resumed trunk run (`run_step` past its own `steps`), which
    continues the last non-cooldown stage."""
    st = stages[i]
    if not st.get("cooldown") and st.get("run_step", 0) > st.get("steps", 0):
        j = last_trunk(stages[:i])
        if j is not None:
            return j
    return i - 1


def last_trunk(stages):
    """Index of the last stage in `stages` that is not a cooldown branch, or None."""
    return next((j for j in range(len(stages) - 1, -1, -1) if not stages[j].get("cooldown")), None)


def progress_text(e):
    """Markdown: the 10k-test bits/dim after each stage, what each later stage
    gained per CPU-hour, and how many more CPU-hours the target and the
    published figure would take at the last rate (a lower bound where gains
    shrink as training goes on). A resumed trunk stage's gain is counted over the
    trunk stage it continues, not over the cooldown branch shipped between them.
    `''` when the stages carry no test figures."""
    stages = e.get("stages") or []
    if len(stages) < 2 or any(st.get("test_bpd") is None for st in stages):
        return ""
    rows, hours, rate = [], 0.0, None
    for i, st in enumerate(stages):
        hours += st["cpu_hours"]
        gain = over = rate_txt = "-"
        if i:
            j = base_stage(stages, i)
            d = stages[j]["test_bpd"] - st["test_bpd"]
            rate = d / max(st["cpu_hours"], 1e-9)
            gain, over, rate_txt = f"{d:+.4f}", str(j + 1), f"{rate:.4f}"
        rows.append(f"| {i + 1} | {st['cpu_hours']} | {hours:.2f} | {st['test_bpd']:.4f} | {gain} | {over} "
                    f"| {rate_txt} |")
    basis, why = "the last stage's rate", ""
    if len(stages) >= 3 and stages[-1].get("cooldown"):
        # A cooldown stage only anneals what the stage before it trained: its gain per
        # CPU-hour alone overstates the rate, so project from the two stages together.
        d = stages[-3]["test_bpd"] - stages[-1]["test_bpd"]
        rate = d / max(stages[-2]["cpu_hours"] + stages[-1]["cpu_hours"], 1e-9)
        basis = f"the rate of stages {len(stages) - 1} and {len(stages)} together"
        why = (f"; stage {len(stages)} is a cooldown of stage {len(stages) - 1}'s weights, and the pair is "
               f"counted from stage {len(stages) - 2}'s figure")
    cur = e["test_bpd"]
    goals = [(f"the issue #11 target {TARGETS.get(e['model'])}", TARGETS.get(e["model"])),
             (f"the published {PUBLISHED.get(e['model'])}", PUBLISHED.get(e["model"]))]
    ahead = []
    for name, goal in goals:
        if goal is None:
            continue
        if cur <= goal:
            ahead.append(f"{name} is met")
        elif rate and rate > 0:
            ahead.append(f"{name} needs at least {(cur - goal) / rate:.0f} more CPU-hours")
        else:
            ahead.append(f"{name} is not reached at that rate")
    table = "\n".join(["| stage | CPU-hours | total CPU-hours | test bits/dim | gain | over stage "
                        "| gain per CPU-hour |", "| --- | --- | --- | --- | --- | --- | --- |"] + rows)
    text = ("Test bits/dim (10k test set) after each stage; a stage's gain is over the stage it starts from "
            "(a resumed trunk continues the last trunk stage, not the cooldown shipped after it):\n\n"
            + table + "\n\n")
    if ahead:
        text += (f"At {basis} ({rate:.4f} bits/dim per CPU-hour{why}), " + "; ".join(ahead)
                 + ". Gains per CPU-hour usually shrink as a model improves, so read these as lower "
                 "bounds, not forecasts.")
    return text


def curve_at(curve, minutes):
    """Test bits/dim at `minutes` of training, linearly interpolated."""
    pts = [(c["minutes"], c["test_bpd"]) for c in curve]
    if not pts or minutes > pts[-1][0]:
        return None
    return float(np.interp(minutes, [p[0] for p in pts], [p[1] for p in pts]))


def plot_curve(curve, path, title):
    """Writes the learning-curve PNG (with normflows' points for comparison) and
    returns the plotted lines' labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    live = [c for c in curve if "test_bpd_live" in c]
    ax.plot([c["minutes"] for c in curve], [c["test_bpd"] for c in curve], "o-", ms=3,
            label="tfflows (EMA weights)" if live else "tfflows")
    if live:  # the weights being trained, which the EMA lags early in a run
        ax.plot([c["minutes"] for c in live], [c["test_bpd_live"] for c in live], ".:", ms=3,
                label="tfflows (live weights)")
    for name, pts in NORMFLOWS.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "x--", label=f"normflows Glow {name}")
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("test bits/dim (2000 images)")
    later = [c["test_bpd"] for c in curve[1:]] or [4.0]
    ax.set_ylim(bottom=min(1.0, min(later) - 0.1), top=max(4.0, max(later) + 0.3))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    labels = [line.get_label() for line in ax.get_lines()]
    plt.close(fig)
    return labels


def check_shippable(cfg, key):
    """Refuse a run that `load_pretrained` could not load under `key`: the key
    must be `model-preset`, and the run's `--arch/--steps/...` overrides must
    not change the preset (else `pretrained=True` would refuse the file as
    another architecture). Change the preset in `builders.PRESETS` first."""
    want = f"{cfg['model']}-{cfg['preset']}"
    if key != want:
        raise SystemExit(f"ship.py: --key {key!r} does not match the run's model and preset ({want!r}).")
    preset = builders.PRESETS[cfg["model"]][cfg["preset"]]
    # The comparison load_pretrained makes, of what ship records against the preset. A learned
    # dequantizer is recorded with the weights (`dequantize`), not in the preset: pretrained=True
    # builds it when the shipped architecture names it.
    overrides = {k: v for k, v in cfg.get("overrides", {}).items() if k != "dequantize"}
    changed = builders.architecture_mismatch(preset, {**preset, **overrides}, missing="builder default")
    if changed:
        raise SystemExit(
            f"ship.py: the run changes the {cfg['preset']!r} preset "
            f"({ {k: f'preset {a}, run {b}' for k, (a, b) in changed.items()} }); "
            f"tfflows.zoo.{cfg['model']}(preset={cfg['preset']!r}, pretrained=True) would refuse it. "
            f"Update builders.PRESETS to the run's architecture first, or ship it under a new preset.")


def resume_point(stages):
    """`(run step, run minutes)` at which the last trunk stage (not a cooldown) stopped.

    A run resumed (`tfflows train --resume`) from that stage's checkpoint carries its
    steps, minutes and curve from step 0 of the run; only what comes after this point
    is a new stage. Stages shipped before `run_step` was recorded started their run at
    step 0, so their own steps and minutes are the run's.
    """
    j = last_trunk(stages)
    if j is None:
        raise ValueError("no shipped trunk stage to resume")
    st = stages[j]
    return st.get("run_step", st["steps"]), st.get("run_minutes", st["minutes"])


def stage_span(metrics, base_step=0, base_min=0.0):
    """`(steps, minutes, curve)` of a run after its point `(base_step, base_min)`, the curve's
    steps and minutes counted from that point (see `resume_point`)."""
    curve = [dict(c, minutes=c["minutes"] - base_min, step=c["step"] - base_step)
             for c in metrics["curve"] if c["step"] >= base_step]
    return int(metrics["step"]) - base_step, metrics["train_minutes"] - base_min, curve


def draw_outliers(by_draw, threshold=0.5, top=5):
    """Lines naming the test images that one noise draw scores far worse than the others.

    `by_draw` is `(draws, n_images)` bits/dim; an image is an outlier in a draw when it
    scores more than `threshold` bits/dim above its median over all draws.
    """
    excess = by_draw - np.median(by_draw, axis=0)
    lines = []
    for d, row in enumerate(excess):
        idx = np.flatnonzero(row > threshold)
        if idx.size:
            worst = idx[np.argsort(-row[idx])][:top]
            lines.append(f"draw {d}: {idx.size} image(s) > {threshold} bits/dim above their median, adding "
                         f"{row[idx].sum() / by_draw.shape[1]:.4f} to the draw's mean; worst (test index: bpd, median): "
                         + ", ".join(f"{i}: {by_draw[d, i]:.2f}, {by_draw[d, i] - row[i]:.2f}" for i in worst))
    return lines


def load_live_weights(model, run, step):
    """Loads into `model` the live (not moving-average) weights of the last
    checkpoint of `run`, which must be at `step` (the run's end).

    `tfflows train --ema` writes the EMA of the weights to `model.weights.h5`;
    late in a cosine decay the live weights can be ahead of that average (issue
    #11, stage 18). The checkpoint's `model.keras` holds the live weights and is
    loaded with Keras' `safe_mode`. Returns the checkpoint's path.
    """
    ckpt = training.latest_checkpoint(os.path.join(run, "checkpoints"))
    if ckpt is None:
        raise ValueError(f"--live-weights: {run} has no checkpoint (checkpoints/LATEST is missing)")
    at = int(training.read_state(ckpt)["step"])
    if at != int(step):
        raise ValueError(f"--live-weights: the last checkpoint {ckpt} is at step {at}, not at the run's "
                         f"end (step {step}); its weights are not the ones the run finished with")
    live, _ = training.load_checkpoint(ckpt)
    model.set_weights(live.get_weights())
    return ckpt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--key", required=True, help="e.g. glow-mnist (model-preset)")
    p.add_argument("--data", required=True, help="full MNIST .npz for the test split")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--command", required=True, help="the command that trained the run")
    p.add_argument("--note", default="")
    p.add_argument("--cores", type=int, default=2, help="CPU cores the run had (for CPU-hours)")
    p.add_argument("--cpu-hours", type=float, default=None,
                   help="core-hours of this run when --cores changed during it (default: cores x minutes)")
    p.add_argument("--hardware-note", default="shared with other jobs while training",
                   help="how the machine was shared during the run (goes into zoo/<key>/history.json)")
    p.add_argument("--continues", action="store_true",
                   help="the run started from the shipped weights of --key (--init-from): add "
                        "its steps, minutes and curve to the shipped stage(s) before it")
    p.add_argument("--resumed", action="store_true",
                   help="with --continues: the run resumed (--resume) the checkpoint at which the last shipped "
                        "trunk stage stopped; count only its steps, minutes and curve after that point")
    p.add_argument("--cooldown", action="store_true",
                   help="with --continues: the run is a short decay to a low learning rate from the shipped "
                        "weights (a cooldown branch); the card projects from it and the stage before together")
    p.add_argument("--net-kernels-float16", action="store_true",
                   help="store the coupling networks' kernels as float16 (training.store_net_kernels_float16) "
                        "to fit a wider model under the 15 MB limit; the figures are measured on the rounded weights")
    p.add_argument("--live-weights", action="store_true",
                   help="ship the live weights of the run's last checkpoint (which must be at the run's end) "
                        "instead of the EMA that `tfflows train --ema` writes to model.weights.h5")
    args = p.parse_args()
    if args.cooldown and not args.continues:  # before the slow evaluation
        p.error("--cooldown needs --continues (a cooldown continues a shipped stage)")
    if args.resumed and (args.cooldown or not args.continues):
        p.error("--resumed needs --continues and not --cooldown (it continues the last shipped trunk stage)")

    with open(os.path.join(args.run, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(args.run, "metrics.json")) as f:
        metrics = json.load(f)
    check_shippable(cfg, args.key)  # before anything is evaluated or overwritten
    manifest = {args.key: read_record(args.key)} if read_record(args.key) else {}
    base_step, base_min = 0, 0.0
    if args.resumed:
        base_step, base_min = resume_point(manifest[args.key].get("stages") or [])
        if metrics["step"] <= base_step:
            p.error(f"--resumed: the run is at step {metrics['step']}, not past the shipped trunk's step {base_step}")
    model = builders.build(cfg["model"], cfg["preset"], cfg.get("overrides", {}))
    model.load_weights(os.path.join(args.run, "model.weights.h5"))
    if args.live_weights:
        print(f"{args.key}: live weights of {load_live_weights(model, args.run, metrics['step'])}")
    emb = zdata.load_arrays("mnist", "test", limit=500)
    storage = "float32"
    if args.net_kernels_float16:
        # Measure what is shipped: the rounded weights, loaded back from the file.
        before = training.evaluate_bpd(model, emb, draws=4, seed=1234)[0]
        rounded = os.path.join(args.run, "ship-net-kernels-float16.weights.h5")
        training.save_inference_weights(model, rounded, net_kernels_float16=True)
        n16, n = training.float16_entries(rounded)
        model.load_weights(rounded)
        os.remove(rounded)

    test = zdata.load_arrays(args.data, "test")
    by_draw = training.bpd_per_draw(model, test, draws=args.draws, seed=1234)
    mean, se, per_draw = training.summarize_bpd(by_draw)
    for line in draw_outliers(by_draw):
        print(f"{args.key}: {line}")
    bpd500, se500, _ = training.evaluate_bpd(model, emb, draws=4, seed=1234)
    # Bin centres, no noise: the exact figure tests/test_pretrained.py holds the file to (1e-6);
    # for a model with a learned dequantizer, its flow's density there (the flow without it).
    flow_only = model
    learned = getattr(model, "dequantizer", None) is not None  # a learned dequantizer ships with the weights
    if learned:
        flow_only = builders.copy_flow_weights(model, builders.build(
            cfg["model"], cfg["preset"], dict(cfg.get("overrides", {}), dequantize="uniform")))
    centres = np.asarray(flow_only.bits_per_dim((emb.astype("float32") + 0.5) / 256.0), dtype="float64")
    if args.net_kernels_float16:
        storage = (f"coupling-network kernels ({n16:,} of {n:,} values) stored as float16, the rest float32; "
                   f"embedded 500 test images {before:.5f} bits/dim in float32, {bpd500:.5f} as stored")
        print(f"{args.key}: {storage}")
    print(f"{args.key}: test bpd {mean:.4f} ± {se:.4f} ({args.draws} draws {per_draw}); "
          f"embedded 500: {bpd500:.4f}")

    os.makedirs(builders.WEIGHTS_DIR, exist_ok=True)
    fname = f"{args.key}.weights.h5"
    dest = os.path.join(builders.WEIGHTS_DIR, fname)
    if learned and args.key in manifest and builders.shipped_dequantize(args.key) == "uniform":
        keep_uniform(args.key)
    # Weights only, no optimizer state; re-rounding float16-rounded kernels is exact.
    training.save_inference_weights(model, dest, net_kernels_float16=args.net_kernels_float16)
    card_dir = os.path.join(ROOT, "zoo", args.key)
    steps, minutes, curve = stage_span(metrics, base_step, base_min)
    dtype = cfg.get("dtype", "float32")  # runs from before --dtype were float32
    stage = dict(command=args.command, steps=steps, minutes=round(minutes, 1),
                 cpu_hours=round(args.cpu_hours if args.cpu_hours is not None else args.cores * minutes / 60.0, 2),
                 cores=args.cores, run_step=int(metrics["step"]), run_minutes=round(metrics["train_minutes"], 3),
                 recipe=dict(lr=cfg["lr"], warmup_steps=cfg["warmup_steps"], decay=cfg["decay"],
                             decay_steps=cfg.get("decay_steps"), ema=cfg.get("ema"), dtype=dtype,
                             weights="live" if args.live_weights else ("ema" if cfg.get("ema") else "live")),
                 date=datetime.date.today().isoformat(), hardware=args.hardware_note,
                 test_bpd=round(mean, 4))
    if args.cooldown:
        stage["cooldown"] = True
    stages = [stage]
    if args.continues:
        prev = manifest[args.key]
        stages = prev.get("stages") or [dict(
            command=prev["command"], steps=prev["train_steps"], minutes=round(prev["train_minutes"], 1),
            cpu_hours=prev["cpu_hours"], cores=2, recipe={k: prev["recipe"][k] for k in ("lr", "warmup_steps", "decay")},
            date=prev["date"])]
        stages = stages + [stage]
        with open(os.path.join(card_dir, "curve.json")) as f:
            old = json.load(f)
        m0, s0 = prev["train_minutes"], prev["train_steps"]
        # The new run's step-0 point re-measures the shipped weights: skip it.
        curve = old + [dict(c, minutes=round(c["minutes"] + m0, 2), step=c["step"] + s0) for c in curve
                       if c["step"] > 0]
    arch = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in builders.PRESETS[cfg["model"]][cfg["preset"]].items()}
    arch.update({k: v for k, v in cfg.get("overrides", {}).items() if k != "dequantize"})
    entry = dict(
        file=fname, sha256=builders.sha256_file(dest), size_bytes=os.path.getsize(dest), storage=storage,
        model=cfg["model"], preset=cfg["preset"], architecture=arch, params=int(model.count_params()),
        # A learned dequantizer ships with the weights: pretrained=True then builds it (builders.shipped_dequantize).
        **({"dequantize": "variational"} if learned else {}),
        test_bpd=round(mean, 4), test_bpd_stderr=round(se, 4), test_images=int(test.shape[0]),
        test_draws=args.draws, test_bpd_per_draw=[round(d, 4) for d in per_draw],
        embedded_test500_bpd=round(bpd500, 4), embedded_test500_centres_bpd=float(centres.mean()),
        train_steps=sum(st["steps"] for st in stages),
        train_minutes=round(sum(st["minutes"] for st in stages), 1),
        cpu_hours=round(sum(st["cpu_hours"] for st in stages), 2),
        stages=stages,
        recipe=dict(batch_size=cfg["batch_size"], lr=cfg["lr"], warmup_steps=cfg["warmup_steps"],
                    decay=cfg["decay"], clipnorm=cfg["clipnorm"], ema=cfg.get("ema"), optimizer="Adam", jit=cfg["jit"],
                    weights=stage["recipe"]["weights"],
                    dtype=dtype,
                    backend=cfg["backend"],
                    dequantization=("variational (Flow++), 8-bit" if learned
                                    else "uniform, 8-bit")),
        command=" && ".join(st["command"] for st in stages),
        date=datetime.date.today().isoformat(),
        hardware=f"{platform.machine()} CPU, {args.cores} core(s) for the last stage, no GPU; {args.hardware_note}",
    )
    write_record(args.key, entry)
    total = sum(e["size_bytes"] for e in builders.read_manifest().values())
    if total >= 40e6:
        print(f"{args.key}: WARNING the shipped weights now total {total / 1e6:.2f} MB, over the package's 40 MB "
              f"(tests/test_pretrained.py fails): store kernels as float16 (--net-kernels-float16) or drop a file")

    os.makedirs(card_dir, exist_ok=True)
    plot_curve(curve, os.path.join(card_dir, "curve.png"), f"{args.key}: test bits/dim vs CPU minutes")
    images.write_samples(model, os.path.join(card_dir, "samples.png"), seed=0)
    with open(os.path.join(card_dir, "curve.json"), "w") as f:
        json.dump(curve, f, indent=1)
    write_card(card_dir, args, entry, curve, model)
    print(f"shipped {dest} ({entry['size_bytes'] / 1e6:.2f} MB) and {card_dir}/")


def weights_text(recipe):
    """The recipe row's words for which weights were shipped."""
    if not recipe.get("ema"):
        return "no weight averaging"
    if recipe.get("weights") == "live":
        return (f"weights = the live training weights of the run's last checkpoint (`tools/ship.py --live-weights`), "
                f"not the EMA (momentum {recipe['ema']}) that `tfflows train` writes")
    return f"weights = EMA of the training weights (momentum {recipe['ema']})"


def write_card(card_dir, args, e, curve, model):
    rows = []
    for minutes in (4, 8, 12, 12.5, 20, 30, 60):
        ours = curve_at(curve, minutes)
        if ours is None:
            continue
        nf = [f"{name.split(' (')[0]}: {b:.2f}" for name, pts in NORMFLOWS.items() for m, b in pts if m == minutes]
        rows.append(f"| {minutes:g} | {ours:.3f} | {'; '.join(nf) or '-'} |")
    published = PUBLISHED.get(e["model"])
    last = curve[-1] if curve else None
    slope = ""
    if len(curve) >= 3:
        (m0, b0), (m1, b1) = (curve[-3]["minutes"], curve[-3]["test_bpd"]), (last["minutes"], last["test_bpd"])
        rate = (b0 - b1) / max(m1 - m0, 1e-9) * 60
        slope = (f"Over the last {m1 - m0:.0f} minutes of the curve test bits/dim fell by {b0 - b1:.3f} "
                 f"({rate:.2f} per CPU-hour at that rate, which slows as training goes on).")
    dequantizer = getattr(model, "dequantizer", None)
    dequantizer_text = (f" (plus the learned dequantizer, {int(dequantizer.count_params()):,} parameters)"
                        if dequantizer is not None else "")
    nice_note = ""
    if e["model"] == "nice":
        nice_note = ("\nThe NICE paper reports a test log-likelihood of 1980.50 nats on MNIST, with data "
                     "dequantized by uniform noise of width 1/256 and rescaled to [0, 1]. In these units "
                     "that is (-1980.50 + 784 ln 256) / (784 ln 2) = **4.36 bits/dim**.\n")
    text = f"""# {e['model']} on MNIST (`{args.key}`)

`tfflows.zoo.{e['model']}(preset="{e['preset']}", pretrained=True)` loads these weights
(`tfflows/zoo/weights/{e['file']}`, sha256 `{e['sha256'][:16]}...`, {e['size_bytes'] / 1e6:.2f} MB).

| | |
| --- | --- |
| data | MNIST, 60,000 training images; test on the full 10,000-image test set |
| preprocessing | {PREPROCESSING[e['recipe'].get('dequantization', 'uniform, 8-bit')].replace('<key>', args.key)} |
| architecture | `{json.dumps(e['architecture'])}`{dequantizer_text} |
| parameters | {e['params']:,} |
| storage | {e.get('storage', 'float32')} |
| **test bits/dim** | **{e['test_bpd']:.4f} ± {e['test_bpd_stderr']:.4f}** (standard error over 10,000 images; mean of {e['test_draws']} noise draws: {e['test_bpd_per_draw']}) |
| bits/dim on the 500 test images shipped in the package | {e['embedded_test500_bpd']:.4f} (`tfflows evaluate --pretrained --model {e['model']} --preset {e['preset']} --data mnist --limit 500`; checked by `tests/test_pretrained.py`) |
| training | {e['train_steps']:,} steps of batch {e['recipe']['batch_size']}, {e['train_minutes']:.1f} minutes ({e['cpu_hours']} CPU-hours) |
| stages | {'; '.join(f"{i + 1}: {st['steps']:,} steps, {st['minutes']} min ({st['cpu_hours']} CPU-hours), {st['recipe'].get('dtype', 'float32')}, lr {st['recipe']['lr']} decay {st['recipe']['decay']}" + (f", EMA {st['recipe']['ema']}" if st['recipe'].get('ema') else "") + (", ships its live weights" if st['recipe'].get('ema') and st['recipe'].get('weights') == "live" else "") + (f" ({st['hardware']})" if st.get('hardware') else "") for i, st in enumerate(e['stages']))} |
| recipe (last stage) | Adam lr {e['recipe']['lr']}, linear warm-up {e['recipe']['warmup_steps']} steps, decay {e['recipe']['decay']}, global-norm clip {e['recipe']['clipnorm']}, {weights_text(e['recipe'])}, backend {e['recipe']['backend']}, jit {e['recipe']['jit']} |
| hardware | {e['hardware']} |
| date | {e['date']} |
{nice_note}
## Reproduce

Training ran in {len(e['stages'])} stage(s); each later stage starts from the weights the one before
it wrote (`--init-from RUN/model.weights.h5`, the same weights that were shipped), except a trunk
run resumed with `--resume`, which continues its own last checkpoint (the progress table names the
stage each one starts from):

```sh
{chr(10).join(st['command'] for st in e['stages'])}
python tools/ship.py --run RUN_DIR --key {args.key} --data ../shared/data/mnist.npz --command "..." [--continues]
```

Evaluate the shipped file: `tfflows evaluate --pretrained --model {e['model']} --preset {e['preset']} --data ../shared/data/mnist.npz --draws 4`.

## Learning curve

Test bits/dim on the first 2000 test images (one fixed noise draw) against training minutes on
the 2-core machine (`curve.json`, `curve.png`), the stages joined end to end. The `hardware`
row and the stage commands above say how the CPU was shared; where a stage shared it with other
jobs, each of its minutes bought less than a minute on an idle machine.

![learning curve](curve.png)

| minutes | tfflows {e['model']} | normflows Glow (same machine, idle; issue #11) |
| --- | --- | --- |
{chr(10).join(rows)}

{progress_text(e) or slope}
{f"The published GPU figure for {e['model']} on MNIST is {published} bits/dim; this model is at {e['test_bpd']:.2f}. Continuing from these weights (`tfflows train --init-from pretrained ...` or `--resume`) lowers it further; the curve above says by how much per CPU-hour." if published else ""}

## Samples

Rows: temperature 0.5, 0.7, 1.0 (`tfflows sample --pretrained --model {e['model']} --preset {e['preset']}`).

![samples](samples.png)

{args.note}
"""
    with open(os.path.join(card_dir, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
