#!/usr/bin/env python3
"""One implementation's time-budgeted training run for `benchmarks.time_to_bpd`.

`python -m benchmarks.ttb_worker --impl NAME --minutes M` builds the benchmark
Glow in one implementation, trains it on the full MNIST training set with
`benchmarks._common.run_time_budget` (same epochs, batches and noise for all)
and prints one JSON line with the curve. Run it with the interpreter that has
the framework: `.venv` for tfflows/TFP, the normflows env for normflows. It
imports only the framework it runs.

Models and optimizers are set up as in the shared baseline scripts:
* `tfp`: `tfb.Glow(output_shape=(28, 28, 1), num_glow_blocks=L,
  num_steps_per_block=K, coupling_bijector_fn=GlowDefaultNetwork(hidden),
  exit_bijector_fn=GlowDefaultExitNetwork)` (`--tfp-exit identity`: none),
  standard-normal `tfd.Sample` base, `tf_keras` Adam, `tf.function`
  (jit_compile=False) train step; copied from `bench_tfp_glow.py`, whose
  model is built inside `main()`.
* `normflows`: `build_glow` imported from `bench_normflows_glow.py`, torch
  Adam, `forward_kld` as the loss. `normflows-bf16`: the same, with each
  training step under `torch.autocast("cpu", dtype=torch.bfloat16)`; it is
  evaluated in float32 (its weights are float32), as the other runs are
  evaluated the way they train.
* `tfflows-*`: `build_model` from `benchmarks/bench_tfflows_glow.py`
  (`tfflows.zoo.glow(preset="mnist", levels=2, steps=8, hidden=400)`, Keras Adam, no clipping,
  `train_on_batch`), ActNorm init on the first batch inside the first step;
  the configurations are the `TFFLOWS` table below.
"""
import argparse
import math
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (add_model_args, default_data, emit, eval_set, load_mnist,  # noqa: E402
                                load_shared_script, run_time_budget)

# tfflows configurations: name -> flags of bench_tfflows_glow.py
TFFLOWS = {
    "tfflows-tf-jit-off": ["--backend", "tensorflow", "--jit", "off"],
    "tfflows-tf-jit-on": ["--backend", "tensorflow", "--jit", "on"],
    "tfflows-jax": ["--backend", "jax", "--jit", "on"],
    # Opt-in: Adam's literal eps 1e-8 on bits/dim instead of tfflows' default.
    "tfflows-tf-jit-off-bpd-eps": ["--backend", "tensorflow", "--jit", "off", "--adam-eps-on", "bpd"],
    # bfloat16 coupling nets (Keras mixed_bfloat16 policy; flow, log-dets and loss float32).
    "tfflows-tf-jit-off-bf16": ["--backend", "tensorflow", "--jit", "off", "--dtype", "mixed_bfloat16"],
    # normflows' exact model: a fixed N(0, 1) on the factored-out half instead of
    # tfflows' learned split prior (glow(learned_prior=False)).
    "tfflows-tf-jit-off-fixed-prior": ["--backend", "tensorflow", "--jit", "off", "--prior", "fixed"],
    "tfflows-tf-jit-off-bf16-fixed-prior": ["--backend", "tensorflow", "--jit", "off", "--dtype", "mixed_bfloat16",
                                            "--prior", "fixed"],
}
IMPLS = list(TFFLOWS) + ["tfp", "tfp-exit-identity", "normflows", "normflows-bf16"]
LN2_D = 784 * math.log(2.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--eval-every", type=float, default=2.0, help="minutes of training clock")
    p.add_argument("--extra-evals", default="", help="more evaluation marks, comma-separated minutes")
    p.add_argument("--eval-n", type=int, default=2000)
    p.add_argument("--eval-batch", type=int, default=200)
    add_model_args(p)
    p.add_argument("--data", default=default_data())
    return p.parse_args(argv)


def _batched_mean(fn, x, batch):
    tot, n = 0.0, 0
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        tot += fn(xb) * xb.shape[0]
        n += xb.shape[0]
    return tot / n


def keras_budget_fns(model, eval_batch):
    """`(first_step, step, evaluate)` of a compiled tfflows image `FlowModel`
    for `run_time_budget`: mean NLL in nats of `[0, 1)` images (the first
    step runs the ActNorm init)."""
    import numpy as np
    from keras import ops

    def step(x):
        bpd = float(model.train_on_batch(ops.convert_to_tensor(x), return_dict=True)["loss"])
        return (bpd - 8.0) * LN2_D  # bits/dim -> NLL in nats

    def first_step(x):
        model.initialize(x)
        return step(x)

    def evaluate(xe):
        bpd = float(np.mean(np.asarray(model.predict(xe, batch_size=eval_batch, verbose=0))))
        return (bpd - 8.0) * LN2_D

    return first_step, step, evaluate


def setup_tfflows(args, impl):
    from benchmarks import bench_tfflows_glow as btg
    targs = btg.parse_args(TFFLOWS[impl] + ["--lr", str(args.lr),
                                            "--hidden", str(args.hidden), "--levels", str(args.levels),
                                            "--depth", str(args.depth), "--seed", str(args.seed),
                                            "--threads", str(args.threads),
                                            "--preprocess", getattr(args, "preprocess", "center"),
                                            *(["--prior", args.prior] if getattr(args, "prior", None) else [])])
    backend = targs.backend
    btg.set_backend(targs)
    import keras
    import numpy as np
    if backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        versions = {"tensorflow": tf.__version__}
    else:
        import jax
        versions = {"jax": jax.__version__}
    model = btg.build_model(targs)
    versions["keras"] = keras.__version__
    first_step, step, evaluate = keras_budget_fns(model, args.eval_batch)
    n_params = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
    return first_step, step, evaluate, n_params, versions


def setup_tfp(args, exit_kind):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tfb, tfd = tfp.bijectors, tfp.distributions
    tf.random.set_seed(args.seed)

    # ---- model: as ../shared/tools/bench_tfp_glow.py -------------------------
    def coupling_fn(input_shape):
        return tfb.GlowDefaultNetwork(input_shape, num_hidden=args.hidden)

    if exit_kind == "default":
        exit_fn = tfb.GlowDefaultExitNetwork
    else:
        def exit_fn(input_shape, output_chan):
            return lambda inputs: tfb.Identity()

    glow = tfb.Glow(output_shape=(28, 28, 1), num_glow_blocks=args.levels,
                    num_steps_per_block=args.depth, coupling_bijector_fn=coupling_fn,
                    exit_bijector_fn=exit_fn, seed=args.seed)
    z_shape = glow.inverse_event_shape([28, 28, 1])
    base = tfd.Sample(tfd.Normal(0.0, 1.0), sample_shape=z_shape)
    dist = tfd.TransformedDistribution(distribution=base, bijector=glow)
    tvars = list(dist.trainable_variables)
    opt = tf_keras.optimizers.Adam(learning_rate=args.lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)

    @tf.function(jit_compile=False)
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, tvars)
        opt.apply_gradients(zip(grads, tvars))
        return loss

    @tf.function(jit_compile=False)
    def eval_nll(x):
        return -tf.reduce_mean(dist.log_prob(x))

    def step(x):
        return float(train_step(tf.constant(x)).numpy())

    def evaluate(xe):
        return _batched_mean(lambda xb: float(eval_nll(tf.constant(xb)).numpy()), xe, args.eval_batch)

    n_params = int(sum(int(np.prod(v.shape)) for v in tvars))
    return step, step, evaluate, n_params, {"tensorflow": tf.__version__,
                                            "tensorflow_probability": tfp.__version__}


