#!/usr/bin/env python3
"""CPU-seconds per training step on ONE thread: a contention-robust work measure.

`python -m benchmarks.cpu_work --impl NAME [--steps 5]` sets up one
implementation exactly as `ttb_worker.py` does (same model, optimizer and
batches), restricted to a single compute thread, runs the first step and
then `--steps` steps, and reports the process CPU time (user + sys) of each.
While other jobs share the machine, wall-clock timings swing by several x;
the CPU time of a single-threaded step barely moves, so this is the number
to compare implementations (or a proposed code change) with on a busy
machine. It ignores parallel efficiency, so it does not replace the timed
two-core run of `glow_mnist` on an idle machine.
"""
import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import default_data, emit, load_mnist, random_batches  # noqa: E402
from benchmarks.ttb_worker import IMPLS  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=default_data())
    args = p.parse_args(argv)

    # One compute thread everywhere, set before any framework is imported.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    from benchmarks import ttb_worker as tw
    wargs = tw.parse_args(["--impl", args.impl, "--hidden", str(args.hidden), "--seed", str(args.seed),
                           "--threads", "1", "--data", args.data])
    if args.impl in tw.TFFLOWS:
        fns = tw.setup_tfflows(wargs, args.impl)
    elif args.impl.startswith("tfp"):
        fns = tw.setup_tfp(wargs, "identity" if args.impl.endswith("identity") else "default")
    else:
        fns = tw.setup_normflows(wargs)
    first_step, step, _, n_params, versions = fns

    import numpy as np
    x_train, _ = load_mnist(args.data)
    batches = random_batches(x_train, 64, np.random.default_rng(args.seed))
    c0, w0 = time.process_time(), time.perf_counter()
    first_step(next(batches))
    first_cpu, first_wall = time.process_time() - c0, time.perf_counter() - w0
    cpu, wall = [], []
    for _ in range(args.steps):
        x = next(batches)
        c0, w0 = time.process_time(), time.perf_counter()
        step(x)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    emit({"impl": args.impl, "params": n_params, "threads": 1,
          "first_step_cpu_s": round(first_cpu, 3), "first_step_wall_s": round(first_wall, 3),
          "median_step_cpu_s": round(statistics.median(cpu), 4),
          "min_step_cpu_s": round(min(cpu), 4),
          "median_step_wall_s": round(statistics.median(wall), 4),
          "step_cpu_s": [round(c, 4) for c in cpu], "versions": versions})


if __name__ == "__main__":
    sys.exit(main())
