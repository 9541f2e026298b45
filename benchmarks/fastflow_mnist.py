"""FastFlow on MNIST (issue #46): one-class AUROC and defect localisation.

`--train-backbone` trains the backbone that ships with tfflows
(`tfflows.apps.anomaly.train_mnist_backbone`: a digit classifier on the
60k training images, 2 epochs, seed 0), prints its test accuracy and writes
its feature layers' weights to `tfflows/zoo/weights/` (then put the printed
sha256 in `tfflows/apps/anomaly.py`).

`--one-class`: the Deep SVDD protocol. For each digit d, FastFlow trains on
the training images of digit d only and scores the 10k test images; the
AUROC tells digit d (normal) from the other nine (anomalous). Deep SVDD's
one-class AUROCs (Ruff et al. 2018, Table 1): 98.0, 99.7, 91.7, 91.9, 94.9,
88.5, 98.3, 94.6, 93.9, 96.5 (mean 94.8). Run with the shipped backbone
(trained as a classifier on all ten digits with labels: features that
know the classes, so not Deep SVDD's protocol) and with the same CNN left
at its random initialisation (`--backbones shipped,random`; no labels, no
other digit seen). Every configuration is scored from the same trained
flows: map kind (`probability`, anomalib's `-exp(-0.5 mean z^2)`, or
`nll`, `-log p` per position), scales (`all`: the three maps, 28x28,
14x14 and 7x7, averaged, or `last`: the 7x7 map only) and image score (`max` or `mean` of the map).

`--localize`: FastFlow trains on normal training digits (all classes);
`--defect-images` test digits get a synthetic defect (a filled square of
4-7 pixels or a 2-pixel-wide scratch, drawn in white over the digit's
bounding box), as many stay clean. Image AUROC (defective vs clean) and
pixel AUROC (over the defective images' pixels; positives: the pixels the
defect changed by more than 0.1) from the anomaly maps.

    python -m benchmarks.fastflow_mnist --data ../shared/data/mnist.npz --train-backbone
    python -m benchmarks.fastflow_mnist --data ../shared/data/mnist.npz --one-class --localize --threads 1
"""

import argparse
import json
import os
import time

import numpy as np

DEEP_SVDD = [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5]


def _load(path):
    with np.load(path, allow_pickle=False) as f:
        return (f["x_train"][..., None], f["y_train"].astype("int64"), f["x_test"][..., None],
                f["y_test"].astype("int64"))


def _unit(u8, rng):
    return (u8.astype("float32") + rng.random(u8.shape, dtype=np.float32)) / 256.0


def train_backbone(args):
    from tfflows.apps import anomaly as F
    from tfflows.zoo.presets import WEIGHTS_DIR, sha256_file
    from tfflows import weights_file

    x_train, y_train, x_test, y_test = _load(args.data)
    rng = np.random.default_rng(0)
    t = time.time()
    features, classifier = F.train_mnist_backbone(_unit(x_train, rng), y_train, epochs=2, seed=0)
    acc = float(np.mean(np.argmax(classifier.predict(_unit(x_test, rng), verbose=0), 1) == y_test))
    path = os.path.join(WEIGHTS_DIR, F.BACKBONE_FILE)
    tmp = path + ".tmp.weights.h5"
    features.save_weights(tmp)
    weights_file.sign(tmp)
    os.replace(tmp, path)
    print(json.dumps(dict(test_accuracy=acc, seconds=time.time() - t, file=path, sha256=sha256_file(path),
                          size_bytes=os.path.getsize(path))))


CONFIGS = [(kind, scales, reduce) for kind in ("probability", "nll") for scales in ("all", "last")
           for reduce in ("max", "mean")]


def _config_name(kind, scales, reduce):
    return f"{kind}/{scales}/{reduce}"


def _scores(ff, x):
    """Image scores of every configuration (map kind, scales, reduce) from one pass per kind."""
    from tfflows.apps.anomaly import reduce_map

    out = {}
    for kind in ("probability", "nll"):
        maps = ff.scale_maps(x, kind=kind)
        for scales, idx in (("all", None), ("last", [len(maps) - 1])):
            full = ff.combine(maps, idx)
            for reduce in ("max", "mean"):
                out[_config_name(kind, scales, reduce)] = reduce_map(full, reduce)
    return out


def one_class(args, backbone_name, x_train, y_train, x_test, y_test, rng):
    import keras

    from tfflows.apps import anomaly as F
    from tfflows.apps.ood import auroc

    rows = []
    labels = y_test[:args.test_images]
    x = _unit(x_test[:args.test_images], np.random.default_rng(1))
    for d in args.digits:
        keras.utils.set_random_seed(args.seed)
        backbone = F.mnist_backbone(pretrained=backbone_name == "shipped")
        ff = F.FastFlow(backbone, steps=args.steps, hidden_ratio=args.hidden_ratio)
        train = _unit(x_train[y_train == d][:args.train_images], rng)
        t = time.time()
        ff.fit(train, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, noise=args.noise,
               seed=args.seed)
        fit_s = time.time() - t
        scores = _scores(ff, x)
        row = dict(digit=int(d), train_images=len(train), fit_seconds=fit_s,
                   auroc={k: 100 * auroc(v[labels == d], v[labels != d]) for k, v in scores.items()},
                   final_nll=[h[-1] for h in ff.history], deep_svdd=DEEP_SVDD[d])
        rows.append(row)
        print(backbone_name, json.dumps(row), flush=True)
    means = {k: float(np.mean([r["auroc"][k] for r in rows])) for k in rows[0]["auroc"]}
    return dict(rows=rows, mean_auroc=means,
                deep_svdd_mean_same_digits=float(np.mean([DEEP_SVDD[d] for d in args.digits])))


