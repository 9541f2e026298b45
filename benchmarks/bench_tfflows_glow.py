#!/usr/bin/env python3
"""tfflows Glow on MNIST (28x28x1, NHWC): the counterpart of the shared baselines.

Model: `tfflows.zoo.glow(preset="mnist", levels=2, steps=8, hidden=400,
lu=True)`: Rescale to [-0.5, 0.5), per level squeeze + K x (ActNorm, LU 1x1
conv, affine coupling with sigmoid(h + 2) scale and a conv3x3-conv1x1-conv3x3
net, zero-init last conv) + a Split with Glow's learned prior (one zero-init
3x3 conv, 76 parameters) between the levels; standard-normal base.

Data, batches and noise exactly as `../shared/tools/bench_*_glow.py`: x =
(uint8 + U[0, 1)) / 256, batches drawn with replacement from one
`np.random.default_rng(--seed)` that also draws the noise; test noise from
`default_rng(12345)`. bits/dim = NLL / (784 ln 2) + 8.

Training: the public Keras path, `model.compile(optimizer=
tfflows.default_optimizer(lr, clipnorm=None, dims=784), jit_compile=...)` +
`model.train_on_batch`, no clipping, plain updates (a NaN loss is recorded,
never skipped). `FlowModel` minimises bits/dim, i.e. NLL / (784 ln 2) + 8:
the same minimiser, and Adam's update is invariant to the constant factor
except through eps. tfflows' default optimizer divides eps by 784 ln 2, so
its updates are exactly those of the baselines' Adam(1e-3, 0.9, 0.999, 1e-8)
on the NLL (`--adam-eps-on nll`, the default). `--adam-eps-on bpd` keeps the
literal eps 1e-8 on bits/dim (acts like 5.4e-6 on the NLL; slower training). ActNorm data init is `model.initialize(first batch)` (what `fit`
does), timed inside the first step as the baselines' lazy init is.

Backends: `--backend tensorflow|jax` (set before keras is imported);
`--jit on|off` is `compile(jit_compile=...)` on TensorFlow (XLA or plain
tf.function); JAX always compiles (`--jit off` is refused there).

Prints one final JSON line with the baselines' fields:
{"impl", "params", "first_step_s", "train_img_s", "bpd_end", "nan",
 "sample64_s", "peak_rss_mb", ...extra fields}
"""
import argparse
import math
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (default_data, emit, eval_set, finite_or_none, load_mnist,  # noqa: E402
                                peak_rss_mb, random_batches, to_bpd)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["tensorflow", "jax"], default="tensorflow")
    p.add_argument("--jit", choices=["on", "off"], default="off",
                   help="TensorFlow: compile(jit_compile=True/False); JAX: must be on")
    p.add_argument("--steps", type=int, default=30,
                   help="timed training steps after the first (compile) step")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=3,
                   help="steps (after the first) left out of the median")
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--depth", type=int, default=8, help="steps per level")
    p.add_argument("--prior", choices=["learned", "fixed"], default="learned",
                   help="Split prior: Glow's learned conv prior (tfflows' default) or "
                        "a fixed N(0, 1) on the factored half (as normflows)")
    p.add_argument("--adam-eps-on", choices=["bpd", "nll"], default="nll",
                   help="nll (tfflows' default_optimizer): eps 1e-8 / (D ln 2), exactly the "
                        "baselines' Adam on the NLL in nats; bpd: the literal eps 1e-8 on bits/dim")
    p.add_argument("--dtype", choices=["float32", "mixed_bfloat16"], default="float32",
                   help="Keras dtype policy: mixed_bfloat16 runs the coupling nets' matmuls in "
                        "bfloat16 (float32 weights, flow arithmetic, log-dets and loss)")
    p.add_argument("--preprocess", choices=["center", "logit"], default="center",
                   help="tfflows.zoo.glow's preprocess: Glow's x - 0.5 (the benchmark "
                        "architecture) or RealNVP's logit (an experiment, not the benchmark)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="TF intra-op threads / XLA CPU threads")
    p.add_argument("--eval-n", type=int, default=512,
                   help="test images for bpd_end (fixed noise); 0 = use "
                        "the mean train bpd of the last 5 steps instead")
    p.add_argument("--data", default=default_data())
    args = p.parse_args(argv)
    if args.backend == "jax" and args.jit == "off":
        p.error("--backend jax always compiles the train step; use --jit on")
    return args


def set_backend(args):
    """Selects the Keras backend and thread counts; must run before `import keras`."""
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.backend == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if args.threads != os.cpu_count():
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_cpu_multi_thread_eigen=true"
                                       f" intra_op_parallelism_threads={args.threads}").strip()


