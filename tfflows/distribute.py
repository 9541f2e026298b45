"""Training under `tf.distribute`: strategies, sharded input, data-dependent
init that agrees across replicas, and a fault-tolerant training loop.

TensorFlow only. Four pieces:

- `get_strategy(name)`: `"default"`, `"mirrored"` (all local GPUs),
  `"multiworker"` (`MultiWorkerMirroredStrategy` configured by `TF_CONFIG`)
  or `"tpu"` (`TPUStrategy` from a `TPUClusterResolver`).
- `distribute_dataset(dataset, strategy)`: sets the auto-shard policy to
  `DATA` and splits every global batch across replicas and workers.
- `initialize(model, batch, strategy)`: ActNorm data-dependent init from the
  *global* batch (all replicas' shards gathered), run in cross-replica
  context, then broadcast from replica 0 so every replica on every worker
  holds bit-identical parameters.
- `train(model, dataset, strategy, ...)`: a custom distributed loop
  (`strategy.run` inside `tf.function`, gradients applied with the model's
  Keras optimizer) with Keras callbacks, NaN stop and atomic, resumable
  checkpoints. `FlowModel.fit` delegates here under
  `MultiWorkerMirroredStrategy`, where Keras 3's own `fit` fails with
  `ValueError: Attempt to convert a value (PerReplica...)`
  (keras-team/keras#20585).

Data under a strategy. The dataset yields *global* batches (batch size =
per-replica batch x `strategy.num_replicas_in_sync`). With the `DATA`
auto-shard policy every worker runs the whole input pipeline and keeps its
own slice of each global batch, so a global batch is exactly what a
single-device run would see, whatever the data source. This requires the
pipeline to be deterministic and identically seeded on every worker (e.g.
`shuffle(buffer, seed=...)`); otherwise workers slice different global
batches. For large file-based datasets pass `shard_policy="file"` to have
each worker read its own files instead (then global batches differ from a
single-device run, which is fine for training).

Loss aggregation. Each replica computes the sum of its examples' bits/dim
divided by the global number of examples in the step (all-reduced), so the
summed gradient is the gradient of the global-batch mean: one step on N
replicas equals one step on one device with the same global batch. With
gradient clipping configured on the optimizer (`FlowModel`'s default Adam
clips the global norm at 100), gradients are all-reduced *before* clipping,
so the clip acts on the global gradient as on a single device (Keras' own
`fit` clips each replica's partial gradient).
"""

import os
import shutil
import tempfile
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfflows.models import StopOnNaN

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")
DTYPE_POLICIES = ("float32", "mixed_bfloat16")

_SHARD_POLICIES = {
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}


