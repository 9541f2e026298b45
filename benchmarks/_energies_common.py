"""Framework-free pieces of the variational-inference benchmark
(`benchmarks/energies.py`).

What every framework must do identically lives here: the models and their
pairings, the learning-rate schedule and the annealing ramp, the Monte Carlo
ELBO summary, and the random points on which the energies of the two
workers are compared. The PyTorch worker imports this module from the
peers' virtualenv, so it imports numpy and the standard library only (and
`_density_common`, which does the same).
"""

import math

import numpy as np

from benchmarks import _density_common as DC

#: Rezende & Mohamed's 2-D energies, as `tfflows.datasets.ENERGIES` (checked by the driver).
ENERGIES = ("U1", "U2", "U3", "U4")

#: name -> (framework, family): what each benchmark model is.
MODELS = {
    "tfflows-planar": ("tfflows", "planar"),
    "tfflows-radial": ("tfflows", "radial"),
    "tfflows-sylvester-householder": ("tfflows", "sylvester-householder"),
    "tfflows-householder": ("tfflows", "householder"),
    "normflows-planar": ("normflows", "planar"),
    "normflows-radial": ("normflows", "radial"),
    "pyro-sylvester": ("pyro", "sylvester-householder"),
    "pyro-householder": ("pyro", "householder"),
}
#: Which interpreter runs each framework ("main": the project's venv; "peers": the PyTorch one).
INTERPRETER = {"tfflows": "main", "normflows": "peers", "pyro": "peers"}
#: Each tfflows model and the one peer it is judged against.
PEER_OF = {
    "tfflows-planar": "normflows-planar",
    "tfflows-radial": "normflows-radial",
    "tfflows-sylvester-householder": "pyro-sylvester",
    "tfflows-householder": "pyro-householder",
}


def learning_rate(lr, step, steps, schedule):
    """The learning rate of update `step` (0-based) of `steps`: `lr`
    throughout (`"constant"`) or cosine-decayed to 0 (`"cosine"`,
    `_density_common.cosine_lr`)."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return DC.cosine_lr(lr, step, steps)
    raise ValueError(f"unknown schedule {schedule!r}")


def anneal_beta(step, anneal_steps):
    """The weight of `log p~` at step `step` (0-based): `min(1, 0.01 + 0.99
    step / anneal_steps)`, tfflows' `ReverseKL` ramp (Rezende & Mohamed's
    annealing); 1 throughout when `anneal_steps` is 0."""
    if not anneal_steps:
        return 1.0
    return min(1.0, 0.01 + 0.99 * step / anneal_steps)


def elbo_summary(log_weights):
    """The ELBO `mean(log p~(z) - log q(z))` over fresh draws `z ~ q` from
    their log weights, with the standard error of the mean; `None` where a
    weight is not finite."""
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    finite = np.isfinite(lw)
    out = {"eval_n": int(lw.size), "eval_nonfinite": int(lw.size - finite.sum())}
    if lw.size < 2 or not finite.all():
        out.update(elbo=None, elbo_se=None)
        return out
    out.update(elbo=float(lw.mean()), elbo_se=float(lw.std(ddof=1) / math.sqrt(lw.size)))
    return out


def eval_summary(log_p, log_q_exact, log_q_own):
    """The final ELBO of a trained `q` from `eval_n` fresh draws: `elbo`
    (± `elbo_se`) with the exact `log q` (the base density minus the log of
    the autodiff Jacobian determinant of the whole sample map), the ELBO
    with the framework's own `log q` (`elbo_own`, what it trains on), and
    how far the two `log q` are apart."""
    log_p, exact, own = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (log_p, log_q_exact, log_q_own))
    out = elbo_summary(log_p - exact)
    out["elbo_own"] = elbo_summary(log_p - own)["elbo"]
    err = own - exact
    ok = np.isfinite(err)
    out["log_q_err_max"] = float(np.abs(err[ok]).max()) if ok.any() else None
    out["log_q_err_mean"] = float(err[ok].mean()) if ok.any() else None
    return out


def check_points(n=4096, seed=2024):
    """`(n, 2)` float32 points where the workers' energies are compared:
    uniform on `[-5, 5]^2`, so they cover the plotting box `|z1| <= 4` and
    the confining wall beyond it, plus the origin and the wall's corners."""
    rng = np.random.default_rng(seed)
    fixed = np.array([[0.0, 0.0], [4.0, 0.0], [-4.0, 1.0], [4.5, -2.0], [-5.0, 5.0], [1.0, 0.0]])
    return np.concatenate([fixed, rng.uniform(-5.0, 5.0, size=(n - len(fixed), 2))]).astype(np.float32)


def agreement(a, b, ref, tol):
    """How far two float32 evaluations `a`, `b` of one energy are apart,
    relative to `max(1, |ref|)` (float32 rounding grows with the value):
    `(max relative difference, max absolute difference, ok)`."""
    a, b, ref = (np.asarray(v, dtype=np.float64) for v in (a, b, ref))
    diff = np.abs(a - b)
    rel = diff / np.maximum(1.0, np.abs(ref))
    ok = bool(np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and rel.max() <= tol)
    return float(rel.max()), float(diff.max()), ok


def flows_list(s):
    return [int(k) for k in str(s).split(",") if k.strip()]


def common_args(p):
    """The flags the driver passes to every worker."""
    p.add_argument("--models", default="", help="comma-separated names of MODELS (one framework)")
    p.add_argument("--energies", default=",".join(ENERGIES))
    p.add_argument("--flows", default="2,8,32", help="comma-separated K (number of flows)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--anneal-steps", type=int, default=0)
    p.add_argument("--sylvester-reflections", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=50, help="first steps left out of steps/s")
    p.add_argument("--eval-n", type=int, default=20000, help="fresh draws of the final ELBO")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--points", default=None, help="with --dump-energies: the npz of points (key z)")
    p.add_argument("--dump-energies", default=None,
                   help="write log p~ of every energy at --points to this npz and exit (no training)")
    return p


def emit(obj):
    DC.emit(obj)


def json_lines(text):
    return DC.json_lines(text, keys=("model", "energy", "flows"))
