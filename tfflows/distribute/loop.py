"""The training loop under `tf.distribute`: data-dependent init that agrees
across replicas, and a fault-tolerant custom loop (TensorFlow only).

- `initialize(model, batch, strategy)`: ActNorm data-dependent init from the
  *global* batch (all replicas' shards gathered), run in cross-replica
  context, then broadcast from replica 0 so every replica on every worker
  holds bit-identical parameters.
- `train(model, dataset, strategy, ...)`: a custom distributed loop
  (`strategy.run` inside `tf.function`, gradients applied with the model's
  Keras optimizer) with Keras callbacks, NaN stop and the atomic, resumable
  checkpoints of `tfflows.checkpoint`.
- `fit(model, x, ...)`: `FlowModel.fit`'s path under
  `MultiWorkerMirroredStrategy`, where Keras 3's own `fit` fails with
  `ValueError: Attempt to convert a value (PerReplica...)`
  (keras-team/keras#20585).

Importing this module registers these with `tfflows.models.set_strategy_hooks`,
so `FlowModel.fit` and `FlowModel.initialize` use them.

Loss aggregation. Each replica computes the sum of its examples' loss
(bits/dim, or nats for continuous data) divided by the global number of
examples in the step (all-reduced), so the summed gradient is the gradient of
the global-batch mean: one step on N replicas equals one step on one device
with the same global batch. With gradient clipping configured on the
optimizer (`FlowModel`'s default Adam clips the global norm at 100),
gradients are all-reduced *before* clipping, so the clip acts on the global
gradient as on a single device (Keras' own `fit` clips each replica's partial
gradient).
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfflows import checkpoint
from tfflows.distribute.strategy import (
    distribute_dataset,
    is_chief,
    is_default_strategy,
    model_strategy,
    uses_custom_loop,
)
from tfflows.models import StopOnNaN, set_strategy_hooks


# -- data ----------------------------------------------------------------------
def _as_dataset(x, batch_size=None, shuffle=True, seed=0):
    if isinstance(x, tf.data.Dataset):
        return x
    arrays = x if isinstance(x, tuple) and x and all(hasattr(a, "shape") for a in x) else None
    if arrays is None and (isinstance(x, (np.ndarray, tf.Tensor)) or hasattr(x, "__array__")):
        arrays = np.asarray(x)
    if arrays is None:
        raise TypeError(
            f"tfflows.distribute.train takes a tf.data.Dataset, an array of data or an (x, context) "
            f"tuple of arrays, got {type(x).__name__}."
        )
    if isinstance(arrays, tuple):  # (x, context) of a conditional model
        arrays = tuple(np.asarray(a) for a in arrays)
        n = len(arrays[0])
    else:
        n = len(arrays)
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        # Seeded, so every worker builds the same global batches and a
        # resumed run replays the same order.
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size or 32)


def _per_example_loss(model, x, context, training):
    """`model`'s per-example loss (bits/dim or nats) in float32, `(batch,)`."""
    inputs = x if context is None else (x, context)
    return tf.cast(model(inputs, training=training), tf.float32)


# -- data-dependent init -----------------------------------------------------------
def _float_variables(layer):
    return [v for v in layer.weights if keras.backend.is_float_dtype(v.dtype)]


def broadcast_variables(variables, strategy=None):
    """Copies replica 0's value of each variable to every replica and worker.

    Exact: replica 0 contributes its value to a sum all-reduce and every
    other replica contributes zeros. Call in cross-replica context.
    """
    strategy = strategy or tf.distribute.get_strategy()
    variables = [v for v in variables if keras.backend.is_float_dtype(v.dtype)]
    if strategy.num_replicas_in_sync == 1 or not variables:
        return

    @tf.function
    def gather_first():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            masked = [tf.where(first, tf.identity(v.value), tf.zeros(v.shape, v.dtype)) for v in variables]
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, masked)

        return strategy.run(replica_fn)

    values = gather_first()
    for v, value in zip(variables, values):
        v.assign(strategy.experimental_local_results(value)[0])