# -- strategies and dtype ------------------------------------------------------
def get_strategy(name="default", devices=None, tpu=None):
    """Returns the `tf.distribute.Strategy` named `name`.

    Args:
        name: `"default"` (no distribution: the default strategy),
            `"mirrored"` (`MirroredStrategy` over `devices`, by default every
            local GPU, or the CPU when there is none), `"multiworker"`
            (`MultiWorkerMirroredStrategy`; the cluster and this process's
            task come from the `TF_CONFIG` environment variable; without it
            the run is a one-worker cluster) or `"tpu"` (`TPUStrategy`).
        devices: devices for `"mirrored"`, e.g. `["/gpu:0", "/gpu:1"]`.
        tpu: TPU name or address for `"tpu"`; `None` lets
            `TPUClusterResolver` find a TPU VM's local TPU or use the
            `TPU_NAME` environment variable.

    Create the strategy at program start, before any other TensorFlow op
    runs: `MultiWorkerMirroredStrategy` configures collective ops and fails
    once the TensorFlow runtime is initialised.

    Raises:
        ValueError: for an unknown `name`.
        RuntimeError: when no TPU is found for `"tpu"`, or when
            `"multiworker"` is asked for too late in the program.

    >>> strategy = get_strategy("mirrored", devices=["/cpu:0"])
    >>> strategy.num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {list(STRATEGIES)}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as e:
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created at program start, before any "
                f"other TensorFlow op runs (call get_strategy('multiworker') first). {e}"
            ) from e
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"No TPU found for strategy 'tpu' (tpu={tpu!r}): {str(e).rstrip('.')}. Run on a TPU VM, or "
            f"pass the TPU's name or grpc:// address, or set TPU_NAME."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def cpu_bf16_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's bfloat16 matmul instructions (`avx512_bf16`, `amx_bf16`) named
    in `cpuinfo`'s flags; empty when there are none or the file is unreadable
    (not Linux)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return []


def resolve_dtype(name, cpuinfo="/proc/cpuinfo"):
    """`"auto"` -> the dtype policy that trains fastest here; other names pass through.

    `auto` is `"mixed_bfloat16"` on the TensorFlow backend when no GPU is
    visible and the CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX):
    oneDNN then runs the coupling nets' matmuls at about twice the float32
    rate (`benchmarks/matmul_peak.py --dtype bfloat16`). Everywhere else it is
    `"float32"` (a CPU without those instructions emulates bfloat16 and is
    slower; on GPUs, choose mixed precision explicitly).

    Returns:
        `(policy name, reason)`.
    """
    if name != "auto":
        return name, "requested"
    import keras

    if keras.backend.backend() != "tensorflow":
        return "float32", f"auto: the {keras.backend.backend()} backend"
    if tf.config.list_physical_devices("GPU"):
        return "float32", "auto: a GPU is visible"
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return "mixed_bfloat16", f"auto: this CPU has {', '.join(f.upper() for f in flags)}"
    return "float32", "auto: this CPU has no bfloat16 matmul instructions"


def set_dtype_policy(name="float32"):
    """Sets Keras' global dtype policy; call it before building the model.

    `"mixed_bfloat16"` computes activations in bfloat16 while variables stay
    float32. Every flow layer casts its log-det to float32 and the loss is
    taken in float32, so bits/dim are reported in float32. `mixed_float16`
    is refused: float16's range is too small for the log-dets of
    image flows and would need loss scaling.

    Args:
        name: `"float32"` or `"mixed_bfloat16"`.

    Returns:
        The new global `keras.DTypePolicy`.
    """
    if name not in DTYPE_POLICIES:
        raise ValueError(
            f"Unknown dtype policy {name!r}; choose one of {list(DTYPE_POLICIES)} "
            f"(mixed_float16 is not supported: flow log-dets overflow float16)."
        )
    keras.config.set_dtype_policy(name)
    return keras.config.dtype_policy()


def is_chief(strategy=None):
    """True on the worker that writes checkpoints and logs (always, off-cluster).

    The chief is the `"chief"` task if `TF_CONFIG` names one, else worker 0.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if not cluster:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def model_strategy(model):
    """The strategy `model`'s variables were created under (`default` if none)."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy if strategy is not None else tf.distribute.get_strategy()


def is_default_strategy(strategy):
    """True for TensorFlow's default (non-distributing) strategy."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def _is_multiworker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def uses_custom_loop(model):
    """True when `FlowModel.fit` must run `train` instead of Keras' `fit`.

    That is under `MultiWorkerMirroredStrategy`, where Keras 3's `fit` fails
    (keras-team/keras#20585).
    """
    return _is_multiworker(model_strategy(model))


# -- data ----------------------------------------------------------------------
def with_shard_policy(dataset, policy="data"):
    """`dataset` with its auto-shard policy set (`DATA` by default).

    `DATA`: every worker runs the whole pipeline and keeps its own slice of
    each global batch, so workers never train on identical data and global
    batches equal a single-device run's (given a deterministic, identically
    seeded pipeline). `FILE`: each worker reads its own subset of input
    files. Accepts `"data"`, `"file"`, `"auto"`, `"off"` or an
    `AutoShardPolicy`.

    >>> ds = with_shard_policy(tf.data.Dataset.range(8).batch(4))
    >>> ds.options().experimental_distribute.auto_shard_policy.name
    'DATA'
    """
    if isinstance(policy, str):
        if policy not in _SHARD_POLICIES:
            raise ValueError(
                f"Unknown shard_policy {policy!r}; choose one of {sorted(_SHARD_POLICIES)}."
            )
        policy = _SHARD_POLICIES[policy]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def distribute_dataset(dataset, strategy=None, shard_policy="data"):
    """`strategy.experimental_distribute_dataset` with the auto-shard policy set.

    `dataset` yields global batches; each replica receives
    `global_batch / num_replicas_in_sync` examples of every batch.
    """
    strategy = strategy or tf.distribute.get_strategy()
    return strategy.experimental_distribute_dataset(with_shard_policy(dataset, shard_policy))


