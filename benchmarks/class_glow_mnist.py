"""Class-conditional Glow (issue #46) or RealNVP (`--model realnvp`, issue
#47) on MNIST: train from the shipped unconditional model, then measure it.

`train`: builds `tfflows.zoo.glow(preset="mnist", num_classes=10)` (or
`realnvp`), copies the shipped unconditional uniform-noise weights into
it (`tfflows.zoo.grow.condition_glow`: same density for every class at the start), sets the class prior to the
per-class latent means and log-stds of `--prior-images` training images
(`tfflows.apps.fit_class_prior`), then trains every weight on
(image, label) pairs of the 60k training set for `--minutes`, writing a
resumable checkpoint (`ckpt.keras`, with the optimizer state) every
`--checkpoint-minutes` and a curve point (conditional test bits/dim and
Bayes-classifier accuracy on the first `--eval-images` test images) every
`--eval-minutes`. Run it again with the same `--out` to resume.

`report`: test bits/dim given the true label (10k test images, one noise
draw, with its standard error) beside the unconditional model's on the same
draw, the Bayes classifier's test accuracy (`argmax_y log p(x | y)`, equal
class priors) on the first `--images` test images, and a
per-class sample grid at T = 0.7 (`samples.png`), written to
`OUT/report.json`.

    python -m benchmarks.class_glow_mnist train --data ../shared/data/mnist.npz --out runs/glow-classes \
        --minutes 70 --threads 1
    python -m benchmarks.class_glow_mnist report --data ../shared/data/mnist.npz --out runs/glow-classes
"""

import argparse
import json
import os
import sys
import time


def _setup(threads, dtype):
    if threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    if dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return keras


def _load_checkpoint(keras, path):
    # The tfflows classes register themselves with Keras when their modules load.
    import tfflows.distributions  # noqa: F401
    import tfflows.layers  # noqa: F401
    import tfflows.models  # noqa: F401
    import tfflows.optimizers  # noqa: F401

    return keras.saving.load_model(path)


def _data(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        return (f["x_train"][..., None], f["y_train"].astype("int32"),
                f["x_test"][..., None], f["y_test"].astype("int32"))


def _dequantize(images_u8, rng):
    import numpy as np

    return ((images_u8.astype("float32") + rng.random(images_u8.shape, dtype=np.float32)) / 256.0)


def _evaluate(model, x_u8, y, seed=1234, marginal=False):
    """(mean conditional bits/dim, its stderr, Bayes accuracy, its stderr) on
    `x_u8`; with `marginal`, also the bits/dim of the mixture `p(x) = sum_y
    p(y) p(x | y)` with uniform `p(y)` (the model used unconditionally) and its stderr."""
    import numpy as np
    from tfflows.apps.classes import class_log_probs
    from tfflows.models import bits_per_dim

    x = _dequantize(x_u8, np.random.default_rng(seed))
    scores = class_log_probs(model, x, batch_size=250)

    def bpd(log_p):
        return bits_per_dim(log_p, model.dims, model.n_bits)

    def mean_se(v):
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))

    out = mean_se(bpd(scores[np.arange(len(y)), y])) + mean_se((np.argmax(scores, axis=1) == y).astype("float64"))
    if marginal:
        top = scores.max(axis=1)
        log_mix = top + np.log(np.mean(np.exp(scores - top[:, None]), axis=1))
        out += mean_se(bpd(log_mix))
    return out


def _unconditional(name):
    """The shipped unconditional model's uniform-noise weights (the density on [0, 1)^D)."""
    import tfflows

    return getattr(tfflows.zoo, name)(preset="mnist", pretrained=True, dequantize="uniform")


def _conditional(name, class_couplings):
    import tfflows

    if name == "glow":
        return tfflows.zoo.glow(preset="mnist", num_classes=10, class_couplings=class_couplings)
    if class_couplings:
        raise SystemExit("--class-couplings is for --model glow; a class-conditional RealNVP's couplings always "
                         "read the class.")
    return tfflows.zoo.realnvp(preset="mnist", num_classes=10)


