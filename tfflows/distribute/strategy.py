"""Strategies, dtype policy and sharded input for `tf.distribute` (TensorFlow only).

- `get_strategy(name)`: `"default"`, `"mirrored"` (all local GPUs),
  `"multiworker"` (`MultiWorkerMirroredStrategy` configured by `TF_CONFIG`)
  or `"tpu"` (`TPUStrategy` from a `TPUClusterResolver`).
- `resolve_dtype`, `set_dtype_policy`, `cpu_bf16_flags`: the Keras dtype
  policy, `"auto"` picking mixed bfloat16 on CPUs that multiply bfloat16 in
  hardware.
- `is_chief`, `model_strategy`, `is_default_strategy`, `uses_custom_loop`:
  what a trainer asks about the strategy a model lives in.
- `with_shard_policy`, `distribute_dataset`: the auto-shard policy (`DATA`
  by default) and the split of every global batch across replicas and
  workers (see `tfflows.distribute` on data under a strategy).
"""

import keras
import tensorflow as tf

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
    float32. The data and the flow's own arithmetic stay float32 (a
    `FlowModel` computes in float32 and flow layers return log-dets in their
    input's dtype); only the conditioner nets run in bfloat16, and the loss
    is taken in float32, so bits/dim are reported in float32. `mixed_float16`
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


__all__ = [
    "STRATEGIES", "DTYPE_POLICIES", "get_strategy", "cpu_bf16_flags", "resolve_dtype", "set_dtype_policy",
    "is_chief", "model_strategy", "is_default_strategy", "uses_custom_loop", "with_shard_policy",
    "distribute_dataset",
]
