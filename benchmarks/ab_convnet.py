#!/usr/bin/env python3
"""A/B of a proposed faster `tfflows.layers.nets.ConvNet.call`, without editing tfflows.

`python -m benchmarks.ab_convnet --backend tensorflow --jit off` builds the
benchmark Glow once per variant (same seed, so identical weights), each traced
with `ConvNet.call` monkeypatched to that variant, checks that all variants
compute the same losses, then runs their train steps round-robin and reports
the median step time per variant and its ratio to the current code. With the
default `--threads 1` the measure is process CPU time (robust on a shared
machine); with `--threads 2` on an idle machine, wall time is reported too.

Variants (all keep `ConvNet`'s weights and their shapes, so checkpoints load
unchanged; keras.ops only, so they run on TF and JAX):

* `base`: the three plain `keras.layers.Conv2D` calls (tfflows before the
  proposal was applied).
* `mm1x1`: the 1x1 conv as one matmul over the channel axis.
* `fast`: the proposal as it landed in session 2 (`_conv_same_as_matmul` in
  `tfflows/layers/nets.py`; the reviewed diff is
  `git show c29d017:benchmarks/proposals/convnet_matmul.diff`; session 3
  reworked the shipped code into constant 0/1 convolutions at every width):
  `mm1x1`, plus each
  3x3 "same" conv with a narrow side (<= 128 / 9 channels) and a wide side
  (>= 256 channels) as matmuls: the input conv (few input channels) as
  im2col, i.e. 9 shifted copies of the small input concatenated then one
  matmul; the output conv (few output channels) as one matmul to 9 x C_out
  channels followed by a sum of the 9 maps, each shifted by a slice and a pad.
"""
import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import default_data, emit, load_mnist, random_batches  # noqa: E402

VARIANTS = ["base", "mm1x1", "fast"]


# -- the proposed code: `_conv_same_as_matmul` as in the session-2 diff (see above) ----
# k x k convs run as matmuls only when one side is narrow and the other wide:
# the shifts cost about as much as a narrow conv, so below ~256 channels on the
# wide side the plain conv is faster (measured: hidden 64: 0.8x, 400: 1.14x).
_MATMUL_CONV_MAX_COLS = 128
_MATMUL_CONV_MIN_WIDTH = 256


def _shift(v, dy, dx):
    """`out[:, i, j] = v[:, i + dy, j + dx]`, zero outside (a slice, then a pad)."""
    from keras import ops
    if dy == 0 and dx == 0:
        return v
    _, h, w, _ = v.shape
    src = v[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0), :]
    return ops.pad(src, [[0, 0], [max(-dy, 0), max(dy, 0)], [max(-dx, 0), max(dx, 0)], [0, 0]])