def adam_epsilon(args, dims):
    """Adam's eps for tfflows' bits/dim loss.

    The baselines minimise the NLL in nats, tfflows bits/dim = NLL / (D ln 2)
    + const, so its gradients are D ln 2 (543 for MNIST) times smaller and the
    same eps weighs 543x more in `m / (sqrt(v) + eps)`. `--adam-eps-on nll`
    divides eps by D ln 2, which makes the update sequence identical to Adam
    with eps 1e-8 on the NLL (tfflows' `default_optimizer`); `bpd` keeps the
    literal 1e-8.
    """
    eps = 1e-8
    if getattr(args, "adam_eps_on", "nll") == "nll":
        eps /= dims * math.log(2.0)
    return eps


def build_model(args):
    import keras
    import tfflows

    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(getattr(args, "dtype", "float32"))
    model = tfflows.zoo.glow(preset="mnist", levels=args.levels, steps=args.depth,
                             hidden=args.hidden, lu=True,
                             learned_prior=args.prior == "learned",
                             preprocess=getattr(args, "preprocess", "center"))
    if getattr(args, "adam_eps_on", "nll") == "nll":  # tfflows' own default optimizer
        opt = tfflows.default_optimizer(args.lr, clipnorm=None, dims=model.dims)
    else:
        opt = keras.optimizers.Adam(learning_rate=args.lr, beta_1=0.9, beta_2=0.999,
                                    epsilon=adam_epsilon(args, model.dims))
    assert math.isclose(float(opt.epsilon), adam_epsilon(args, model.dims), rel_tol=1e-6)
    model.compile(optimizer=opt, jit_compile=(args.jit == "on"))
    return model


def compiled_decode(model, backend, jit):
    """`z -> x` compiled once (for the `sample64_compiled_s` extra)."""
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.function(lambda z: model.decode(z), jit_compile=jit)
    import jax
    import keras
    tv, ntv = list(model.trainable_variables), list(model.non_trainable_variables)

    def decode(tvals, ntvals, z):
        mapping = list(zip(tv, tvals)) + list(zip(ntv, ntvals))
        with keras.StatelessScope(state_mapping=mapping):
            return model.decode(z)

    jdecode = jax.jit(decode)
    return lambda z: jdecode([v.value for v in tv], [v.value for v in ntv], z)


