#!/usr/bin/env python3
"""Throughput benchmark: the same Glow on MNIST in tfflows, TFP and normflows.

`python -m benchmarks.glow_mnist` (from the repo root) runs, one after the
other, each in its own process:

* `matmul_peak` for numpy, TensorFlow, JAX and (if its env exists) PyTorch:
  the machine's measured fp32 matmul peak is the best of them;
* every implementation for `--steps` timed steps (default 30) after a first
  (trace/compile) step, with identical flags: tfflows on TensorFlow with
  `jit_compile` off and on and on JAX (`benchmarks/bench_tfflows_glow.py`),
  TFP `tfb.Glow` in a `TransformedDistribution` and normflows (the shared
  scripts in `../shared/tools`, run unchanged); and, in bfloat16, tfflows
  with bfloat16 coupling nets (`--dtype mixed_bfloat16`) and normflows under
  `torch.autocast` (`benchmarks/bench_normflows_autocast.py`), with the
  bfloat16 matmul peak measured too.

Each prints one JSON line (params, first_step_s, train_img_s, bpd_end, nan,
sample64_s, peak_rss_mb, ...); this driver adds the training FLOP rate and its
fraction of the matmul peak, re-prints the lines, prints the tfflows /
baseline ratios and the issue's targets, and writes everything to
`--out-dir/glow_mnist.json` (default `benchmarks/results/<date>-<machine>/`,
see `_common.run_results_dir`). Nothing runs in parallel.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (REPO_ROOT, SHARED_TOOLS, add_model_args, default_data,  # noqa: E402
                               last_json_line, run_results_dir)
from benchmarks.flops import glow_flops  # noqa: E402

TORCH_PYTHON = os.environ.get("TORCH_PYTHON", "/tmp/torchenv/bin/python")
BENCH_TFFLOWS = os.path.join(REPO_ROOT, "benchmarks", "bench_tfflows_glow.py")
BENCH_NF_AUTOCAST = os.path.join(REPO_ROOT, "benchmarks", "bench_normflows_autocast.py")

# name -> (interpreter key, script, extra flags)
IMPLS = {
    "tfflows-tf-jit-off": ("tf", BENCH_TFFLOWS, ["--backend", "tensorflow", "--jit", "off"]),
    "tfflows-tf-jit-on": ("tf", BENCH_TFFLOWS, ["--backend", "tensorflow", "--jit", "on"]),
    "tfflows-jax": ("tf", BENCH_TFFLOWS, ["--backend", "jax", "--jit", "on"]),
    "tfp-glow": ("tf", os.path.join(SHARED_TOOLS, "bench_tfp_glow.py"), ["--exit", "default"]),
    "tfp-glow-exit-identity": ("tf", os.path.join(SHARED_TOOLS, "bench_tfp_glow.py"),
                               ["--exit", "identity"]),
    "normflows-glow": ("torch", os.path.join(SHARED_TOOLS, "bench_normflows_glow.py"), []),
    # bfloat16 matmuls (this CPU has AVX512_BF16): tfflows' mixed_bfloat16
    # policy (coupling nets only) against normflows under torch CPU autocast.
    "tfflows-tf-jit-off-bf16": ("tf", BENCH_TFFLOWS, ["--backend", "tensorflow", "--jit", "off",
                                                      "--dtype", "mixed_bfloat16"]),
    "normflows-glow-bf16": ("torch", BENCH_NF_AUTOCAST, []),
    # Opt-in: Adam's literal eps 1e-8 on the bits/dim loss instead of tfflows'
    # default (eps / (784 ln 2), the baselines' exact Adam on the NLL).
    "tfflows-tf-jit-off-bpd-eps": ("tf", BENCH_TFFLOWS, ["--backend", "tensorflow", "--jit", "off",
                                                         "--adam-eps-on", "bpd"]),
}
DEFAULT_IMPLS = ["tfflows-tf-jit-off", "tfflows-tf-jit-off-bf16", "tfflows-tf-jit-on", "tfflows-jax",
                 "tfp-glow", "tfp-glow-exit-identity", "normflows-glow", "normflows-glow-bf16"]
TFFLOWS_DEFAULT = "tfflows-tf-jit-off"  # the configuration the targets are checked on
TFFLOWS_BF16 = "tfflows-tf-jit-off-bf16"  # bfloat16 coupling nets: targets reported for it too
PEAK_FRAMEWORKS = [("numpy", "tf"), ("tensorflow", "tf"), ("jax", "tf"), ("torch", "torch")]
BF16_PEAK_FRAMEWORKS = [("tensorflow", "tf"), ("torch", "torch")]  # matmul_peak's --dtype bfloat16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                   help=f"comma-separated subset of {list(IMPLS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    add_model_args(p)
    p.add_argument("--eval-n", type=int, default=512)
    p.add_argument("--data", default=default_data())
    p.add_argument("--tf-python", default=sys.executable,
                   help="interpreter with tensorflow, tfp, keras, jax (this one)")
    p.add_argument("--torch-python", default=TORCH_PYTHON,
                   help="interpreter of the normflows env (torch==2.13.0 CPU + normflows)")
    p.add_argument("--peak-n", type=int, default=4096, help="matmul size for the peak")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per implementation")
    p.add_argument("--out-dir", default=None,
                   help="default: benchmarks/results/<YYYY-MM-DD>-<machine>/ (today, this machine)")
    p.add_argument("--nice", type=int, default=0,
                   help="run the children under `nice -n N` (0: as is)")
    args = p.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = run_results_dir("glow_mnist.json")
    args.impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = [s for s in args.impls if s not in IMPLS]
    if unknown:
        p.error(f"unknown --impls {unknown}; choose from {list(IMPLS)}")
    return args


def run_child(cmd, timeout, nice=0):
    """Runs one benchmark process, streaming its output; returns (json, rc, wall_s)."""
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    noise = ("oneDNN", "cuda", "cuInit", "absl::", "WARNING: All log messages")
    t0 = time.perf_counter()
    lines = []
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    timer = threading.Timer(timeout, proc.kill)  # a hung child must not hang the driver
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if not any(n in line for n in noise):
                print("    " + line.rstrip()[:2000], flush=True)
        rc = proc.wait()
    finally:
        timed_out = not timer.is_alive() and proc.returncode not in (0, None)
        timer.cancel()
    if timed_out:
        rc = f"killed after the {timeout} s timeout"
    return last_json_line("".join(lines)), rc, time.perf_counter() - t0


def machine_info():
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "gpu": None}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["load_avg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    busy = cpu_busy_fraction()
    if busy is not None:
        info["cpu_busy_at_start"] = busy
    return info


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def cpu_busy_fraction(seconds=2.0):
    """Fraction of all cores busy over the next `seconds` (from /proc/stat), or
    None where there is no /proc. Unlike the load average, which decays over
    a minute and still shows a benchmark that has just exited, this is what
    the CPU is doing now."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(seconds)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (i1 - i0) / max(t1 - t0, 1), 3)


