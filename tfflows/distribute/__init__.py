"""Training under `tf.distribute`: strategies, sharded input, data-dependent
init that agrees across replicas, and a fault-tolerant training loop.

TensorFlow only. Two modules:

- `tfflows.distribute.strategy`: `get_strategy(name)` (`"default"`,
  `"mirrored"`, `"multiworker"`, `"tpu"`), the dtype policy
  (`resolve_dtype`, `set_dtype_policy`, `cpu_bf16_flags`), `is_chief`,
  `model_strategy`, `uses_custom_loop`, and sharded input
  (`with_shard_policy`, `distribute_dataset`).
- `tfflows.distribute.loop`: `initialize(model, batch, strategy)` (ActNorm
  init from the gathered global batch, broadcast from replica 0),
  `train(model, dataset, strategy, ...)` (a custom distributed loop with
  Keras callbacks, NaN stop and resumable checkpoints in
  `tfflows.checkpoint`'s format) and `fit` (`FlowModel.fit`'s path under
  `MultiWorkerMirroredStrategy`, where Keras 3's own `fit` fails:
  keras-team/keras#20585). Importing it registers `FlowModel`'s strategy
  hooks (`tfflows.models.set_strategy_hooks`); this package imports it.

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

Loss aggregation and gradient clipping: see `tfflows.distribute.loop`.
"""

from tfflows.distribute import loop, strategy
from tfflows.distribute.loop import broadcast_variables, clip_gradients, fit, initialize, train
from tfflows.distribute.strategy import (
    DTYPE_POLICIES,
    STRATEGIES,
    cpu_bf16_flags,
    distribute_dataset,
    get_strategy,
    is_chief,
    is_default_strategy,
    model_strategy,
    resolve_dtype,
    set_dtype_policy,
    uses_custom_loop,
    with_shard_policy,
)

__all__ = [
    "STRATEGIES", "DTYPE_POLICIES", "get_strategy", "set_dtype_policy", "resolve_dtype", "cpu_bf16_flags",
    "is_chief",
    "model_strategy", "is_default_strategy", "uses_custom_loop", "with_shard_policy", "distribute_dataset",
    "broadcast_variables", "initialize", "clip_gradients", "train", "fit",
]
