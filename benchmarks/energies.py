#!/usr/bin/env python3
"""Variational-inference benchmark: tfflows' planar, radial, Householder-Sylvester
and Householder flows against normflows and pyro, fitted by reverse KL to
Rezende & Mohamed's 2-D energies U1-U4.

`python -m benchmarks.energies` (from the repo root), in one run:

1. computes `log Z` of every energy once, with `tfflows.datasets.energy_log_z`
   (quadrature, float64), and checks that the PyTorch worker's energies
   (written in torch) agree with `tfflows.datasets.energy` on 4096 random
   points of `[-5, 5]^2` to `--energy-tol` relative to `max(1, |U|)` (both
   workers write their values with `--dump-energies`);
2. runs each model in its own process, one after the other (never two at
   once), all pinned to `--threads` threads: tfflows under this interpreter
   (`benchmarks/energies_tf.py`), normflows and pyro under the PyTorch
   peers' one (`--peers-python`, `benchmarks/energies_torch.py`); each fits
   its model to every energy with every K in `--flows`, with the same
   steps (`--steps`), samples per step (`--batch-size`), Adam (beta
   0.9/0.999, eps 1e-8, no clipping, `--lr` with the `--schedule`), the same
   annealing (`--anneal-steps`, 0: none), a learned diagonal-Gaussian start
   `q0` (loc 0, log-scale 0 at the start), float32;
3. measures per (model, energy, K) the ELBO on `--eval-n` fresh draws after
   training, with its standard error, hence `KL(q || p) = log Z - ELBO` (the
   same estimator in every framework: `log q` is the base density minus the
   log of the autodiff Jacobian determinant of the sample map, so a wrong
   log-det in a framework cannot flatter it; the ELBO with the framework's
   own `log q`, and the largest gap between the two, are reported too),
   the steady-state train steps/s after
   `--warmup` steps (the first steps trace and compile), the time of those
   first steps, and the parameter count;
4. writes `energies.json`, `energies.md` (tables, ratios against each
   tfflows model's peer, the two targets with MET / MISSED) and
   `energies.log` to `--out-dir` (default
   `benchmarks/results/<date>-<machine>/`).

Pairs: tfflows-planar / normflows-planar, tfflows-radial / normflows-radial,
tfflows-sylvester-householder / pyro-sylvester, tfflows-householder /
pyro-householder. Targets per pair, energy and K: (1) tfflows' KL no worse
than the peer's, allowing two standard errors of the difference; (2) tfflows'
train steps/s at least the peer's.

tfflows trains the way a user would: `tfflows.vi.fit_to_density(target, q,
steps, batch_size, optimizer=keras.optimizers.Adam(...), jit_compile=...)`
(`--tfflows-jit`, default `auto`: what `fit_to_density` does by default). A
speed probe (`--probe-steps`, 0 to skip) also times `fit_to_density` with
no optimizer (tfflows' default Adam with clipnorm 100) and with XLA off, on
the first energy with K = `--probe-flows`.

`--quick` is a smoke run (a few dozen steps, K = 2, two energies), not a result.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _energies_common as C  # noqa: E402
from benchmarks._common import REPO_ROOT, run_results_dir  # noqa: E402
from benchmarks.density2d import Log, load_datasets_module  # noqa: E402
from benchmarks.glow_mnist import cpu_busy_fraction, machine_info, warn_if_busy  # noqa: E402

PEERS_PYTHON = os.environ.get("PEERS_PYTHON", "/work/peers/bin/python")
WORKERS = {"main": os.path.join(REPO_ROOT, "benchmarks", "energies_tf.py"),
           "peers": os.path.join(REPO_ROOT, "benchmarks", "energies_torch.py")}
OUTPUTS = ("energies.json", "energies.md", "energies.log")
DEFAULT_MODELS = list(C.MODELS)
#: Target 1: tfflows' KL at most the peer's plus this many standard errors of the difference.
KL_SE_ALLOWED = 2.0
#: The workers' energies must agree to this, relative to max(1, |U|).
ENERGY_TOL = 1e-5
QUICK = dict(steps=30, warmup=5, flows="2", energies="U1,U2", eval_n=2000, probe_steps=0, probe_flows=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--energies", default=",".join(C.ENERGIES), help=f"comma-separated subset of {list(C.ENERGIES)}")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated subset of {list(C.MODELS)}")
    p.add_argument("--flows", default="2,8,32",
                   help="comma-separated K, the number of flows (Householder: the number of reflections)")
    p.add_argument("--steps", type=int, default=2000, help="training steps per (model, energy, K)")
    p.add_argument("--batch-size", type=int, default=256, help="samples z ~ q per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="the learning rate throughout, or cosine-decayed to 0 over --steps")
    p.add_argument("--anneal-steps", type=int, default=0,
                   help="ramp the weight of log p~ from 0.01 to 1 over this many steps in every framework (0: none)")
    p.add_argument("--sylvester-reflections", type=int, default=2,
                   help="Householder reflections per Sylvester layer (tfflows n_reflections, pyro count_transforms)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and sampling noise")
    p.add_argument("--warmup", type=int, default=50, help="first steps left out of steps/s")
    p.add_argument("--eval-n", type=int, default=20000, help="fresh draws of the final ELBO")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every framework")
    p.add_argument("--tfflows-jit", choices=("auto", "on", "off"), default="auto",
                   help="fit_to_density(jit_compile=...) (auto: its default, which turns XLA on here)")
    p.add_argument("--probe-steps", type=int, default=500,
                   help="steps of the tfflows speed probe (defaults; XLA off) on the first energy (0: skip)")
    p.add_argument("--probe-flows", type=int, default=8, help="K of the speed probe")
    p.add_argument("--energy-tol", type=float, default=ENERGY_TOL)
    p.add_argument("--peers-python", default=PEERS_PYTHON, help="interpreter with torch, normflows, pyro-ppl")
    p.add_argument("--main-python", default=sys.executable, help="interpreter with tfflows and TF")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per worker process")
    p.add_argument("--out-dir", default=None,
                   help="default: benchmarks/results/<YYYY-MM-DD>-<machine>/ (today, this machine)")
    p.add_argument("--quick", action="store_true", help=f"smoke run, not a result: {QUICK} unless given explicitly")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
                 if a.startswith("--")}
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    args.energies = [e.strip() for e in args.energies.split(",") if e.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.flows = C.flows_list(args.flows)
    bad = [e for e in args.energies if e not in C.ENERGIES] + [m for m in args.models if m not in C.MODELS]
    if bad:
        p.error(f"unknown energies/models {bad}; energies: {list(C.ENERGIES)}; models: {list(C.MODELS)}")
    if not args.flows or min(args.flows) < 1:
        p.error(f"--flows needs positive integers; got {args.flows}")
    if args.out_dir is None:
        args.out_dir = run_results_dir(*OUTPUTS)
    return args


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


def worker_cmd(args, models, energies, flows, steps, warmup, overrides=None):
    """The worker command line of `models` (one interpreter); `overrides`
    ({flag: value}) replace the driver's flags (the tfflows probe)."""
    interp = C.INTERPRETER[C.MODELS[models[0]][0]]
    python = args.main_python if interp == "main" else args.peers_python
    flags = {"--models": ",".join(models), "--energies": ",".join(energies), "--flows": ",".join(map(str, flows)),
             "--steps": steps, "--batch-size": args.batch_size, "--lr": repr(args.lr), "--schedule": args.schedule,
             "--anneal-steps": args.anneal_steps, "--sylvester-reflections": args.sylvester_reflections,
             "--seed": args.seed, "--warmup": warmup, "--eval-n": args.eval_n, "--threads": args.threads}
    if interp == "main":
        flags["--jit"] = args.tfflows_jit
    flags.update(overrides or {})
    return [python, WORKERS[interp]] + [str(t) for kv in flags.items() for t in kv]


