"""Out-of-distribution scores of the shipped MNIST Glow (issue #46, item 3):
likelihood's failure and its fixes, on data this machine has.

In-distribution: MNIST test images. Out-of-distribution sets, each `--n`
images, all 28x28 uint8, dequantized the same way (uniform noise, fixed
seed):

- `noise`: uniform random pixels;
- `digits8x8`: scikit-learn's 8x8 handwritten digits (UCI, 1,797 images,
  bundled with scikit-learn), each upscaled by nearest neighbour to 24x24
  (3x3 blocks) and padded to 28x28, levels 0-16 scaled to 0-255;
- `constant`: flat images of one random grey level each;
- `inverted`: 255 - MNIST test images (white background);
- `perturbed`: MNIST test images with 30 % of the pixels replaced by
  random levels (`tfflows.apps.ood.perturb`);
- `blank`: all-black images (only the dequantization noise differs);
- `small`: MNIST test digits at half size (every other pixel), centred.

For each method of `tfflows.apps.ood_score` the AUROC of telling each set
from MNIST test (1.0 perfect, 0.5 chance, below 0.5 the model prefers the
outlier: likelihood's failure). `likelihood_ratio` needs `--background`, a
run folder (`tfflows train --out DIR`) of a model trained on perturbed
MNIST (`--make-background-data FILE` writes that training set).

    .venv/bin/python -m benchmarks.ood_mnist --data ../shared/data/mnist.npz --n 1000 [--background RUN]
"""

import argparse
import json
import os
import time

import numpy as np


def digits_8x8(n, seed):
    from sklearn.datasets import load_digits

    d = load_digits().images  # (1797, 8, 8), levels 0..16
    idx = np.random.default_rng(seed).permutation(len(d))[:n]
    img = np.kron(d[idx], np.ones((3, 3)))  # 24x24
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))
    return np.round(img / 16.0 * 255.0).astype(np.uint8)


def ood_sets(x_test_u8, n, seed=0):
    rng = np.random.default_rng(seed)
    from tfflows.apps.ood import perturb

    mnist = x_test_u8[:n]
    return {
        "noise": rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        "digits8x8": digits_8x8(n, seed),
        "constant": np.repeat(rng.integers(0, 256, size=(n, 1, 1)), 28, 1).repeat(28, 2).astype(np.uint8),
        "inverted": (255 - mnist).astype(np.uint8),
        "perturbed": perturb(mnist, 0.3, seed=seed),
        # Simpler than MNIST, where likelihood fails (Nalisnick et al. 2019):
        "blank": np.zeros((n, 28, 28), np.uint8),
        "small": np.pad(mnist[:, ::2, ::2], ((0, 0), (7, 7), (7, 7))).astype(np.uint8),  # digits at half size
    }


def dequantize(u8, seed):
    u = np.random.default_rng(seed).uniform(size=u8.shape)
    return ((u8.astype("float64") + u) / 256.0).astype("float32")[..., None]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="mnist.npz (x_train, x_test)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--background", help="run folder of a model trained on perturbed MNIST")
    p.add_argument("--make-background-data", help="write perturbed MNIST (train and test) to this .npz and exit")
    p.add_argument("--rate", type=float, default=0.2, help="perturbation rate of the background data (Ren et al.)")
    p.add_argument("--sets", help="comma-separated subset of the OOD sets (default: all)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with np.load(args.data) as f:
        x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    if args.make_background_data:
        from tfflows.apps.ood import perturb

        np.savez_compressed(args.make_background_data, x_train=perturb(x_train, args.rate, seed=1), y_train=y_train,
                            x_test=perturb(x_test, args.rate, seed=2), y_test=y_test)
        print(f"wrote {args.make_background_data} (rate {args.rate})")
        return None
    import tfflows
    from tfflows import apps

    t0 = time.perf_counter()
    model = tfflows.zoo.glow(preset="mnist", pretrained=True, dequantize="uniform")  # the uniform-noise weights
    background = None
    if args.background:
        from tfflows import cli

        background, _ = cli.load_model_from_args(cli.build_parser().parse_args(["evaluate", "--run", args.background]))
    n = args.n
    ins = dequantize(x_test[-n:], seed=10)  # held out from the OOD sets built from x_test[:n]
    reference = dequantize(x_train[:n], seed=11)
    sets = {k: dequantize(v, seed=20 + i) for i, (k, v) in enumerate(ood_sets(x_test, n).items())
            if not args.sets or k in args.sets.split(",")}
    methods = ["log_prob", "typicality", "complexity"] + (["likelihood_ratio"] if background is not None else [])
    # The typicality reference as its mean NLL, computed once (given images,
    # ood_score would re-evaluate them on every call).
    kwargs = dict(reference=float(np.mean(apps.ood_score(model, reference))), background=background)
    results = {"n": n, "model": "glow(preset='mnist', pretrained=True, dequantize='uniform')", "auroc": {}, "mean_bpd": {}}
    in_scores = {m: apps.ood_score(model, ins, m, **kwargs) for m in methods}
    results["mean_bpd"]["mnist_test"] = float(np.mean(apps.ood_score(model, ins)))
    for name, x in sets.items():
        out_scores = {m: apps.ood_score(model, x, m, **kwargs) for m in methods}
        lp = out_scores["log_prob"]
        results["mean_bpd"][name] = float(np.mean(lp[np.isfinite(lp)])) if np.isfinite(lp).any() else None
        results.setdefault("infinite_nll", {})[name] = int(np.sum(~np.isfinite(lp)))
        results["auroc"][name] = {m: round(apps.auroc(in_scores[m], out_scores[m]), 4) for m in methods}
        print(name, json.dumps(results["auroc"][name]), "mean finite bpd", results["mean_bpd"][name],
              "infinite", results["infinite_nll"][name], flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
