#!/usr/bin/env python3
"""Density estimation benchmark: tfflows MAF/NSF against zuko, nflows and TFP
on FFJORD's 2-D toy sets (and, with `--tabular`, the 64-D 8x8 digits).

`python -m benchmarks.density2d` (from the repo root), in one run:

1. draws every set once with `tfflows.datasets` and a fixed seed (`--n-train`
   training points, `--n-test` test points, plus the closed-form log-density
   of the test points for checkerboard and 8gaussians) and saves them to
   `density2d_data.npz` in the output folder: every framework reads these
   arrays;
2. runs each model in its own process, one after the other (never two at
   once), all pinned to `--threads` threads: tfflows and TFP under this
   interpreter (`benchmarks/density2d_tf.py`), zuko and nflows under the
   PyTorch peers' one (`--peers-python`, `benchmarks/density2d_torch.py`);
   each trains on every set in turn, with the same model size (`--flows`
   MADE layers of `--hidden` widths, `--bins` spline bins on
   `[-bound, bound]`), the same batches in the same order (`--batch-size`
   by `--steps`, epochs of a shared permutation stream), the same Adam
   (beta 0.9/0.999, eps 1e-8, no clipping) and the same cosine schedule
   from `--lr` to 0;
3. measures per (set, model) the test log-likelihood in nats with its
   standard error over the test points (and, where the density is known, the
   paired gap to the true NLL of the same points), the steady-state train
   steps/s after `--warmup` steps, the time to sample `--sample-n` points
   (the second call; the first traces), and the parameter count;
4. writes `density2d.json`, `density2d.md` (tables, ratios against each
   peer, the issue's targets with MET / MISS) and `density2d.log` to
   `--out-dir` (default `benchmarks/results/<date>-<machine>/`).

tfflows trains the way a user would: `model.compile(optimizer=Adam(...))`
and `model.fit` on the numpy array of the run's batches (`--tfflows-jit`,
`--tfflows-steps-per-execution`, `--tfflows-stop-on-nan` say how). A speed
probe (`--probe-steps`, 0 to skip) also times tfflows' defaults,
`model.compile()` and `model.fit(x, batch_size=...)`, on the first set.

`--quick` is a smoke run (a few dozen steps, small sets), not a result.
"""
import argparse
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as C  # noqa: E402
from benchmarks._common import REPO_ROOT, run_results_dir  # noqa: E402
from benchmarks.glow_mnist import cpu_busy_fraction, machine_info, warn_if_busy  # noqa: E402

PEERS_PYTHON = os.environ.get("PEERS_PYTHON", "/work/peers/bin/python")
WORKERS = {"main": os.path.join(REPO_ROOT, "benchmarks", "density2d_tf.py"),
           "peers": os.path.join(REPO_ROOT, "benchmarks", "density2d_torch.py")}
