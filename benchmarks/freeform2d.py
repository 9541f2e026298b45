#!/usr/bin/env python3
"""Free-form-Jacobian flows against their peers in one run (issue #50, item 2):
tfflows' residual flow against normflows' `Residual`, and tfflows' FFJORD
against zuko's `CNF` and TFP's `tfb.FFJORD`, on FFJORD's 2-D toy sets.

Full run (from the repo root, on an otherwise idle machine; estimated at
1 to 2.5 hours on a 2-core Xeon from smoke-run step times, most of it the
three CNFs, whose time per step grows as training stiffens their dynamics):

    .venv/bin/python -m benchmarks.freeform2d --threads 2

Smoke run (a few steps per model, one set; its numbers are not results):

    nice -n 19 .venv/bin/python -m benchmarks.freeform2d --quick --threads 1

In one run it:

1. draws every set (`--sets`: moons, pinwheel, checkerboard) once with
   `tfflows.datasets.toy` and a fixed seed (`density2d.make_data`: the same
   draws as `density2d.py` for the same set list and seed) and saves them
   to `freeform2d_data.npz` in the output folder; every framework reads
   these arrays;
2. runs each model in its own process, one after the other, all pinned to
   `--threads` threads: tfflows and TFP under this interpreter
   (`benchmarks/freeform2d_tf.py`), normflows and zuko under the PyTorch
   peers' one (`--peers-python`, `benchmarks/freeform2d_torch.py`). Within
   a family every model trains on the same batches in the same order
   (`_density_common.train_stream`), with the same Adam (beta 0.9/0.999,
   eps 1e-8, no clipping), the same cosine schedule from `--lr` to 0 and the
   same number of steps:
   - residual flows (`--resflow-steps` of `--resflow-batch-size`):
     `--blocks` x (residual block with a `--resflow-hidden` LipSwish net
     spectrally normalised to `--lipschitz`, then ActNorm); Russian-roulette
     log-det with `--exact-terms` terms always computed, geometric
     `--stop-probability`, one normal Hutchinson probe, Neumann-series
     gradient; `--power-iterations` power-iteration steps per training step;
   - continuous flows (`--cnf-steps` of `--cnf-batch-size`): one CNF with a
     `--cnf-hidden` `--activation` dynamics net, adaptive Dormand-Prince to
     `--rtol`/`--atol`, `--trace` (exact on 2-D by default), integration
     time 1; tfflows' ffjord and (`--peer-actnorm on`) both peers end with
     an ActNorm-like elementwise affine;
3. measures per (set, model) the test log-likelihood in nats with its
   standard error over the test points, evaluated exactly (exact 2 x 2
   log-dets for the residual flows, the exact trace for the CNFs, to the
   solver's tolerance), the paired difference of the per-point
   log-likelihoods against each peer with its standard error, the
   steady-state train time per step (after `--warmup` steps), and the
   parameter count;
4. writes `freeform2d.json`, `freeform2d.md` (tables, the issue's targets
   with MET / MISS, the settings that could not be matched) and
   `freeform2d.log` to `--out-dir` (default
   `benchmarks/results/<date>-<machine>/`), and the per-point
   log-likelihoods to `freeform2d_logp_<model>.npz` beside them.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import REPO_ROOT, run_results_dir  # noqa: E402
from benchmarks.density2d import Log, _fmt, _ratio, make_data, run_worker  # noqa: E402
from benchmarks.glow_mnist import cpu_busy_fraction, machine_info, warn_if_busy  # noqa: E402

PEERS_PYTHON = os.environ.get("PEERS_PYTHON", "/work/peers/bin/python")
WORKERS = {"main": os.path.join(REPO_ROOT, "benchmarks", "freeform2d_tf.py"),
           "peers": os.path.join(REPO_ROOT, "benchmarks", "freeform2d_torch.py")}
OUTPUTS = ("freeform2d.json", "freeform2d.md", "freeform2d.log", "freeform2d_data.npz")
SETS = ("moons", "pinwheel", "checkerboard")
#: name -> (framework, family, interpreter)
MODELS = {
    "tfflows-resflow": ("tfflows", "resflow", "main"),
    "normflows-resflow": ("normflows", "resflow", "peers"),
    "tfflows-ffjord": ("tfflows", "cnf", "main"),
    "tfp-ffjord": ("tfp", "cnf", "main"),
    "zuko-cnf": ("zuko", "cnf", "peers"),
}
#: The issue's targets: (tfflows model, peer, compare log-likelihood, compare time per step).
TARGETS = (
    ("tfflows-resflow", "normflows-resflow", True, True),
    ("tfflows-ffjord", "zuko-cnf", True, False),
    ("tfflows-ffjord", "tfp-ffjord", True, True),
)
LL_SE = 2.0  # "no worse": the paired difference is above -2 standard errors
QUICK = dict(resflow_steps=40, cnf_steps=30, warmup=4, n_train=2000, n_test=1000, sets="moons")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {list(SETS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's lr, cosine-decayed to 0 over the steps")
    p.add_argument("--seed", type=int, default=0, help="data, batch order and initialisation")
    p.add_argument("--warmup", type=int, default=50, help="first steps left out of the time per step")
    p.add_argument("--n-train", type=int, default=50000)
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--eval-batch", type=int, default=5000,
                   help="test points per evaluation call (the CNF solvers adapt their steps per call)")
    # residual flows
    p.add_argument("--resflow-steps", type=int, default=5000)
    p.add_argument("--resflow-batch-size", type=int, default=256)
    p.add_argument("--resflow-hidden", default="64,64", help="hidden widths of each block's Lipschitz net")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--lipschitz", type=float, default=0.97)
    p.add_argument("--exact-terms", type=int, default=3,
                   help="power-series terms always computed (tfflows n_exact_terms=N; normflows "
                        "n_exact_terms=N-1, as normflows adds one)")
    p.add_argument("--stop-probability", type=float, default=0.5, help="geometric p of the roulette")
    p.add_argument("--power-iterations", type=int, default=1, help="power iterations per training step")
    p.add_argument("--eval-power-iterations", type=int, default=20)
    p.add_argument("--tfflows-jit", choices=("on", "off", "auto"), default="on",
                   help="tfflows resflow: compile(jit_compile=...) (ffjord: always off)")
    p.add_argument("--tfflows-steps-per-execution", type=int, default=10)
    # continuous flows
    p.add_argument("--cnf-steps", type=int, default=2000)
    p.add_argument("--cnf-batch-size", type=int, default=256)
    p.add_argument("--cnf-hidden", default="64,64,64", help="hidden widths of the dynamics net (FFJORD's toys)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--trace", choices=("exact", "hutchinson"), default="exact", help="training trace")
    p.add_argument("--activation", choices=("tanh", "softplus"), default="tanh",
                   help="dynamics activation of all three CNFs (zuko's own default is ELU)")
    p.add_argument("--tfflows-gradient", choices=("adjoint", "direct"), default="adjoint",
                   help="tfflows ffjord's gradient (adjoint: TFP's adjoint, as tfp-ffjord)")
    p.add_argument("--peer-actnorm", choices=("on", "off"), default="on",
                   help="TFP and zuko: an ActNorm-like affine after the CNF, as tfflows' ffjord has")
    p.add_argument("--max-num-steps", type=int, default=1000, help="solver step cap (tfflows and TFP)")
    # machinery
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every framework")
    p.add_argument("--peers-python", default=PEERS_PYTHON, help="interpreter with torch, normflows, zuko")
    p.add_argument("--main-python", default=sys.executable, help="interpreter with tfflows, TF, TFP")
    p.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per worker process")
    p.add_argument("--out-dir", default=None,
                   help="default: benchmarks/results/<YYYY-MM-DD>-<machine>/ (today, this machine)")
    p.add_argument("--rerun", default="",
                   help="comma-separated models to run again, keeping every other model's results from "
                        "--out-dir's freeform2d.json (e.g. one whose timings were contended); the report says so")
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
    args.rerun = [m.strip() for m in args.rerun.split(",") if m.strip()]
    bad = ([s for s in args.sets if s not in SETS] + [m for m in args.models if m not in MODELS]
           + [m for m in args.rerun if m not in args.models])
    if bad:
        p.error(f"unknown sets/models {bad}; sets: {list(SETS)}; models: {list(MODELS)}")
    if args.exact_terms < 1:
        p.error("--exact-terms must be at least 1 (normflows always computes one term more than its n_exact_terms)")
    if args.out_dir is None:
        args.out_dir = run_results_dir(*OUTPUTS)
    return args


# ----------------------------------------------------------------------------- workers
def family_settings(args, family):
    if family == "resflow":
        return dict(steps=args.resflow_steps, batch_size=args.resflow_batch_size, hidden=args.resflow_hidden)
    return dict(steps=args.cnf_steps, batch_size=args.cnf_batch_size, hidden=args.cnf_hidden)


def logp_path(args, model):
    return os.path.join(args.out_dir, f"freeform2d_logp_{model}.npz")


def worker_cmd(args, model, data_path):
    framework, family, interp = MODELS[model]
    fam = family_settings(args, family)
    python = args.main_python if interp == "main" else args.peers_python
    flags = {"--data": data_path, "--models": model, "--sets": ",".join(args.sets), "--steps": fam["steps"],
             "--batch-size": fam["batch_size"], "--hidden": fam["hidden"], "--lr": repr(args.lr),
             "--seed": args.seed, "--warmup": args.warmup, "--threads": args.threads,
             "--eval-batch": args.eval_batch, "--logp-out": logp_path(args, model),
             "--blocks": args.blocks, "--lipschitz": repr(args.lipschitz), "--exact-terms": args.exact_terms,
             "--stop-probability": repr(args.stop_probability), "--power-iterations": args.power_iterations,
             "--eval-power-iterations": args.eval_power_iterations, "--rtol": repr(args.rtol),
             "--atol": repr(args.atol), "--trace": args.trace, "--activation": args.activation,
             "--max-num-steps": args.max_num_steps, "--peer-actnorm": args.peer_actnorm}
    if framework == "tfflows":
        flags.update({"--jit": args.tfflows_jit, "--steps-per-execution": args.tfflows_steps_per_execution,
                      "--gradient": args.tfflows_gradient})
    return [python, WORKERS[interp]] + [str(t) for kv in flags.items() for t in kv]


# ----------------------------------------------------------------------------- analysis
def load_logps(args):
    """{(model, set): per-point test log-likelihoods} from the workers' npz files."""
    out = {}
    for m in args.models:
        path = logp_path(args, m)
        if os.path.exists(path):
            with np.load(path) as f:
                for key in f.files:
                    model, s = key.split("/", 1)
                    out[(model, s)] = np.asarray(f[key], dtype=np.float64)
    return out