def localize(args, backbone_name, x_train, x_test, rng):
    import keras

    from tfflows.apps import anomaly as F
    from tfflows.apps.ood import auroc

    keras.utils.set_random_seed(args.seed)
    ff = F.FastFlow(F.mnist_backbone(pretrained=backbone_name == "shipped"), steps=args.steps,
                    hidden_ratio=args.hidden_ratio)
    t = time.time()
    ff.fit(_unit(x_train[:args.localize_train_images], rng), epochs=args.epochs, batch_size=args.batch_size,
           learning_rate=args.lr, noise=args.noise, seed=args.seed)
    fit_s = time.time() - t
    n = args.defect_images
    clean = _unit(x_test[:2 * n], np.random.default_rng(2))
    defective, masks = F.synthetic_defects(clean[:n], seed=args.seed)
    image_auroc, pixel_auroc = {}, {}
    for kind in ("probability", "nll"):
        maps_d, maps_c = ff.scale_maps(defective, kind=kind), ff.scale_maps(clean[n:], kind=kind)
        for scales, idx in (("all", None), ("last", [len(maps_d) - 1])):
            full_d, full_c = ff.combine(maps_d, idx), ff.combine(maps_c, idx)
            pixel_auroc[f"{kind}/{scales}"] = auroc(full_d[~masks], full_d[masks])
            for reduce in ("max", "mean"):
                image_auroc[_config_name(kind, scales, reduce)] = auroc(F.reduce_map(full_c, reduce),
                                                                         F.reduce_map(full_d, reduce))
            if kind == "probability" and scales == "all":
                maps_def = full_d
    out = dict(backbone=backbone_name, fit_seconds=fit_s, defect_images=n, clean_images=n,
               defect_pixels=int(masks.sum()), image_auroc=image_auroc, pixel_auroc=pixel_auroc)
    print("localize", json.dumps(out), flush=True)
    if args.out:
        from tfflows import images as tfi

        k = 8
        row = lambda a: tfi.to_uint8(a[:k])  # noqa: E731
        heat = maps_def[:k]
        heat = (255 * (heat - heat.min()) / max(1e-9, heat.max() - heat.min())).astype("uint8")[..., None]
        gt = (255 * masks[:k]).astype("uint8")[..., None]
        tfi.write_png(os.path.join(args.out, f"fastflow_localize_{backbone_name}.png"),
                      tfi.grid([row(clean), row(defective), gt, heat]))  # rows: clean, defect, mask, map
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--train-backbone", action="store_true")
    p.add_argument("--one-class", action="store_true")
    p.add_argument("--localize", action="store_true")
    p.add_argument("--backbones", default="shipped,random")
    p.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--hidden-ratio", type=float, default=1.0)
    p.add_argument("--train-images", type=int, default=10000, help="per digit (all of them by default)")
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--localize-train-images", type=int, default=10000)
    p.add_argument("--defect-images", type=int, default=500)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the JSON results and pictures")
    p.add_argument("--tag", default="", help="suffix of the JSON file name: fastflow_mnist<tag>.json")
    p.add_argument("--summarize", default=None, metavar="LOG",
                   help="write the JSON of the one-class rows a run printed to LOG (a run stopped before its end)")
    args = p.parse_args(argv)
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.digits = [int(d) for d in args.digits.split(",")]
    if args.summarize:
        return summarize(args)
    if args.train_backbone:
        train_backbone(args)
    if not (args.one_class or args.localize):
        return
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    x_train, y_train, x_test, y_test = _load(args.data)
    rng = np.random.default_rng(args.seed)
    results = dict(args=vars(args))
    t = time.time()
    for name in args.backbones.split(","):
        if args.one_class:
            results[f"one_class_{name}"] = one_class(args, name, x_train, y_train, x_test, y_test, rng)
            print(name, "mean one-class AUROC:", json.dumps(results[f"one_class_{name}"]["mean_auroc"]),
                  flush=True)
        if args.localize:
            results[f"localize_{name}"] = localize(args, name, x_train, x_test, rng)
        results["seconds"] = time.time() - t
        _write(args, results)  # after every part: a stopped run keeps what it measured


def _write(args, results):
    if args.out:
        with open(os.path.join(args.out, f"fastflow_mnist{args.tag}.json"), "w") as f:
            json.dump(results, f, indent=1)


def summarize(args):
    """The one-class results a run printed (`<backbone> {row}` lines), as the JSON it would have written."""
    rows = {}
    with open(args.summarize) as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if rest.startswith("{") and '"digit"' in rest:
                rows.setdefault(name, []).append(json.loads(rest))
    results = dict(args=vars(args), source_log=args.summarize)
    for name, rs in rows.items():
        means = {k: float(np.mean([r["auroc"][k] for r in rs])) for k in rs[0]["auroc"]}
        results[f"one_class_{name}"] = dict(rows=rs, mean_auroc=means, digits=[r["digit"] for r in rs],
                                            deep_svdd_mean_same_digits=float(np.mean([DEEP_SVDD[r["digit"]]
                                                                                     for r in rs])))
        print(name, len(rs), "digits, mean one-class AUROC:", json.dumps(means))
    _write(args, results)


if __name__ == "__main__":
    main()