OUTPUTS = ("density2d.json", "density2d.md", "density2d.log", "density2d_data.npz")
DEFAULT_MODELS = list(C.MODELS)
# The issue's targets.
CLOSED_FORM_TOL = 0.03  # tfflows NSF within this many nats of the closed-form NLL
PEER_TOL = 0.02  # tfflows no worse than the best peer by more than this
# Which tfflows model each peer model is compared with.
COUNTERPART = {"maf": "tfflows-maf", "nsf": "tfflows-nsf"}
QUICK = dict(steps=30, warmup=5, n_train=2000, n_test=2000, sample_n=1000, probe_steps=30,
             sets="moons,checkerboard", tabular_steps=20, tabular_warmup=3, tabular_sample_n=100)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", default=",".join(C.SETS), help=f"comma-separated subset of {list(C.SETS)}")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated subset of {list(C.MODELS)}")
    p.add_argument("--steps", type=int, default=3000, help="training steps per (set, model)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's lr, cosine-decayed to 0 over --steps")
    p.add_argument("--seed", type=int, default=0, help="data, batch order and initialisation")
    p.add_argument("--warmup", type=int, default=100, help="first steps left out of steps/s")
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--sample-n", type=int, default=10000)
    p.add_argument("--flows", type=int, default=5)
    p.add_argument("--hidden", default="64,64", help="MADE hidden widths")
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--bound", type=float, default=5.0,
                   help="spline interval [-B, B], identity tails outside (zuko's fixed 5; tfflows' default is 3)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every framework")
    p.add_argument("--tfflows-jit", choices=("on", "off"), default="on",
                   help="model.compile(jit_compile=...) for tfflows (on: 2x NSF steps/s here; Keras' 'auto' "
                        "turns XLA off on CPU-only machines)")
    p.add_argument("--tfflows-steps-per-execution", type=int, default=10)
    p.add_argument("--tfflows-stop-on-nan", choices=("on", "off"), default="off",
                   help="fit(stop_on_nan=...); tfflows' default is on (see the speed probe)")
    p.add_argument("--tfp-jit", choices=("on", "off"), default="off",
                   help="TFP's tf.function train step under XLA (off: as TFP's examples)")
    p.add_argument("--probe-steps", type=int, default=1000,
                   help="steps of the tfflows-defaults speed probe on the first set (0: skip)")
    p.add_argument("--tabular", action="store_true", help="also the 64-D digits benchmark")
    p.add_argument("--tabular-steps", type=int, default=800)
    p.add_argument("--tabular-batch-size", type=int, default=256)
    p.add_argument("--tabular-hidden", default="128,128")
    p.add_argument("--tabular-warmup", type=int, default=50)
    p.add_argument("--tabular-sample-n", type=int, default=500,
                   help="digits: points sampled (64 sequential MADE passes per flow: slow; 0 skips)")
    p.add_argument("--tabular-copies", type=int, default=10,
                   help="dequantized copies of each digits row (train and test)")
    p.add_argument("--peers-python", default=PEERS_PYTHON, help="interpreter with torch, zuko, nflows")
    p.add_argument("--main-python", default=sys.executable, help="interpreter with tfflows, TF, TFP")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per worker process")
    p.add_argument("--out-dir", default=None,
                   help="default: benchmarks/results/<YYYY-MM-DD>-<machine>/ (today, this machine)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run, not a result: {QUICK} unless given explicitly")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
                 if a.startswith("--")}
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [s for s in args.sets if s not in C.SETS] + [m for m in args.models if m not in C.MODELS]
    if bad:
        p.error(f"unknown sets/models {bad}; sets: {list(C.SETS)}; models: {list(C.MODELS)}")
    if args.out_dir is None:
        args.out_dir = run_results_dir(*OUTPUTS)
    return args


# ----------------------------------------------------------------------------- logging
class Log:
    """Prints and appends to `density2d.log`."""

    def __init__(self, path):
        self.f = open(path, "a")

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


