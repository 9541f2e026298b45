"""Where the first training step's time goes, and what shortens it (issue #49).

For one model (the main job's `glow(preset="mnist-quick")` by default), each
variant runs in a fresh process and reports:

- `init_s`: ActNorm's data-dependent init (`model.initialize`, eager);
- `first_step_s`: the first `fit` step (tracing the train step, graph
  optimisation, XLA compilation where on, the step itself);
- `step_ms`: the median of the next `--steps` steps.

Variants: `default` (what `model.compile()` gives: Keras' `jit_compile="auto"`,
which is off on a CPU-only TensorFlow), `jit` (`jit_compile=True`),
`no-grappler` (TF's graph optimiser, Grappler, switched off with
`tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})`),
`bf16` (the main job's `mixed_bfloat16` policy) and `bf16-no-grappler`.

    .venv/bin/python -m benchmarks.first_step --data ../shared/data/mnist.npz
"""

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("default", "jit", "no-grappler", "bf16", "bf16-no-grappler")


def worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if "no-grappler" in args.variant:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if args.variant.startswith("bf16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    import tfflows

    keras.utils.set_random_seed(0)
    with np.load(args.data) as f:
        x = f["x_train"][: args.batch_size * (args.steps + 2)]
    x = (x.reshape(-1, 28, 28, 1).astype("float32") + np.random.default_rng(0).uniform(size=(len(x), 28, 28, 1))
         .astype("float32")) / 256.0
    model = tfflows.zoo.glow(preset=args.preset)
    t0 = time.perf_counter()
    model(x[:2])
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.initialize(x[: args.batch_size])
    init_s = time.perf_counter() - t0
    model.compile(jit_compile=(args.variant == "jit") or "auto")

    class Times(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step
            self.times.append(time.perf_counter() - self.t)

    cb = Times()
    cb.times = []
    model.fit(x[: args.batch_size * (args.steps + 1)], batch_size=args.batch_size, epochs=1, shuffle=False,
              verbose=0, callbacks=[cb])
    later = sorted(cb.times[1:])
    print(json.dumps({"variant": args.variant, "preset": args.preset, "params": int(model.count_params()),
                      "build_s": round(build_s, 3), "init_s": round(init_s, 3),
                      "first_step_s": round(cb.times[0], 3),
                      "step_ms": round(1000 * later[len(later) // 2], 1) if later else None}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="mnist.npz with x_train")
    p.add_argument("--preset", default="mnist-quick")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps after the first (for step_ms)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        return worker(args)
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "benchmarks.first_step", "--variant", variant, "--data", args.data,
               "--preset", args.preset, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(line[-1]) if line else {"variant": variant, "error": out.stderr[-800:]}
        row["process_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
