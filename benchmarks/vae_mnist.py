#!/usr/bin/env python3
"""VAEs with flow posteriors on dynamically binarized MNIST (issue #45, item 5).

`python -m benchmarks.vae_mnist` (from the repo root) trains, one after the
other in this process, a VAE for each of `--posteriors` (`gaussian`,
`planar`, `iaf`, `householder`, `sylvester-orthogonal`,
`sylvester-householder`, `sylvester-triangular`; `tfflows.zoo.vae`) with
one shared recipe:

* data: the real MNIST (`--data`, an npz with uint8 `x_train`, `x_test`;
  never downloaded). Training images are binarized afresh for every batch
  (`tfflows.vae.DynamicBinarization`, seeded); the test set once, with the
  fixed seed `_common.EVAL_NOISE_SEED`;
* model: the same MLP encoder and decoder (`--hidden`, default 300,300; the
  encoder's output `h` of `--context-dim` 256 features is the posterior's
  context), `--latent-dim` 64, `--flows` 4 flow layers (the paper's code's
  defaults: O-SNF with 8 orthonormal columns, H-SNF with 8 reflections,
  MADEs of 320 units);
* training: `--optimizer adam` (`--lr` 1e-3, global-norm clipping at 100;
  `adamax` with lr 5e-4 and eps 1e-7 is the paper's), batches of `--batch`
  100, one posterior draw per image, the KL weight ramped from 0 to 1 over
  `--warmup-epochs` epochs (2: the paper's 100 epochs of a run of up to
  2000 would take most of a CPU budget; the same steps for every model,
  which the slowest, H-SNF at about 0.2 s a step on one core, spends a
  seventh of 30 minutes on), for `--minutes` of training wall clock per model
  (the first, compiling step included; `--max-steps` caps the steps too),
  on `--threads` threads;
* evaluation: the test -ELBO (one draw per image, as the paper) on the full
  10k test set, and the importance-sampled NLL (`--k` draws, Burda et al.)
  on the first `--nll-subset` test images, with the -ELBO of the same
  images beside it.

It writes `vae_mnist.json` (after every model, so an interrupted run
resumes: a model already in the file is skipped unless `--force`) and
`vae_mnist.md` (the table, with the Sylvester paper's Table 1 -ELBO beside
ours and the orderings checked) to `--out-dir` (default
`benchmarks/results/<date>-<machine>/`, see `_common.run_results_dir`).
`--save-models` also writes each trained model as `vae_<posterior>.keras`.

`--quick` is a smoke run (the full-size models, 40 steps each on 2000
images, small evaluations, written to a temporary folder unless
`--out-dir`): it checks the script and measures the step times, it is not
a result.

The paper's numbers are on *statically* binarized MNIST with gated
convolutional networks, early stopping and k = 5000; ours are on
dynamically binarized MNIST with MLPs and a CPU budget, so compare the
orderings, not the values.
"""
import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
import traceback

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import EVAL_NOISE_SEED, default_data, peak_rss_mb, run_results_dir  # noqa: E402

POSTERIORS = ("gaussian", "planar", "iaf", "householder", "sylvester-orthogonal", "sylvester-householder",
              "sylvester-triangular")
OUTPUTS = ("vae_mnist.json", "vae_mnist.md")
#: van den Berg et al. 2018, Table 1, static MNIST, -ELBO in nats (as quoted in issue #45).
PAPER_NEG_ELBO = {"gaussian": 86.55, "planar": 86.06, "iaf": 84.20, "sylvester-orthogonal": 83.32}
#: The paper's ordering (worst first), checked on our test -ELBO.
PAPER_ORDER = ("gaussian", "planar", "iaf", "sylvester-orthogonal")
LABELS = {"gaussian": "VAE (Gaussian)", "planar": "planar", "iaf": "IAF", "householder": "Householder",
          "sylvester-orthogonal": "O-SNF", "sylvester-householder": "H-SNF", "sylvester-triangular": "T-SNF"}