def _conv_same(conv, x, kxk=True):
    """`conv(x)` for a stride-1 "same" channels-last `Conv2D`, computed with matmuls.

    As `_conv_same_as_matmul` in the session-2 diff (module doc); `kxk=False`
    leaves k x k convs to `conv` (the `mm1x1` variant).
    """
    from keras import ops
    kh, kw, c_in, c_out = conv.kernel.shape
    _, h, w, _ = x.shape
    if h is None or w is None or kh % 2 == 0 or kw % 2 == 0:
        return conv(x)
    k = ops.cast(conv.kernel, x.dtype)
    if (kh, kw) == (1, 1):
        y = ops.matmul(ops.reshape(x, (-1, c_in)), ops.reshape(k, (c_in, c_out)))
    elif (not kxk or kh * kw * min(c_in, c_out) > _MATMUL_CONV_MAX_COLS
          or max(c_in, c_out) < _MATMUL_CONV_MIN_WIDTH):
        return conv(x)
    else:
        taps = [(dy - kh // 2, dx - kw // 2) for dy in range(kh) for dx in range(kw)]
        if c_in <= c_out:  # im2col of the narrow input
            cols = ops.concatenate([_shift(x, dy, dx) for dy, dx in taps], axis=-1)
            y = ops.matmul(ops.reshape(cols, (-1, kh * kw * c_in)), ops.reshape(k, (kh * kw * c_in, c_out)))
        else:  # every tap's narrow output in one matmul, then a shifted sum
            kk = ops.reshape(ops.transpose(k, (2, 0, 1, 3)), (c_in, kh * kw * c_out))
            z = ops.reshape(ops.matmul(ops.reshape(x, (-1, c_in)), kk), (-1, h, w, kh * kw * c_out))
            y = None
            for z_t, (dy, dx) in zip(ops.split(z, kh * kw, axis=-1), taps):
                s_t = _shift(z_t, dy, dx)
                y = s_t if y is None else y + s_t
    y = ops.reshape(y, (-1, h, w, c_out))
    if conv.use_bias:
        y = y + ops.cast(conv.bias, y.dtype)
    return conv.activation(y) if conv.activation is not None else y


def _call_conv2d(self, x):
    return self.conv3(self.conv2(self.conv1(x)))


def _call_mm1x1(self, x):
    for conv in (self.conv1, self.conv2, self.conv3):
        x = _conv_same(conv, x, kxk=False)
    return x


def _call_fast(self, x):
    for conv in (self.conv1, self.conv2, self.conv3):
        x = _conv_same(conv, x)
    return x


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow")
    p.add_argument("--jit", choices=["on", "off"], default="off")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--data", default=default_data())
    args = p.parse_args(argv)
    variants = args.variants.split(",")

    if args.threads == 1:
        os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    from benchmarks import bench_tfflows_glow as btg
    targs = btg.parse_args(["--backend", args.backend, "--jit", args.jit, "--hidden", str(args.hidden),
                            "--threads", str(args.threads)])
    btg.set_backend(targs)
    import numpy as np
    from keras import ops

    from tfflows.layers import nets
    if args.backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    original = nets.ConvNet.call
    calls = {"base": _call_conv2d, "mm1x1": _call_mm1x1, "fast": _call_fast}

    x_train, _ = load_mnist(args.data)
    n = args.rounds + 2
    xs = [ops.convert_to_tensor(b) for b, _ in zip(random_batches(x_train, 64, np.random.default_rng(0)),
                                                     range(n))]
    models, losses, first = {}, {}, {}
    for v in variants:
        nets.ConvNet.call = calls[v]  # active while this model's train function is traced
        model = btg.build_model(targs)
        model.initialize(xs[0])
        t0 = time.perf_counter()
        losses[v] = [float(model.train_on_batch(xs[0], return_dict=True)["loss"])]
        first[v] = time.perf_counter() - t0
        models[v] = model
    nets.ConvNet.call = original

    cpu = {v: [] for v in variants}
    wall = {v: [] for v in variants}
    for r in range(1, n):
        for v in variants:
            c0, w0 = time.process_time(), time.perf_counter()
            loss = float(models[v].train_on_batch(xs[r], return_dict=True)["loss"])
            cpu[v].append(time.process_time() - c0)
            wall[v].append(time.perf_counter() - w0)
            losses[v].append(loss)
    base = variants[0]
    out = {"backend": args.backend, "jit": args.jit, "threads": args.threads, "rounds": n - 1,
           "first_step_s": {v: round(first[v], 2) for v in variants},
           "median_step_cpu_s": {v: round(statistics.median(cpu[v][1:]), 4) for v in variants},
           "median_step_wall_s": {v: round(statistics.median(wall[v][1:]), 4) for v in variants},
           "losses_bpd": {v: [round(l, 5) for l in losses[v]] for v in variants},
           "max_loss_diff_vs_" + base: {v: round(max(abs(a - b) for a, b in zip(losses[v], losses[base])), 6)
                                        for v in variants}}
    key = "median_step_cpu_s" if args.threads == 1 else "median_step_wall_s"
    out["speedup_vs_" + base] = {v: round(out[key][base] / out[key][v], 3) for v in variants}
    out["impl"] = "ab_convnet"
    emit(out)


if __name__ == "__main__":
    sys.exit(main())