def initialize(model, batch, strategy=None, context=None):
    """Data-dependent (ActNorm) init that is identical on every replica.

    `batch` is either a distributed batch (as `distribute_dataset` yields):
    its per-replica shards are gathered from every replica and worker into
    the global batch; or a plain array or tensor, taken as the global batch.
    It may be `x`, `(x, context)` for a conditional model, or any form
    `model.split_batch` takes; `context` overrides the batch's.
    `model.flow.initialize` then runs once per worker in cross-replica
    context (plain variable assignment to the mirrored variables, no
    variable creation in a replica context), and replica 0's values are
    broadcast so all replicas hold bit-identical parameters. With a plain
    batch that differs between workers, the chief's batch wins.

    The result equals `model.initialize(global_batch)` on a single device.

    Returns:
        The global batch's mean loss (bits/dim, or nats for continuous data)
        after initialisation.
    """
    strategy = strategy or model_strategy(model)
    x, batch_context = model.split_batch(batch)
    context = batch_context if context is None else context
    if isinstance(x, tf.distribute.DistributedValues):
        x = strategy.gather(x, axis=0)
    if isinstance(context, tf.distribute.DistributedValues):
        context = strategy.gather(context, axis=0)
    with strategy.scope():
        if getattr(model, "dequantizer", None) is not None:  # integer pixels: the model adds its own noise
            x, log_q = model.dequantize(tf.convert_to_tensor(x))
        else:
            x, log_q = model.check_data(tf.convert_to_tensor(x)), 0.0
        context = model.check_context(None if context is None else tf.convert_to_tensor(context), x.shape[0])
        z, log_det = model.flow.initialize(x, context=context)
        loss = model.loss_from_log_prob(model.base.log_prob(z, context=context) + log_det - log_q)
        loss = float(tf.reduce_mean(tf.cast(loss, tf.float32)))
    broadcast_variables(_float_variables(model.flow), strategy)
    return loss


# -- checkpoints ------------------------------------------------------------------
def _take_backup_callbacks(callbacks, checkpoint_dir, save_freq):
    """Turns Keras `BackupAndRestore` callbacks into `train`'s checkpointing.

    Keras 3's `BackupAndRestore` writes weights in place (a crash while
    saving corrupts the backup), keeps no optimizer state and resumes at an
    epoch's start; `train` does all three properly with `checkpoint_dir`.
    """
    kept = []
    for cb in callbacks:
        if isinstance(cb, keras.callbacks.BackupAndRestore):
            same = checkpoint_dir is None or os.path.abspath(checkpoint_dir) == os.path.abspath(cb.backup_dir)
            if not same:
                raise ValueError(
                    f"Got both checkpoint_dir={checkpoint_dir!r} and a BackupAndRestore "
                    f"callback with backup_dir={cb.backup_dir!r}; pass one."
                )
            checkpoint_dir, save_freq = cb.backup_dir, cb.save_freq
        else:
            kept.append(cb)
    return kept, checkpoint_dir, save_freq


def _restore(model, strategy, checkpoint_dir):
    """`(step, epoch_sum, epoch_count)` of the newest checkpoint restored into
    `model` (zeros when there is none); every worker reads `checkpoint_dir`.

    Under multi-worker the workers then check that they restored the same
    step: a `checkpoint_dir` that is not shared (each worker's own disk)
    would otherwise leave them training different weights, or waiting on
    each other forever.
    """
    _, state = checkpoint.restore_latest(model, checkpoint_dir)
    if state is None and os.path.exists(os.path.join(checkpoint_dir, "checkpoint")):
        raise ValueError(
            f"{checkpoint_dir} holds TensorFlow checkpoints (a `checkpoint` index file), the format of "
            f"the distributed loop before tfflows.checkpoint; it now writes and resumes ckpt-<step>/ "
            f"folders. Resume that run with the tfflows that wrote it, or pass another checkpoint_dir."
        )
    state = state or {}
    start = int(state.get("step", 0))
    if _num_workers(strategy) > 1:
        first = _make_broadcast_first(strategy)(divmod(start, 2 ** 20))
        first = int(first[0]) * 2 ** 20 + int(first[1])
        differs, _ = _make_flag_sync(strategy)(first != start, False)
        if differs:
            raise ValueError(
                f"The workers restored different checkpoints from {checkpoint_dir} (this worker: step "
                f"{start}; replica 0's worker: step {first}). checkpoint_dir must be one folder that "
                f"every worker reads (a shared filesystem)."
            )
    return start, float(state.get("epoch_sum", 0.0)), float(state.get("epoch_count", 0.0))


