#!/usr/bin/env python3
"""Density benchmark worker for tfflows and TFP (the project's venv).

Run by `benchmarks/density2d.py`, one process per model; it trains the model
on every set in `--sets` in turn and prints one JSON line per set. Same
batches, schedule, evaluation and timing as the PyTorch worker
(`_density_common`).

- tfflows (`tfflows-maf`, `tfflows-nsf`, `tfflows-nsf-coupling`): the zoo
  builders, `model.compile(optimizer=keras.optimizers.Adam(CosineDecay))`,
  `model.fit` on the numpy array of the run's batches in order
  (`shuffle=False`, `verbose=0`), as a user would train it.
- TFP (`tfp-maf`, `tfp-nsf`): `tfb.MaskedAutoregressiveFlow` layers with
  `tfb.AutoregressiveNetwork` (affine: `shift_and_log_scale_fn`; spline:
  a `bijector_fn` returning `tfb.RationalQuadraticSpline`), reversed by
  `tfb.Permute` in between, in a `tfd.TransformedDistribution`; a
  `tf.function` train step over a `tf.data` pipeline of the same batches.

    .venv/bin/python benchmarks/density2d_tf.py --data D.npz --models tfflows-maf \
        --sets moons --steps 60 --batch-size 1024 --lr 1e-3 --warmup 10
"""
import argparse
import os
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as C  # noqa: E402


def parse_args(argv=None):
    p = C.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--jit", choices=("on", "off", "auto"), default="on",
                   help="tfflows: model.compile(jit_compile=...); auto: Keras' default (XLA on TF when "
                        "every layer supports it)")
    p.add_argument("--optimizer", choices=("adam-cosine", "default"), default="adam-cosine",
                   help="tfflows: the benchmark's Adam with the cosine schedule, or tfflows' default "
                        "(model.compile() with no arguments: constant lr 1e-3, global clipnorm 100)")
    p.add_argument("--tfp-jit", choices=("on", "off"), default="off",
                   help="TFP's train step under XLA (default off: a plain tf.function, as TFP's examples)")
    p.add_argument("--steps-per-execution", type=int, default=1, help="tfflows: compile(steps_per_execution=...)")
    p.add_argument("--stop-on-nan", choices=("on", "off"), default="on",
                   help="tfflows: fit(stop_on_nan=...) (on: tfflows' default StopOnNaN callback)")
    p.add_argument("--feed", choices=("numpy", "tfdata"), default="numpy",
                   help="tfflows: fit on the numpy array, or on a tf.data pipeline of the same batches")
    return p.parse_args(argv)


