"""Subprocess helper for tests/test_distribute.py (not collected by pytest).

`python tests/dist_worker.py mirrored OUT`: with 2 logical CPU devices,
compares a 2-replica `MirroredStrategy` run against a single-device run on
the same global batches (ActNorm init, `train` and `FlowModel.fit`), and
writes OUT/mirrored.json and OUT/mirrored.npz.

`python tests/dist_worker.py worker OUT [--epochs E --steps-per-epoch S
--save-freq F --ckpt DIR --sleep SEC --api train|fit]`: one worker of a
`MultiWorkerMirroredStrategy` cluster described by `TF_CONFIG`; trains a tiny
Glow and writes OUT/worker<i>.npz (final weights, per local replica),
OUT/worker<i>_init.npz (weights right after ActNorm init, on a fresh run) and
OUT/worker<i>.json (resume step, optimizer steps, history); appends each
finished step to OUT/progress_worker<i>.txt.

`python tests/dist_worker.py reference OUT [...]`: the same training on one
device (files named reference*), for comparison.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA_SHAPE = (8, 8, 1)
GLOBAL_BATCH = 8
N_EXAMPLES = 32  # 4 global batches per epoch
LEARNING_RATE = 0.1


def images(n=N_EXAMPLES, seed=0):
    import numpy as np

    return np.random.RandomState(seed).rand(n, *DATA_SHAPE).astype("float32")


def dataset(tf, shuffle=True):
    ds = tf.data.Dataset.from_tensor_slices(images())
    if shuffle:
        # Seeded: every worker must build the same global batches.
        ds = ds.shuffle(N_EXAMPLES, seed=7, reshuffle_each_iteration=True)
    return ds.batch(GLOBAL_BATCH, drop_remainder=True)


def tiny_glow(strategy, clipnorm=None):
    import keras

    import tfflows

    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, data_shape=DATA_SHAPE)
        # SGD, not Adam: Adam is blind to a gradient scaled by the replica count.
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9, global_clipnorm=clipnorm))
    return model


def replica_values(strategy, model):
    """`{<index>_<name>/replica_<k>: value}` for every weight on every local replica.

    Keyed by position, not path, so models built in different processes
    (or twice in one) compare entry by entry.
    """
    import numpy as np

    out = {}
    for i, v in enumerate(model.weights):
        for k, r in enumerate(strategy.experimental_local_results(v.value)):
            out[f"{i:03d}_{v.name}/replica_{k}"] = np.asarray(r)
    return out


def mirrored(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np

    from tfflows import distribute

    one = distribute.get_strategy("default")
    two = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert two.num_replicas_in_sync == 2
    ds = dataset(tf, shuffle=False)
    first = next(iter(ds))
    arrays, report = {}, {}

    # Item 2: ActNorm init from a distributed batch == single device on the global batch.
    m1, m2 = tiny_glow(one), tiny_glow(two)
    report["init_bpd_single"] = m1.initialize(first)
    first_distributed = next(iter(distribute.distribute_dataset(ds, two)))
    report["init_bpd_mirrored"] = distribute.initialize(m2, first_distributed)
    arrays.update({f"init_single/{k}": v for k, v in replica_values(one, m1).items()})
    arrays.update({f"init_mirrored/{k}": v for k, v in replica_values(two, m2).items()})

    # Item 3: the custom loop, 1 vs 2 replicas, same global batches; a tight
    # global clip so the clipping path is exercised.
    for name, strategy in (("single", one), ("mirrored", two)):
        model = tiny_glow(strategy, clipnorm=0.05)
        hist = distribute.train(model, ds, strategy, epochs=1, steps_per_epoch=2, verbose=0)
        report[f"train_{name}_loss"] = hist.history["loss"]
        report[f"train_{name}_iterations"] = int(model.optimizer.iterations.numpy())
        arrays.update({f"train_{name}/{k}": v for k, v in replica_values(strategy, model).items()})

    # Item 3 through Keras' own fit (FlowModel.fit keeps Keras' path here).
    for name, strategy in (("single", one), ("mirrored", two)):
        model = tiny_glow(strategy)
        hist = model.fit(ds.take(2), epochs=1, verbose=0)
        report[f"fit_{name}_loss"] = hist.history["loss"]
        report[f"fit_{name}_bpd"] = hist.history["bpd"]
        arrays.update({f"fit_{name}/{k}": v for k, v in replica_values(strategy, model).items()})

    np.savez(os.path.join(out, "mirrored.npz"), **arrays)
    with open(os.path.join(out, "mirrored.json"), "w") as f:
        json.dump(report, f)


def worker(out, args, reference=False):
    import tensorflow as tf

    from tfflows import distribute

    # The strategy comes first: MultiWorkerMirroredStrategy must be created
    # before any other TensorFlow op runs.
    strategy = distribute.get_strategy("default" if reference else "multiworker")
    import keras
    import numpy as np

    index = 0 if reference else strategy.cluster_resolver.task_id
    tag = "reference" if reference else f"worker{index}"
    progress = os.path.join(out, f"progress_{tag}.txt")

    class Progress(keras.callbacks.Callback):
        """Logs each finished step; keeps the weights right after ActNorm init."""

        start_step = None

        def on_train_begin(self, logs=None):
            Progress.start_step = int(self.model.optimizer.iterations.numpy())

        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 0:
                np.savez(os.path.join(out, f"{tag}_init.npz"), **replica_values(strategy, self.model))

        def on_train_batch_end(self, batch, logs=None):
            with open(progress, "a") as f:
                f.write(f"{int(self.model.optimizer.iterations.numpy())}\n")
            if args.sleep:
                time.sleep(args.sleep)

    model = tiny_glow(strategy)
    callbacks = [Progress()]
    ds = dataset(tf)
    if args.api == "fit":
        if args.ckpt:
            callbacks.append(keras.callbacks.BackupAndRestore(args.ckpt, save_freq=args.save_freq))
        hist = model.fit(ds, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                         callbacks=callbacks, verbose=0)
    else:
        hist = distribute.train(model, ds, strategy, epochs=args.epochs,
                                steps_per_epoch=args.steps_per_epoch, callbacks=callbacks,
                                checkpoint_dir=args.ckpt, save_freq=args.save_freq, verbose=0)
    report = {
        "task": index,
        "replicas": strategy.num_replicas_in_sync,
        "start_step": Progress.start_step,
        "iterations": int(model.optimizer.iterations.numpy()),
        "history": hist.history,
        "epochs_run": hist.epoch,
        "initialized": not model.needs_initialization,
    }
    np.savez(os.path.join(out, f"{tag}.npz"), **replica_values(strategy, model))
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump(report, f)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["mirrored", "worker", "reference"])
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--save-freq", default="epoch")
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--api", choices=["train", "fit"], default="train")
    args = parser.parse_args(argv)
    if args.save_freq != "epoch":
        args.save_freq = int(args.save_freq)
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "mirrored":
        mirrored(args.out)
    else:
        worker(args.out, args, reference=args.mode == "reference")


if __name__ == "__main__":
    main()