# -- the training loop ----------------------------------------------------------------
def _check_variables(model, strategy):
    for v in model.weights:
        if not strategy.extended.variable_created_in_scope(v.value):
            raise ValueError(
                f"Variable {v.path} of model '{model.name}' was not created under this "
                f"strategy's scope. Build (and compile) the model inside "
                f"`with strategy.scope():`."
            )


def _ensure_optimizer(model, strategy):
    with strategy.scope():
        if model.optimizer is None:
            model.compile()
        opt = model.optimizer
        # An optimizer creates its step counter when it is constructed (and
        # its slots beside the weights): where its variables live tells which
        # strategy it belongs to.
        if not all(strategy.extended.variable_created_in_scope(v.value) for v in opt.variables):
            if opt.built:
                raise ValueError(
                    "The model's optimizer was created and built outside the strategy's "
                    "scope; compile the model inside `with strategy.scope():`."
                )
            model.optimizer = opt.__class__.from_config(opt.get_config())
            opt = model.optimizer
        if not opt.built:
            opt.build(model.trainable_variables)
    return opt


def clip_gradients(optimizer, grads):
    """`grads` clipped as `optimizer`'s `clipnorm`, `global_clipnorm` or
    `clipvalue` asks, with Keras' arithmetic (the first one set wins, in that
    order, as in Keras).

    - `clipnorm` c: each tensor `g * c / max(||g||, c)`;
    - `global_clipnorm` c: every tensor `g * c * min(1 / N, 1 / c)`, with `N`
      the global norm `sqrt(sum ||g||^2)` (NaN everywhere when `N` is not
      finite, as in Keras);
    - `clipvalue` v: each entry clipped to `[-v, v]`.

    `None` entries pass through.
    """
    clipnorm = getattr(optimizer, "clipnorm", None)
    global_clipnorm = getattr(optimizer, "global_clipnorm", None)
    clipvalue = getattr(optimizer, "clipvalue", None)
    if clipnorm and clipnorm > 0:
        return [None if g is None else _clip_by_norm(g, clipnorm) for g in grads]
    if global_clipnorm and global_clipnorm > 0:
        present = [g for g in grads if g is not None]
        if not present:
            return list(grads)
        norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(g)) for g in present])))
        scale = global_clipnorm * ops.minimum(1.0 / norm, 1.0 / global_clipnorm)
        scale = scale + (norm - norm)  # NaN when the norm is not finite
        return [None if g is None else g * scale for g in grads]
    if clipvalue and clipvalue > 0:
        return [None if g is None else ops.clip(g, -clipvalue, clipvalue) for g in grads]
    return list(grads)


def _clip_by_norm(g, clipnorm):
    l2sum = ops.sum(ops.square(g), keepdims=True)
    positive = l2sum > 0
    # The two-sided `where` keeps sqrt's gradient finite at 0.
    l2norm = ops.where(positive, ops.sqrt(ops.where(positive, l2sum, ops.ones_like(l2sum))), l2sum)
    return ops.convert_to_tensor(ops.multiply(g, clipnorm)) / ops.maximum(l2norm, clipnorm)


def _clips(opt):
    return bool(getattr(opt, "clipnorm", None) or getattr(opt, "global_clipnorm", None)
                or getattr(opt, "clipvalue", None))