def main(argv=None):
    args = parse_args(argv)
    t_script = time.perf_counter()
    set_backend(args)
    import numpy as np
    import keras
    from keras import ops

    if args.backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        versions = {"tensorflow": tf.__version__}
    else:
        import jax
        versions = {"jax": jax.__version__}
    import tfflows
    versions.update(keras=keras.__version__, tfflows=tfflows.__version__)
    impl = f"tfflows-{'tf' if args.backend == 'tensorflow' else 'jax'}-jit-{args.jit}"
    if args.adam_eps_on != "nll":
        impl += "-bpd-eps"
    if args.dtype == "mixed_bfloat16":
        impl += "-bf16"

    rng = np.random.default_rng(args.seed)
    x_train, x_test = load_mnist(args.data)
    batches = random_batches(x_train, args.batch, rng)

    def next_batch():
        return ops.convert_to_tensor(next(batches))

    model = build_model(args)
    n_params = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    print(f"[{impl}] keras {keras.__version__} backend {keras.backend.backend()}  "
          f"threads={args.threads}")
    print(f"[{impl}] trainable variables: {len(model.trainable_variables)}  "
          f"trainable parameters: {n_params}", flush=True)

    def train_step(x):
        logs = model.train_on_batch(x, return_dict=True)
        return float(logs["loss"])  # bits/dim of this batch (metrics reset per call)

    # ---- first step (ActNorm data init + trace/compile + first update) -------
    x = next_batch()
    t0 = time.perf_counter()
    model.initialize(x)
    init_s = time.perf_counter() - t0
    bpd0 = train_step(x)
    first_step_s = time.perf_counter() - t0
    bpds = [bpd0]
    first_nan_step = None if math.isfinite(bpd0) else 0
    print(f"[{impl}] step 0 (first/compile): {first_step_s:.2f}s "
          f"(ActNorm init {init_s:.2f}s)  bpd {bpd0:.4f}", flush=True)

    # ---- timed steps -----------------------------------------------------------
    step_times = []
    for s in range(1, args.steps + 1):
        x = next_batch()
        t0 = time.perf_counter()
        bpd = train_step(x)
        dt = time.perf_counter() - t0
        step_times.append(dt)
        bpds.append(bpd)
        if first_nan_step is None and not math.isfinite(bpd):
            first_nan_step = s
        if s <= 3 or s % 5 == 0 or s == args.steps or first_nan_step == s:
            print(f"[{impl}] step {s}: {dt:.3f}s  ({args.batch / dt:.1f} img/s)  "
                  f"bpd {bpd:.4f}", flush=True)

    timed = step_times[args.warmup:] or step_times
    med = statistics.median(timed)
    train_img_s = args.batch / med

    # ---- bpd after training (compiled predict of per-image bits/dim) ------------
    if args.eval_n > 0:
        xe = eval_set(x_test, args.eval_n)
        per_image = np.asarray(model.predict(xe, batch_size=args.batch, verbose=0))
        bpd_end = float(np.mean(per_image))
        bpd_end_src = f"test[:{args.eval_n}]"
        # Cross-check: the NLL route of the baselines gives the same number.
        assert abs(to_bpd(-float(np.mean(ops.convert_to_numpy(model.log_prob(xe[:8]))))) -
                   float(np.mean(per_image[:8]))) < 1e-2 or not math.isfinite(bpd_end)
    else:
        bpd_end = float(np.mean(bpds[-5:]))
        bpd_end_src = "train_last5"

    # ---- sampling: the public eager API, then a compiled decode -------------------
    t0 = time.perf_counter()
    smp = ops.convert_to_numpy(model.sample(64, seed=args.seed))
    sample64_first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    smp = ops.convert_to_numpy(model.sample(64, seed=args.seed + 1))
    sample64_s = time.perf_counter() - t0
    assert smp.shape == (64, 28, 28, 1), smp.shape

    decode = compiled_decode(model, args.backend, args.jit == "on")
    zrng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    ops.convert_to_numpy(decode(zrng.standard_normal((64, 784)).astype(np.float32)))
    sample64_compiled_first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    smp_c = ops.convert_to_numpy(decode(zrng.standard_normal((64, 784)).astype(np.float32)))
    sample64_compiled_s = time.perf_counter() - t0
    # Guard the compiled path: it must compute the same map as the eager decode
    # (at temperature 0.5, where a briefly trained flow's inverse stays finite).
    z_check = 0.5 * zrng.standard_normal((8, 784)).astype(np.float32)
    a = ops.convert_to_numpy(decode(z_check))
    b = ops.convert_to_numpy(model.decode(z_check))
    fin = np.isfinite(a) & np.isfinite(b)
    # bfloat16 nets: eager and compiled graphs may round a net output to a
    # neighbouring bfloat16 (relative step 2^-8), so the tolerance is wider.
    rtol, atol = (1e-3, 1e-4) if args.dtype == "float32" else (3e-2, 1e-2)
    compiled_matches_eager = bool(np.array_equal(np.isfinite(a), np.isfinite(b)) and
                                  np.allclose(a[fin], b[fin], rtol=rtol, atol=atol))
    compiled_max_abs_diff = float(np.max(np.abs(a[fin] - b[fin]))) if fin.any() else None

    nan = first_nan_step is not None or not math.isfinite(bpd_end)
    samples_nonfinite = int(np.sum(~np.all(np.isfinite(smp.reshape(64, -1)), axis=1)))
    result = {
        "impl": impl,
        "params": n_params,
        "first_step_s": round(first_step_s, 3),
        "train_img_s": round(train_img_s, 2),
        "bpd_end": finite_or_none(round(bpd_end, 4)),
        "nan": bool(nan),
        "sample64_s": round(sample64_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # extras
        "first_nan_step": first_nan_step,
        "bpd_first": finite_or_none(round(bpds[0], 4)),
        "bpd_last_train": finite_or_none(round(bpds[-1], 4)),
        "bpd_end_on": bpd_end_src,
        "init_s": round(init_s, 3),
        "sample64_first_s": round(sample64_first_s, 3),
        "sample64_compiled_s": round(sample64_compiled_s, 3),
        "sample64_compiled_first_s": round(sample64_compiled_first_s, 3),
        "samples_nonfinite": samples_nonfinite,
        "sample_compiled_matches_eager": compiled_matches_eager,
        "sample_compiled_max_abs_diff": compiled_max_abs_diff,
        "samples_compiled_nonfinite": int(np.sum(~np.all(np.isfinite(smp_c.reshape(64, -1)), axis=1))),
        "median_step_s": round(med, 4),
        "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
        "lr": args.lr, "threads": args.threads, "backend": args.backend, "jit": args.jit,
        "prior": args.prior, "dtype": args.dtype, "adam_eps": adam_epsilon(args, 784),
        "versions": versions,
        "wall_s": round(time.perf_counter() - t_script, 1),
    }
    emit(result)


if __name__ == "__main__":
    sys.exit(main())