def train(args):
    keras = _setup(args.threads, args.dtype)
    import numpy as np
    import tensorflow as tf

    import tfflows
    from tfflows.apps.classes import fit_class_prior
    from tfflows.zoo.grow import condition_glow

    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "ckpt.keras")
    state_path = os.path.join(args.out, "state.json")
    x_train, y_train, x_test, y_test = _data(args.data)
    rng = np.random.default_rng(args.seed)
    if os.path.exists(ckpt):
        model = _load_checkpoint(keras, ckpt)
        with open(state_path) as f:
            state = json.load(f)
        print(f"resumed at step {state['step']}, {state['minutes']:.1f} minutes trained", flush=True)
    else:
        keras.utils.set_random_seed(args.seed)
        old = _unconditional(args.model)
        model = _conditional(args.model, args.class_couplings)
        condition_glow(old, model)
        t = time.time()
        idx = rng.choice(len(x_train), args.prior_images, replace=False)
        fit_class_prior(model, _dequantize(x_train[idx], rng), y_train[idx])
        prior_s = time.time() - t
        # Warm-up matters: Adam's first step moves every weight by the full
        # learning rate, and one step of 1e-4 takes the shipped Glow from
        # 1.12 to over 3 bits/dim.
        lr = keras.optimizers.schedules.CosineDecay(0.0, 1, alpha=1.0, warmup_target=args.lr,
                                                    warmup_steps=args.warmup_steps)
        model.compile(optimizer=tfflows.optimizers.Adam(learning_rate=lr, global_clipnorm=100.0))
        t = time.time()
        bpd, bpd_se, acc, acc_se = _evaluate(model, x_test[:args.eval_images], y_test[:args.eval_images])
        state = dict(step=0, minutes=0.0, prior_seconds=prior_s, args=vars(args),
                     curve=[dict(step=0, minutes=0.0, test_bpd=bpd, test_bpd_se=bpd_se, bayes_acc=acc,
                                 bayes_acc_se=acc_se, eval_seconds=time.time() - t)])
        print(f"start: class prior fitted in {prior_s:.0f} s; test bpd {bpd:.4f}, Bayes accuracy {acc:.3f}",
              flush=True)
    ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
          .shuffle(60000, seed=args.seed + state["step"], reshuffle_each_iteration=True).repeat()
          .map(lambda x, y: ((tf.cast(x, tf.float32) + tf.random.uniform(tf.shape(x))) / 256.0, y),
               num_parallel_calls=1)
          .batch(args.batch_size, drop_remainder=True).prefetch(2))
    start = time.time()
    minutes0 = state["minutes"]
    marks = dict(ckpt=time.time(), eval=time.time())

    def save():
        state["minutes"] = minutes0 + (time.time() - start) / 60
        tmp = ckpt + ".tmp.keras"
        model.save(tmp)
        os.replace(tmp, ckpt)
        with open(state_path + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(state_path + ".tmp", state_path)

    class Chunk(keras.callbacks.Callback):
        """After every `--chunk` steps: log, evaluate, checkpoint, stop at the budget."""

        def on_epoch_end(self, epoch, logs=None):
            loss = float(logs["loss"])
            if not np.isfinite(loss):
                self.model.stop_training = True
                raise SystemExit(f"training diverged at step {state['step']} (loss {loss}); the last "
                                 f"checkpoint {ckpt} is kept.")
            state["step"] += args.chunk
            now = time.time()
            minutes = minutes0 + (now - start) / 60
            print(f"step {state['step']}  {minutes:.1f} min  train bpd {loss:.4f}", flush=True)
            if now - marks["eval"] >= 60 * args.eval_minutes:
                t = time.time()
                bpd, bpd_se, acc, acc_se = _evaluate(model, x_test[:args.eval_images], y_test[:args.eval_images])
                state["curve"].append(dict(step=state["step"], minutes=minutes, train_bpd=loss, test_bpd=bpd,
                                           test_bpd_se=bpd_se, bayes_acc=acc, bayes_acc_se=acc_se,
                                           eval_seconds=time.time() - t))
                print(f"  eval: test bpd {bpd:.4f} ± {bpd_se:.4f}, Bayes accuracy {acc:.3f} ± {acc_se:.3f}",
                      flush=True)
                marks["eval"] = time.time()
            if now - marks["ckpt"] >= 60 * args.checkpoint_minutes:
                save()
                marks["ckpt"] = time.time()
            if minutes >= args.minutes:
                self.model.stop_training = True

    model.fit(ds, steps_per_epoch=args.chunk, epochs=10 ** 6, verbose=0, callbacks=[Chunk()])
    save()
    print(f"done: step {state['step']}, {state['minutes']:.1f} minutes", flush=True)


def report(args):
    keras = _setup(args.threads, "float32")
    import numpy as np

    from tfflows import images as tfi
    from tfflows.apps.classes import class_samples
    from tfflows.training import save_inference_weights

    x_train, y_train, x_test, y_test = _data(args.data)
    del x_train, y_train
    trained = _load_checkpoint(keras, os.path.join(args.out, "ckpt.keras"))
    with open(os.path.join(args.out, "state.json")) as f:
        state = json.load(f)
    # What ships: the weights with float16 coupling kernels, loaded into a fresh model.
    couplings = bool(state["args"].get("class_couplings"))
    name = state["args"].get("model", "glow")
    weights = os.path.join(args.out, f"{name}-mnist-classes10" + ("-couplings" if couplings else "") + ".weights.h5")
    save_inference_weights(trained, weights, net_kernels_float16=True)
    model = _conditional(name, couplings)
    model.load_weights(weights)
    n = args.images
    t = time.time()
    _, _, acc, acc_se, mix, mix_se = _evaluate(model, x_test[:n], y_test[:n], seed=args.seed, marginal=True)
    eval_s = time.time() - t
    # Bits/dim given the true label on the whole test set (one noise draw),
    # and the unconditional model's on the same draw.
    x = _dequantize(x_test, np.random.default_rng(args.seed))
    old = _unconditional(name)
    cond_fn, old_fn = model.make_bits_per_dim_function(), old.make_bits_per_dim_function()
    bpd = np.concatenate([np.asarray(cond_fn(x[i:i + 250], y_test[i:i + 250])) for i in range(0, len(x), 250)])
    old_bpd = np.concatenate([np.asarray(old_fn(x[i:i + 250])) for i in range(0, len(x), 250)])
    m = len(x)
    samples, labels = class_samples(model, per_class=10, temperature=0.7, seed=args.seed)
    rows = [tfi.to_uint8(np.clip(samples[labels == c], 0.0, 1.0 - 1e-6)) for c in range(10)]
    tfi.write_png(os.path.join(args.out, "samples.png"), tfi.grid(rows, labels=[str(c) for c in range(10)]))
    out = dict(
        bayes_images=n, bpd_images=m, seed=args.seed, train_steps=state["step"], train_minutes=state["minutes"],
        train_args=state["args"], test_bpd_given_label=float(bpd.mean()),
        test_bpd_given_label_se=float(bpd.std(ddof=1) / np.sqrt(m)),
        unconditional_test_bpd_same_draw=float(old_bpd.mean()),
        difference_se=float((bpd - old_bpd).std(ddof=1) / np.sqrt(m)),
        bayes_accuracy=acc, bayes_accuracy_se=acc_se, bayes_eval_seconds=eval_s, curve=state["curve"],
        mixture_bpd=mix, mixture_bpd_se=mix_se,
    )
    out["weights"] = weights
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k not in ("curve", "train_args")}, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=60)
    t.add_argument("--lr", type=float, default=4e-5)
    t.add_argument("--warmup-steps", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--chunk", type=int, default=50, help="steps per fit call")
    t.add_argument("--prior-images", type=int, default=10000)
    t.add_argument("--eval-images", type=int, default=300)
    t.add_argument("--eval-minutes", type=float, default=15)
    t.add_argument("--checkpoint-minutes", type=float, default=5)
    t.add_argument("--dtype", choices=("bfloat16", "float32"), default="float32")
    t.add_argument("--class-couplings", action="store_true")
    t.add_argument("--model", choices=("glow", "realnvp"), default="glow")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--images", type=int, default=1000, help="test images for the Bayes classifier")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    (train if args.cmd == "train" else report)(args)


if __name__ == "__main__":
    sys.exit(main())
