#!/usr/bin/env python3
"""Variational-inference benchmark worker for tfflows (the project's venv).

Run by `benchmarks/energies.py`, one process per model; it fits the model
to every energy in `--energies` with every K in `--flows`, in turn, and
prints one JSON line per (energy, K). Same steps, batch, optimizer,
schedule, annealing and final ELBO estimator as the PyTorch worker
(`_energies_common`).

tfflows trains the way a user would: the zoo builder and
`tfflows.vi.fit_to_density(lambda z: tfflows.datasets.energy(name, z), q,
steps=..., batch_size=..., optimizer=keras.optimizers.Adam(...),
jit_compile=...)`. The final ELBO: `eval_n` fresh draws through
`q.flow.inverse` (what `q.sample_and_log_prob` runs), with `log q` both
from the model and exact (autodiff Jacobian of the sample map; `evaluate`).

    .venv/bin/python benchmarks/energies_tf.py --models tfflows-planar --energies U1 --flows 2 \
        --steps 60 --warmup 10
    .venv/bin/python benchmarks/energies_tf.py --models tfflows-planar --points P.npz --dump-energies E.npz
"""
import argparse
import os
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as DC  # noqa: E402
from benchmarks import _energies_common as C  # noqa: E402


def parse_args(argv=None):
    p = C.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--jit", choices=("on", "off", "auto"), default="auto",
                   help="fit_to_density(jit_compile=...); auto: tfflows' and Keras' default")
    p.add_argument("--optimizer", choices=("adam", "default"), default="adam",
                   help="adam: the benchmark's Adam (no clipping, the --schedule); default: fit_to_density's "
                        "own (optimizer=None: Adam(1e-3) with global clipnorm 100)")
    return p.parse_args(argv)


def build(family, k, args):
    """The tfflows variational family `family` with K = `k`."""
    import tfflows

    if family == "planar":
        return tfflows.zoo.planar(2, flows=k, seed=args.seed)
    if family == "radial":
        return tfflows.zoo.radial(2, flows=k, seed=args.seed)
    if family == "sylvester-householder":
        # H-SNF: m = D = 2 orthonormal columns from --sylvester-reflections reflections per layer.
        return tfflows.zoo.sylvester(2, flows=k, kind="householder", m=2, n_reflections=args.sylvester_reflections,
                                     seed=args.seed)
    if family == "householder":
        # One layer of K reflections after the learned diagonal Gaussian (pyro: Householder(2, count_transforms=K)).
        return tfflows.zoo.householder(2, flows=1, n_reflections=k, seed=args.seed)
    raise ValueError(f"tfflows has no model {family!r} here")


def count_params(variables):
    import numpy as np

    return int(sum(int(np.prod(v.shape)) for v in variables))


def log_p_fn(name):
    import tfflows

    return lambda z: tfflows.datasets.energy(name, z)


