"""Ships the class-conditional MNIST Glow or RealNVP that
`benchmarks/class_glow_mnist.py` trained and reported: copies its weights
into `tfflows/zoo/weights/`, records file, sha256, size and the report's
metrics under `<model>.mnist.classes` in `tfflows/zoo/presets.json`, with the bin-centre
bits/dim on the 500 embedded test images that `tests/test_pretrained.py`
holds it to, and writes the curve beside the card.

    python tools/ship_class_glow.py --run runs/glow-classes
"""

import argparse
import datetime
import json
import os
import shutil

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recognisable(path, target):
    """The card's recognisable-samples figures from `benchmarks.recognisable`'s JSON (`{}` without one)."""
    if not path:
        return {}
    with open(path) as f:
        res = json.load(f)
    name, clf = next(iter(res["classifiers"].items()))
    row = res["targets"][target][name]
    return dict(recognisable=row["recognisable"], recognisable_counts=row["counts"],
                recognised_as_asked=row["recognised_as_asked"], recognisable_samples=res["n"],
                recognisable_classifier_accuracy=clf["test_accuracy"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the run folder (with report.json)")
    p.add_argument("--hardware", default="")
    p.add_argument("--recognisable", help="results JSON of `python -m benchmarks.recognisable glow-classes (or "
                                          "realnvp-classes) --out FILE` measured on these weights once shipped, for the card")
    p.add_argument("--replace", help="a class-conditional key to drop with its weights file and card "
                                     "(e.g. classes10 when classes10-couplings replaces it)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tfflows
    from tfflows.zoo import data as zdata
    from tfflows.zoo.presets import PRESETS_FILE, WEIGHTS_DIR, sha256_file

    with open(os.path.join(args.run, "report.json")) as f:
        report = json.load(f)
    couplings = bool(report["train_args"].get("class_couplings"))
    flow = report["train_args"].get("model", "glow")
    key = "classes10" + ("-couplings" if couplings else "")
    name = f"{flow}-mnist-{key}.weights.h5"
    dst = os.path.join(WEIGHTS_DIR, name)
    shutil.copyfile(report["weights"], dst)
    glow_only = {"class_couplings": couplings} if flow == "glow" else {}  # RealNVP's couplings always read the class
    model = getattr(tfflows.zoo, flow)(preset="mnist", num_classes=10, **glow_only)
    model.load_weights(dst)
    with np.load(zdata.EMBEDDED) as f:
        images, labels = f["x_test"][:500, ..., None], f["y_test"][:500].astype("int32")
    x = (images.astype("float32") + 0.5) / 256.0
    centres = np.concatenate([np.asarray(model.bits_per_dim(x[i:i + 100], context=labels[i:i + 100]))
                              for i in range(0, 500, 100)]).astype("float64").mean()
    card = f"zoo/{flow}-mnist-{key}/README.md"
    entry = dict(
        architecture=dict(num_classes=10, **glow_only),
        weights=dict(file=name, sha256=sha256_file(dst), size_bytes=os.path.getsize(dst)),
        metrics=dict(
            test_bpd=round(report["test_bpd_given_label"], 4),
            test_bpd_stderr=round(report["test_bpd_given_label_se"], 4),
            test_bpd_note="given the true label; 10k test images, one uniform noise draw",
            unconditional_test_bpd_same_draw=round(report["unconditional_test_bpd_same_draw"], 4),
            bayes_accuracy=round(report["bayes_accuracy"], 4),
            bayes_accuracy_se=round(report["bayes_accuracy_se"], 4),
            bayes_images=report["bayes_images"], embedded_test500_centres_bpd=float(centres),
            **({"mixture_bpd": round(report["mixture_bpd"], 4), "mixture_bpd_stderr": round(report["mixture_bpd_se"], 4)}
               if "mixture_bpd" in report else {}),
            **_recognisable(args.recognisable, f"{flow}-classes"),
            train_steps=report["train_steps"], train_minutes=round(report["train_minutes"], 1),
            cpu_hours=round(report["train_minutes"] * report["train_args"]["threads"] / 60, 2),
            date=datetime.date.today().isoformat(),
        ),
        card=card,
    )
    with open(PRESETS_FILE) as f:
        table = json.load(f)
    table[flow]["mnist"].setdefault("classes", {})[key] = entry
    if args.replace and args.replace != key:
        gone = table[flow]["mnist"]["classes"].pop(args.replace)
        os.remove(os.path.join(WEIGHTS_DIR, gone["weights"]["file"]))
        shutil.rmtree(os.path.join(ROOT, os.path.dirname(gone["card"])))
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ship import dump_table  # the presets table's one format

    with open(PRESETS_FILE, "w") as f:
        f.write(dump_table(table))
    folder = os.path.join(ROOT, os.path.dirname(card))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "curve.json"), "w") as f:
        json.dump(report["curve"], f, indent=1)
    shutil.copyfile(os.path.join(args.run, "samples.png"), os.path.join(folder, "samples.png"))
    m, a = entry["metrics"], report["train_args"]
    curve = "\n".join(f"| {c['step']:,} | {c['minutes']:.1f} | {c['test_bpd']:.4f} ± {c['test_bpd_se']:.4f} | "
                      f"{100 * c['bayes_acc']:.1f} ± {100 * c['bayes_acc_se']:.1f} |" for c in report["curve"])
    mixture = recognised = ""
    if "mixture_bpd" in m:
        mixture = (f"| **test bits/dim as an unconditional model** (the mixture `sum_y p(y) p(x \\| y)`, uniform "
                   f"`p(y)`) | **{m['mixture_bpd']:.4f} ± {m['mixture_bpd_stderr']:.4f}** on the first "
                   f"{m['bayes_images']:,} test images (one noise draw) |\n")
    if "recognisable" in m:
        recognised = (f"| **recognisable samples** (`python -m benchmarks.recognisable {flow}-classes`; class drawn "
                      f"uniformly, T = 0.7) | **{100 * m['recognisable']:.1f} %** of {m['recognisable_samples']:,} "
                      f"have top-class probability >= 0.9 under a 2-epoch CNN ({100 * m['recognisable_classifier_accuracy']:.2f} % "
                      f"test accuracy); per class 0-9: {', '.join(map(str, m['recognisable_counts']))}; "
                      f"{100 * m['recognised_as_asked']:.1f} % of those are the class asked for |\n")
    reproduce = (f"--minutes {a['minutes']:g} --lr {a['lr']:g} --prior-images {a['prior_images']} --eval-images "
                 f"{a['eval_images']} --eval-minutes {a['eval_minutes']:g} --threads {a['threads']} --dtype {a['dtype']}"
                 + (" --class-couplings" if couplings else "") + (f" --model {flow}" if flow != "glow" else ""))
    if flow == "glow":
        call = f"glow(preset=\"mnist\", num_classes=10{', class_couplings=True' if couplings else ''}, pretrained=True)"
        storage = "; coupling kernels stored as float16 like the unconditional card's"
        arch = ("the shipped `glow-mnist` (2 levels, K = 48, widths [160, 128], LU 1x1 convs, logit preprocessing), "
                "class-conditional: the one-hot class sets the top prior (`ConditionalNormal`) and both split priors"
                + ("; the coupling nets read it too" if couplings else ""))
    else:
        call = "realnvp(preset=\"mnist\", num_classes=10, pretrained=True)"
        storage = "; coupling kernels stored as float16"
        arch = ("the shipped `realnvp-mnist` (3 levels, 3 couplings per block, width 96, logit preprocessing), "
                "class-conditional: the one-hot class sets the prior (`ConditionalNormal`) and feeds every coupling net")
    with open(os.path.join(ROOT, card), "w") as f:
        f.write(f"""# Class-conditional {flow} on MNIST (`{flow}-mnist-{key}`)

`tfflows.zoo.{call}`
loads these weights (`tfflows/zoo/weights/{name}`, sha256 `{entry['weights']['sha256'][:16]}...`,
{entry['weights']['size_bytes'] / 1e6:.2f} MB{storage}).

| | |
| --- | --- |
| architecture | {arch} |
| start | the shipped unconditional uniform-noise weights, copied with `tfflows.zoo.grow.condition_glow` (same density for every class), then the top prior set to each class's latent mean and log-std over {a['prior_images']:,} training images (`tfflows.apps.fit_class_prior`) |
| training | {m['train_steps']:,} steps of batch {a['batch_size']} on (image, label) pairs of the 60k training images, Adam lr {a['lr']:g} after a {a['warmup_steps']}-step linear warm-up, global-norm clip 100, {a['dtype']}, {a['threads']} thread(s): {m['train_minutes']:.1f} minutes, **{m['cpu_hours']} CPU-hours** {args.hardware} |
| **test bits/dim given the label** | **{m['test_bpd']:.4f} ± {m['test_bpd_stderr']:.4f}** (10k test images, one noise draw); the unconditional {flow} on the same draw: {m['unconditional_test_bpd_same_draw']:.4f} |
| **Bayes classifier** (`argmax_y log p(x \\| y)`, equal priors) | **{100 * m['bayes_accuracy']:.1f} ± {100 * m['bayes_accuracy_se']:.1f} %** on the first {m['bayes_images']:,} test images (chance: 10 %) |
{mixture}{recognised}| bin-centre bits/dim, 500 embedded test images, given the label | {m['embedded_test500_centres_bpd']:.6f} (held to 1e-6 by `tests/test_pretrained.py`) |
| date | {m['date']} |

Samples at T = 0.7, one row per class (0 at the top):

![samples](samples.png)

## Curve (first {report['curve'][0].get('images', a['eval_images'])} test images, evaluated during training)

| step | minutes | test bits/dim given the label | Bayes accuracy (%) |
| --- | --- | --- | --- |
{curve}

## Reproduce

```sh
python -m benchmarks.class_glow_mnist train --data ../shared/data/mnist.npz --out runs/{flow}-classes \\
    {reproduce}
python -m benchmarks.class_glow_mnist report --data ../shared/data/mnist.npz --out runs/{flow}-classes --threads 1
python tools/ship_class_glow.py --run runs/{flow}-classes
python -m benchmarks.recognisable {flow}-classes --data ../shared/data/mnist.npz --n 1000 --out recognisable.json
python tools/ship_class_glow.py --run runs/{flow}-classes --recognisable recognisable.json
```
""")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