QUICK = dict(n_train=2000, max_steps=40, steps_per_execution=5, test_n=500, nll_subset=20, k=100, minutes=1.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--posteriors", default=",".join(POSTERIORS), help=f"comma-separated subset of {POSTERIORS}")
    p.add_argument("--data", default=default_data(), help="npz with uint8 x_train, x_test (the real MNIST)")
    p.add_argument("--minutes", type=float, default=30.0, help="training wall clock per model")
    p.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0: no cap)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--optimizer", choices=("adam", "adamax"), default="adam")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (adam), 5e-4 (adamax)")
    p.add_argument("--warmup-epochs", type=float, default=2.0,
                   help="KL warm-up, in epochs of the training set (the same steps for every model)")
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--flows", type=int, default=4)
    p.add_argument("--hidden", default="300,300", help="encoder/decoder hidden widths")
    p.add_argument("--context-dim", type=int, default=256, help="the encoder's output h, the posterior's context")
    p.add_argument("--k", type=int, default=1000, help="importance samples of the NLL estimate")
    p.add_argument("--nll-subset", type=int, default=1000, help="test images the NLL is estimated on")
    p.add_argument("--test-n", type=int, default=10000, help="test images of the -ELBO")
    p.add_argument("--n-train", type=int, default=0, help="use the first N training images (0: all)")
    p.add_argument("--eval-batch", type=int, default=10000, help="rows (images x draws) per evaluation pass")
    p.add_argument("--steps-per-execution", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="initial weights, batch order, binarization, noise")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--save-models", action="store_true", help="write vae_<posterior>.keras for each model")
    p.add_argument("--force", action="store_true", help="retrain models already in the output's json")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    args.posteriors = [s.strip() for s in args.posteriors.split(",") if s.strip()]
    bad = [s for s in args.posteriors if s not in POSTERIORS]
    if bad:
        p.error(f"unknown posteriors {bad}; choose from {POSTERIORS}")
    args.hidden = tuple(int(w) for w in args.hidden.split(","))
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 5e-4
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        if args.out_dir is None:
            args.out_dir = tempfile.mkdtemp(prefix="vae_mnist_quick_")
    if args.out_dir is None:
        args.out_dir = run_results_dir(*OUTPUTS)
    return args


def set_backend(args):
    """Backend and thread counts; must run before `import keras`."""
    t = str(int(args.threads))
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ["TF_NUM_INTRAOP_THREADS"] = t
    os.environ["TF_NUM_INTEROP_THREADS"] = t
    os.environ["OMP_NUM_THREADS"] = t
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.backend == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   + ("false" if args.threads == 1 else "true")
                                   + f" intra_op_parallelism_threads={args.threads}").strip()


