"""Writes notebooks/apps.ipynb (tfflows.apps with the shipped MNIST Glow);
`--execute` runs it with nbclient and keeps the outputs.

    .venv/bin/python notebooks/make_apps.py --execute
"""

from _build import write_notebook

cells = [
    ("md", """# What to do with a trained flow: class-conditional samples, interpolation, manipulation, inpainting, OOD scores, FastFlow

Everything here uses the shipped MNIST Glow trained with uniform noise (`glow(preset="mnist",
pretrained=True, dequantize="uniform")`, shipped beside the one with a learned dequantizer: a density
on `[0, 1)^D`, which these applications need) and the 500 test images embedded in the package. `TFFLOWS_NOTEBOOK_STEPS`
(default 100) sets the inpainting steps; the test suite runs it with a tiny budget."""),
    ("code", """import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import json
import numpy as np
import matplotlib.pyplot as plt
import tfflows
from tfflows import apps

STEPS = int(os.environ.get("TFFLOWS_NOTEBOOK_STEPS", "100"))
model = tfflows.zoo.glow(preset="mnist", pretrained=True, dequantize="uniform")
d = np.load(tfflows.zoo.data.EMBEDDED)
rng = np.random.default_rng(0)
x = ((d["x_test"].astype("float32") + rng.uniform(size=d["x_test"].shape)) / 256.0)[..., None]
y = d["y_test"]

def show(rows, titles=None, scale=1.0):
    rows = [np.clip(np.asarray(r), 0, 1) for r in rows]
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(scale * len(rows[0]), scale * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            axes[i, j].imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=8, loc="left")
    plt.tight_layout()
    plt.show()"""),
    ("md", """## Class-conditional Glow

`glow(preset="mnist", num_classes=10, pretrained=True)` is the shipped Glow made class-conditional
(the class sets the top and split priors, as openai/glow's y-conditioning, and feeds every coupling
net) and trained on labels from the unconditional weights (`benchmarks/class_glow_mnist.py`). One row per class at T = 0.7, and the
check that the class matters: the model as a Bayes classifier, `argmax_y log p(x | y)`."""),
    ("code", """cond = tfflows.zoo.glow(preset="mnist", num_classes=10, pretrained=True)
samples, labels = apps.class_samples(cond, per_class=10, temperature=0.7, seed=0)
show([samples[labels == c] for c in range(10)], [f"class {c}" for c in range(10)], scale=0.8)
n = max(20, STEPS)
pred = apps.classify(cond, x[:n])
print(f"Bayes classifier on {n} embedded test images: {100 * np.mean(pred == y[:n]):.1f} % correct")"""),
    ("md", """## Interpolation in latent space

`apps.interpolate(model, x1, x2, n, path)` decodes points on the path between the two latents;
both ends decode back to the inputs (the flow is exactly invertible)."""),
    ("code", """pairs = [(0, 1), (2, 3), (4, 5)]
rows, titles = [], []
for a, b in pairs:
    for path in ("linear", "slerp"):
        rows.append(apps.interpolate(model, x[a], x[b], n=9, path=path))
        titles.append(f"{y[a]} -> {y[b]}, {path}")
print("largest end-point error:", max(float(np.abs(r[0] - x[a]).max()) for r, (a, b) in zip(rows[::2], pairs)))
show(rows, titles)"""),
    ("md", """## Attribute manipulation (Glow, section 5.3)

The direction is the mean latent of images with an attribute minus that of the rest. Two attributes:
the digit class (towards "0"), and stroke thickness measured from the pixels (ink above the median)."""),
    ("code", """n = 500
to_zero = apps.attribute_direction(model, x[:n], y[:n], target=0)
ink = x[:n].sum(axis=(1, 2, 3))
thick = apps.attribute_direction(model, x[:n], ink > np.median(ink))
alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
picks = [7, 8, 9, 11]
rows = [apps.manipulate(model, x[i], thick, alphas) for i in picks]
rows += [apps.manipulate(model, x[i], to_zero, alphas) for i in picks[:2]]
titles = [f"thickness, digit {y[i]}, alpha -1 ... 1" for i in picks] + [f"towards 0, digit {y[i]}" for i in picks[:2]]
edited = apps.manipulate(model, x[picks], thick, 1.0)
print("ink per image, before -> after alpha=1 along 'thick':",
      np.round(x[picks].sum(axis=(1, 2, 3)), 1), "->", np.round(np.clip(edited, 0, 1).sum(axis=(1, 2, 3)), 1))
show(rows, titles)"""),
    ("md", """## Inpainting

The bottom half of each digit is masked and filled: by maximising log p (projected gradient ascent, as
in NICE's Fig. 3) and by Langevin sampling from p(bottom | top), started at the MAP fill."""),
    ("code", """mask = np.zeros((28, 28, 1), bool)
mask[14:] = True
idx = [12, 13, 14, 15, 16, 17, 18, 19]
masked = np.where(mask, 0.5, x[idx])
filled, lp = apps.inpaint(model, x[idx], mask, method="map", steps=STEPS, return_log_prob=True)
sampled = apps.inpaint(model, x[idx], mask, method="sample", steps=STEPS, step_size=1e-5, seed=1, init=filled)
lp_orig = np.asarray(model.log_prob(x[idx]))
print("log p (nats) of the originals:", np.round(lp_orig.mean(), 1), " of the MAP fills:", np.round(lp.mean(), 1))
show([x[idx], masked, filled, sampled], ["original", "masked (grey)", "MAP fill", "Langevin from the MAP fill"])"""),
    ("md", """## Out-of-distribution scores

`benchmarks/ood_mnist.py` scores 1,000 MNIST test images against seven other sets with each method
(`--background`: a mnist-quick Glow trained 6.6 minutes on MNIST with 20 % of the pixels randomised).
AUROC 1 separates perfectly, 0.5 is chance, below 0.5 the model prefers the outliers. Here are the
stored results, and a small live check on 200 images. Likelihood fails where the outliers are simpler
than MNIST (blank images, digits at half size): those get lower bits/dim than MNIST's own test images.
The complexity correction and the likelihood ratio are the fixes to compare there."""),
    ("code", """res = {"auroc": {}, "mean_bpd": {}}
for f in ("ood_mnist.json", "ood_mnist_simple.json"):
    path = os.path.join("..", "benchmarks", "results", "2026-12-06-xeon-amx-2core", f)
    if os.path.exists(path):
        part = json.load(open(path))
        res["auroc"].update(part["auroc"]); res["mean_bpd"].update(part["mean_bpd"])
if res["auroc"]:
    methods = list(next(iter(res["auroc"].values())))
    print(f"{'OOD set':12s}" + "".join(f"{m:>18s}" for m in methods) + f"{'mean bpd':>10s}")
    for name, row in res["auroc"].items():
        bpd = res["mean_bpd"][name]
        print(f"{name:12s}" + "".join(f"{row[m]:18.3f}" for m in methods) + (f"{bpd:10.3g}" if bpd else "      inf"))
    print(f"{'(MNIST test)':12s}" + " " * 18 * len(methods) + f"{res['mean_bpd']['mnist_test']:10.3f}")
from sklearn.datasets import load_digits
small = load_digits().images[:200]
small = np.pad(np.kron(small, np.ones((3, 3))), ((0, 0), (2, 2), (2, 2))) / 16.0 * 255.0
small = ((np.round(small) + rng.uniform(size=small.shape)) / 256.0).astype("float32")[..., None]
for m in ("log_prob", "complexity"):
    s_in, s_out = apps.ood_score(model, x[300:500], m), apps.ood_score(model, small, m)
    print(f"live, 200 vs 200, 8x8 digits upscaled: {m}: AUROC {apps.auroc(s_in, s_out):.3f}")
show([small[:8]], ["scikit-learn's 8x8 digits, upscaled"])"""),
    ("md", """## FastFlow: anomaly detection and localisation

`apps.fastflow(backbone=None)` puts one 2-D flow on each feature map of the small MNIST CNN shipped with
tfflows (28x28, 14x14 and 7x7). Trained on one digit only, it scores the other digits as anomalous
(one-class AUROC); trained on all digits, its map finds synthetic defects (pixel AUROC). The full
benchmark is `benchmarks/fastflow_mnist.py` (docs/apps.md); this is a small live run on the embedded
images."""),
    ("code", """epochs = 2 if STEPS >= 100 else 1
xt = ((d["x_train"].astype("float32") + rng.uniform(size=d["x_train"].shape)) / 256.0)[..., None]
yt = d["y_train"]
ff = apps.fastflow(backbone=None)
ff.fit(xt[yt == 0], epochs=epochs, batch_size=64)
s = ff.score(x, reduce="mean", scales=[2])
print(f"one-class digit 0 vs the rest, {len(x)} test images: AUROC {apps.auroc(s[y == 0], s[y != 0]):.3f}")
ff_all = apps.fastflow(backbone=None)
ff_all.fit(xt[:2000 if STEPS >= 100 else 500], epochs=epochs, batch_size=64)
defective, masks = apps.synthetic_defects(x[:100], seed=0)
maps = ff_all.anomaly_map(defective, kind="nll")
print(f"pixel AUROC on 100 digits with a synthetic defect: {apps.auroc(maps[~masks], maps[masks]):.3f}")
fig, axes = plt.subplots(3, 8, figsize=(8, 3.2))
for j in range(8):
    for i, (img, cmap) in enumerate([(defective[j, ..., 0], "gray"), (masks[j], "gray"), (maps[j], "magma")]):
        axes[i, j].imshow(img, cmap=cmap)
        axes[i, j].axis("off")
axes[0, 0].set_title("defect", fontsize=8, loc="left"); axes[1, 0].set_title("mask", fontsize=8, loc="left")
axes[2, 0].set_title("-log p map", fontsize=8, loc="left")
plt.tight_layout()
plt.show()"""),
]

if __name__ == "__main__":
    write_notebook(cells, "apps.ipynb")