def compare(results, logps, sets):
    """tfflows against each peer of its family, per set: the paired log-likelihood
    difference (tfflows - peer, per test point) and the time-per-step ratio."""
    rows = []
    for s in sets:
        by = {r["model"]: r for r in results if r.get("set") == s and "error" not in r}
        for mine, peer, _, _ in TARGETS:
            if mine not in by or peer not in by:
                continue
            a, b = by[mine], by[peer]
            row = dict(set=s, tfflows=mine, peer=peer, ll_diff=None, ll_diff_se=None, paired=False,
                       time_ratio=_ratio(a.get("s_per_step"), b.get("s_per_step")),
                       params_ratio=_ratio(a.get("params"), b.get("params")))
            la, lb = logps.get((mine, s)), logps.get((peer, s))
            if la is not None and lb is not None and la.shape == lb.shape and np.all(np.isfinite(la - lb)):
                d = la - lb
                row.update(ll_diff=float(d.mean()), ll_diff_se=float(d.std(ddof=1) / math.sqrt(d.size)), paired=True)
            elif a.get("test_nll") is not None and b.get("test_nll") is not None:
                row.update(ll_diff=b["test_nll"] - a["test_nll"],
                           ll_diff_se=math.hypot(a["test_nll_se"], b["test_nll_se"]))
            rows.append(row)
    return rows


