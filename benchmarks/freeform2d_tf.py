#!/usr/bin/env python3
"""Free-form flows benchmark worker for tfflows and TFP (the project's venv).

Run by `benchmarks/freeform2d.py`, one process per model; it trains the
model on every set in `--sets` in turn and prints one JSON line per set
(and saves the per-point test log-likelihoods to `--logp-out`, for the
driver's paired comparisons). Same batches, Adam, cosine schedule and
timing as the PyTorch worker (`_density_common`).

- `tfflows-resflow`: `tfflows.zoo.resflow((2,), blocks, hidden, lipschitz,
  log_det="roulette", n_exact_terms, power_iterations, ...)`, trained with
  `model.compile(optimizer=keras.optimizers.Adam(CosineDecay))` and
  `model.fit` on the numpy array of the run's batches (`shuffle=False`).
  Test log-likelihood: exact. A second `zoo.resflow(..., log_det="exact")`
  gets the trained weights (`set_weights`, power-iteration vectors and
  ActNorm state included) and evaluates every test point with each block's
  exact 2 x 2 log-det (the training model's log-det is the stochastic
  roulette estimate).
- `tfflows-ffjord`: `tfflows.zoo.ffjord((2,), flows=1, hidden, trace, rtol,
  atol, gradient, activation)` (a `ContinuousFlow` then an `ActNorm`),
  trained the same way; evaluated by a copy built with `trace="exact"`
  (the same model when training used the exact trace already).
- `tfp-ffjord`: `tfp.bijectors.FFJORD` whose `state_time_derivative_fn` is
  a Keras MLP with tfflows' architecture (`t` concatenated to every
  layer's input, the same activation, last layer zero-initialised),
  `ode_solve_fn=tfp.math.ode.DormandPrince(rtol, atol).solve` (TFP's
  adjoint gradients), `trace_augmentation_fn=tfb.ffjord.trace_jacobian_exact`
  (or `_hutchinson`), followed (`--peer-actnorm on`) by an elementwise
  affine initialised from the first batch like tfflows' ActNorm, in a
  `tfd.TransformedDistribution` over a standard normal; a `tf.function`
  train step over a `tf.data` pipeline of the same batches.

    .venv/bin/python benchmarks/freeform2d_tf.py --data D.npz --models tfflows-resflow \
        --sets moons --steps 40 --batch-size 256 --lr 1e-3 --warmup 10 --threads 1
"""
import argparse
import math
import os
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as C  # noqa: E402
from benchmarks.density2d_tf import _Marks, count_params  # noqa: E402

MODELS = ("tfflows-resflow", "tfflows-ffjord", "tfp-ffjord")


def add_freeform_args(p):
    """The model flags both workers take (the driver passes the same values to each)."""
    p.add_argument("--blocks", type=int, default=8, help="resflow: residual blocks (each followed by an ActNorm)")
    p.add_argument("--lipschitz", type=float, default=0.97, help="resflow: spectral-norm coefficient")
    p.add_argument("--exact-terms", type=int, default=3,
                   help="resflow: power-series terms the roulette always computes (tfflows n_exact_terms; "
                        "normflows n_exact_terms + 1, see freeform2d.py)")
    p.add_argument("--stop-probability", type=float, default=0.5, help="resflow: roulette's geometric p")
    p.add_argument("--power-iterations", type=int, default=1, help="resflow: power iterations per training step")
    p.add_argument("--eval-power-iterations", type=int, default=20,
                   help="resflow: power iterations before the test evaluation")
    p.add_argument("--rtol", type=float, default=1e-5, help="CNF: solver's relative tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="CNF: solver's absolute tolerance")
    p.add_argument("--trace", choices=("exact", "hutchinson"), default="exact", help="CNF: training trace")
    p.add_argument("--activation", choices=("tanh", "softplus", "elu"), default="tanh",
                   help="CNF: dynamics net activation (elu: zuko only)")
    p.add_argument("--max-num-steps", type=int, default=1000, help="CNF: solver step cap (tfflows, TFP)")
    p.add_argument("--peer-actnorm", choices=("on", "off"), default="on",
                   help="CNF peers: add an ActNorm-like elementwise affine after the CNF (tfflows' ffjord has one)")
    p.add_argument("--logp-out", default=None, help="npz for the per-point test log-likelihoods ({set: array})")
    return p


def parse_args(argv=None):
    p = add_freeform_args(C.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])))
    p.add_argument("--jit", choices=("on", "off", "auto"), default="on",
                   help="tfflows: model.compile(jit_compile=...) (ffjord: always off, its solver loop is not "
                        "XLA-compiled)")
    p.add_argument("--steps-per-execution", type=int, default=10, help="tfflows: compile(steps_per_execution=...)")
    p.add_argument("--gradient", choices=("adjoint", "direct"), default="adjoint",
                   help="tfflows ffjord: adjoint (TFP's, as tfp-ffjord) or direct (through the solver's steps)")
    p.add_argument("--tfp-jit", choices=("on", "off"), default="off", help="TFP train step under XLA")
    return p.parse_args(argv)