def check_energies(args, log, ds):
    """Both workers' `log p~` at `check_points()`, compared (see `C.agreement`)."""
    z = C.check_points()
    out = {"points": int(len(z)), "box": "[-5, 5]^2", "tol": args.energy_tol, "ok": False, "energies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        pts = os.path.join(tmp, "points.npz")
        np.savez(pts, z=z)
        dumps = {}
        for interp, python in (("main", args.main_python), ("peers", args.peers_python)):
            path = os.path.join(tmp, f"{interp}.npz")
            cmd = [python, WORKERS[interp], "--points", pts, "--dump-energies", path, "--threads", str(args.threads)]
            if not os.path.exists(python):
                out["error"] = f"interpreter {python} not found"
                return out
            _, rc, _ = run_worker(cmd, 600, log)
            if rc != 0 or not os.path.exists(path):
                out["error"] = f"{WORKERS[interp]} --dump-energies: exit status {rc}"
                return out
            with np.load(path) as f:
                dumps[interp] = {e: f[e] for e in C.ENERGIES}
    z64 = z.astype(np.float64)
    ok = True
    for e in C.ENERGIES:
        ref = -ds._energy_u(e, z64[:, 0], z64[:, 1], ds._NumpyOps)  # the same formula in float64
        rel, diff, good = C.agreement(dumps["peers"][e], dumps["main"][e], ref, args.energy_tol)
        out["energies"][e] = dict(max_rel_diff=rel, max_abs_diff=diff, ok=good,
                                  tfflows_vs_float64=C.agreement(dumps["main"][e], ref, ref, args.energy_tol)[0],
                                  torch_vs_float64=C.agreement(dumps["peers"][e], ref, ref, args.energy_tol)[0],
                                  max_abs_log_p=float(np.abs(ref).max()))
        ok = ok and good
    out["ok"] = ok
    return out


# ----------------------------------------------------------------------------- analysis
def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _fmt(v, spec=".3f", none="-"):
    return none if v is None else format(v, spec)


def add_kl(results, log_z):
    """`log_z` and `KL = log Z - ELBO` (with the ELBO's standard error) on each result."""
    for r in results:
        if r.get("energy") in log_z and "error" not in r:
            lz = log_z[r["energy"]]
            r["log_z"] = lz
            r["kl"] = None if r.get("elbo") is None else lz - r["elbo"]
            r["kl_se"] = r.get("elbo_se")
    return results


def _index(results):
    return {(r["model"], r["energy"], r["flows"]): r for r in results if "error" not in r}


def compare(results, energies, flows):
    """Each tfflows model against its peer, per energy and K."""
    by, rows = _index(results), []
    for e in energies:
        for k in flows:
            for mine, peer in C.PEER_OF.items():
                a, b = by.get((mine, e, k)), by.get((peer, e, k))
                if a is None or b is None:
                    continue
                kl_ok = a.get("kl") is not None and b.get("kl") is not None
                rows.append(dict(
                    energy=e, flows=k, tfflows=mine, peer=peer,
                    kl_diff=a["kl"] - b["kl"] if kl_ok else None,
                    kl_diff_se=math.hypot(a["kl_se"], b["kl_se"]) if kl_ok else None,
                    steps_s_ratio=_ratio(a.get("train_steps_s"), b.get("train_steps_s")),
                    first_steps_ratio=_ratio(a.get("first_steps_s"), b.get("first_steps_s")),
                    params_ratio=_ratio(a.get("params"), b.get("params"))))
    return rows


def targets(results, energies, flows):
    """The two targets per (pair, energy, K), MET or MISSED, with the numbers."""
    by = _index(results)
    tried = {(r.get("model"), r.get("energy"), r.get("flows")) for r in results}
    out = {"kl": [], "speed": []}
    for e in energies:
        for k in flows:
            for mine, peer in C.PEER_OF.items():
                b = by.get((peer, e, k))
                if b is None or (mine, e, k) not in tried:
                    continue  # the pair did not run (a failed tfflows run still counts, as MISSED)
                a = by.get((mine, e, k), {})
                kl_a, kl_b = a.get("kl"), b.get("kl")
                se = math.hypot(a["kl_se"], b["kl_se"]) if kl_a is not None and kl_b is not None else None
                diff = kl_a - kl_b if se is not None else None
                out["kl"].append(dict(energy=e, flows=k, tfflows=mine, peer=peer, tfflows_kl=kl_a,
                                      tfflows_kl_se=a.get("kl_se"), peer_kl=kl_b, peer_kl_se=b.get("kl_se"),
                                      diff=diff, diff_se=se, allowed=None if se is None else KL_SE_ALLOWED * se,
                                      met=diff <= KL_SE_ALLOWED * se if se is not None
                                      else kl_a is not None))  # only one finite KL: tfflows' or the peer's
                sa, sb = a.get("train_steps_s"), b.get("train_steps_s")
                out["speed"].append(dict(energy=e, flows=k, tfflows=mine, peer=peer, tfflows_steps_s=sa,
                                         peer_steps_s=sb, ratio=_ratio(sa, sb),
                                         met=sa is not None and (sb is None or sa >= sb)))
    return out


def summarize_targets(tg):
    out = {k: {"met": sum(1 for t in v if t["met"]), "of": len(v)} for k, v in tg.items()}
    for k, v in tg.items():
        for t in v:
            pair = f"{t['tfflows']} vs {t['peer']}"
            s = out.setdefault(f"{k}: {pair}", {"met": 0, "of": 0})
            s["met"] += int(t["met"])
            s["of"] += 1
    return out


def _verdict(met):
    return "**MET**" if met else "**MISSED**"


def markdown(report):
    """The human-readable tables of a run (energies.md)."""
    a, res = report["args"], report["results"]
    m = report["machine"]
    L = [f"# energies: {m.get('cpu')} x{m.get('cpu_count')}, {m.get('date')}", "",
         f"Reverse-KL fits to Rezende & Mohamed's U1-U4: {a['steps']} steps of {a['batch_size']} samples, Adam lr "
         f"{a['lr']} ({a['schedule']}), anneal {a['anneal_steps'] or 'none'}, K in {a['flows']}, "
         f"{a['sylvester_reflections']} reflections per Sylvester layer, {a['threads']} threads, seed {a['seed']}, "
         f"float32; KL = log Z - ELBO, the ELBO over {a['eval_n']:,} fresh draws after training (± SE) with the "
         f"exact log q (autodiff Jacobian of the sample map; 'own log q': the framework's log-dets, what it "
         f"trains on); "
         f"steps/s after {a['warmup']} warm-up steps. tfflows: fit_to_density(jit_compile={a['tfflows_jit']!r})."
         + (" QUICK SMOKE RUN: NOT A RESULT." if a["quick"] else ""), ""]
    chk = report.get("energy_check") or {}
    if chk:
        if chk.get("error"):
            L += [f"Energy check (torch against tfflows.datasets.energy): FAILED: {chk['error']}", ""]
        else:
            worst = max(v["max_rel_diff"] for v in chk["energies"].values())
            L += [f"Energy check: the torch energies agree with `tfflows.datasets.energy` on {chk['points']} points "
                  f"of {chk['box']} to {worst:.2e} relative to max(1, |U|) (tolerance {chk['tol']:g}): "
                  f"{'ok' if chk['ok'] else 'FAILED'}.", ""]
    for e in report["energies"]:
        rows = [r for r in res if r.get("energy") == e]
        if not rows:
            continue
        L += [f"## {e} (log Z = {report['log_z'][e]:.6f})", "",
              "| model | K | params | KL (nats) ± SE | ELBO | ELBO, own log q | max log q error | train steps/s | "
              "first steps (s) | NaN |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(rows, key=lambda r: (r["flows"], list(C.MODELS).index(r["model"]))):
            if "error" in r:
                L.append(f"| {r['model']} | {r['flows']} | FAILED: {r['error'][:120]} | | | | | | | |")
                continue
            kl = "non-finite" if r.get("kl") is None else f"{r['kl']:.4f} ± {r['kl_se']:.4f}"
            nan = "step %s" % r["nan_step"] if r.get("nan_step") else ("error" if r.get("train_error") else "no")
            L.append(f"| {r['model']} | {r['flows']} | {r['params']:,} | {kl} | {_fmt(r.get('elbo'), '.4f')} | "
                     f"{_fmt(r.get('elbo_own'), '.4f')} | {_fmt(r.get('log_q_err_max'), '.1e')} | "
                     f"{_fmt(r.get('train_steps_s'), '.1f')} | {_fmt(r.get('first_steps_s'), '.2f')} | {nan} |")
        L.append("")
    if report["ratios"]:
        L += ["## tfflows against its peer (same family, energy and K)", "",
              "KL difference tfflows - peer (negative: tfflows closer to p); steps/s ratio (above 1: tfflows "
              "faster); first-steps time ratio (trace / compile included); parameter ratio.", "",
              "| energy | K | tfflows | peer | KL diff ± SE | steps/s ratio | first steps ratio | params ratio |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["ratios"]:
            d = "-" if r["kl_diff"] is None else f"{r['kl_diff']:+.4f} ± {r['kl_diff_se']:.4f}"
            L.append(f"| {r['energy']} | {r['flows']} | {r['tfflows']} | {r['peer']} | {d} | "
                     f"{_fmt(r['steps_s_ratio'], '.2f')} | {_fmt(r['first_steps_ratio'], '.2f')} | "
                     f"{_fmt(r['params_ratio'], '.3f')} |")
        L.append("")
    tg = report["targets"]
    L += ["## Targets (issue #45, item 6)", "",
          f"1. tfflows' KL no worse than the peer's at equal steps (difference at most {KL_SE_ALLOWED:g} standard "
          f"errors of the difference):"]
    for t in tg["kl"]:
        L.append(f"   - {t['energy']}, K={t['flows']}: {t['tfflows']} {_fmt(t['tfflows_kl'], '.4f')} vs {t['peer']} "
                 f"{_fmt(t['peer_kl'], '.4f')}, diff {_fmt(t['diff'], '+.4f')} (allowed {_fmt(t['allowed'], '.4f')}): "
                 f"{_verdict(t['met'])}")
    L += ["2. tfflows train steps/s at least the peer's:"]
    for t in tg["speed"]:
        L.append(f"   - {t['energy']}, K={t['flows']}: {t['tfflows']} {_fmt(t['tfflows_steps_s'], '.1f')} vs "
                 f"{t['peer']} {_fmt(t['peer_steps_s'], '.1f')} steps/s, ratio {_fmt(t['ratio'], '.2f')}: "
                 f"{_verdict(t['met'])}")
    summ = report["target_summary"]
    L += ["", "Summary: " + "; ".join(f"{k} {v['met']}/{v['of']} met" for k, v in summ.items()), ""]
    if report.get("probe"):
        L += ["## tfflows speed probe (first energy)", "",
              "`fit_to_density` with its defaults (optimizer=None: Adam 1e-3 with clipnorm 100; jit_compile "
              "'auto'), and the benchmark's Adam with XLA off, against the configuration above.", "",
              "| model | K | configuration | train steps/s | first steps (s) |", "| --- | --- | --- | --- | --- |"]
        for r in report["probe"]:
            if "error" in r:
                L.append(f"| {r['model']} | {r['flows']} | FAILED: {r['error'][:100]} | | |")
                continue
            conf = f"jit {r.get('jit')} ({'XLA' if r.get('jit_compile') else 'no XLA'}), optimizer {r.get('optimizer')}"
            L.append(f"| {r['model']} | {r['flows']} | {conf} | {_fmt(r.get('train_steps_s'), '.1f')} | "
                     f"{_fmt(r.get('first_steps_s'), '.2f')} |")
        L.append("")
    if report["failures"]:
        L += ["## Failures", ""] + [f"- {k}: {v}" for k, v in report["failures"].items()] + [""]
    return "\n".join(L)


def build_report(args, info, log_z, results, probe=(), failures=None, energy_check=None, argv=(),
                 run_minutes=None):
    """The run's JSON report: every result line (with KL), the ratios and the targets."""
    results = add_kl(list(results), log_z)
    tg = targets(results, args.energies, args.flows)
    return dict(benchmark="energies", machine=info, argv=list(argv), args=vars(args), energies=list(args.energies),
                log_z=dict(log_z), energy_check=energy_check, results=results,
                ratios=compare(results, args.energies, args.flows), targets=tg, target_summary=summarize_targets(tg),
                probe=add_kl(list(probe), log_z), failures=dict(failures or {}), run_minutes=run_minutes)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    log = Log(os.path.join(args.out_dir, "energies.log"))
    info = machine_info()
    log(f"# energies on {info['cpu']} x{info['cpu_count']}, {info['date']}; out {args.out_dir}")
    if args.quick:
        log("# --quick: a smoke run; its numbers are not results")
    warn_if_busy(info)
    t_run = time.perf_counter()

    ds = load_datasets_module()
    assert tuple(ds.ENERGIES) == C.ENERGIES, (ds.ENERGIES, C.ENERGIES)
    log_z = {e: ds.energy_log_z(e) for e in args.energies}
    log("# log Z (tfflows.datasets.energy_log_z): " + json.dumps(log_z))
    failures = {}
    energy_check = check_energies(args, log, ds)
    log("# energy check: " + json.dumps(energy_check))
    if not energy_check["ok"]:
        failures["energy check"] = energy_check.get("error") or "the torch energies disagree with tfflows'"

    results, probe = [], []
    jobs = [(m, results, ([m], args.energies, args.flows, args.steps, args.warmup, None)) for m in args.models]
    mine = [m for m in args.models if C.MODELS[m][0] == "tfflows"]
    if args.probe_steps and mine:
        pw = min(args.warmup, args.probe_steps // 2)
        for label, over in (("tfflows defaults", {"--jit": "auto", "--optimizer": "default"}),
                            ("tfflows XLA off", {"--jit": "off"})):
            jobs.append((f"probe: {label}", probe,
                         (mine, args.energies[:1], [args.probe_flows], args.probe_steps, pw, over)))
    for label, collect, job in jobs:
        cmd = worker_cmd(args, *job)
        if not os.path.exists(cmd[0]):
            failures[label] = f"interpreter {cmd[0]} not found"
            log(f"# {label}: SKIPPED ({failures[label]})")
            continue
        busy = cpu_busy_fraction(1.0)
        log(f"# {label}: {len(job[1])} energies x K {job[2]}, {job[3]} steps "
            f"({(time.perf_counter() - t_run) / 60:.1f} min into the run; CPU busy "
            f"{_fmt(None if busy is None else 100 * busy, '.0f')} % over the last second)")
        if busy is not None and busy > 0.10:
            log("# WARNING: the CPU is not idle before this worker: its timings are contended.")
        out, rc, wall = run_worker(cmd, args.timeout, log)
        for r in out:
            r["process_wall_s"] = round(wall, 1)
            r["cpu_busy_before"] = busy
            if "error" in r:
                failures[f"{label} / {r['energy']} / K={r['flows']}"] = r["error"]
        collect.extend(out)
        if rc != 0 and not out:
            failures[label] = f"exit status {rc}, no results"
        log(f"# {label}: done in {wall:.1f} s (exit {rc})")

    try:
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    report = build_report(args, info, log_z, results, probe, failures, energy_check,
                          argv=sys.argv[1:] if argv is None else list(argv),
                          run_minutes=round((time.perf_counter() - t_run) / 60, 2))
    md = markdown(report)
    with open(os.path.join(args.out_dir, "energies.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out_dir, "energies.md"), "w") as f:
        f.write(md + "\n")
    log("\n" + md)
    log(f"# wrote {args.out_dir}/energies.json, energies.md, energies.log ({report['run_minutes']} min)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