def load_mnist_uint8(path):
    """`(x_train, x_test)` uint8 `(N, 28, 28)` from the npz, checked."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"MNIST not found at {path}; pass --data PATH to an npz with uint8 x_train, "
                                f"x_test (this script never downloads).")
    with np.load(path) as f:
        missing = [k for k in ("x_train", "x_test") if k not in f.files]
        if missing:
            raise ValueError(f"{path} has no {missing}; it holds {f.files}.")
        x_train, x_test = f["x_train"], f["x_test"]
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{path}: {name} must be uint8 (N, 28, 28); got {x.dtype} {x.shape}.")
    return x_train, x_test


def mean_se(v):
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def make_optimizer(args):
    import keras

    from tfflows.models import default_optimizer

    if args.optimizer == "adamax":
        return keras.optimizers.Adamax(learning_rate=args.lr, epsilon=1e-7)
    return default_optimizer(learning_rate=args.lr)


def train_one(posterior, args, x_train, x_test_bin):
    """Trains one model for the budget and evaluates it; returns its result dict."""
    import keras

    import tfflows
    from tfflows.vae import DynamicBinarization

    keras.utils.set_random_seed(args.seed)
    steps_per_epoch = x_train.shape[0] // args.batch
    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))
    model = tfflows.zoo.vae(posterior, latent_dim=args.latent_dim, flows=args.flows, hidden=args.hidden,
                            context_dim=args.context_dim, warmup_steps=warmup_steps, seed=args.seed)
    model.compile(optimizer=make_optimizer(args), steps_per_execution=args.steps_per_execution)
    params = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    params_posterior = int(sum(int(np.prod(v.shape)) for v in model.posterior.trainable_variables))
    data = DynamicBinarization(x_train, batch_size=args.batch, seed=args.seed)
    budget = Budget(model, args.minutes * 60.0, args.max_steps, posterior, steps_per_epoch)
    print(f"[{posterior}] {params:,} parameters ({params_posterior:,} in the posterior); warm-up {warmup_steps} "
          f"steps; budget {args.minutes} min" + (f" or {args.max_steps} steps" if args.max_steps else ""),
          flush=True)
    model.fit(data, epochs=10**6, verbose=0, callbacks=[budget])
    train = budget.summary()
    print(f"[{posterior}] trained {train['steps']} steps ({train['epochs']:.2f} epochs) in {train['minutes']:.2f} "
          f"min, {train['ms_per_step']} ms/step", flush=True)

    t0 = time.perf_counter()
    ne = model.neg_elbo(x_test_bin[:args.test_n], seed=EVAL_NOISE_SEED, batch=args.eval_batch)
    t_elbo = time.perf_counter() - t0
    sub = x_test_bin[:args.nll_subset]
    t0 = time.perf_counter()
    nll = model.importance_nll(sub, k=args.k, seed=EVAL_NOISE_SEED + 1, batch=args.eval_batch)
    t_nll = time.perf_counter() - t0
    ne_mean, ne_se = mean_se(ne)
    nll_mean, nll_se = mean_se(nll)
    sub_mean, _ = mean_se(ne[:args.nll_subset])
    gap_mean, gap_se = mean_se(ne[:args.nll_subset] - nll)
    print(f"[{posterior}] test -ELBO {ne_mean:.2f} +- {ne_se:.2f} ({len(ne)} images, {t_elbo:.1f} s); NLL (k={args.k}) "
          f"{nll_mean:.2f} +- {nll_se:.2f} on {len(nll)} images ({t_nll:.1f} s), -ELBO there {sub_mean:.2f}",
          flush=True)
    saved = None
    if args.save_models:
        saved = f"vae_{posterior}.keras"
        model.save(os.path.join(args.out_dir, saved))
    return {
        "posterior": posterior, "params": params, "params_posterior": params_posterior,
        "warmup_steps": warmup_steps, **train,
        "test_neg_elbo": round(ne_mean, 4), "test_neg_elbo_se": round(ne_se, 4), "test_n": int(len(ne)),
        "nll": round(nll_mean, 4), "nll_se": round(nll_se, 4), "nll_n": int(len(nll)), "k": args.k,
        "subset_neg_elbo": round(sub_mean, 4), "elbo_gap": round(gap_mean, 4), "elbo_gap_se": round(gap_se, 4),
        "eval_elbo_s": round(t_elbo, 1), "eval_nll_s": round(t_nll, 1),
        "paper_neg_elbo": PAPER_NEG_ELBO.get(posterior), "saved": saved,
        # Per image on the NLL subset (the same images for every model): paired comparisons.
        "per_image_neg_elbo_head": [round(float(v), 3) for v in ne[:args.nll_subset]],
        "per_image_nll": [round(float(v), 3) for v in nll],
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def Budget(model, seconds, max_steps, label, steps_per_epoch):
    """A Keras callback that stops `fit` after `seconds` of training (or
    `max_steps` steps) and records the step times and the epoch curve."""
    import keras

    class _Budget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps = []  # (seconds since the start, optimizer step)
            self.curve = []
            self.t_log = 0.0

        # Steps are counted from the callbacks' batch indices: on JAX the
        # variables (optimizer.iterations too) are not readable during fit.
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()
            self.epoch = 0
            self.step = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter() - self.t0
            self.step = step = self.epoch * steps_per_epoch + batch + 1
            self.stamps.append((now, step))
            if now - self.t_log > 60.0:
                self.t_log = now
                print(f"[{label}] {now / 60:.1f} min, step {step}, loss {float((logs or {}).get('loss', 'nan')):.2f}, "
                      f"-ELBO {float((logs or {}).get('neg_elbo', 'nan')):.2f} (this epoch's running means)",
                      flush=True)
            if now >= seconds or (max_steps and step >= max_steps):
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.curve.append({"epoch": epoch + 1, "minutes": round((time.perf_counter() - self.t0) / 60, 3),
                               "step": self.step, **{k: round(float(v), 4) for k, v in logs.items()}})

        def summary(self):
            steps = self.stamps[-1][1] if self.stamps else 0
            seconds_total = self.stamps[-1][0] if self.stamps else 0.0
            # Step time: after the first (compiling) executions, per optimizer step.
            rates = [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(self.stamps[2:], self.stamps[3:]) if s1 > s0]
            return {"steps": steps, "epochs": round(steps / steps_per_epoch, 3),
                    "minutes": round(seconds_total / 60, 3),
                    "first_execution_s": round(self.stamps[0][0], 2) if self.stamps else None,
                    "ms_per_step": round(1000 * float(np.median(rates)), 2) if rates else None,
                    "curve": self.curve}

    return _Budget()


def fmt(v, spec=".2f"):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def orderings(results):
    """The paper's pairwise orderings (worse first) checked on our paired test -ELBO."""
    rows = []
    order = [p for p in PAPER_ORDER if p in results]
    for a, b in zip(order, order[1:]):
        ra, rb = results[a], results[b]
        row = {"worse": a, "better": b, "paper": [PAPER_NEG_ELBO[a], PAPER_NEG_ELBO[b]],
               "ours": [ra["test_neg_elbo"], rb["test_neg_elbo"]], "holds": ra["test_neg_elbo"] > rb["test_neg_elbo"]}
        da, db = ra.get("per_image_neg_elbo_head"), rb.get("per_image_neg_elbo_head")
        if da and db and len(da) == len(db) > 1:  # paired over the same images
            row["paired_diff"], row["paired_diff_se"] = (round(v, 4) for v in mean_se(np.subtract(da, db)))
        rows.append(row)
    return rows