def _adam(args):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.steps, alpha=0.0)
    return keras.optimizers.Adam(learning_rate=schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8)


def _batched(fn, x, eval_batch):
    import numpy as np

    return np.concatenate([np.asarray(fn(x[i:i + eval_batch]), dtype=np.float64)
                           for i in range(0, len(x), eval_batch)])


# ----------------------------------------------------------------------------- tfflows
def _tfflows_builder(name, args, dim, exact):
    """The zoo model of `name`; `exact=True`: the evaluation copy (exact log-det / trace)."""
    import tfflows

    hidden = C.hidden_tuple(args.hidden)
    if name == "tfflows-resflow":
        return tfflows.zoo.resflow((dim,), blocks=args.blocks, hidden=hidden, lipschitz=args.lipschitz,
                                   log_det="exact" if exact else "roulette", seed=args.seed,
                                   n_exact_terms=args.exact_terms, stop_probability=args.stop_probability,
                                   power_iterations=args.power_iterations,
                                   eval_power_iterations=args.eval_power_iterations)
    if name == "tfflows-ffjord":
        return tfflows.zoo.ffjord((dim,), flows=1, hidden=hidden, trace="exact" if exact else args.trace,
                                  rtol=args.rtol, atol=args.atol, activation=args.activation,
                                  gradient=args.gradient, seed=args.seed, max_num_steps=args.max_num_steps)
    raise ValueError(f"no tfflows model {name!r}")


def run_tfflows(name, x_train, x_test, args):
    import keras

    dim = x_train.shape[1]
    keras.utils.set_random_seed(args.seed)
    model = _tfflows_builder(name, args, dim, exact=False)
    ffjord = name == "tfflows-ffjord"
    compile_kw = {}
    if ffjord:
        compile_kw["jit_compile"] = False  # ContinuousFlow.supports_jit is False on TensorFlow
    elif args.jit != "auto":
        compile_kw["jit_compile"] = args.jit == "on"
    if args.steps_per_execution != 1:
        compile_kw["steps_per_execution"] = args.steps_per_execution
    model.compile(optimizer=_adam(args), **compile_kw)
    stream = C.train_stream(x_train, args.batch_size, args.steps, args.seed)
    marks = _Marks()
    t0 = time.perf_counter()
    model.fit(stream, batch_size=args.batch_size, shuffle=False, epochs=1, verbose=0, callbacks=[marks],
              stop_on_nan=False)
    fit_s = time.perf_counter() - t0
    n_params = count_params(model.trainable_variables)

    te = time.perf_counter()
    if ffjord and args.trace == "exact":
        evaluator, how = model, "the trained model (trace='exact'), adaptive solve to rtol/atol"
    else:
        evaluator = _tfflows_builder(name, args, dim, exact=True)
        evaluator.log_prob(x_test[:2])  # builds it
        evaluator.set_weights(model.get_weights())
        how = ("a copy with log_det='exact' (set_weights): exact 2x2 log-det per block, "
               f"{args.eval_power_iterations} power iterations" if not ffjord
               else "a copy with trace='exact' (set_weights), adaptive solve to rtol/atol")
    logp = _batched(evaluator.log_prob, x_test, args.eval_batch)
    eval_s = time.perf_counter() - te
    res = dict(params=n_params, jit_compile=bool(model.jit_compile), steps_per_execution=args.steps_per_execution,
               fit_s=round(fit_s, 2), eval=how, eval_s=round(eval_s, 2))
    if ffjord:
        res["gradient"] = args.gradient
    return res, marks.marks, marks.losses, t0, logp