def _make_train_step(model, strategy):
    opt = model.optimizer
    variables = list(model.trainable_variables)
    clip_globally = (
        _clips(opt) and strategy.num_replicas_in_sync > 1
        and not isinstance(opt, keras.optimizers.LossScaleOptimizer)
    )

    def replica_step(batch):
        x, context = model.split_batch(batch)
        ctx = tf.distribute.get_replica_context()
        n_local = tf.cast(tf.shape(x)[0], tf.float32)
        n_global = ctx.all_reduce(tf.distribute.ReduceOp.SUM, n_local)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(_per_example_loss(model, x, context, training=True))
            loss = opt.scale_loss(total / n_global)
        grads = tape.gradient(loss, variables)
        if clip_globally:
            # Clip the *global* gradient, as on one device: all-reduce first,
            # clip, then hand the optimizer replica 0's copy (others zeros),
            # so its own sum all-reduce reproduces it exactly and its own
            # clipping is a no-op.
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads = clip_gradients(opt, grads)
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            grads = [tf.where(first, g, tf.zeros_like(g)) for g in grads]
        opt.apply(grads, variables)
        return total, n_local

    @tf.function
    def train_step(dist_batch):
        total, n = strategy.run(replica_step, args=(dist_batch,))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, n, axis=None))

    return train_step


def _make_eval_step(model, strategy):
    def replica_step(batch):
        x, context = model.split_batch(batch)
        loss = _per_example_loss(model, x, context, training=False)
        return tf.reduce_sum(loss), tf.cast(tf.shape(x)[0], tf.float32)

    @tf.function
    def eval_step(dist_batch):
        total, n = strategy.run(replica_step, args=(dist_batch,))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, n, axis=None))

    return eval_step


def _num_workers(strategy):
    """How many worker processes take part (1 off-cluster)."""
    if is_default_strategy(strategy):
        return 1
    local = len(strategy.extended.worker_devices) or 1
    return max(1, strategy.num_replicas_in_sync // local)


def _make_flag_sync(strategy):
    """`(stop, save) -> (any worker stops, any worker saves)`, via all-reduce."""

    @tf.function
    def reduce_flags(flags):
        def replica_fn(f):
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(f))

        return strategy.experimental_local_results(strategy.run(replica_fn, args=(flags,)))[0]

    def sync(stop, save):
        flags = reduce_flags(tf.constant([float(bool(stop)), float(bool(save))]))
        return bool(flags[0] > 0), bool(flags[1] > 0)

    return sync


def _make_broadcast_first(strategy):
    """`values -> replica 0's values` on every worker (small non-negative
    integers, exact in float32), via a sum all-reduce to which only replica 0
    contributes."""

    @tf.function
    def first(values):
        def replica_fn(v):
            ctx = tf.distribute.get_replica_context()
            mine = tf.where(tf.equal(ctx.replica_id_in_sync_group, 0), v, tf.zeros_like(v))
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)

        return strategy.experimental_local_results(strategy.run(replica_fn, args=(values,)))[0]

    def broadcast(values):
        return [int(round(float(v))) for v in first(tf.constant([float(v) for v in values]))]

    return broadcast


def _steps_of(dataset, steps_per_epoch, what="dataset"):
    card = int(dataset.cardinality())
    if steps_per_epoch is not None:
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1. Received: steps_per_epoch={steps_per_epoch}")
        return steps_per_epoch, card
    if card == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"The {what} is infinite; pass steps_per_epoch.")
    if card == tf.data.UNKNOWN_CARDINALITY:
        raise ValueError(
            f"The {what}'s length is unknown (e.g. after filter()); pass steps_per_epoch "
            f"so every worker runs the same number of steps."
        )
    if card == 0:
        raise ValueError(f"The {what} is empty.")
    return card, card


def _evaluate(eval_step, dataset, strategy, steps, shard_policy):
    data = distribute_dataset(dataset.take(steps), strategy, shard_policy)
    total = count = 0.0
    for batch in data:
        s, n = eval_step(batch)
        total += float(s)
        count += float(n)
    return total / max(count, 1.0)