def markdown(report):
    a = report["args"]
    res = report["results"]
    lines = [f"# VAEs with flow posteriors on dynamically binarized MNIST ({report['machine']['date'][:10]})", "",
             f"{report['machine']['cpu']}, {a['threads']} thread(s), {report['backend']}; "
             f"{a['minutes']} min of training per model"
             + (f" (at most {a['max_steps']} steps)" if a["max_steps"] else "")
             + f"; batch {a['batch']}, {a['optimizer']} lr {a['lr']}, KL warm-up {a['warmup_epochs']} epochs; "
             f"MLP {a['hidden']} encoder/decoder, h = {a['context_dim']}, latent {a['latent_dim']}, "
             f"{a['flows']} flows. -ELBO: one draw per image on {a['test_n']} test images; NLL: k = {a['k']} "
             f"importance samples on the first {a['nll_subset']} test images.", ""]
    if report.get("quick"):
        lines += ["**`--quick` smoke run: not a result.**", ""]
    lines += ["| posterior | params (posterior) | steps | epochs | train min | ms/step | test -ELBO (nats) | "
              "NLL, k samples (nats) | -ELBO on the NLL images | paper -ELBO (static MNIST) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in POSTERIORS:
        if p not in res:
            continue
        r = res[p]
        if "error" in r:
            lines.append(f"| {LABELS[p]} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        lines.append(f"| {LABELS[p]} | {r['params']:,} ({r['params_posterior']:,}) | {r['steps']} | "
                     f"{r['epochs']:.1f} | {r['minutes']:.1f} | {fmt(r['ms_per_step'], '.1f')} | "
                     f"{r['test_neg_elbo']:.2f} ± {r['test_neg_elbo_se']:.2f} | {r['nll']:.2f} ± {r['nll_se']:.2f} | "
                     f"{r['subset_neg_elbo']:.2f} | {fmt(r['paper_neg_elbo'])} |")
    lines += ["", "The paper (van den Berg et al. 2018, Table 1): static MNIST, gated convolutional encoder and "
              "decoder, Adamax, 100 warm-up epochs, early stopping, NLL with k = 5000. Orderings of the paper "
              "checked on our test -ELBO:", ""]
    for o in report.get("orderings", []):
        paired = (f" (paired difference on the NLL images {o['paired_diff']:.2f} ± {o['paired_diff_se']:.2f})"
                  if "paired_diff" in o else "")
        lines.append(f"- {LABELS[o['worse']]} > {LABELS[o['better']]}: paper {o['paper'][0]} > {o['paper'][1]}; "
                     f"ours {o['ours'][0]:.2f} vs {o['ours'][1]:.2f}{paired}: "
                     f"**{'holds' if o['holds'] else 'does not hold'}**")
    return "\n".join(lines)


def write(report, out_dir):
    with open(os.path.join(out_dir, "vae_mnist.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "vae_mnist.md"), "w") as f:
        f.write(markdown(report) + "\n")


def main(argv=None):
    args = parse_args(argv)
    set_backend(args)
    from benchmarks.glow_mnist import machine_info, warn_if_busy

    os.makedirs(args.out_dir, exist_ok=True)
    info = machine_info()
    print(f"# vae_mnist on {info['cpu']} x{info['cpu_count']}, {info['date']}; out {args.out_dir}", flush=True)
    if args.quick:
        print("# --quick: a smoke run; its numbers are not results", flush=True)
    warn_if_busy(info)

    import keras

    if args.backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        except RuntimeError:  # TensorFlow already initialised (main called in-process): keep its threads
            print("# TensorFlow was initialised before: its thread counts are left as they are", flush=True)
    from tfflows.vae import binarize

    x_train, x_test = load_mnist_uint8(args.data)
    if args.n_train:
        x_train = x_train[:args.n_train]
    args.test_n = min(args.test_n, x_test.shape[0])
    args.nll_subset = min(args.nll_subset, args.test_n)
    x_test_bin = binarize(x_test, seed=EVAL_NOISE_SEED)  # the fixed test binarization

    path = os.path.join(args.out_dir, "vae_mnist.json")
    previous = {}
    if os.path.exists(path) and not args.force:
        with open(path) as f:
            previous = json.load(f).get("results", {})
    report = {"benchmark": "vae_mnist", "quick": bool(args.quick), "machine": info, "backend": keras.backend.backend(),
              "argv": sys.argv[1:] if argv is None else list(argv),
              "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
              "versions": {"keras": keras.__version__, "numpy": np.__version__},
              "data": {"path": args.data, "n_train": int(x_train.shape[0]), "test_binarization_seed": EVAL_NOISE_SEED},
              "results": {p: r for p, r in previous.items() if "error" not in r}}
    t_run = time.perf_counter()
    for posterior in args.posteriors:
        if posterior in report["results"]:
            print(f"[{posterior}] already in {path}; skipped (--force retrains)", flush=True)
            continue
        try:
            report["results"][posterior] = train_one(posterior, args, x_train, x_test_bin)
        except Exception as err:  # noqa: BLE001 - record it, go on with the next model
            traceback.print_exc()
            print(f"[{posterior}] FAILED: {type(err).__name__}: {err}", flush=True)
            report["results"][posterior] = {"posterior": posterior, "error": f"{type(err).__name__}: {err}"}
        report["orderings"] = orderings({p: r for p, r in report["results"].items() if "error" not in r})
        report["run_minutes"] = round((time.perf_counter() - t_run) / 60, 2)
        report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        write(report, args.out_dir)
    md = markdown(report)
    print("\n" + md, flush=True)
    print(f"# wrote {args.out_dir}/vae_mnist.json, vae_mnist.md ({report.get('run_minutes')} min)", flush=True)
    return 1 if any("error" in r for r in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
