"""Writes notebooks/moons.ipynb: a conditional neural spline flow on two moons.

    .venv/bin/python notebooks/make_moons.py --execute

`--execute` runs it with nbclient (about a minute on 2 CPU cores) and keeps
the outputs, less TensorFlow's start-up log lines on stderr. The test suite
executes it with TFFLOWS_NOTEBOOK_STEPS=30.
"""

from _build import write_notebook

cells = [
    ("md", """# Two moons with a conditional neural spline flow

As in a flows lecture: we fit a density to the two-moons data, conditioned on
which moon a point belongs to. The context is the moon label (one-hot), so one
model holds both densities `p(x | moon)`. We then look at the learned density
as a heat map, push the data to the latent space and the latent grid back to
the data, and draw samples for each moon.

The model is `tfflows.zoo.nsf(2, kind="coupling", context_dim=2)`: per flow an
LU-parameterised linear map, then a rational-quadratic spline coupling whose
conditioner sees the other coordinate and the context (Durkan et al. 2019).
`TFFLOWS_NOTEBOOK_STEPS` sets the training length (default 3000)."""),
    ("code", """import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up log out of the outputs
import numpy as np
import keras
import matplotlib.pyplot as plt
from sklearn.datasets import make_moons
import tfflows

keras.utils.set_random_seed(0)
STEPS = int(os.environ.get("TFFLOWS_NOTEBOOK_STEPS", "3000"))
x, label = make_moons(20000, noise=0.06, random_state=0)
x = x.astype("float32")
context = np.eye(2, dtype="float32")[label]
plt.figure(figsize=(4, 3))
plt.scatter(x[:2000, 0], x[:2000, 1], c=label[:2000], s=2, cmap="coolwarm")
plt.title("data, coloured by moon (the context)")
plt.show()"""),
    ("md", """## Fit

A conditional model takes `(x, context)`: here `fit(x, context, ...)` on
numpy arrays. The loss is the negative log-likelihood in nats."""),
    ("code", """model = tfflows.zoo.nsf(2, kind="coupling", flows=4, bins=8, bound=3.0, hidden=(64, 64), context_dim=2)
model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, STEPS)))
epochs = max(1, STEPS * 256 // len(x))
history = model.fit(x, context, batch_size=256, epochs=epochs, verbose=0)
test_x, test_label = make_moons(5000, noise=0.06, random_state=1)
test_x = test_x.astype("float32")
test_c = np.eye(2, dtype="float32")[test_label]
nll = -np.asarray(model.log_prob(test_x, context=test_c))
print(f"test NLL {nll.mean():.3f} ± {nll.std() / np.sqrt(len(nll)):.3f} nats after {epochs} epochs")
wrong = -np.asarray(model.log_prob(test_x, context=test_c[:, ::-1]))
print(f"with the other moon's context: {wrong.mean():.1f} nats (the context matters)")
plt.figure(figsize=(4, 2.5))
plt.plot(history.history["loss"])
plt.xlabel("epoch"); plt.ylabel("train NLL (nats)")
plt.show()"""),
    ("md", """## The learned density

`log_prob` on a grid, once per context, and the mixture of the two."""),
    ("code", """g = np.linspace(-1.6, 2.6, 160, dtype="float32")
h = np.linspace(-1.1, 1.6, 110, dtype="float32")
gx, gy = np.meshgrid(g, h)
grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
dens = []
for k in range(2):
    c = np.repeat(np.eye(2, dtype="float32")[k:k + 1], len(grid), axis=0)
    dens.append(np.exp(np.asarray(model.log_prob(grid, context=c))).reshape(gx.shape))
for ax, d, title in zip(axes, dens + [0.5 * (dens[0] + dens[1])], ["p(x | moon 0)", "p(x | moon 1)", "mixture"]):
    ax.imshow(d, origin="lower", extent=(g[0], g[-1], h[0], h[-1]), cmap="magma", aspect="auto")
    ax.set_title(title)
plt.tight_layout()
plt.show()"""),
    ("md", """## Data to latent, latent to data

`encode` maps each point (with its context) to the latent space, where it
should look like a standard normal; `decode` maps a regular latent grid back
to the data, showing how the flow bends the plane for each moon."""),
    ("code", """z = np.asarray(model.encode(test_x, context=test_c))
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
axes[0].scatter(z[:, 0], z[:, 1], c=test_label, s=2, cmap="coolwarm")
axes[0].set_title("encode(x | moon): latent"); axes[0].set_xlim(-4, 4); axes[0].set_ylim(-4, 4)
lines = np.linspace(-2.5, 2.5, 11, dtype="float32")
t = np.linspace(-2.5, 2.5, 200, dtype="float32")
for k, ax in zip(range(2), axes[1:]):
    for v in lines:
        for pts in (np.stack([t, np.full_like(t, v)], 1), np.stack([np.full_like(t, v), t], 1)):
            c = np.repeat(np.eye(2, dtype="float32")[k:k + 1], len(pts), axis=0)
            xy = np.asarray(model.decode(pts, context=c))
            ax.plot(xy[:, 0], xy[:, 1], lw=0.6, color="tab:blue" if k == 0 else "tab:red")
    ax.set_title(f"decode(latent grid | moon {k})"); ax.set_xlim(-1.6, 2.6); ax.set_ylim(-1.1, 1.6)
plt.tight_layout()
plt.show()"""),
    ("md", """## Class-conditional samples

One context row per sample: 1000 samples of each moon."""),
    ("code", """fig, ax = plt.subplots(figsize=(4, 3))
for k, colour in ((0, "tab:blue"), (1, "tab:red")):
    c = np.repeat(np.eye(2, dtype="float32")[k:k + 1], 1000, axis=0)
    s = np.asarray(model.sample(1000, context=c, seed=k))
    ax.scatter(s[:, 0], s[:, 1], s=2, color=colour, label=f"moon {k}")
ax.legend(markerscale=4)
ax.set_title("model.sample(1000, context=moon)")
plt.show()
print("samples finite:", bool(np.isfinite(s).all()))"""),
]

write_notebook(cells, "moons.ipynb", timeout=1800)
