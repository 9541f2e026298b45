"""Writes notebooks/freeform.ipynb: a residual flow and FFJORD fitted to
three 2-D toy sets (moons, pinwheel, checkerboard), with density plots.

    .venv/bin/python notebooks/make_freeform.py --execute

`--execute` runs it with nbclient (about 10 minutes on 2 CPU cores at the
default length) and keeps the outputs, less TensorFlow's start-up log lines
on stderr. The test suite executes it with TFFLOWS_NOTEBOOK_STEPS=30.
"""

from _build import write_notebook

cells = [
    ("md", """# Free-form flows on 2-D toy data: residual flows and FFJORD

Two flows whose Jacobians are not triangular:

- **Residual flow** (`tfflows.zoo.resflow`; Behrmann et al. 2019, Chen et al.
  2019): blocks `x + g(x)` with `g` spectrally normalised to Lipschitz
  constant below 1, so each block is invertible (a fixed-point iteration
  inverts it). Training uses the unbiased Russian-roulette estimate of
  `log det(I + J_g)`; we evaluate densities with the exact 2 x 2 log-det.
- **FFJORD** (`tfflows.zoo.ffjord`; Grathwohl et al. 2019): `dz/dt = f(z, t)`
  solved with TFP's adaptive Dormand-Prince; the log-det is the integral of
  the Jacobian's trace (exact here, since D = 2).

Each is fitted to FFJORD's toy sets `moons`, `pinwheel` and `checkerboard`
(`tfflows.datasets.toy`). `TFFLOWS_NOTEBOOK_STEPS` sets the residual flows'
training steps (default 2000); FFJORD trains for a third as many (its steps
are about 10x slower on a CPU). `benchmarks/freeform2d.py` runs the same
models against normflows, zuko and TFP's `tfb.FFJORD`."""),
    ("code", """import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up log out of the outputs
import time
import numpy as np
import keras
import matplotlib.pyplot as plt
import tensorflow as tf
import tfflows
from tfflows.datasets import toy, toy_entropy

tf.get_logger().setLevel("ERROR")  # TensorFlow's retracing and deprecation warnings
STEPS = int(os.environ.get("TFFLOWS_NOTEBOOK_STEPS", "2000"))
SETS = ("moons", "pinwheel", "checkerboard")
data = {name: toy(name, 20000, seed=0) for name in SETS}
test = {name: toy(name, 5000, seed=1) for name in SETS}
fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
for ax, name in zip(axes, SETS):
    ax.scatter(data[name][:3000, 0], data[name][:3000, 1], s=1)
    ax.set_title(name); ax.set_xlim(-4, 4); ax.set_ylim(-4, 4); ax.set_aspect("equal")
plt.tight_layout()
plt.show()"""),
    ("md", """## Fit

Both are ordinary Keras models: `compile`, then `fit` on the points. The
residual flow has 8 blocks of a 64-64 LipSwish net (Lipschitz 0.97), each
followed by an ActNorm; FFJORD one continuous flow with a 64-64-64 tanh
dynamics net, solved to rtol = atol = 1e-5. Adam with a cosine decay."""),
    ("code", """def fit(model, x, steps, lr):
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps)))
    rng = np.random.default_rng(0)
    batches = x[rng.integers(0, len(x), size=(steps, 256))]
    t0 = time.perf_counter()
    history = model.fit(batches.reshape(-1, 2), batch_size=256, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - t0

models, exact, seconds = {}, {}, {}
for name in SETS:
    keras.utils.set_random_seed(0)
    res = tfflows.zoo.resflow((2,), blocks=8, hidden=(64, 64), lipschitz=0.97, log_det="roulette", seed=0)
    seconds["resflow", name] = fit(res, data[name], STEPS, 1e-3)
    # The same weights under the exact 2 x 2 log-det, for densities without estimator noise.
    twin = tfflows.zoo.resflow((2,), blocks=8, hidden=(64, 64), lipschitz=0.97, log_det="exact")
    twin.log_prob(data[name][:2])
    twin.set_weights(res.get_weights())
    models["resflow", name], exact["resflow", name] = res, twin
    keras.utils.set_random_seed(0)
    cnf = tfflows.zoo.ffjord((2,), flows=1, hidden=(64, 64, 64), trace="exact", rtol=1e-5, atol=1e-5, seed=0)
    seconds["ffjord", name] = fit(cnf, data[name], max(STEPS // 3, 1), 1e-3)
    models["ffjord", name] = exact["ffjord", name] = cnf

print("test NLL in nats (5000 points, ± standard error), training time:")
for (kind, name), m in exact.items():
    nll = -np.asarray(m.log_prob(test[name]))
    line = f"  {kind:8s} {name:13s} {nll.mean():.3f} ± {nll.std() / np.sqrt(len(nll)):.3f}"
    if name == "checkerboard":
        line += f"   (the true density's entropy: {toy_entropy(name):.3f})"
    print(line + f"   {seconds[kind, name]:.0f} s")"""),
    ("md", """## Densities

`exp(log_prob)` on a 120 x 120 grid: data, residual flow, FFJORD."""),
    ("code", """g = np.linspace(-4, 4, 120, dtype="float32")
gx, gy = np.meshgrid(g, g)
grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
fig, axes = plt.subplots(3, 3, figsize=(9, 9))
for row, name in zip(axes, SETS):
    row[0].hist2d(test[name][:, 0], test[name][:, 1], bins=120, range=[[-4, 4], [-4, 4]], cmap="magma")
    row[0].set_ylabel(name)
    for ax, kind in zip(row[1:], ("resflow", "ffjord")):
        p = np.exp(np.asarray(exact[kind, name].log_prob(grid))).reshape(gx.shape)
        ax.imshow(p, origin="lower", extent=(-4, 4, -4, 4), cmap="magma")
for ax, title in zip(axes[0], ("data", "residual flow", "FFJORD")):
    ax.set_title(title)
for ax in axes.ravel():
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
    ("md", """## Samples

Sampling inverts the flow: the residual flow by fixed-point iteration per
block (to 1e-6; a block that fails to converge raises an error naming it),
FFJORD by solving the ODE backwards."""),
    ("code", """fig, axes = plt.subplots(2, 3, figsize=(9, 6))
finite = True
for row, kind in zip(axes, ("resflow", "ffjord")):
    for ax, name in zip(row, SETS):
        s = np.asarray(models[kind, name].sample(2000, seed=0))
        finite &= bool(np.isfinite(s).all())
        ax.scatter(s[:, 0], s[:, 1], s=1)
        ax.set_xlim(-4, 4); ax.set_ylim(-4, 4); ax.set_aspect("equal")
        ax.set_title(f"{kind}: {name}")
plt.tight_layout()
plt.show()
print("samples finite:", finite)"""),
    ("md", """## Round trip

`decode(encode(x))` gives `x` back to the solver's (FFJORD) or the fixed
point's (residual flow) tolerance."""),
    ("code", """for kind in ("resflow", "ffjord"):
    x = test["pinwheel"][:1000]
    m = models[kind, "pinwheel"]
    err = np.abs(np.asarray(m.decode(m.encode(x))) - x).max()
    print(f"{kind}: largest round-trip error {err:.2e}")"""),
    ("md", """## How far these fits are

The notebook is sized to run in about 15 minutes on 2 CPU cores, and at
these lengths the residual flow is far from converged: its moons NLL here is
2.98 nats, against 2.51 after 5000 steps in `benchmarks/freeform2d.py`
(FFJORD: 2.45 here after 666 steps, 2.40 after 2000). Each residual step
is about 30 times cheaper than an FFJORD step on these sets, so give the
residual flow many more of them; see docs/freeform.md for the measured
comparison with normflows, zuko and TFP."""),
]

write_notebook(cells, "freeform.ipynb", timeout=3600)