def setup_normflows(args, autocast=False):
    import numpy as np
    import torch

    shared = load_shared_script("bench_normflows_glow.py")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = shared.build_glow(args.levels, args.depth, args.hidden, False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)

    def nchw(x):  # (B, 28, 28, 1) -> (B, 1, 28, 28): same memory for one channel
        return torch.from_numpy(np.ascontiguousarray(x.reshape(x.shape[0], 1, 28, 28)))

    def step(x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model.forward_kld(nchw(x))
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate(xe):
        with torch.no_grad():
            return _batched_mean(lambda xb: model.forward_kld(nchw(xb)).item(), xe, args.eval_batch)

    import normflows as nf
    n_params = int(sum(p.numel() for p in params))
    return step, step, evaluate, n_params, {"torch": torch.__version__,
                                            "normflows": getattr(nf, "__version__", None)}


def main(argv=None):
    args = parse_args(argv)
    if args.impl in TFFLOWS:
        fns = setup_tfflows(args, args.impl)
    elif args.impl.startswith("tfp"):
        fns = setup_tfp(args, "identity" if args.impl.endswith("identity") else "default")
    else:
        fns = setup_normflows(args, autocast=args.impl == "normflows-bf16")
    first_step, step, evaluate, n_params, versions = fns
    print(f"[{args.impl}] trainable parameters: {n_params}; training for {args.minutes} min",
          flush=True)
    x_train, x_test = load_mnist(args.data)
    x_eval = eval_set(x_test, args.eval_n)
    out = run_time_budget(args.impl, first_step, step, evaluate, x_train, x_eval, args.minutes,
                          eval_every_min=args.eval_every, batch=args.batch, seed=args.seed,
                          extra_marks=[float(m) for m in args.extra_evals.split(",") if m.strip()])
    out.update(params=n_params, versions=versions, threads=args.threads, lr=args.lr,
               eval_n=args.eval_n, batch=args.batch)
    emit(out)


if __name__ == "__main__":
    sys.exit(main())
