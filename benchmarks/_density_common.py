"""Framework-free pieces of the density benchmark (`benchmarks/density2d.py`).

Everything every framework must do identically lives here: which batches a
run sees and in what order, the learning-rate schedule, and how test
log-likelihoods are summarised. The PyTorch worker imports this module from
the peers' virtualenv, so it imports numpy and the standard library only.
"""

import json
import math
import os
import resource
import sys

import numpy as np

#: FFJORD's eight 2-D toy sets, as `tfflows.datasets.TOY` (checked by the driver).
SETS = ("moons", "circles", "rings", "8gaussians", "pinwheel", "2spirals", "checkerboard", "swissroll")
#: The 64-D tabular set behind `--tabular` (scikit-learn's 8x8 digits).
TABULAR_SETS = ("digits",)

#: name -> (framework, family): what each benchmark model is.
MODELS = {
    "tfflows-maf": ("tfflows", "maf"),
    "tfflows-nsf": ("tfflows", "nsf"),
    "tfflows-nsf-coupling": ("tfflows", "nsf-coupling"),
    "zuko-maf": ("zuko", "maf"),
    "zuko-nsf": ("zuko", "nsf"),
    "nflows-maf": ("nflows", "maf"),
    "nflows-nsf": ("nflows", "nsf"),
    "tfp-maf": ("tfp", "maf"),
    "tfp-nsf": ("tfp", "nsf"),
}
#: Which interpreter runs each framework ("main": the project's venv; "peers": the PyTorch one).
INTERPRETER = {"tfflows": "main", "tfp": "main", "zuko": "peers", "nflows": "peers"}
PEERS = ("zuko", "nflows", "tfp")


def batch_indices(n, batch, steps, seed):
    """`(steps, batch)` int64 row indices into a training set of `n` rows:
    epochs of fresh permutations from `numpy.random.default_rng(seed)`, cut
    into batches (an epoch's last partial batch continues into the next
    permutation, so every batch is full). Every framework trains on
    `x_train[batch_indices(...)[t]]` at step `t`."""
    rng = np.random.default_rng(seed)
    need = steps * batch
    parts, have = [], 0
    while have < need:
        parts.append(rng.permutation(n))
        have += n
    return np.concatenate(parts)[:need].reshape(steps, batch)


def train_stream(x_train, batch, steps, seed):
    """The training rows in the order every framework consumes them:
    `(steps * batch, dim)` float32, batch `t` at rows `t * batch ... (t + 1) * batch`."""
    idx = batch_indices(len(x_train), batch, steps, seed)
    return np.ascontiguousarray(x_train[idx.reshape(-1)], dtype=np.float32)


def cosine_lr(lr, step, steps):
    """The learning rate of update `step` (0-based) of `steps`: cosine decay
    from `lr` to 0, `lr * (1 + cos(pi * step / steps)) / 2` (Keras'
    `CosineDecay(lr, steps, alpha=0)`, torch's `CosineAnnealingLR(T_max=steps)`
    in closed form)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def nll_summary(log_prob, true_log_prob=None, groups=None):
    """Test negative log-likelihood (nats) from per-point `log_prob`: its mean
    and the standard error of the mean over the test points; with the exact
    `true_log_prob` of the same points, also the paired gap
    `NLL_model - NLL_true` (mean and its standard error, much smaller than
    either NLL's own, as the sampling noise of the test set cancels).

    `groups` (an int id per point): points of one group (several
    dequantizations of one test row) are averaged first and the standard
    error is taken over the groups, as they are not independent."""
    lp = np.asarray(log_prob, dtype=np.float64)
    finite = np.isfinite(lp)
    out = {"test_points": int(lp.size), "test_nonfinite": int(lp.size - finite.sum())}
    if not finite.all():
        out.update(test_nll=None, test_nll_se=None)
        return out
    out["test_nll"] = float(-lp.mean())
    if groups is not None:
        ids, inv = np.unique(np.asarray(groups), return_inverse=True)
        per = np.bincount(inv, weights=lp) / np.bincount(inv)
        out["test_rows"] = int(ids.size)
        out["test_nll_se"] = float(per.std(ddof=1) / math.sqrt(per.size))
    else:
        out["test_nll_se"] = float(lp.std(ddof=1) / math.sqrt(lp.size))
    if true_log_prob is not None:
        gap = np.asarray(true_log_prob, dtype=np.float64) - lp
        out["true_nll"] = float(-np.mean(true_log_prob))
        out["gap_to_true"] = float(gap.mean())
        out["gap_to_true_se"] = float(gap.std(ddof=1) / math.sqrt(gap.size))
    return out


def steps_per_s(marks, warmup):
    """Steady-state training speed from `marks`, `(steps done, clock)` pairs
    in order (one per step, or one per chunk of steps): the steps after the
    first mark at or past `warmup` steps (the first steps trace, compile
    and warm up), divided by the time they took. `None` if too few marks."""
    marks = [(int(n), float(t)) for n, t in marks]
    start = next((m for m in marks if m[0] >= warmup), None)
    if start is None or marks[-1][0] <= start[0]:
        return None
    dt = marks[-1][1] - start[1]
    return (marks[-1][0] - start[0]) / dt if dt > 0 else None


def set_threads_env(threads):
    """Thread-count environment for a TF/TFP or PyTorch worker; call before
    importing the framework."""
    t = str(int(threads))
    os.environ["TF_NUM_INTRAOP_THREADS"] = t
    os.environ["TF_NUM_INTEROP_THREADS"] = t
    os.environ["OMP_NUM_THREADS"] = t
    os.environ["MKL_NUM_THREADS"] = t
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_set(data, name):
    """`(x_train, x_test, true_log_prob_test or None, test_groups or None)` of
    set `name` from the npz `data` (as the driver wrote it)."""
    x_train = data[f"{name}/train"].astype(np.float32)
    x_test = data[f"{name}/test"].astype(np.float32)
    extra = [f"{name}/test_true_log_prob", f"{name}/test_groups"]
    return (x_train, x_test) + tuple(data[k] if k in data.files else None for k in extra)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(obj):
    """One JSON result line (the driver collects every line holding "model" and "set")."""
    print(json.dumps(obj), flush=True)


def json_lines(text, keys=("model", "set")):
    """Every line of `text` that parses as a JSON object holding all `keys`."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if all(k in obj for k in keys):
                out.append(obj)
    return out


def common_args(p):
    """The flags the driver passes to every worker."""
    p.add_argument("--data", required=True, help="the npz the driver wrote")
    p.add_argument("--models", required=True, help="comma-separated names of MODELS (one framework)")
    p.add_argument("--sets", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flows", type=int, default=5)
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--bound", type=float, default=5.0)
    p.add_argument("--warmup", type=int, default=50, help="first steps left out of steps/s")
    p.add_argument("--sample-n", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-batch", type=int, default=20000)
    return p


def hidden_tuple(s):
    return tuple(int(h) for h in str(s).split(",") if h)


def versions_line(**kw):
    return dict(python=sys.version.split()[0], **kw)