def warn_if_busy(info):
    """Timed runs need an idle machine; say so loudly when it is not."""
    busy = info.get("cpu_busy_at_start")
    load = info.get("load_avg_at_start", [0.0])[0]
    if busy is not None:
        print(f"# CPU busy {100 * busy:.1f} % over the 2 s before the start "
              f"(1-minute load average {load}, which lags by about a minute)", flush=True)
        if busy > 0.10:
            print("# WARNING: the CPU is not idle, so these timings are contended "
                  "(fine for a smoke test, not for the report).", flush=True)
    elif load > 0.5:
        print(f"# WARNING: 1-minute load average {load} at start: the CPU is not idle, "
              f"so these timings are contended (fine for a smoke test, not for the report).",
              flush=True)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios_and_targets(results):
    """tfflows / baseline ratios for every tfflows run, and the issue's targets."""
    base_names = [n for n in results if not n.startswith("tfflows")]
    rows, targets = [], {}
    for t in [n for n in results if n.startswith("tfflows")]:
        for b in base_names:
            rt, rb = results[t], results[b]
            rows.append({
                "tfflows": t, "baseline": b,
                "train_img_s": ratio(rt.get("train_img_s"), rb.get("train_img_s")),
                "first_step_s": ratio(rt.get("first_step_s"), rb.get("first_step_s")),
                "sample64_s": ratio(rt.get("sample64_s"), rb.get("sample64_s")),
                "peak_rss_mb": ratio(rt.get("peak_rss_mb"), rb.get("peak_rss_mb")),
                "params": ratio(rt.get("params"), rb.get("params")),
            })
    tfp, nf = results.get("tfp-glow"), results.get("normflows-glow")
    for name in [n for n in (TFFLOWS_DEFAULT, TFFLOWS_BF16) if n in results]:
        t, tg = results[name], {}
        if tfp:
            r = ratio(t["train_img_s"], tfp["train_img_s"])
            tg["throughput >= 2x TFP"] = {"ratio": r, "met": r is not None and r >= 2.0}
            r = ratio(t["peak_rss_mb"], tfp["peak_rss_mb"])
            tg["peak RSS <= TFP"] = {"ratio": r, "met": r is not None and r <= 1.0}
        if nf:
            r = ratio(t["train_img_s"], nf["train_img_s"])
            tg["throughput >= 1.5x normflows"] = {"ratio": r, "met": r is not None and r >= 1.5}
            r = ratio(t["sample64_s"], nf["sample64_s"])
            tg["sample64 time <= normflows"] = {"ratio": r, "met": r is not None and r <= 1.0}
        if tg:
            targets[name] = tg
    return rows, targets