def targets(results, ratios, args):
    """The issue's targets per set, MET / MISS (a missing or failed model is a MISS)."""
    out = []
    for s in args.sets:
        by = {r["model"]: r for r in results if r.get("set") == s}
        for mine, peer, ll, speed in TARGETS:
            if mine not in args.models or peer not in args.models:
                continue
            row = next((r for r in ratios if r["set"] == s and r["tfflows"] == mine and r["peer"] == peer), None)
            why = None
            for m in (mine, peer):
                if m not in by:
                    why = f"{m}: no result"
                elif "error" in by[m]:
                    why = f"{m} failed: {by[m]['error'][:160]}"
            if ll:
                t = dict(set=s, kind="log-likelihood", tfflows=mine, peer=peer, met=False, note=why)
                if row is not None and row["ll_diff"] is not None:
                    t.update(diff=row["ll_diff"], se=row["ll_diff_se"], paired=row["paired"],
                             met=row["ll_diff"] >= -LL_SE * row["ll_diff_se"])
                elif why is None:
                    t["note"] = "non-finite test log-likelihood"
                out.append(t)
            if speed:
                t = dict(set=s, kind="time per step", tfflows=mine, peer=peer, met=False, note=why)
                a, b = by.get(mine, {}).get("s_per_step"), by.get(peer, {}).get("s_per_step")
                if a is not None and b is not None:
                    t.update(tfflows_s=a, peer_s=b, ratio=a / b, met=a <= b)
                elif why is None:
                    t["note"] = "no steady-state time (too few steps after the warm-up)"
                out.append(t)
    return out


