"""Writes notebooks/energies.ipynb: flows fitted to Rezende & Mohamed's 2-D energies by reverse KL.

    .venv/bin/python notebooks/make_energies.py --execute

`--execute` runs it with nbclient and keeps the outputs, less TensorFlow's
start-up log lines on stderr. `TFFLOWS_NOTEBOOK_STEPS` sets the steps per
fit (default 3000: 60 fits, tens of minutes on 2 CPU cores) and
`TFFLOWS_NOTEBOOK_KS` the flow counts (default "2,8,32") and
`TFFLOWS_NOTEBOOK_ENERGIES` the energies fitted (default "U1,U2,U3,U4"); the
test suite executes it with 30 steps, K = 2 and U2 only, which only checks
that it runs (tracing the K = 32 models takes minutes on a
loaded CPU).
"""

from _build import write_notebook

cells = [
    ("md", """# Variational inference on the 2-D energies of Rezende & Mohamed

Rezende & Mohamed (2015, Table 1 and Fig. 3) introduced planar and radial
flows by fitting them to four unnormalised 2-D densities `p~(z) = exp(-U(z))`
by *reverse* KL: draw `z ~ q`, push it through the flow in the one-pass
(generative) direction, and maximise the ELBO `E_q[log p~(z) - log q(z)]`.
Since `log Z` of each energy is known here by quadrature on a fine grid
(`tfflows.datasets.energy_log_z`), the gap `KL(q || p) = log Z - ELBO` is
known too, in nats.

We fit five families with K = 2, 8 and 32 flows each: planar and radial
(`tfflows.zoo.planar`, `radial`), orthogonal Sylvester (`sylvester`, O-SNF),
IAF (`iaf`) and a coupling neural spline flow (`nsf`), all with
`tfflows.vi.fit_to_density`. `TFFLOWS_NOTEBOOK_STEPS` sets the steps per fit
(default 3000) and `TFFLOWS_NOTEBOOK_KS` the K values; the same steps, batch
and schedule go to every fit."""),
    ("code", """import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up log out of the outputs
import time
import numpy as np
import keras
import matplotlib.pyplot as plt
import tfflows
from tfflows import datasets, vi
from tfflows.models import default_optimizer

keras.utils.set_random_seed(0)
STEPS = int(os.environ.get("TFFLOWS_NOTEBOOK_STEPS", "3000"))
BATCH = 256
KS = tuple(int(k) for k in os.environ.get("TFFLOWS_NOTEBOOK_KS", "2,8,32").split(","))
ENERGIES = tuple(os.environ.get("TFFLOWS_NOTEBOOK_ENERGIES", ",".join(datasets.ENERGIES)).split(","))
print(f"backend {keras.backend.backend()}, {STEPS} steps of {BATCH} samples per fit, K in {KS}, energies {ENERGIES}")

g = np.linspace(-4, 4, 200)
gx, gy = np.meshgrid(g, g)
grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype("float32")
log_z = {name: datasets.energy_log_z(name) for name in datasets.ENERGIES}
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, name in zip(axes, datasets.ENERGIES):
    p = np.exp(np.asarray(datasets.energy(name, grid)) - log_z[name]).reshape(gx.shape)
    ax.imshow(p, origin="lower", extent=(-4, 4, -4, 4), cmap="magma")
    ax.set_title(f"{name}: log Z = {log_z[name]:.4f}")
    ax.set_xticks([]); ax.set_yticks([])
plt.suptitle("targets exp(-U) / Z")
plt.tight_layout()
plt.show()"""),
    ("md", """## The families and the recipe

Every fit gets the same recipe: Adam with a cosine-decayed learning rate from
3e-3 and gradient-norm clipping, `BATCH` samples per step, and Rezende &
Mohamed's annealing (the target's weight ramps from 0.01 to 1 over the first
fifth of the steps, which helps the multi-modal U1, U3 and U4). The ELBO is
then estimated from 20000 fresh samples; its standard error is the spread of
`log p~ - log q` over `sqrt(20000)`.

Planar, radial and Sylvester models start from a learned diagonal Gaussian
(an identity-initialised affine); IAF and NSF have their own element-wise
scales and shifts. NSF's splines cover `[-5, 5]` with linear tails."""),
    ("code", """FAMILIES = {
    "planar": lambda k: tfflows.zoo.planar(2, flows=k, seed=0),
    "radial": lambda k: tfflows.zoo.radial(2, flows=k, seed=0),
    "sylvester (O-SNF)": lambda k: tfflows.zoo.sylvester(2, flows=k, kind="orthogonal", seed=0),
    "iaf": lambda k: tfflows.zoo.iaf(2, flows=k, hidden=(32, 32)),
    "nsf": lambda k: tfflows.zoo.nsf(2, flows=k, hidden=(32, 32), bins=8, bound=5.0, seed=0),
}
results, models, curves = {}, {}, {}


def fit_family(family):
    for k in KS:
        for name in ENERGIES:
            keras.utils.set_random_seed(0)
            q = FAMILIES[family](k)
            target = lambda z, name=name: datasets.energy(name, z)
            optimizer = default_optimizer(keras.optimizers.schedules.CosineDecay(3e-3, STEPS, alpha=0.01))
            h = vi.fit_to_density(target, q, steps=STEPS, batch_size=BATCH, optimizer=optimizer,
                                  anneal_steps=STEPS // 5, seed=1)
            lw = np.asarray(vi.log_weights(target, q, 20000, seed=2), dtype="float64")
            kl = log_z[name] - lw.mean()
            results[family, k, name] = (kl, lw.std() / np.sqrt(len(lw)), h["steps_per_second"])
            curves[family, k, name] = h["elbo"]
            if k == max(KS):
                models[family, name] = q
        print(f"{family:18s} K={k:2d}  " + "  ".join(
            f"{n} {results[family, k, n][0]:6.3f}" for n in ENERGIES) + "  (KL, nats)")"""),
    ("md", "One cell per family (each prints the KL of its fits, one per K and energy, as it goes)."),
    ("code", """fit_family("planar")"""),
    ("code", """fit_family("radial")"""),
    ("code", """fit_family("sylvester (O-SNF)")"""),
    ("code", """fit_family("iaf")"""),
    ("code", """fit_family("nsf")"""),
    ("md", """## KL = log Z - ELBO

Lower is better; 0 is a perfect fit. The ± is one standard error of the ELBO
estimate. Steps per second (after compilation) are this machine's, on the
backend printed above, for the whole step (sampling, target, gradient, Adam),
and only as clean as the machine was idle: the speed comparison with normflows
and pyro is `benchmarks/energies.py`, run on an idle machine."""),
    ("code", """def table(fmt):
    head = f"| family | K | " + " | ".join(ENERGIES) + " |"
    rows = [head, "|" + " --- |" * (len(ENERGIES) + 2)]
    for family in FAMILIES:
        for k in KS:
            rows.append(f"| {family} | {k} | " + " | ".join(
                fmt(results[family, k, n]) for n in ENERGIES) + " |")
    return "\\n".join(rows)

print(f"KL = log Z - ELBO in nats, {STEPS} steps of {BATCH} samples per fit")
print(table(lambda r: f"{r[0]:.3f} ± {r[1]:.3f}"))
print()
print("steps/s")
print(table(lambda r: f"{r[2]:.0f}"))
print("all fits finite:", bool(np.all(np.isfinite([r[0] for r in results.values()]))))"""),
    ("md", """## The fitted densities (the largest K)

Histograms of 50000 samples from each fitted `q` (Sylvester flows have no
cheap inverse, so `q` is shown through its samples for every family), under
the targets in the first row."""),
    ("code", """edges = np.linspace(-4, 4, 81)
fig, axes = plt.subplots(len(FAMILIES) + 1, len(ENERGIES), figsize=(2.25 * len(ENERGIES), 2.3 * (len(FAMILIES) + 1)),
                         dpi=72, squeeze=False)
for j, name in enumerate(ENERGIES):
    p = np.exp(np.asarray(datasets.energy(name, grid)) - log_z[name]).reshape(gx.shape)
    axes[0, j].imshow(p, origin="lower", extent=(-4, 4, -4, 4), cmap="magma")
    axes[0, j].set_title(f"target {name}")
    for i, family in enumerate(FAMILIES, start=1):
        z, _ = models[family, name].sample_and_log_prob(50000, seed=3)
        z = np.asarray(z)
        hist, _, _ = np.histogram2d(z[:, 1], z[:, 0], bins=(edges, edges), density=True)
        axes[i, j].imshow(hist, origin="lower", extent=(-4, 4, -4, 4), cmap="magma")
        axes[i, j].set_title(f"{family}, KL {results[family, max(KS), name][0]:.2f}", fontsize=9)
for ax in axes.ravel():
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
    ("md", "The ELBO during training (largest K, U2; the first fifth is annealed, so its ELBO rises as the target's weight does)."),
    ("code", """SHOWN = "U2" if "U2" in ENERGIES else ENERGIES[0]
plt.figure(figsize=(6, 3.5))
for family in FAMILIES:
    e = curves[family, max(KS), SHOWN]
    w = max(1, len(e) // 50)
    plt.plot(np.convolve(e, np.ones(w) / w, mode="valid"), label=family)
plt.axhline(log_z[SHOWN], color="k", lw=0.8, ls="--", label="log Z")
plt.ylim(log_z[SHOWN] - 3, log_z[SHOWN] + 0.3)
plt.xlabel("step"); plt.ylabel("ELBO (nats)")
plt.legend(fontsize=8)
plt.show()"""),
]

write_notebook(cells, "energies.ipynb", timeout=7200)
