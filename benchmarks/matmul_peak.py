#!/usr/bin/env python3
"""Measured matmul peak of this machine: best GFLOP/s of a large square matmul.

`python -m benchmarks.matmul_peak --framework numpy|tensorflow|jax|torch`
times `C = A @ B` with float32 `N x N` operands (2 N^3 FLOPs) `--reps` times
after a warm-up, on all cores, and prints one JSON line with the best rate.
`glow_mnist` runs it once per framework it has and takes the maximum as the
machine's peak; each implementation's training FLOP rate is then expressed
as a fraction of it. `--dtype bfloat16` (TensorFlow and PyTorch) measures the
bfloat16 peak the same way (bfloat16 operands, float32 accumulation inside
oneDNN); on CPUs with AVX512_BF16 or AMX it is well above the float32 one.
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import emit  # noqa: E402


def _timer(fn, reps):
    fn()  # warm-up (allocations, kernel selection, JIT)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(framework, n, reps, threads, dtype="float32"):
    import numpy as np
    if dtype != "float32" and framework not in ("tensorflow", "torch"):
        raise ValueError(f"--dtype {dtype} is measured with tensorflow or torch, not {framework}")
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    if framework == "numpy":
        version = np.__version__
        fn = lambda: a @ b  # noqa: E731
    elif framework == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        version = tf.__version__
        ta, tb = tf.cast(tf.constant(a), dtype), tf.cast(tf.constant(b), dtype)
        fn = lambda: tf.linalg.matmul(ta, tb).numpy()  # noqa: E731
    elif framework == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax
        import jax.numpy as jnp
        version = jax.__version__
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        mm = jax.jit(jnp.matmul)
        fn = lambda: mm(ja, jb).block_until_ready()  # noqa: E731
    elif framework == "torch":
        import torch
        torch.set_num_threads(threads)
        version = torch.__version__
        ta, tb = torch.from_numpy(a).to(getattr(torch, dtype)), torch.from_numpy(b).to(getattr(torch, dtype))
        fn = lambda: torch.mm(ta, tb)  # noqa: E731
    else:
        raise ValueError(f"unknown framework {framework!r}")
    best = _timer(fn, reps)
    return {"framework": framework, "dtype": dtype, "version": version, "n": n, "reps": reps,
            "threads": threads, "best_s": round(best, 4),
            "gflop_s": round(2.0 * n ** 3 / best / 1e9, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=["numpy", "tensorflow", "jax", "torch"], default="numpy")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = p.parse_args(argv)
    result = measure(args.framework, args.n, args.reps, args.threads, args.dtype)
    result["impl"] = f"matmul-peak-{args.framework}" + ("" if args.dtype == "float32" else f"-{args.dtype}")
    emit(result)


if __name__ == "__main__":
    sys.exit(main())