def _as_dataset(x, batch_size=None, shuffle=True, seed=0):
    if isinstance(x, tf.data.Dataset):
        return x
    if isinstance(x, (np.ndarray, tf.Tensor)) or hasattr(x, "__array__"):
        x = np.asarray(x)
        ds = tf.data.Dataset.from_tensor_slices(x)
        if shuffle:
            # Seeded, so every worker builds the same global batches and a
            # resumed run replays the same order.
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size or 32)
    raise TypeError(
        f"tfflows.distribute.train takes a tf.data.Dataset or an array of images, "
        f"got {type(x).__name__}."
    )


def _features(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


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


def initialize(model, batch, strategy=None):
    """Data-dependent (ActNorm) init that is identical on every replica.

    `batch` is either a distributed batch (as `distribute_dataset` yields):
    its per-replica shards are gathered from every replica and worker into
    the global batch; or a plain array or tensor, taken as the global batch.
    `model.flow.initialize` then runs once per worker in cross-replica
    context (plain variable assignment to the mirrored variables, no
    variable creation in a replica context), and replica 0's values are
    broadcast so all replicas hold bit-identical parameters. With a plain
    batch that differs between workers, the chief's batch wins.

    The result equals `model.initialize(global_batch)` on a single device.

    Returns:
        The global batch's mean bits/dim after initialisation.
    """
    strategy = strategy or model_strategy(model)
    x = _features(batch)
    if isinstance(x, tf.distribute.DistributedValues):
        x = strategy.gather(x, axis=0)
    with strategy.scope():
        x = model._check_data(tf.convert_to_tensor(x))
        z, log_det = model.flow.initialize(x)
        bpd = model._bpd_from_log_prob(model.base.log_prob(z) + log_det)
        bpd = float(tf.reduce_mean(tf.cast(bpd, tf.float32)))
    broadcast_variables(_float_variables(model.flow), strategy)
    return bpd


# -- checkpoints ------------------------------------------------------------------
def _variable_bag(variables):
    """A `tf.train.Checkpoint` of `variables` keyed by position and name."""
    return tf.train.Checkpoint(**{f"v{i:04d}_{v.name}": v for i, v in enumerate(variables)})


class _Checkpointer:
    """Atomic, resumable checkpoints of model, optimizer and loop position.

    One `tf.train.Checkpoint` holds the model, the optimizer (so Adam's
    moments and `iterations` resume exactly) and the loop's step and
    running epoch sums, so weights and position can never disagree. TF
    writes a checkpoint's files first and only then rewrites the small
    `checkpoint` index file, by write-to-temp-and-rename; a crash while
    saving therefore leaves the index pointing at the previous complete
    checkpoint. On restore, a checkpoint that fails to read is skipped for
    the one before it.

    Under multi-worker, every worker saves (variables may need collective
    reads); the chief writes to `directory`, the others to a private
    temporary directory that is deleted at once. All workers restore from
    `directory`, which must be on a filesystem every worker can read.
    """

    def __init__(self, directory, model, strategy, max_to_keep=2):
        self.directory = directory
        self.chief = is_chief(strategy)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_sum")
        self.epoch_count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_count")
        # Variables are listed explicitly, by position: `tf.train.Checkpoint(
        # model=model)` would miss every layer a `FlowSequence` keeps in its
        # Python list (Keras 3's tracked lists are invisible to TF's object
        # graph), ActNorm's `initialized` flags included.
        self.checkpoint = tf.train.Checkpoint(
            model=_variable_bag(model.weights), optimizer=_variable_bag(model.optimizer.variables),
            step=self.step, epoch_sum=self.epoch_sum, epoch_count=self.epoch_count,
        )
        self.max_to_keep = max_to_keep
        if self.chief:
            self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    def restore(self):
        """Loads the newest readable checkpoint; returns its path, or None if none.

        Raises:
            ValueError: when checkpoints exist but none can be read (e.g.
                they belong to another architecture): they are not
                overwritten by a fresh start.
        """
        state = tf.train.get_checkpoint_state(self.directory)
        paths = list(state.all_model_checkpoint_paths) if state else []
        if state and state.model_checkpoint_path and state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
        errors = []
        for path in reversed(paths):
            try:
                self.checkpoint.read(path).assert_existing_objects_matched()
            except Exception as e:  # noqa: BLE001 - TF raises many kinds on damaged files
                errors.append(f"{path}: {type(e).__name__}: {e}")
                warnings.warn(f"Skipping unreadable checkpoint {path}: {type(e).__name__}: {e}")
                continue
            return path
        if errors:
            raise ValueError(
                f"No checkpoint in {self.directory} could be restored into this model and "
                f"optimizer (a different architecture?); move them away to start afresh. "
                f"Errors: {'; '.join(errors)}"
            )
        return None

    def save(self, step, epoch_sum, epoch_count):
        self.step.assign(step)
        self.epoch_sum.assign(epoch_sum)
        self.epoch_count.assign(epoch_count)
        if self.chief:
            return self.manager.save(checkpoint_number=step)
        tmp = tempfile.mkdtemp(prefix="tfflows-worker-ckpt-")
        try:
            tf.train.CheckpointManager(self.checkpoint, tmp, max_to_keep=1).save(checkpoint_number=step)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None


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
        if getattr(opt, "_distribution_strategy", strategy) is not strategy:
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
        x = _features(batch)
        ctx = tf.distribute.get_replica_context()
        n_local = tf.cast(tf.shape(x)[0], tf.float32)
        n_global = ctx.all_reduce(tf.distribute.ReduceOp.SUM, n_local)
        with tf.GradientTape() as tape:
            bpd = tf.cast(model(x, training=True), tf.float32)
            total = tf.reduce_sum(bpd)
            loss = opt.scale_loss(total / n_global)
        grads = tape.gradient(loss, variables)
        if clip_globally:
            # Clip the *global* gradient, as on one device: all-reduce first,
            # clip, then hand the optimizer replica 0's copy (others zeros),
            # so its own sum all-reduce reproduces it exactly and its own
            # clipping is a no-op.
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads = opt._clip_gradients(grads)
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
        x = _features(batch)
        bpd = tf.cast(model(x, training=False), tf.float32)
        return tf.reduce_sum(bpd), tf.cast(tf.shape(x)[0], tf.float32)

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
          batch_size=None):
    """Trains a `FlowModel` with a custom distributed loop; Keras-style callbacks.

    Works under every strategy (default, `MirroredStrategy`,
    `MultiWorkerMirroredStrategy`, `TPUStrategy`): each step runs
    `strategy.run` inside a `tf.function`, takes the global-batch mean of
    bits/dim (see the module docstring) and applies the gradients with the
    model's Keras optimizer. Every worker runs the same program with the same
    arguments; `FlowModel.fit` calls this under multi-worker.

    Build and compile the model inside `with strategy.scope():`.

    Data. `dataset` yields global batches (images, or `(images, ...)`
    tuples); it is repeated, so training is `epochs * steps_per_epoch`
    steps (`steps_per_epoch` defaults to the dataset's length) drawn from
    one continuous, deterministic stream. Arrays are batched
    (`batch_size`, default 32) and shuffled with a fixed seed.

    Resuming. With `checkpoint_dir`, the model, optimizer and loop position
    are checkpointed atomically every `save_freq` (`"epoch"` or a number of
    steps) and at the end. A restarted run (same arguments) restores the
    newest complete checkpoint, skips the batches already trained on and
    continues mid-epoch if need be: the finished run has exactly
    `epochs * steps_per_epoch` optimizer steps, none lost or repeated. Under
    multi-worker a crashed worker stops the whole cluster (collectives
    cannot continue without it): restart every worker. A Keras
    `BackupAndRestore` callback is taken as `checkpoint_dir=backup_dir`.

    ActNorm init runs on the first global batch (`initialize`) unless the
    model is already initialised or a checkpoint is restored.

    Args:
        model: a `FlowModel` built under `strategy.scope()`.
        dataset: a `tf.data.Dataset` of global batches, or an image array.
        strategy: defaults to the strategy the model was built under.
        epochs: number of epochs.
        steps_per_epoch: steps per epoch; needed for infinite datasets.
        callbacks: Keras callbacks; they see `loss` and `bpd` (global means)
            per batch and per epoch, plus `val_loss`/`val_bpd`.
        checkpoint_dir: where to keep resumable checkpoints; `None` for none.
        save_freq: `"epoch"` or an integer number of steps.
        save_seconds: also save when this many seconds have passed since
            the last save (for wall-clock budgets; decided jointly by all
            workers).
        max_to_keep: checkpoints kept (older ones are deleted).
        validation_data: a dataset of global batches evaluated each epoch.
        validation_steps: batches of `validation_data` per evaluation.
        verbose: 0, 1 (progress bar), 2 (one line per epoch) or `"auto"`
            (1 on the chief, 0 on other workers).
        stop_on_nan: add `StopOnNaN` (a diverged run raises
            `TrainingDivergedError`; no NaN checkpoint is written).
        shard_policy: auto-shard policy for the input (`"data"`; see
            `with_shard_policy`).
        batch_size: batch size when `dataset` is an array.

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
    checkpointer = None
    if checkpoint_dir is not None:
        checkpointer = _Checkpointer(checkpoint_dir, model, strategy, max_to_keep)
        if checkpointer.restore() is not None:
            start = int(checkpointer.step.numpy())
            epoch_sum = float(checkpointer.epoch_sum.numpy())
            epoch_count = float(checkpointer.epoch_count.numpy())
    if start > total_steps:
        raise ValueError(
            f"The checkpoint in {checkpoint_dir} is at step {start}, past this run's "
            f"{total_steps} steps ({epochs} epochs x {steps_per_epoch})."
        )

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
            batch_logs = {"loss": total / n, "bpd": total / n}
            cb.on_train_batch_end(in_epoch, batch_logs)
            step, in_epoch = step + 1, in_epoch + 1
            epoch_done = in_epoch == steps_per_epoch
            if epoch_done:
                mean = epoch_sum / max(epoch_count, 1.0)
                logs = {"loss": mean, "bpd": mean}
                if validation_data is not None:
                    val = _evaluate(eval_step, validation_data, strategy, validation_steps, shard_policy)
                    logs.update(val_loss=val, val_bpd=val)
                cb.on_epoch_end(epoch, logs)
                epoch_sum = epoch_count = 0.0
            due = save_seconds is not None and time.monotonic() - last_save >= save_seconds
            if sync_flags is not None:
                # Every worker must stop (and save) at the same step, or the
                # others would wait forever in the next collective.
                model.stop_training, due = sync_flags(model.stop_training, due)
            if checkpointer is not None and (
                step == total_steps or model.stop_training or due
                or (epoch_done if save_freq == "epoch" else step % save_freq == 0)
            ):
                checkpointer.save(step, epoch_sum, epoch_count)
                last_save = time.monotonic()
            if model.stop_training:
                break
    cb.on_train_end(logs)
    return history


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_split=0.0, validation_data=None, shuffle=True, *, initial_epoch=0,
        steps_per_epoch=None, validation_steps=None, stop_on_nan=True, **kwargs):
    """`FlowModel.fit`'s path under multi-worker: Keras `fit` arguments to `train`.

    Supports `x` (dataset or array), `batch_size`, `epochs`, `verbose`,
    `callbacks` (a Keras `BackupAndRestore` becomes resumable
    checkpointing), `validation_data`, `steps_per_epoch`,
    `validation_steps`. `y` must be `None` (flows are unsupervised) and
    `initial_epoch` 0 (resume with `BackupAndRestore` instead).
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
    if isinstance(validation_data, tuple):
        validation_data = validation_data[0]
    if not isinstance(x, tf.data.Dataset):
        x = _as_dataset(x, batch_size, shuffle=shuffle)
    return train(model, x, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                 validation_data=validation_data, validation_steps=validation_steps,
                 verbose=verbose, stop_on_nan=stop_on_nan, batch_size=batch_size)


__all__ = [
    "STRATEGIES", "DTYPE_POLICIES", "get_strategy", "set_dtype_policy", "resolve_dtype", "cpu_bf16_flags",
    "is_chief",
    "model_strategy", "is_default_strategy", "uses_custom_loop", "with_shard_policy", "distribute_dataset",
    "broadcast_variables", "initialize", "train", "fit",
]