def train(model, dataset, strategy=None, *, epochs=1, steps_per_epoch=None, callbacks=None,
          checkpoint_dir=None, save_freq="epoch", save_seconds=None, max_to_keep=2, validation_data=None,
          validation_steps=None, verbose="auto", stop_on_nan=True, shard_policy="data",
          batch_size=None, checkpoint_state=None):
    """Trains a `FlowModel` with a custom distributed loop; Keras-style callbacks.

    Works under every strategy (default, `MirroredStrategy`,
    `MultiWorkerMirroredStrategy`, `TPUStrategy`): each step runs
    `strategy.run` inside a `tf.function`, takes the global-batch mean of
    the loss (see the module docstring) and applies the gradients with the
    model's Keras optimizer. Every worker runs the same program with the same
    arguments; `FlowModel.fit` calls this under multi-worker.

    Build and compile the model inside `with strategy.scope():`.

    Data. `dataset` yields global batches (`x`, `(x, context)` for a
    conditional model, or `(x, ...)` tuples); it is repeated, so training is
    `epochs * steps_per_epoch` steps (`steps_per_epoch` defaults to the
    dataset's length) drawn from one continuous, deterministic stream.
    Arrays (or an `(x, context)` tuple of arrays) are batched (`batch_size`,
    default 32) and shuffled with a fixed seed.

    Resuming. With `checkpoint_dir`, the model, optimizer and loop position
    are checkpointed every `save_freq` (`"epoch"` or a number of steps) and
    at the end, in `tfflows.checkpoint`'s format (`ckpt-<step>/` with
    `model.keras` and `state.json`, then the `LATEST` pointer); the chief
    writes them. A restarted run (same arguments) restores the newest
    checkpoint that can be read (a damaged or unfinished one is skipped for
    the one before it, with a warning), skips the batches already trained
    on and continues mid-epoch if need be: the finished run has exactly
    `epochs * steps_per_epoch` optimizer steps, none lost or repeated. Under
    multi-worker every worker restores from `checkpoint_dir`, which must be
    on a filesystem they all read; a crashed worker stops the whole cluster
    (collectives cannot continue without it): restart every worker. A Keras
    `BackupAndRestore` callback is taken as `checkpoint_dir=backup_dir`.

    ActNorm init runs on the first global batch (`initialize`) unless the
    model is already initialised or a checkpoint is restored.

    Args:
        model: a `FlowModel` built under `strategy.scope()`.
        dataset: a `tf.data.Dataset` of global batches, or an array.
        strategy: defaults to the strategy the model was built under.
        epochs: number of epochs.
        steps_per_epoch: steps per epoch; needed for infinite datasets.
        callbacks: Keras callbacks; they see `loss` and `bpd` (global means;
            `nll` instead of `bpd` for continuous data, as in `FlowModel.fit`)
            per batch and per epoch, plus `val_loss`/`val_bpd`.
        checkpoint_dir: where to keep resumable checkpoints; `None` for none.
        save_freq: `"epoch"` or an integer number of steps.
        save_seconds: also save when this many seconds have passed since
            the last save (for wall-clock budgets; decided jointly by all
            workers).
        max_to_keep: checkpoints kept (older ones are deleted); `None`: all.
        validation_data: a dataset of global batches evaluated each epoch.
        validation_steps: batches of `validation_data` per evaluation.
        verbose: 0, 1 (progress bar), 2 (one line per epoch) or `"auto"`
            (1 on the chief, 0 on other workers).
        stop_on_nan: add `StopOnNaN` (a diverged run raises
            `TrainingDivergedError`; no NaN checkpoint is written).
        shard_policy: auto-shard policy for the input (`"data"`; see
            `with_shard_policy`).
        batch_size: batch size when `dataset` is an array.
        checkpoint_state: a dict of extra entries for every checkpoint's
            `state.json` (read at each save, so it may change while training;
            the loop's `step`, `epoch`, `epoch_sum` and `epoch_count` win).

    Returns:
        A `keras.callbacks.History` of this process's epochs.
    """
    strategy = strategy or model_strategy(model)
    if save_seconds is not None and not save_seconds > 0:
        raise ValueError(f"save_seconds must be positive. Received: save_seconds={save_seconds!r}")
    if isinstance(save_freq, str) and save_freq != "epoch" or (
        not isinstance(save_freq, str) and (not isinstance(save_freq, int) or save_freq < 1)
    ):
        raise ValueError(
            f"save_freq must be 'epoch' or a positive integer. Received: save_freq={save_freq!r}"
        )
    if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int)
                                    or max_to_keep < 1):
        raise ValueError(f"max_to_keep must be a positive integer or None. Received: max_to_keep={max_to_keep!r}")
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1. Received: epochs={epochs}")
    _check_variables(model, strategy)
    _ensure_optimizer(model, strategy)
    callbacks, checkpoint_dir, save_freq = _take_backup_callbacks(
        list(callbacks or []), checkpoint_dir, save_freq
    )
    if stop_on_nan and not any(isinstance(c, StopOnNaN) for c in callbacks):
        callbacks.append(StopOnNaN())
    chief = is_chief(strategy)
    if verbose == "auto":
        verbose = 1 if chief else 0

    dataset = _as_dataset(dataset, batch_size)
    steps_per_epoch, card = _steps_of(dataset, steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    if validation_data is not None:
        validation_data = _as_dataset(validation_data, batch_size, shuffle=False)
        validation_steps, _ = _steps_of(validation_data, validation_steps, "validation data")

    start, epoch_sum, epoch_count = 0, 0.0, 0.0
    if checkpoint_dir is not None:
        start, epoch_sum, epoch_count = _restore(model, strategy, checkpoint_dir)
    if start > total_steps:
        raise ValueError(
            f"The checkpoint in {checkpoint_dir} is at step {start}, past this run's "
            f"{total_steps} steps ({epochs} epochs x {steps_per_epoch})."
        )

    def save(step, epoch_sum, epoch_count):
        if chief:  # one writer; the others read the same folder when they restart
            state = dict(checkpoint_state or {})
            state.update(step=step, epoch=step // steps_per_epoch, epoch_sum=epoch_sum,
                         epoch_count=epoch_count)
            checkpoint.save_checkpoint(model, checkpoint_dir, state, keep=max_to_keep)

    # One continuous stream of global batches; a resumed run skips the ones
    # already trained on, so it sees exactly what an uninterrupted run would.
    stream = dataset.repeat() if card != tf.data.INFINITE_CARDINALITY else dataset
    iterator = iter(distribute_dataset(stream.skip(start), strategy, shard_policy))
    train_step = _make_train_step(model, strategy)
    eval_step = _make_eval_step(model, strategy) if validation_data is not None else None

    cb = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch,
    )
    history = next(c for c in cb.callbacks if isinstance(c, keras.callbacks.History))
    metric = "bpd" if getattr(model, "n_bits", 8) is not None else "nll"  # as FlowModel's Keras fit
    sync_flags = _make_flag_sync(strategy) if _num_workers(strategy) > 1 else None
    last_save = time.monotonic()
    model.stop_training = False
    cb.on_train_begin()
    step = start
    logs = {}
    while step < total_steps and not model.stop_training:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        cb.on_epoch_begin(epoch)
        while in_epoch < steps_per_epoch:
            batch = next(iterator)
            if step == start and model.needs_initialization:
                initialize(model, batch, strategy)
            cb.on_train_batch_begin(in_epoch)
            total, n = train_step(batch)
            total, n = float(total), float(n)
            epoch_sum, epoch_count = epoch_sum + total, epoch_count + n
            batch_logs = {"loss": total / n, metric: total / n}
            cb.on_train_batch_end(in_epoch, batch_logs)
            step, in_epoch = step + 1, in_epoch + 1
            epoch_done = in_epoch == steps_per_epoch
            if epoch_done:
                mean = epoch_sum / max(epoch_count, 1.0)
                logs = {"loss": mean, metric: mean}
                if validation_data is not None:
                    val = _evaluate(eval_step, validation_data, strategy, validation_steps, shard_policy)
                    logs.update({"val_loss": val, f"val_{metric}": val})
                cb.on_epoch_end(epoch, logs)
                epoch_sum = epoch_count = 0.0
            due = save_seconds is not None and time.monotonic() - last_save >= save_seconds
            if sync_flags is not None:
                # Every worker must stop (and save) at the same step, or the
                # others would wait forever in the next collective.
                model.stop_training, due = sync_flags(model.stop_training, due)
            if checkpoint_dir is not None and (
                step == total_steps or model.stop_training or due
                or (epoch_done if save_freq == "epoch" else step % save_freq == 0)
            ):
                save(step, epoch_sum, epoch_count)
                last_save = time.monotonic()
            if model.stop_training:
                break
    cb.on_train_end(logs)
    return history


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_split=0.0, validation_data=None, shuffle=True, *, initial_epoch=0,
        steps_per_epoch=None, validation_steps=None, stop_on_nan=True, **kwargs):
    """`FlowModel.fit`'s path under multi-worker: Keras `fit` arguments to `train`.

    Supports `x` (dataset, array, or an `(x, context)` tuple of arrays for a
    conditional model), `batch_size`, `epochs`, `verbose`, `callbacks` (a
    Keras `BackupAndRestore` becomes resumable checkpointing),
    `validation_data`, `steps_per_epoch`, `validation_steps`. `y` must be
    `None` (flows are unsupervised; `FlowModel.fit` has already moved a
    conditional model's context into `x`) and `initial_epoch` 0 (resume with
    `BackupAndRestore` instead).
    """
    unsupported = sorted(
        k for k, v in kwargs.items()
        if v is not None and v is not False and v != 0 and not (k == "validation_freq" and v == 1)
    )
    if validation_split:
        unsupported.append("validation_split")
    if unsupported:
        raise ValueError(
            f"FlowModel.fit under MultiWorkerMirroredStrategy runs tfflows.distribute.train, "
            f"which does not take {unsupported}; pass validation_data instead of validation_split."
        )
    if y is not None:
        raise ValueError("FlowModel.fit takes no targets y: flows are trained on x alone.")
    if initial_epoch:
        raise ValueError(
            f"initial_epoch={initial_epoch} is not supported under multi-worker; resume with "
            f"a BackupAndRestore callback (or tfflows.distribute.train(checkpoint_dir=...))."
        )
    if isinstance(validation_data, tuple) and not (
        getattr(model, "context_shape", None) is not None and len(validation_data) == 2
        and validation_data[1] is not None
    ):
        validation_data = validation_data[0]  # Keras' (x, y): flows ignore y
    if not isinstance(x, tf.data.Dataset):
        x = _as_dataset(x, batch_size, shuffle=shuffle)
    return train(model, x, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                 validation_data=validation_data, validation_steps=validation_steps,
                 verbose=verbose, stop_on_nan=stop_on_nan, batch_size=batch_size)


# -- FlowModel's hooks --------------------------------------------------------------------
class _StrategyHooks:
    """What `FlowModel` asks about `tf.distribute` (`tfflows.models.set_strategy_hooks`)."""

    @staticmethod
    def is_distributed(model):
        return not is_default_strategy(model_strategy(model))

    @staticmethod
    def initialize(model, batch, context=None):
        return initialize(model, batch, context=context)

    @staticmethod
    def uses_custom_loop(model):
        return uses_custom_loop(model)

    @staticmethod
    def fit(model, x, y, *args, **kwargs):
        return fit(model, x, y, *args, **kwargs)

    @staticmethod
    def scope(model):
        return model_strategy(model).scope()


set_strategy_hooks(_StrategyHooks())


__all__ = ["broadcast_variables", "initialize", "clip_gradients", "train", "fit"]
