#!/usr/bin/env python3
"""Profiles tfflows' Glow train step and prints where the time goes.

`python -m benchmarks.profile_train_step --backend tensorflow --jit off`
builds the benchmark Glow (hidden 400, batch 64) exactly as
`bench_tfflows_glow.py` does, runs `--warmup` train steps, then traces
`--steps` more with `tf.profiler.experimental` (TensorFlow) or
`jax.profiler` (JAX) into `--logdir`, reads the XPlane protobuf it wrote and
prints the self time per op type and per op, aggregated over all host
threads (viewable in TensorBoard's profile plugin too). `--xla-dump DIR`
also dumps the optimised HLO (`XLA_FLAGS=--xla_dump_to=DIR`) for the
compiled variants, to check layouts and fusions.

The profile is for relative shares inside one run: absolute times depend on
what else the machine is doing.
"""
import argparse
import collections
import glob
import os
import re
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import default_data, load_mnist, random_batches  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow")
    p.add_argument("--jit", choices=["on", "off"], default="off")
    p.add_argument("--steps", type=int, default=3, help="traced steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--logdir", default="/tmp/tfflows_profile")
    p.add_argument("--xla-dump", default=None, help="folder for XLA's optimised HLO")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--convnet", choices=["shipped", "conv2d", "mm1x1"], default="shipped",
                   help="shipped: ConvNet.call as in tfflows (matmul convs); conv2d / mm1x1: "
                        "the earlier variants from ab_convnet.py (monkeypatched)")
    p.add_argument("--data", default=default_data())
    return p.parse_args(argv)


def _self_times(xspace_path):
    """(self time by event name, wall span) summed over the host plane's lines."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
            stack = []  # [end_ps, name, self_ps]
            for e in events:
                start, end = e.offset_ps, e.offset_ps + e.duration_ps
                while stack and stack[-1][0] <= start:
                    _, name, self_ps = stack.pop()
                    totals[name] += self_ps
                if stack:
                    stack[-1][2] -= e.duration_ps
                stack.append([end, meta.get(e.metadata_id, "?"), e.duration_ps])
            while stack:
                _, name, self_ps = stack.pop()
                totals[name] += self_ps
    return totals


def _op_type(name):
    name = name.split("#")[0]
    if ":" in name:  # TF kernels: "scope/op_name:OpType"
        return name.rsplit(":", 1)[1]
    return re.sub(r"[._]\d+$", "", name)  # XLA thunks: "convolution.12" -> "convolution"


def report(totals, steps, top):
    # Parents that only wait for their kernels (their self time is idle time).
    ignore = ("ExecutorState", "ThreadpoolListener", "EagerExecute", "EagerLocalExecute",
              "KernelAndDeviceFunc", "TFE_Py_Execute", "FunctionRun", "one_step_on_data",
              "Thunk", "PjRt", "$", "TraceMe", "tf_data", "Iterator")
    kept = {k: v for k, v in totals.items() if not k.startswith(ignore) and v > 0}
    by_type = collections.Counter()
    for k, v in kept.items():
        by_type[_op_type(k)] += v
    total = sum(kept.values())
    print(f"\n# self time per traced step, all host threads: {total / 1e12 / steps:.3f} s")
    print("# by op type:")
    for k, v in by_type.most_common(top):
        print(f"  {v / 1e12 / steps:8.4f} s/step  {100 * v / total:5.1f} %  {k}")
    print("# by op:")
    for k, v in collections.Counter(kept).most_common(top):
        print(f"  {v / 1e12 / steps:8.4f} s/step  {100 * v / total:5.1f} %  {k.split('#')[0][:110]}")


def main(argv=None):
    args = parse_args(argv)
    from benchmarks import bench_tfflows_glow as btg
    targs = btg.parse_args(["--backend", args.backend, "--jit", args.jit, "--hidden", str(args.hidden),
                            "--batch", str(args.batch), "--threads", str(args.threads)])
    if args.xla_dump:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_dump_to={args.xla_dump} --xla_dump_hlo_as_text").strip()
        if args.backend == "tensorflow":
            os.environ["TF_XLA_FLAGS"] = os.environ.get("TF_XLA_FLAGS", "")
    btg.set_backend(targs)
    import numpy as np
    from keras import ops
    if args.backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.convnet != "shipped":
        from benchmarks import ab_convnet
        from tfflows.layers import nets
        nets.ConvNet.call = {"conv2d": ab_convnet._call_conv2d, "mm1x1": ab_convnet._call_mm1x1}[args.convnet]
    model = btg.build_model(targs)
    x_train, _ = load_mnist(args.data)
    batches = random_batches(x_train, args.batch, np.random.default_rng(0))
    x = ops.convert_to_tensor(next(batches))
    model.initialize(x)
    for _ in range(args.warmup + 1):
        model.train_on_batch(ops.convert_to_tensor(next(batches)))
    xs = [ops.convert_to_tensor(next(batches)) for _ in range(args.steps)]

    logdir = os.path.join(args.logdir, f"{args.backend}-jit-{args.jit}-{int(time.time())}")
    if args.backend == "tensorflow":
        tf.profiler.experimental.start(logdir)
    else:
        import jax
        jax.profiler.start_trace(logdir)
    t0 = time.perf_counter()
    for xb in xs:
        model.train_on_batch(xb)
    wall = time.perf_counter() - t0
    if args.backend == "tensorflow":
        tf.profiler.experimental.stop()
    else:
        jax.profiler.stop_trace()
    print(f"# {args.backend} jit {args.jit} convnet {args.convnet}: {args.steps} traced steps, "
          f"{wall / args.steps:.3f} s/step wall (with tracing)")
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        print(f"# no xplane.pb under {logdir}")
        return 1
    report(_self_times(paths[-1]), args.steps, args.top)
    print(f"# trace: {paths[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