def run_one(name, energy, k, args):
    """Fits tfflows model `name` to `energy` with K = `k`; returns its result dict."""
    import keras
    import numpy as np
    from tfflows import vi  # as docs/vi.md imports it (`tfflows.vi` is not a lazy attribute of the package)

    framework, family = C.MODELS[name]
    keras.utils.set_random_seed(args.seed)
    q = build(family, k, args)
    target = log_p_fn(energy)
    if args.optimizer == "default":
        opt = None
    else:
        lr = args.lr
        if args.schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=args.steps, alpha=0.0)
        opt = keras.optimizers.Adam(learning_rate=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    marks = []

    def callback(step, elbo):
        marks.append((step, time.perf_counter(), elbo))

    error = None
    t0 = time.perf_counter()
    try:
        hist = vi.fit_to_density(target, q, steps=args.steps, batch_size=args.batch_size, optimizer=opt,
                                 seed=args.seed, callback=callback, anneal_steps=args.anneal_steps,
                                 jit_compile={"on": True, "off": False}.get(args.jit, "auto"))
        fit_steps_s = hist["steps_per_second"]
    except Exception as e:  # noqa: BLE001  a diverged fit still reports its steps
        traceback.print_exc()
        error, fit_steps_s = f"{type(e).__name__}: {e}", None
    if not marks:
        raise RuntimeError(error or "no training step ran")
    elbos = np.array([m[2] for m in marks], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(elbos))
    te = time.perf_counter()
    summary = evaluate(q, target, args.eval_n, args.seed + 1)
    summary["eval_s"] = round(time.perf_counter() - te, 2)
    jit_compile = {"on": True, "off": False}.get(args.jit)
    if jit_compile is None:  # what Keras' "auto" picks for this trainer
        try:
            from keras.src.trainers.trainer import model_supports_jit

            jit_compile = bool(model_supports_jit(vi.ReverseKL(q, target, batch_size=args.batch_size)))
        except Exception:  # noqa: BLE001  a private Keras helper: informational only
            jit_compile = None
    w = min(args.warmup, marks[-1][0])
    first_chunk = next(m for m in marks if m[0] >= w)
    out = dict(model=name, energy=energy, flows=k, framework=framework, family=family,
               params=count_params(q.trainable_variables), steps=marks[-1][0],
               nan_step=int(bad[0]) + 1 if bad.size else None, train_error=error,
               first_step_s=round(marks[0][1] - t0, 3), first_steps_s=round(first_chunk[1] - t0, 3),
               train_s=round(marks[-1][1] - t0, 2),
               train_steps_s=DC.steps_per_s([m[:2] for m in marks], args.warmup),
               fit_steps_per_second=fit_steps_s,
               train_elbo_last100=float(np.mean(elbos[-100:])) if not bad.size else None,
               jit=args.jit, jit_compile=jit_compile, optimizer=args.optimizer, peak_rss_mb=round(DC.peak_rss_mb(), 1))
    out.update(summary)
    return out


def evaluate(q, target, n, seed):
    """`C.eval_summary` of `q` on `n` fresh draws: `q.sample_and_log_prob`'s
    pass (the base noise through `q.flow.inverse`) with the noise explicit,
    so the exact log-determinant of the sample map comes from its autodiff
    Jacobian (one gradient per output coordinate; the draws are
    independent), eagerly: tracing a tf.function of a 32-layer Sylvester
    flow takes longer than running it."""
    import numpy as np
    import tensorflow as tf

    def parts(eps):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(eps)
            x, log_det = q.flow.inverse(eps)
            coords = [x[:, j] for j in range(2)]
        jac = tf.stack([tape.gradient(c, eps) for c in coords], axis=1)  # (n, i, j) = dx_i / d eps_j
        base = q.base.log_prob(eps)
        return target(x), base - tf.linalg.slogdet(jac)[1], base - log_det

    eps = tf.constant(np.random.default_rng(seed).standard_normal((n, 2)).astype("float32"))
    return C.eval_summary(*(np.asarray(v) for v in parts(eps)))


def dump_energies(points):
    """`{name: log p~(points)}` of every energy from `tfflows.datasets.energy` (float32)."""
    import numpy as np
    import tfflows

    return {e: np.asarray(tfflows.datasets.energy(e, points)) for e in C.ENERGIES}


def main(argv=None):
    args = parse_args(argv)
    DC.set_threads_env(args.threads)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    import tfflows

    if args.dump_energies:
        with np.load(args.points) as f:
            z = f["z"].astype(np.float32)
        np.savez(args.dump_energies, **dump_energies(z))
        return 0
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "tfflows": tfflows.__version__}
    rc = 0
    for name in [m for m in args.models.split(",") if m]:
        for energy in args.energies.split(","):
            for k in C.flows_list(args.flows):
                keras.backend.clear_session()  # each run starts from a clean Keras state
                try:
                    out = run_one(name, energy, k, args)
                except Exception as e:  # noqa: BLE001  one failure must not lose the other runs
                    traceback.print_exc()
                    out = dict(model=name, energy=energy, flows=k, error=f"{type(e).__name__}: {e}")
                    rc = 1
                out.update(threads=args.threads, versions=versions)
                C.emit(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
