"""Shared, framework-free helpers of the benchmarks (numpy and stdlib only).

Everything that must be identical across tfflows, TFP and normflows lives
here: where the data is, how a batch and its dequantization noise are drawn,
the fixed evaluation noise, bits/dim, peak RSS, and the time-budgeted training
loop of `time_to_bpd`. The PyTorch workers import this module too, so it must
not import TensorFlow, JAX or Keras.
"""

import datetime
import importlib.util
import json
import math
import os
import resource
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")
SHARED_TOOLS = os.environ.get("SHARED_TOOLS", os.path.join(SHARED_DIR, "tools"))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")  # one folder per run: see run_results_dir

# The seed of the fixed evaluation noise; the shared baseline scripts use it too.
EVAL_NOISE_SEED = 12345


def load_shared_script(filename):
    """Imports one of the shared baseline scripts (`SHARED_TOOLS/filename`) as a module."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(filename)[0],
                                                  os.path.join(SHARED_TOOLS, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def add_model_args(p):
    """The architecture/optimizer flags every benchmark shares (same defaults as ../shared/tools)."""
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p


def _cpuinfo_fields(cpuinfo="/proc/cpuinfo"):
    """The first value of each `key : value` line of `cpuinfo` (`{}` if unreadable)."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The instruction-set flags of the first CPU in `cpuinfo` (empty if unreadable)."""
    return set(_cpuinfo_fields(cpuinfo).get("flags", "").split())


def tfflows_train_default_impl(cpuinfo="/proc/cpuinfo"):
    """The benchmark row that matches what `tfflows train --dtype auto` runs on
    this CPU: bfloat16 coupling nets where the CPU has AVX512_BF16 or AMX,
    float32 elsewhere. It reads the CPU flags itself rather than importing
    tfflows: that would load TensorFlow into the drivers, which only spawn the
    timed workers."""
    return "tfflows-tf-jit-off-bf16" if {"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo) else "tfflows-tf-jit-off"


# CPU families named in /proc/cpuinfo's "model name", most specific first.
_CPU_FAMILIES = ("epyc", "threadripper", "ryzen", "opteron", "xeon", "core", "pentium", "celeron", "atom")
_CPU_VENDORS = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}
# The fastest matmul instructions a CPU has: (cpuinfo flag, slug).
_MATMUL_ISAS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def machine_slug(cpuinfo="/proc/cpuinfo", cpu_count=None):
    """A short name of this machine for result folders: CPU family, its fastest
    matmul instructions and the core count, e.g. `epyc-avx512bf16-2core` or
    `xeon-amx-2core`; `unknown-2core` where /proc/cpuinfo names no CPU."""
    fields = _cpuinfo_fields(cpuinfo)
    model = fields.get("model name", "").lower()
    family = next((name for name in _CPU_FAMILIES if name in model),
                  _CPU_VENDORS.get(fields.get("vendor_id", ""), "unknown"))
    flags = set(fields.get("flags", "").split())
    isa = next((slug for flag, slug in _MATMUL_ISAS if flag in flags), None)
    cores = os.cpu_count() if cpu_count is None else cpu_count
    return "-".join([family] + ([isa] if isa else []) + [f"{cores or 'unknown'}core"])


def run_results_dir(*outputs, date=None, machine=None, root=RESULTS_DIR):
    """The folder a new run writes into: `benchmarks/results/<YYYY-MM-DD>-<machine>/`,
    today's date and `machine_slug()` by default (not created here).

    Runs of different scripts on one day and machine share the folder (a
    throughput run and a time-to-quality run back to back). When it already
    holds one of `outputs` (the file names this script writes), the run goes
    to the first of `<date>-<machine>-2`, `-3`, ... that does not.
    """
    base = f"{date or datetime.date.today().isoformat()}-{machine or machine_slug()}"
    path, n = os.path.join(root, base), 1
    while any(os.path.exists(os.path.join(path, name)) for name in outputs):
        n += 1
        path = os.path.join(root, f"{base}-{n}")
    return path


def default_data():
    """`$SHARED_DATA/mnist.npz` if set, else `../shared/data/mnist.npz` from the repo root."""
    root = os.environ.get("SHARED_DATA", os.path.join(SHARED_DIR, "data"))
    return os.path.join(root, "mnist.npz")


def load_mnist(path):
    """`(x_train, x_test)` as float32 `(N, 28, 28, 1)` holding the uint8 values.

    Exactly as the shared baseline scripts load it (they dequantize later);
    for NCHW with one channel the same memory is `(N, 1, 28, 28)`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"MNIST not found at {path}; pass --data PATH or set SHARED_DATA "
            f"to the folder holding mnist.npz.")
    with np.load(path) as f:
        return (f["x_train"].astype(np.float32)[..., None],
                f["x_test"].astype(np.float32)[..., None])


def dequant(u8, r):
    """`(u8 + U[0, 1)) / 256` with noise from generator `r` (as the baselines)."""
    return ((u8 + r.random(u8.shape, dtype=np.float32)) / 256.0).astype(np.float32)


def random_batches(x_train, batch, rng):
    """The baselines' stream: indices with replacement, then noise, one `rng`."""
    while True:
        idx = rng.integers(0, x_train.shape[0], size=batch)
        yield dequant(x_train[idx], rng)