# ----------------------------------------------------------------------------- TFP
def tfp_ffjord(dim, args, first_batch):
    """TFP's FFJORD with tfflows' dynamics architecture. Returns (dist, eval_dist, variables)."""
    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_probability as tfp

    tfb, tfd = tfp.bijectors, tfp.distributions
    hidden = list(C.hidden_tuple(args.hidden))
    act = {"tanh": tf.tanh, "softplus": tf.nn.softplus}[args.activation]
    widths = hidden + [dim]
    layers, prev = [], dim
    for i, w in enumerate(widths):
        fan_in = prev + 1  # the state (or hidden units) and t, as tfflows' ContinuousFlow
        last = i == len(widths) - 1
        init = "zeros" if last else keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(fan_in),
                                                                    seed=args.seed + i)
        layer = keras.layers.Dense(w, kernel_initializer=init, bias_initializer="zeros", name=f"dyn{i}")
        layer.build((None, fan_in))
        layers.append(layer)
        prev = w

    def state_time_derivative_fn(t, z):
        tt = tf.ones_like(z[..., :1]) * tf.cast(t, z.dtype)
        h = z
        for i, layer in enumerate(layers):
            h = layer(tf.concat([h, tt], axis=-1))
            if i < len(layers) - 1:
                h = act(h)
        return h

    solver = tfp.math.ode.DormandPrince(rtol=args.rtol, atol=args.atol, max_num_steps=args.max_num_steps)
    trace = {"exact": tfb.ffjord.trace_jacobian_exact, "hutchinson": tfb.ffjord.trace_jacobian_hutchinson}

    def make(trace_name):
        return tfb.FFJORD(state_time_derivative_fn=state_time_derivative_fn, ode_solve_fn=solver.solve,
                          trace_augmentation_fn=trace[trace_name])

    variables = [v for layer in layers for v in layer.trainable_variables]
    affine = []
    if args.peer_actnorm == "on":
        # ActNorm's data-dependent init on the first batch (the CNF is the identity at init).
        mean = first_batch.mean(axis=0).astype(np.float32)
        log_std = np.log(first_batch.std(axis=0) + 1e-6).astype(np.float32)
        shift = keras.Variable(mean, name="actnorm_shift")
        log_scale = keras.Variable(log_std, name="actnorm_log_scale")
        variables += [shift, log_scale]
        # Chain applies its list last-first in the sampling direction: data -> latent is FFJORD's
        # inverse, then (x - shift) / exp(log_scale), as tfflows' ContinuousFlow then ActNorm.
        affine = [tfb.Shift(shift.value), tfb.Scale(log_scale=log_scale.value)]
    base = tfd.MultivariateNormalDiag(loc=tf.zeros(dim))
    dist = tfd.TransformedDistribution(base, tfb.Chain([make(args.trace)] + affine))
    eval_dist = (dist if args.trace == "exact"
                 else tfd.TransformedDistribution(base, tfb.Chain([make("exact")] + affine)))
    return dist, eval_dist, variables