MISMATCHES = [
    "Residual flows, the net: normflows' `LipschitzMLP` applies a LipSwish to its input before the first "
    "linear layer (Swish, Linear, ..., Swish, Linear: one activation and one `beta` more per block); tfflows' "
    "block is Linear, LipSwish, ..., Linear. Widths, depth of linear layers, LipSwish `z sigmoid(softplus(beta) "
    "z) / 1.1` with beta initialised to 0.5, and the 0.97 spectral coefficient are the same.",
    "Residual flows, initialisation: normflows draws Kaiming-uniform kernels and uniform biases and divides the "
    "last kernel by 1000; tfflows draws N(0, 1/fan_in) kernels, zero biases and scales the last kernel by 0.1.",
    "Residual flows, spectral norm: tfflows runs its power iteration inside the training step (one step, "
    "stored); normflows only when `nf.utils.update_lipschitz` is called, which this benchmark does after every "
    "optimizer step with the same number of iterations (and `--eval-power-iterations` before the test).",
    "Residual flows, roulette: the same distribution of terms (`--exact-terms` always, then each further term "
    "with probability (1 - p)^k, reweighted), which is normflows' `n_exact_terms = --exact-terms - 1` "
    "because normflows samples N >= 1. Its Neumann gradient series sums one term more than tfflows' "
    "(j = 0..N against j = 0..N-1). normflows draws N from numpy's global generator, tfflows from the "
    "block's seeded `SeedGenerator`. normflows also registers two parameters per block that it never trains "
    "(`geom_p`, `lamb`, read with `.item()`); they are left out of its parameter count.",
    "CNFs, the dynamics net: tfflows and the TFP peer concatenate t to every layer's input (FFJORD's "
    "ConcatLinear; the TFP net is built to tfflows' architecture and initialisation, last layer zero); zuko "
    "feeds a sin/cos embedding of t (3 frequencies, 6 features) to the first layer only, with PyTorch's "
    "default initialisation (not zero). Activation: `--activation` for all three (zuko's default is ELU).",
    "CNFs, the solvers: tfflows and TFP both use `tfp.math.ode.DormandPrince` (RMS error norm over the whole "
    "batch state); zuko its own Dormand-Prince with the max error norm (stricter at the same rtol/atol) and its "
    "log-det state scaled by 1e-2 (so the log-det's absolute tolerance is 100x looser). tfflows' state carries "
    "the summed trace (batch,), TFP's the per-dimension diagonal (batch, D). Gradients: TFP's adjoint for "
    "tfflows (`--tfflows-gradient adjoint`) and TFP; zuko's adaptive checkpoint adjoint (backpropagation "
    "through the accepted steps, no backward solve). zuko has no step cap; tfflows and TFP stop at "
    "`--max-num-steps`.",
    "CNFs, ActNorm: tfflows' `zoo.ffjord` ends with an ActNorm (4 parameters, initialised on the first batch). "
    "With `--peer-actnorm on` the TFP and zuko models end with the same elementwise affine, initialised from "
    "the first batch's mean and standard deviation; with `off` they are the stock single-CNF models.",
    "Training loop: tfflows trains with `model.fit` (XLA on for the residual flow, `steps_per_execution` "
    "10), TFP with a `tf.function` step over `tf.data`, the PyTorch peers with an eager loop; each framework's "
    "usual way. Each model's time per step includes its own overheads.",
    "Evaluation: normflows' `eval()` mode computes each block's exact 2 x 2 log-det; tfflows copies the trained "
    "weights into a `log_det=\"exact\"` model. CNFs are evaluated with the exact trace, to the same rtol/atol, "
    "in calls of `--eval-batch` points (the adaptive step size is shared across a call).",
    "One seed: the standard errors are over the test points, not over training runs.",
]