def measure_peaks(args, pythons, frameworks, dtype):
    """`benchmarks.matmul_peak` in each of `frameworks` ((name, interpreter key)
    pairs) that has an interpreter; returns `({framework: result}, best
    GFLOP/s or None)` and prints the best."""
    peaks = {}
    for fw, interp in frameworks:
        if not os.path.exists(pythons[interp]):
            print(f"# matmul peak: skipping {fw} ({pythons[interp]} not found)")
            continue
        res, rc, _ = run_child([pythons[interp], "-m", "benchmarks.matmul_peak", "--framework", fw,
                                "--dtype", dtype, "--n", str(args.peak_n),
                                "--threads", str(args.threads)], 600, args.nice)
        if res:
            peaks[fw] = res
    peak = max((r["gflop_s"] for r in peaks.values()), default=None)
    if peak:
        best = max(peaks, key=lambda k: peaks[k]["gflop_s"])
        label = "fp32" if dtype == "float32" else "bf16"
        print(f"# {label} matmul peak: {peak} GFLOP/s ({best}, n={args.peak_n})", flush=True)
    return peaks, peak


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    pythons = {"tf": args.tf_python, "torch": args.torch_python}
    info = machine_info()
    print(f"# glow_mnist on {info['cpu']} x{info['cpu_count']}, {info['date']}", flush=True)
    warn_if_busy(info)

    flops = glow_flops(levels=args.levels, depth=args.depth, hidden=args.hidden)
    print(f"# model FLOPs/image: forward {flops['forward_flops_per_image'] / 1e9:.3f} G, "
          f"train step {flops['train_flops_per_image'] / 1e9:.3f} G (analytic)", flush=True)

    peaks, peak = ({}, None) if args.no_peak else measure_peaks(args, pythons, PEAK_FRAMEWORKS, "float32")
    want_bf16 = not args.no_peak and any(n.endswith("-bf16") for n in args.impls)
    peaks_bf16, peak_bf16 = measure_peaks(args, pythons, BF16_PEAK_FRAMEWORKS, "bfloat16") if want_bf16 else ({}, None)

    common = ["--steps", str(args.steps), "--warmup", str(args.warmup),
              "--batch", str(args.batch), "--lr", str(args.lr), "--hidden", str(args.hidden),
              "--levels", str(args.levels), "--depth", str(args.depth), "--seed", str(args.seed),
              "--threads", str(args.threads), "--eval-n", str(args.eval_n), "--data", args.data]
    results, failures = {}, {}
    for name in args.impls:
        interp, script, extra = IMPLS[name]
        if not os.path.exists(pythons[interp]):
            failures[name] = f"interpreter {pythons[interp]} not found"
            print(f"# {name}: SKIPPED ({failures[name]})", flush=True)
            continue
        res, rc, wall = run_child([pythons[interp], script] + extra + common, args.timeout, args.nice)
        if res is None or rc != 0:
            failures[name] = f"exit status {rc}, no JSON line" if res is None else f"exit status {rc}"
            print(f"# {name}: FAILED ({failures[name]})", flush=True)
            if res is None:
                continue
        res["impl"] = name  # the driver's name (the TFP script says tfp-glow for both exits)
        res["process_wall_s"] = round(wall, 1)
        if res.get("train_img_s"):
            gflop_s = res["train_img_s"] * flops["train_flops_per_image"] / 1e9
            res["train_gflop_s"] = round(gflop_s, 1)
            res["frac_of_matmul_peak"] = round(gflop_s / peak, 3) if peak else None
            if name.endswith("-bf16"):
                res["frac_of_bf16_matmul_peak"] = round(gflop_s / peak_bf16, 3) if peak_bf16 else None
        results[name] = res

    rows, targets = ratios_and_targets(results)
    print("\n# results (one JSON line per implementation)")
    for res in results.values():
        print(json.dumps(res), flush=True)
    print("\n# ratios tfflows / baseline (train_img_s: higher is better; first_step_s, "
          "sample64_s, peak_rss_mb: lower is better)")
    for r in rows:
        print(json.dumps(r))
    for name, tg in targets.items():
        print(f"\n# targets ({name} against the float32 baselines as their users run them, same run)")
        for k, v in tg.items():
            print(f"#   {k:32s} ratio {v['ratio']}  {'MET' if v['met'] else 'NOT MET'}")

    info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report = {"benchmark": "glow_mnist", "machine": info, "argv": sys.argv[1:],
              "args": {k: v for k, v in vars(args).items()}, "flops": flops,
              "matmul_peak_gflop_s": peak, "matmul_peaks": peaks,
              "bf16_matmul_peak_gflop_s": peak_bf16, "bf16_matmul_peaks": peaks_bf16, "results": results,
              "ratios": rows, "targets": targets, "failures": failures}
    path = os.path.join(args.out_dir, "glow_mnist.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n# wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