# ----------------------------------------------------------------------------- data
def load_datasets_module():
    """`tfflows/datasets.py` without importing the `tfflows` package (which
    imports Keras): the module itself imports numpy only."""
    spec = importlib.util.spec_from_file_location("_tfflows_datasets",
                                                  os.path.join(REPO_ROOT, "tfflows", "datasets.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_data(path, sets, n_train, n_test, seed, tabular=False, copies=10):
    """Draws every set once and saves it to the npz `path`; returns a summary.

    Set `s`: `s/train` (n_train, 2), `s/test` (n_test, 2), from
    `tfflows.datasets.toy(s, n, seed)` with seeds `seed * 1000 + 2k` and
    `+ 2k + 1` (disjoint draws); for checkerboard and 8gaussians also
    `s/test_true_log_prob` (`toy_log_prob`) and `s/entropy` (`toy_entropy`).
    With `tabular`: `digits/train` and `digits/test`, each row of
    `tfflows.datasets.digits(split, seed)` dequantized `copies` times,
    `(counts + U[0, 1) - 8.5) / 4` (features in about [-2.1, 2.1]), and
    `digits/test_groups` (the test row of each test point).
    """
    ds = load_datasets_module()
    assert tuple(ds.TOY) == C.SETS, (ds.TOY, C.SETS)
    arrays, summary = {}, {}
    for k, name in enumerate(sets):
        s_train, s_test = seed * 1000 + 2 * k, seed * 1000 + 2 * k + 1
        arrays[f"{name}/train"] = ds.toy(name, n_train, seed=s_train)
        arrays[f"{name}/test"] = ds.toy(name, n_test, seed=s_test)
        info = dict(n_train=n_train, n_test=n_test, seed_train=s_train, seed_test=s_test)
        if name in ds.TOY_WITH_LOG_PROB:
            lp = ds.toy_log_prob(name, arrays[f"{name}/test"])
            arrays[f"{name}/test_true_log_prob"] = lp
            arrays[f"{name}/entropy"] = np.array(ds.toy_entropy(name))
            info.update(entropy=ds.toy_entropy(name), test_true_nll=float(-lp.mean()),
                        test_true_nll_se=float(lp.std(ddof=1) / math.sqrt(lp.size)))
        summary[name] = info
    if tabular:
        rng = np.random.default_rng(seed * 1000 + 999)
        for split in ("train", "test"):
            x, _ = ds.digits(split, seed=seed)
            rows = np.tile(np.arange(len(x)), copies)
            arrays[f"digits/{split}"] = ((x[rows] + rng.random((len(rows), x.shape[1]))) - 8.5).astype(
                np.float32) / 4.0
            if split == "test":
                arrays["digits/test_groups"] = rows
            summary.setdefault("digits", {})[f"n_{split}_rows"] = int(len(x))
        summary["digits"].update(copies=copies, transform="(counts + U[0,1) - 8.5) / 4")
    np.savez(path, **arrays)
    return summary


# ----------------------------------------------------------------------------- workers
def run_worker(cmd, timeout, log):
    """Runs one worker, streaming its output into the log; returns (JSON results, rc, wall_s)."""
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    noise = ("oneDNN", "cuda", "cuInit", "absl::", "WARNING: All log messages", "cpu_feature_guard",
             "To enable the following instructions", "rebuild TensorFlow")
    t0 = time.perf_counter()
    lines = []
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    timer = threading.Timer(timeout, proc.kill)  # a hung worker must not hang the run
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if not any(n in line for n in noise):
                log("    " + line.rstrip()[:3000])
        rc = proc.wait()
    finally:
        timed_out = not timer.is_alive() and proc.returncode not in (0, None)
        timer.cancel()
    if timed_out:
        rc = f"killed after the {timeout} s timeout"
    return C.json_lines("".join(lines)), rc, time.perf_counter() - t0


def worker_cmd(args, model, sets, data_path, steps, batch, hidden, warmup, sample_n, overrides=None):
    """The worker command line of `model`; `overrides` ({flag: value}) replace
    the driver's tfflows flags (the defaults probe)."""
    framework = C.MODELS[model][0]
    interp = C.INTERPRETER[framework]
    python = args.main_python if interp == "main" else args.peers_python
    flags = {"--data": data_path, "--models": model, "--sets": ",".join(sets), "--steps": steps,
             "--batch-size": batch, "--lr": repr(args.lr), "--seed": args.seed, "--flows": args.flows,
             "--hidden": hidden, "--bins": args.bins, "--bound": repr(args.bound), "--warmup": warmup,
             "--sample-n": sample_n, "--threads": args.threads}
    if framework == "tfflows":
        flags.update({"--jit": args.tfflows_jit, "--steps-per-execution": args.tfflows_steps_per_execution,
                      "--stop-on-nan": args.tfflows_stop_on_nan})
    elif framework == "tfp":
        flags["--tfp-jit"] = args.tfp_jit
    flags.update(overrides or {})
    return [python, WORKERS[interp]] + [str(t) for kv in flags.items() for t in kv]


# ----------------------------------------------------------------------------- analysis
def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def compare(results, sets):
    """Ratios of each tfflows model against each peer model of its family, per set."""
    rows = []
    for s in sets:
        by = {r["model"]: r for r in results if r.get("set") == s and "error" not in r}
        for peer, (fw, fam) in C.MODELS.items():
            mine = COUNTERPART.get(fam)
            if fw == "tfflows" or peer not in by or mine not in by:
                continue
            a, b = by[mine], by[peer]
            rows.append(dict(
                set=s, tfflows=mine, peer=peer,
                nll_diff=None if a.get("test_nll") is None or b.get("test_nll") is None
                else a["test_nll"] - b["test_nll"],
                nll_diff_se=None if a.get("test_nll_se") is None or b.get("test_nll_se") is None
                else math.hypot(a["test_nll_se"], b["test_nll_se"]),
                steps_s_ratio=_ratio(a.get("train_steps_s"), b.get("train_steps_s")),
                sample_time_ratio=_ratio(a.get("sample_s"), b.get("sample_s")),
                params_ratio=_ratio(a.get("params"), b.get("params"))))
    return rows


def targets(results, sets):
    """The issue's three targets, judged per set (MET / MISS), with the numbers."""
    out = {"closed_form": [], "vs_best_peer": [], "vs_best_peer_same_family": [], "speed": []}
    for s in sets:
        by = {r["model"]: r for r in results if r.get("set") == s and "error" not in r}
        nll = {m: r.get("test_nll") for m, r in by.items()}
        ok = {m: v for m, v in nll.items() if v is not None}
        # 1. tfflows NSF within 0.03 nats of the closed-form NLL (checkerboard, 8gaussians).
        r = by.get("tfflows-nsf")
        if r is not None and "true_nll" in r:
            gap = r.get("gap_to_true")
            out["closed_form"].append(dict(set=s, model="tfflows-nsf", test_nll=r.get("test_nll"),
                                           true_nll=r["true_nll"], gap=gap, gap_se=r.get("gap_to_true_se"),
                                           entropy=r.get("entropy"), tol=CLOSED_FORM_TOL,
                                           met=gap is not None and gap <= CLOSED_FORM_TOL))
        # 2. no worse than the best peer by more than 0.02 nats.
        mine = {m: v for m, v in ok.items() if C.MODELS[m][0] == "tfflows"}
        peers = {m: v for m, v in ok.items() if C.MODELS[m][0] != "tfflows"}
        tried_mine = [m for m in by if C.MODELS[m][0] == "tfflows"]
        if tried_mine and peers:
            best_peer = min(peers, key=peers.get)
            best_mine = min(mine, key=mine.get) if mine else None
            diff = None if best_mine is None else mine[best_mine] - peers[best_peer]
            out["vs_best_peer"].append(dict(set=s, best_tfflows=best_mine, tfflows_nll=mine.get(best_mine),
                                            best_peer=best_peer, peer_nll=peers[best_peer], diff=diff,
                                            tol=PEER_TOL, met=diff is not None and diff <= PEER_TOL))
        for fam, m in COUNTERPART.items():
            fam_peers = {p: v for p, v in peers.items() if C.MODELS[p][1] == fam}
            if m in by and fam_peers:
                bp = min(fam_peers, key=fam_peers.get)
                diff = None if ok.get(m) is None else ok[m] - fam_peers[bp]
                out["vs_best_peer_same_family"].append(dict(set=s, tfflows=m, tfflows_nll=ok.get(m), best_peer=bp,
                                                            peer_nll=fam_peers[bp], diff=diff, tol=PEER_TOL,
                                                            met=diff is not None and diff <= PEER_TOL))
        # 3. train steps/s at least the fastest peer's (same family: same model).
        for fam, m in COUNTERPART.items():
            sp = {p: by[p].get("train_steps_s") for p in by
                  if C.MODELS[p][0] != "tfflows" and C.MODELS[p][1] == fam and by[p].get("train_steps_s")}
            if m in by and sp:
                fp = max(sp, key=sp.get)
                mine_s = by[m].get("train_steps_s")
                out["speed"].append(dict(set=s, tfflows=m, tfflows_steps_s=mine_s, fastest_peer=fp,
                                         peer_steps_s=sp[fp], ratio=_ratio(mine_s, sp[fp]),
                                         met=mine_s is not None and mine_s >= sp[fp]))
    return out


def markdown(report):
    """The human-readable tables of a run (density2d.md)."""
    a, res = report["args"], report["results"]
    L = [f"# density2d: {report['machine'].get('cpu')} x{report['machine'].get('cpu_count')}, "
         f"{report['machine'].get('date')}", "",
         f"{a['steps']} steps of batch {a['batch_size']}, Adam lr {a['lr']} cosine to 0, {a['flows']} flows, "
         f"hidden {a['hidden']}, {a['bins']} bins on [-{a['bound']}, {a['bound']}], {a['threads']} threads, "
         f"seed {a['seed']}; steps/s after {a['warmup']} warm-up steps; sampling {a['sample_n']} points "
         f"(second call). tfflows: jit_compile={a['tfflows_jit']}, "
         f"steps_per_execution={a['tfflows_steps_per_execution']}, stop_on_nan={a['tfflows_stop_on_nan']}; "
         f"TFP: tf.function jit_compile={a['tfp_jit']}." + (" QUICK SMOKE RUN: NOT A RESULT." if a["quick"] else ""),
         ""]
    for s in report["sets"] + (["digits"] if a["tabular"] else []):
        rows = [r for r in res if r.get("set") == s]
        if not rows:
            continue
        info = report["data"].get(s, {})
        head = f"## {s}"
        if "entropy" in info:
            head += (f" (closed form: entropy {info['entropy']:.4f} nats; true NLL of these test points "
                     f"{info['test_true_nll']:.4f} ± {info['test_true_nll_se']:.4f})")
        L += [head, "", "| model | params | test NLL (nats) ± SE | gap to true NLL ± SE | train steps/s | "
              "first steps (s) | sample (s) | NaN |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if "error" in r:
                L.append(f"| {r['model']} | FAILED: {r['error'][:120]} | | | | | | |")
                continue
            gap = "-" if "gap_to_true" not in r else f"{r['gap_to_true']:.4f} ± {r['gap_to_true_se']:.4f}"
            nll = "non-finite" if r.get("test_nll") is None else f"{r['test_nll']:.4f} ± {r['test_nll_se']:.4f}"
            L.append(f"| {r['model']} | {r['params']:,} | {nll} | {gap} | {_fmt(r.get('train_steps_s'), '.1f')} | "
                     f"{_fmt(r.get('first_steps_s'), '.2f')} | {_fmt(r.get('sample_s'), '.4f')} | "
                     f"{'step %s' % r['nan_step'] if r.get('nan_step') else 'no'} |")
        L.append("")
    cmp_rows = report["ratios"]
    if cmp_rows:
        L += ["## tfflows against each peer (same family, same set)", "",
              "NLL difference tfflows - peer (negative: tfflows better); steps/s ratio (above 1: tfflows "
              "faster); sampling-time ratio (below 1: tfflows faster); parameter ratio.", "",
              "| set | tfflows | peer | NLL diff ± SE | steps/s ratio | sample time ratio | params ratio |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in cmp_rows:
            d = "-" if r["nll_diff"] is None else f"{r['nll_diff']:+.4f} ± {r['nll_diff_se']:.4f}"
            L.append(f"| {r['set']} | {r['tfflows']} | {r['peer']} | {d} | {_fmt(r['steps_s_ratio'], '.2f')} | "
                     f"{_fmt(r['sample_time_ratio'], '.2f')} | {_fmt(r['params_ratio'], '.3f')} |")
        L.append("")
    tg = report["targets"]
    L += ["## Targets (issue #44, item 6)", ""]
    L += [f"1. tfflows NSF within {CLOSED_FORM_TOL} nats of the closed-form NLL (paired gap on the test points):"]
    for t in tg["closed_form"]:
        L.append(f"   - {t['set']}: gap {_fmt(t['gap'], '.4f')} ± {_fmt(t['gap_se'], '.4f')} "
                 f"(test NLL {_fmt(t['test_nll'], '.4f')}, true {t['true_nll']:.4f}): "
                 f"**{'MET' if t['met'] else 'MISS'}**")
    L += [f"2. tfflows (best model) no worse than the best peer by more than {PEER_TOL} nats:"]
    for t in tg["vs_best_peer"]:
        L.append(f"   - {t['set']}: {t['best_tfflows']} {_fmt(t['tfflows_nll'], '.4f')} vs {t['best_peer']} "
                 f"{t['peer_nll']:.4f}, diff {_fmt(t['diff'], '+.4f')}: **{'MET' if t['met'] else 'MISS'}**")
    L += ["   Same family (tfflows-maf vs the best peer MAF, tfflows-nsf vs the best peer NSF):"]
    for t in tg["vs_best_peer_same_family"]:
        L.append(f"   - {t['set']}: {t['tfflows']} vs {t['best_peer']}, diff {_fmt(t['diff'], '+.4f')}: "
                 f"{'MET' if t['met'] else 'MISS'}")
    L += ["3. tfflows train steps/s at least the fastest peer's (same family):"]
    for t in tg["speed"]:
        L.append(f"   - {t['set']}: {t['tfflows']} {_fmt(t['tfflows_steps_s'], '.1f')} vs {t['fastest_peer']} "
                 f"{_fmt(t['peer_steps_s'], '.1f')} steps/s, ratio {_fmt(t['ratio'], '.2f')}: "
                 f"**{'MET' if t['met'] else 'MISS'}**")
    summ = report["target_summary"]
    L += ["", "Summary: " + "; ".join(f"{k} {v['met']}/{v['of']} met" for k, v in summ.items()), ""]
    if report.get("probe"):
        L += ["## tfflows defaults (speed probe, first set)", "",
              "`model.compile()` (tfflows' default Adam, jit_compile auto) and `model.fit(x, batch_size=...)` "
              "(stop_on_nan on, steps_per_execution 1), against the configuration above.", "",
              "| model | configuration | train steps/s | first steps (s) |", "| --- | --- | --- | --- |"]
        for r in report["probe"]:
            if "error" in r:
                L.append(f"| {r['model']} | FAILED: {r['error'][:100]} | | |")
                continue
            conf = (f"jit {r.get('jit')} ({'XLA' if r.get('jit_compile') else 'no XLA'}), "
                    f"spe {r.get('steps_per_execution')}, stop_on_nan {r.get('stop_on_nan')}, "
                    f"optimizer {r.get('optimizer')}")
            L.append(f"| {r['model']} | {conf} | {_fmt(r.get('train_steps_s'), '.1f')} | "
                     f"{_fmt(r.get('first_steps_s'), '.2f')} |")
        L.append("")
    if report["failures"]:
        L += ["## Failures", ""] + [f"- {k}: {v}" for k, v in report["failures"].items()] + [""]
    return "\n".join(L)


def summarize_targets(tg):
    return {k: {"met": sum(1 for t in v if t["met"]), "of": len(v)} for k, v in tg.items()}


def param_table(results):
    """Parameter count per model (the 2-D sets share one size per model)."""
    out = {}
    for r in results:
        if "params" in r:
            out.setdefault(r["model"], {})[r["set"]] = r["params"]
    return out


def build_report(args, info, data_summary, results, probe=(), failures=None, argv=(), run_minutes=None):
    """The run's JSON report: every result line, the ratios against each peer
    and the targets (judged on the 2-D sets only)."""
    all_sets = list(args.sets) + (["digits"] if args.tabular else [])
    tg = targets(results, args.sets)
    return dict(benchmark="density2d", machine=info, argv=list(argv), args=vars(args), sets=list(args.sets),
                data=data_summary, results=list(results), params=param_table(results),
                ratios=compare(results, all_sets), targets=tg, target_summary=summarize_targets(tg),
                probe=list(probe), failures=dict(failures or {}), run_minutes=run_minutes)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    log = Log(os.path.join(args.out_dir, "density2d.log"))
    info = machine_info()
    log(f"# density2d on {info['cpu']} x{info['cpu_count']}, {info['date']}; out {args.out_dir}")
    if args.quick:
        log("# --quick: a smoke run; its numbers are not results")
    warn_if_busy(info)
    t_run = time.perf_counter()

    data_path = os.path.join(args.out_dir, "density2d_data.npz")
    data_summary = make_data(data_path, args.sets, args.n_train, args.n_test, args.seed, args.tabular,
                             args.tabular_copies)
    log(f"# data: {data_path} ({os.path.getsize(data_path) / 1e6:.1f} MB): " + json.dumps(data_summary))

    results, failures, probe = [], {}, []
    jobs = []  # (label, collect into, worker_cmd arguments after args)
    for m in args.models:
        jobs.append((m, results, (m, args.sets, data_path, args.steps, args.batch_size, args.hidden, args.warmup,
                                  args.sample_n)))
    if args.tabular:
        for m in args.models:
            jobs.append((f"{m} (digits)", results, (m, ["digits"], data_path, args.tabular_steps,
                                                     args.tabular_batch_size, args.tabular_hidden,
                                                     args.tabular_warmup, args.tabular_sample_n)))
    if args.probe_steps:
        defaults = {"--jit": "auto", "--optimizer": "default", "--stop-on-nan": "on", "--steps-per-execution": 1}
        for m in ("tfflows-maf", "tfflows-nsf"):
            if m in args.models:
                jobs.append((f"{m} (tfflows defaults)", probe,
                             (m, args.sets[:1], data_path, args.probe_steps, args.batch_size, args.hidden,
                              min(args.warmup, args.probe_steps // 2), 0, defaults)))
    for label, collect, job in jobs:
        cmd = worker_cmd(args, *job)
        if not os.path.exists(cmd[0]):
            failures[label] = f"interpreter {cmd[0]} not found"
            log(f"# {label}: SKIPPED ({failures[label]})")
            continue
        busy = cpu_busy_fraction(1.0)
        log(f"# {label}: {len(job[1])} set(s), {job[3]} steps ({(time.perf_counter() - t_run) / 60:.1f} min into "
            f"the run; CPU busy {_fmt(None if busy is None else 100 * busy, '.0f')} % over the last second)")
        if busy is not None and busy > 0.10:
            log("# WARNING: the CPU is not idle before this worker: its timings are contended (with 2 threads "
                "PyTorch's steps/s drops 3-100x when another process holds a core).")
        out, rc, wall = run_worker(cmd, args.timeout, log)
        for r in out:
            r["process_wall_s"] = round(wall, 1)
            r["cpu_busy_before"] = busy
            if r.get("set") in data_summary and "entropy" in data_summary[r["set"]]:
                r["entropy"] = data_summary[r["set"]]["entropy"]
            if "error" in r:
                failures[f"{label} / {r['set']}"] = r["error"]
        collect.extend(out)
        if rc != 0 and not out:
            failures[label] = f"exit status {rc}, no results"
        log(f"# {label}: done in {wall:.1f} s (exit {rc})")

    info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report = build_report(args, info, data_summary, results, probe, failures,
                          argv=sys.argv[1:] if argv is None else list(argv),
                          run_minutes=round((time.perf_counter() - t_run) / 60, 2))
    report["data_file"] = os.path.basename(data_path)
    md = markdown(report)
    with open(os.path.join(args.out_dir, "density2d.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out_dir, "density2d.md"), "w") as f:
        f.write(md + "\n")
    log("\n" + md)
    log(f"# wrote {args.out_dir}/density2d.json, density2d.md, density2d.log, density2d_data.npz "
        f"({report['run_minutes']} min)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