def markdown(report):
    a, res = report["args"], report["results"]
    m = report["machine"]
    L = [f"# freeform2d: {m.get('cpu')} x{m.get('cpu_count')}, {m.get('date')}", ""]
    if a["quick"]:
        L += ["**QUICK SMOKE RUN: a few steps per model; its numbers are not results.**", ""]
    if report.get("reruns"):
        L += ["Run again on their own (`--rerun`), the other models' results kept: "
              + ", ".join(f"{k} ({v})" for k, v in report["reruns"].items()) + ".", ""]
    L += [f"Residual flows: {a['resflow_steps']} steps of batch {a['resflow_batch_size']}, {a['blocks']} blocks, "
          f"hidden {a['resflow_hidden']}, Lipschitz {a['lipschitz']}, roulette with {a['exact_terms']} terms always "
          f"and stop probability {a['stop_probability']}, {a['power_iterations']} power iteration(s) per step "
          f"({a['eval_power_iterations']} before the test); tfflows jit_compile={a['tfflows_jit']}, "
          f"steps_per_execution={a['tfflows_steps_per_execution']}.", "",
          f"Continuous flows: {a['cnf_steps']} steps of batch {a['cnf_batch_size']}, one CNF, hidden "
          f"{a['cnf_hidden']}, {a['activation']}, rtol {a['rtol']}, atol {a['atol']}, {a['trace']} trace in "
          f"training (exact in the test), tfflows gradient {a['tfflows_gradient']}, peer ActNorm "
          f"{a['peer_actnorm']}.", "",
          f"All: Adam lr {a['lr']} (beta 0.9/0.999, eps 1e-8), cosine to 0; the same batches in the same order per "
          f"family; {a['threads']} threads; seed {a['seed']}; {a['n_train']} training and {a['n_test']} test "
          f"points per set; time per step after {a['warmup']} warm-up steps.", ""]
    for s in report["sets"]:
        rows = [r for r in res if r.get("set") == s]
        if not rows:
            continue
        info = report["data"].get(s, {})
        head = f"## {s}"
        if "entropy" in info:
            head += f" (closed form: entropy {info['entropy']:.4f} nats, the best possible test NLL)"
        L += [head, "", "| model | params | test log-lik (nats) ± SE | NLL gap to true ± SE | time/step (ms) | "
              "steps/s | train (s) | first steps (s) | eval (s) | NaN |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if "error" in r:
                L.append(f"| {r['model']} | FAILED: {r['error'][:200]} | | | | | | | | |")
                continue
            ll = "non-finite" if r.get("test_nll") is None else f"{-r['test_nll']:.4f} ± {r['test_nll_se']:.4f}"
            gap = "-" if "gap_to_true" not in r else f"{r['gap_to_true']:.4f} ± {r['gap_to_true_se']:.4f}"
            ms = None if r.get("s_per_step") is None else 1000 * r["s_per_step"]
            L.append(f"| {r['model']} | {r['params']:,} | {ll} | {gap} | {_fmt(ms, '.1f')} | "
                     f"{_fmt(r.get('train_steps_s'), '.2f')} | {_fmt(r.get('train_s'), '.1f')} | "
                     f"{_fmt(r.get('first_steps_s'), '.2f')} | {_fmt(r.get('eval_s'), '.1f')} | "
                     f"{'step %s' % r['nan_step'] if r.get('nan_step') else 'no'} |")
        L.append("")
    if report["ratios"]:
        L += ["## tfflows against each peer", "",
              "Log-likelihood difference tfflows - peer (positive: tfflows better), paired over the same test "
              "points; time-per-step ratio tfflows / peer (below 1: tfflows faster).", "",
              "| set | tfflows | peer | log-lik diff ± SE | time/step ratio | params ratio |",
              "| --- | --- | --- | --- | --- | --- |"]
        for r in report["ratios"]:
            d = "-" if r["ll_diff"] is None else (f"{r['ll_diff']:+.4f} ± {r['ll_diff_se']:.4f}"
                                                  + ("" if r["paired"] else " (unpaired)"))
            L.append(f"| {r['set']} | {r['tfflows']} | {r['peer']} | {d} | {_fmt(r['time_ratio'], '.2f')} | "
                     f"{_fmt(r['params_ratio'], '.3f')} |")
        L.append("")
    L += ["## Targets (issue #50, item 2)", "",
          f"Log-likelihood: tfflows no worse than the peer, i.e. the paired difference above -{LL_SE:g} standard "
          "errors. Time per step: tfflows' at most the peer's. A missing or failed model is a MISS.", ""]
    for t in report["targets"]:
        verdict = "**MET**" if t["met"] else "**MISS**"
        if t["kind"] == "log-likelihood" and "diff" in t:
            detail = f"diff {t['diff']:+.4f} ± {t['se']:.4f}"
        elif t["kind"] == "time per step" and "ratio" in t:
            detail = (f"{1000 * t['tfflows_s']:.1f} vs {1000 * t['peer_s']:.1f} ms/step, "
                      f"ratio {t['ratio']:.2f}")
        else:
            detail = t.get("note") or "no numbers"
        L.append(f"- {t['set']}: {t['tfflows']} vs {t['peer']}, {t['kind']}: {detail}: {verdict}")
    summ = report["target_summary"]
    L += ["", f"Summary: {summ['met']}/{summ['of']} met.", "", "## Settings that could not be matched", ""]
    params = report["params"]
    if params:
        L.append("Parameter counts (per model, every set alike): " + "; ".join(
            f"{m} {v:,}" for m, v in params.items()) + ".")
        L.append("")
    L += [f"- {x}" for x in MISMATCHES] + [""]
    if report["failures"]:
        L += ["## Failures", ""] + [f"- {k}: {v[:600]}" for k, v in report["failures"].items()] + [""]
    return "\n".join(L)


def build_report(args, info, data_summary, results, logps, failures, argv=(), run_minutes=None):
    ratios = compare(results, logps, args.sets)
    tg = targets(results, ratios, args)
    params = {}
    for r in results:
        if "params" in r:
            params.setdefault(r["model"], r["params"])
    return dict(benchmark="freeform2d", machine=info, argv=list(argv), args=vars(args), sets=list(args.sets),
                data=data_summary, results=list(results), params=params, ratios=ratios, targets=tg,
                target_summary=dict(met=sum(t["met"] for t in tg), of=len(tg)), failures=dict(failures),
                run_minutes=run_minutes)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    log = Log(os.path.join(args.out_dir, "freeform2d.log"))
    info = machine_info()
    log(f"# freeform2d on {info['cpu']} x{info['cpu_count']}, {info['date']}; out {args.out_dir}")
    if args.quick:
        log("# --quick: a smoke run; its numbers are not results")
    warn_if_busy(info)
    t_run = time.perf_counter()

    data_path = os.path.join(args.out_dir, "freeform2d_data.npz")
    data_summary = make_data(data_path, args.sets, args.n_train, args.n_test, args.seed)
    log(f"# data: {data_path} ({os.path.getsize(data_path) / 1e6:.1f} MB): " + json.dumps(data_summary))

    results, failures, reruns = [], {}, {}
    to_run = args.models
    if args.rerun:
        with open(os.path.join(args.out_dir, "freeform2d.json")) as f:
            previous = json.load(f)
        results = [r for r in previous["results"] if r["model"] not in args.rerun]
        failures = {k: v for k, v in previous["failures"].items() if k.split(" / ")[0] not in args.rerun}
        reruns = dict(previous.get("reruns", {}))
        to_run = args.rerun
        log(f"# --rerun {','.join(args.rerun)}: the other models' results are kept from the run of "
            f"{previous['machine']['date']}")
    for m in to_run:
        if args.rerun:
            reruns[m] = machine_info()["date"]
        cmd = worker_cmd(args, m, data_path)
        if not os.path.exists(cmd[0]):
            failures[m] = f"interpreter {cmd[0]} not found"
            log(f"# {m}: SKIPPED ({failures[m]})")
            continue
        busy = cpu_busy_fraction(1.0)
        fam = family_settings(args, MODELS[m][1])
        log(f"# {m}: {len(args.sets)} set(s), {fam['steps']} steps of {fam['batch_size']} "
            f"({(time.perf_counter() - t_run) / 60:.1f} min into the run; CPU busy "
            f"{_fmt(None if busy is None else 100 * busy, '.0f')} % over the last second)")
        if busy is not None and busy > 0.10:
            log("# WARNING: the CPU is not idle before this worker: its timings are contended.")
        out, rc, wall = run_worker(cmd, args.timeout, log)
        for r in out:
            r["process_wall_s"] = round(wall, 1)
            r["cpu_busy_before"] = busy
            if r.get("set") in data_summary and "entropy" in data_summary[r["set"]]:
                r["entropy"] = data_summary[r["set"]]["entropy"]
            if "error" in r:
                failures[f"{m} / {r['set']}"] = r["error"]
        results.extend(out)
        if rc != 0 and not out:
            failures[m] = f"exit status {rc}, no results"
        log(f"# {m}: done in {wall:.1f} s (exit {rc})")

    info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report = build_report(args, info, data_summary, results, load_logps(args), failures,
                          argv=sys.argv[1:] if argv is None else list(argv),
                          run_minutes=round((time.perf_counter() - t_run) / 60, 2))
    report["data_file"] = os.path.basename(data_path)
    if reruns:
        report["reruns"] = reruns
    md = markdown(report)
    with open(os.path.join(args.out_dir, "freeform2d.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out_dir, "freeform2d.md"), "w") as f:
        f.write(md + "\n")
    log("\n" + md)
    log(f"# wrote {args.out_dir}/freeform2d.json, freeform2d.md, freeform2d.log, freeform2d_data.npz, "
        f"freeform2d_logp_*.npz ({report['run_minutes']} min)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