def run_tfp(name, x_train, x_test, args):
    import keras
    import numpy as np
    import tensorflow as tf

    dim = x_train.shape[1]
    tf.random.set_seed(args.seed)
    keras.utils.set_random_seed(args.seed)
    stream = C.train_stream(x_train, args.batch_size, args.steps, args.seed)
    dist, eval_dist, variables = tfp_ffjord(dim, args, stream[:args.batch_size])
    n_params = count_params(variables)
    opt = _adam(args)

    @tf.function(jit_compile=args.tfp_jit == "on")
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    ds = tf.data.Dataset.from_tensor_slices(stream).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
    marks, losses = [], []
    t0 = time.perf_counter()
    for t, x in enumerate(ds):
        v = float(train_step(x))
        marks.append((t + 1, time.perf_counter()))
        losses.append(v)
        if not np.isfinite(v):
            break
    te = time.perf_counter()
    log_prob = tf.function(eval_dist.log_prob, reduce_retracing=True)
    logp = _batched(log_prob, x_test, args.eval_batch)
    return (dict(params=n_params, tfp_jit=args.tfp_jit, peer_actnorm=args.peer_actnorm, gradient="adjoint (TFP)",
                 eval="tfd.TransformedDistribution.log_prob with trace_jacobian_exact, adaptive solve to rtol/atol",
                 eval_s=round(time.perf_counter() - te, 2)),
            marks, losses, t0, logp)


# ----------------------------------------------------------------------------- driver glue
def run_one(name, set_name, data, args):
    import numpy as np

    x_train, x_test, true_lp, groups = C.load_set(data, set_name)
    runner = run_tfflows if name.startswith("tfflows-") else run_tfp
    res, marks, losses, t0, logp = runner(name, x_train, x_test, args)
    bad = [m[0] for m, v in zip(marks, losses) if not np.isfinite(v)]
    w = min(args.warmup, marks[-1][0])
    first_chunk = next(m for m in marks if m[0] >= w)
    steps_s = C.steps_per_s(marks, args.warmup)
    tail = [v for v in losses[-max(1, len(losses) // 10):] if np.isfinite(v)]
    out = dict(model=name, set=set_name, framework=name.split("-")[0],
               family="resflow" if name.endswith("resflow") else "cnf", dim=int(x_train.shape[1]),
               steps=marks[-1][0], batch_size=args.batch_size, nan_step=bad[0] if bad else None,
               first_steps_s=round(first_chunk[1] - t0, 3), train_s=round(marks[-1][1] - t0, 2),
               train_steps_s=steps_s, s_per_step=None if not steps_s else 1.0 / steps_s,
               final_train_loss=float(np.mean(tail)) if tail else None,
               peak_rss_mb=round(C.peak_rss_mb(), 1))
    out.update(res)
    out.update(C.nll_summary(logp, true_lp, groups))
    return out, logp


def main(argv=None):
    args = parse_args(argv)
    C.set_threads_env(args.threads)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    names = args.models.split(",")
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"unknown model {n!r}; this worker runs {MODELS}")
    if any(n.startswith("tfflows-") for n in names):
        import tfflows
        versions["tfflows"] = tfflows.__version__
    import tensorflow_probability as tfp
    versions["tensorflow_probability"] = tfp.__version__
    data = np.load(args.data)
    rc, saved = 0, {}
    for name in names:
        for set_name in args.sets.split(","):
            keras.backend.clear_session()  # each (model, set) starts from a clean Keras state
            try:
                out, logp = run_one(name, set_name, data, args)
                saved[f"{name}/{set_name}"] = logp
            except Exception as e:  # noqa: BLE001  one failure must not lose the other sets
                traceback.print_exc()
                out = dict(model=name, set=set_name, error=f"{type(e).__name__}: {str(e)[:2000]}")
                rc = 1
            out.update(threads=args.threads, versions=versions)
            C.emit(out)
            if args.logp_out and saved:
                np.savez(args.logp_out, **saved)
    return rc


if __name__ == "__main__":
    sys.exit(main())