def epoch_batches(x_train, batch, rng):
    """Full-dataset epochs: a fresh permutation per epoch, `batch`-sized
    slices (the last partial slice is dropped), noise from the same `rng`."""
    n = x_train.shape[0]
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            yield dequant(x_train[perm[i:i + batch]], rng)


def eval_set(x_test, n):
    """The first `n` test images with the fixed dequantization noise."""
    return dequant(x_test[:n], np.random.default_rng(EVAL_NOISE_SEED))


def to_bpd(nll_nats, dims=784):
    """Mean NLL in nats of data in [0, 1) -> bits/dim of the 8-bit data."""
    return nll_nats / (dims * math.log(2.0)) + 8.0


def finite_or_none(v):
    return v if (v is not None and math.isfinite(v)) else None


def peak_rss_mb():
    """`ru_maxrss` of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(obj):
    """Prints one JSON line (what the drivers collect)."""
    print(json.dumps(obj), flush=True)


def last_json_line(text, key="impl"):
    """The last line of `text` that parses as a JSON object holding `key`."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if key in obj:
                return obj
    return None


def run_time_budget(impl, first_step, step, evaluate, x_train, x_eval, minutes,
                    eval_every_min=2.0, batch=64, seed=0, log_every_s=30.0, extra_marks=()):
    """Trains for `minutes` of wall clock and returns the curve as a dict.

    `first_step(x)` and `step(x)` take a numpy batch `(B, 28, 28, 1)` and
    return the mean training NLL in nats as a float (`first_step` also runs
    any data-dependent init and compilation); `evaluate(x)` returns the mean
    NLL in nats of an array of images. Batches come from `epoch_batches`
    seeded with `seed`, so every implementation sees the same images and the
    same noise in the same order.

    Each evaluation is labelled with its nominal `mark` (minutes: a multiple
    of `eval_every_min`, one of `extra_marks` (e.g. `minutes / 2`, where the
    time-to-quality target is judged), or `minutes` for the final one) and
    the actual training-clock `minutes` at which it ran (just after the mark).

    The training clock counts batch preparation and every train step,
    including the first (trace/compile and ActNorm init). It stops while the
    test set is evaluated, every `eval_every_min` minutes of training clock
    and once at the end. A non-finite loss is recorded and ends training
    (the model cannot recover from NaN weights).
    """
    rng = np.random.default_rng(seed)
    stream = epoch_batches(x_train, batch, rng)
    budget = minutes * 60.0
    n_regular = int(math.floor(minutes / eval_every_min + 1e-9))
    marks = sorted({round(k * eval_every_min, 4) for k in range(1, n_regular + 1)}
                   | {round(float(m), 4) for m in extra_marks})
    marks = [m for m in marks if 0 < m < minutes]  # the final evaluation is always made
    next_i = 0
    clock = 0.0
    n_steps = 0
    first_step_s = None
    first_nan_step = None
    train = []  # (clock_s, train bpd) per step
    curve = []  # evaluations: (clock_s, step, test bpd)
    eval_wall = 0.0
    t_start = time.perf_counter()
    t_log = t_start

    def do_eval(mark):
        nonlocal eval_wall
        t0 = time.perf_counter()
        nll = evaluate(x_eval)
        eval_wall += time.perf_counter() - t0
        bpd = finite_or_none(to_bpd(nll))
        curve.append({"mark": mark, "minutes": round(clock / 60.0, 4), "step": n_steps,
                      "test_bpd": None if bpd is None else round(bpd, 4)})
        print(f"[{impl}] eval at {clock / 60.0:.2f} min (step {n_steps}): "
              f"test bpd {bpd}", flush=True)

    while clock < budget:
        t0 = time.perf_counter()
        x = next(stream)
        loss = (first_step if n_steps == 0 else step)(x)
        dt = time.perf_counter() - t0
        clock += dt
        if n_steps == 0:
            first_step_s = dt
        bpd = to_bpd(loss) if math.isfinite(loss) else None
        train.append((round(clock, 3), None if bpd is None else round(bpd, 4)))
        n_steps += 1
        if bpd is None:
            first_nan_step = n_steps - 1
            print(f"[{impl}] non-finite loss at step {first_nan_step}; stopping.", flush=True)
            break
        if time.perf_counter() - t_log > log_every_s:
            t_log = time.perf_counter()
            print(f"[{impl}] {clock / 60.0:.2f} min, step {n_steps}, train bpd {bpd:.4f}", flush=True)
        if next_i < len(marks) and clock >= marks[next_i] * 60.0 and clock < budget:
            # One evaluation even if a long step (a compile) crossed several marks;
            # it is labelled with the last mark crossed.
            while next_i + 1 < len(marks) and marks[next_i + 1] * 60.0 <= clock:
                next_i += 1
            do_eval(marks[next_i])
            next_i += 1
    if first_nan_step is None:
        do_eval(minutes)
    else:
        curve.append({"mark": minutes, "minutes": round(clock / 60.0, 4), "step": n_steps,
                      "test_bpd": None})
    return {
        "impl": impl,
        "minutes": minutes,
        "steps": n_steps,
        "img_s_avg": round(n_steps * batch / clock, 2) if clock > 0 else None,
        "first_step_s": None if first_step_s is None else round(first_step_s, 3),
        "final_test_bpd": curve[-1]["test_bpd"],
        "nan": first_nan_step is not None,
        "first_nan_step": first_nan_step,
        "curve": curve,
        "train_curve": train,
        "eval_wall_s": round(eval_wall, 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "python": sys.version.split()[0],
    }