class _Marks:
    """Keras callback recording `(steps done, clock)` after every executed chunk of steps."""

    def __new__(cls):
        import keras

        class Marks(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.marks = []
                self.losses = []

            def on_train_batch_end(self, batch, logs=None):
                self.marks.append((batch + 1, time.perf_counter()))
                # Keras' logged loss is the running mean over the epoch: it turns
                # NaN at the first non-finite step, which is all it is used for.
                self.losses.append(float(logs["loss"]) if logs and "loss" in logs else 0.0)

        return Marks()


def count_params(variables):
    import numpy as np

    return int(sum(int(np.prod(v.shape)) for v in variables))


def run_tfflows(family, x_train, x_test, args):
    """Trains one tfflows model; returns (result dict, log_prob on x_test, sample fn)."""
    import keras
    import numpy as np
    import tfflows

    dim = x_train.shape[1]
    hidden = C.hidden_tuple(args.hidden)
    keras.utils.set_random_seed(args.seed)
    if family == "maf":
        model = tfflows.zoo.maf(dim, flows=args.flows, hidden=hidden, transform="affine")
    elif family == "nsf":
        model = tfflows.zoo.nsf(dim, kind="autoregressive", flows=args.flows, bins=args.bins, bound=args.bound,
                                hidden=hidden)
    elif family == "nsf-coupling":
        model = tfflows.zoo.nsf(dim, kind="coupling", flows=args.flows, bins=args.bins, bound=args.bound,
                                hidden=hidden)
    else:
        raise ValueError(f"tfflows has no model {family!r} here")
    compile_kw = {} if args.jit == "auto" else dict(jit_compile=args.jit == "on")
    if args.steps_per_execution != 1:
        compile_kw["steps_per_execution"] = args.steps_per_execution
    if args.optimizer == "default":
        model.compile(**compile_kw)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.steps, alpha=0.0)
        opt = keras.optimizers.Adam(learning_rate=schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
        model.compile(optimizer=opt, **compile_kw)
    n_params = count_params(model.trainable_variables)
    stream = C.train_stream(x_train, args.batch_size, args.steps, args.seed)
    if args.feed == "tfdata":
        import tensorflow as tf

        x = tf.data.Dataset.from_tensor_slices(stream).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
        fit_kw = {}
    else:
        x = stream
        fit_kw = dict(batch_size=args.batch_size, shuffle=False)
    marks = _Marks()
    t0 = time.perf_counter()
    model.fit(x, epochs=1, verbose=0, callbacks=[marks], stop_on_nan=args.stop_on_nan == "on", **fit_kw)
    fit_s = time.perf_counter() - t0
    logp = np.concatenate([np.asarray(model.log_prob(x_test[i:i + args.eval_batch]), dtype=np.float64)
                           for i in range(0, len(x_test), args.eval_batch)])

    def sample(n):
        return np.asarray(model.sample(n, seed=args.seed))

    res = dict(params=n_params, jit=args.jit, jit_compile=bool(model.jit_compile),
               steps_per_execution=args.steps_per_execution, stop_on_nan=args.stop_on_nan, feed=args.feed,
               optimizer=args.optimizer, fit_s=round(fit_s, 2))
    return res, marks.marks, marks.losses, t0, logp, sample


def tfp_model(family, dim, args):
    """A TFP `TransformedDistribution` and its trainable variables (built)."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    tfb, tfd = tfp.bijectors, tfp.distributions
    hidden = list(C.hidden_tuple(args.hidden))
    k, bound = args.bins, args.bound
    nets, bijectors = [], []
    for i in range(args.flows):
        if i:
            bijectors.append(tfb.Permute(permutation=list(range(dim))[::-1]))  # alternate orders
        if family == "maf":
            made = tfb.AutoregressiveNetwork(params=2, event_shape=[dim], hidden_units=hidden, activation="relu")
            bijectors.append(tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made))
        elif family == "nsf":
            made = tfb.AutoregressiveNetwork(params=3 * k - 1, event_shape=[dim], hidden_units=hidden,
                                             activation="relu")

            def bijector_fn(x, made=made, **kwargs):
                # TFP's RationalQuadraticSpline example, on [-bound, bound]: bins of at least
                # 1e-3 of the range, interior slopes softplus + 1e-3, slope 1 at the ends.
                p = made(x)
                w, h, s = p[..., :k], p[..., k:2 * k], p[..., 2 * k:]
                lo = 2.0 * bound * 1e-3
                widths = tf.math.softmax(w, axis=-1) * (2.0 * bound - k * lo) + lo
                heights = tf.math.softmax(h, axis=-1) * (2.0 * bound - k * lo) + lo
                slopes = tf.math.softplus(s) + 1e-3
                return tfb.RationalQuadraticSpline(widths, heights, slopes, range_min=-bound)

            bijectors.append(tfb.MaskedAutoregressiveFlow(bijector_fn=bijector_fn))
        else:
            raise ValueError(f"tfp has no model {family!r} here")
        nets.append(made)
    base = tfd.MultivariateNormalDiag(loc=tf.zeros(dim))
    # Chain applies its list last-first in the sampling direction; data -> latent runs the first MAF first.
    dist = tfd.TransformedDistribution(base, tfb.Chain(bijectors[::-1]))
    dist.log_prob(tf.zeros((1, dim)))  # builds the networks
    variables = [v for net in nets for v in net.trainable_variables]
    return dist, variables


def run_tfp(family, x_train, x_test, args):
    import keras
    import numpy as np
    import tensorflow as tf

    dim = x_train.shape[1]
    tf.random.set_seed(args.seed)
    keras.utils.set_random_seed(args.seed)
    dist, variables = tfp_model(family, dim, args)
    n_params = count_params(variables)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.steps, alpha=0.0)
    opt = keras.optimizers.Adam(learning_rate=schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8)

    @tf.function(jit_compile=args.tfp_jit == "on")
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    stream = C.train_stream(x_train, args.batch_size, args.steps, args.seed)
    ds = tf.data.Dataset.from_tensor_slices(stream).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
    marks, losses = [], []
    t0 = time.perf_counter()
    for t, x in enumerate(ds):
        v = float(train_step(x))
        marks.append((t + 1, time.perf_counter()))
        losses.append(v)
        if not np.isfinite(v):
            break
    log_prob = tf.function(dist.log_prob)
    logp = np.concatenate([np.asarray(log_prob(x_test[i:i + args.eval_batch]), dtype=np.float64)
                           for i in range(0, len(x_test), args.eval_batch)])
    sample_fn = tf.function(lambda n: dist.sample(n, seed=args.seed))

    def sample(n):
        return np.asarray(sample_fn(tf.constant(n)))

    return dict(params=n_params, jit=args.tfp_jit), marks, losses, t0, logp, sample


def run_one(name, set_name, data, args):
    """Trains `name` on set `set_name` of the npz `data`; returns its result dict."""
    import numpy as np

    framework, family = C.MODELS[name]
    x_train, x_test, true_lp, groups = C.load_set(data, set_name)
    runner = run_tfflows if framework == "tfflows" else run_tfp
    res, marks, losses, t0, logp, sample = runner(family, x_train, x_test, args)
    sample_s = sample_first_s = bad_samples = None
    if args.sample_n:
        ts = time.perf_counter()
        s = sample(args.sample_n)  # first call: traces the sampling function
        sample_first_s = round(time.perf_counter() - ts, 3)
        ts = time.perf_counter()
        s = sample(args.sample_n)
        sample_s = round(time.perf_counter() - ts, 4)
        bad_samples = int((~np.isfinite(s)).any(axis=-1).sum())
    bad = [m[0] for m, v in zip(marks, losses) if not np.isfinite(v)]
    w = min(args.warmup, marks[-1][0])
    first_chunk = next(m for m in marks if m[0] >= w)
    out = dict(model=name, set=set_name, framework=framework, family=family, dim=x_train.shape[1],
               steps=marks[-1][0], nan_step=bad[0] if bad else None,
               first_step_s=round(marks[0][1] - t0, 3), first_steps_s=round(first_chunk[1] - t0, 3),
               train_s=round(marks[-1][1] - t0, 2), train_steps_s=C.steps_per_s(marks, args.warmup),
               sample_s=sample_s, sample_first_s=sample_first_s, sample_n=args.sample_n,
               sample_nonfinite=bad_samples,
               peak_rss_mb=round(C.peak_rss_mb(), 1))
    out.update(res)
    out.update(C.nll_summary(logp, true_lp, groups))
    return out


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
    frameworks = {C.MODELS[m][0] for m in args.models.split(",")}
    if "tfflows" in frameworks:
        import tfflows
        versions["tfflows"] = tfflows.__version__
    if "tfp" in frameworks:
        import tensorflow_probability as tfp
        versions["tensorflow_probability"] = tfp.__version__
    data = np.load(args.data)
    rc = 0
    for name in args.models.split(","):
        for set_name in args.sets.split(","):
            keras.backend.clear_session()  # each (model, set) starts from a clean Keras state
            try:
                out = run_one(name, set_name, data, args)
            except Exception as e:  # noqa: BLE001  one failure must not lose the other sets
                traceback.print_exc()
                out = dict(model=name, set=set_name, error=f"{type(e).__name__}: {e}")
                rc = 1
            out.update(threads=args.threads, versions=versions)
            C.emit(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
