"""`FlowModel`: a `keras.Model` that trains a flow by maximum likelihood.

Backend-agnostic (keras + keras.ops only): `fit` runs Keras' own train step
on the TensorFlow and JAX backends; the loss is the per-example bits/dim.
"""

import math

import keras
import numpy as np
from keras import ops

from tfflows import distributions
from tfflows.layers.base import FlowLayer, FlowSequence


class TrainingDivergedError(RuntimeError):
    """Raised when a training loss becomes NaN or infinite."""


class StopOnNaN(keras.callbacks.Callback):
    """Stops training with `TrainingDivergedError` at the first non-finite loss.

    On by default in `FlowModel.fit` (`stop_on_nan=True`). The message names
    the epoch and step, so a diverged run fails loudly instead of training on
    NaN for hours. Checkpoints written before that step are left untouched.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise TrainingDivergedError(
                f"Training diverged: loss became {float(loss)} at epoch {self._epoch + 1}, "
                f"step {batch + 1}. Lower the learning rate (or add warm-up / gradient "
                f"clipping) and resume from the last checkpoint."
            )


def default_optimizer(learning_rate=1e-3, clipnorm=100.0, dims=None, epsilon=1e-8, ema_momentum=None):
    """Adam with global-norm gradient clipping: the tfflows training default.

    `FlowModel` minimises bits/dim, `NLL / (dims * ln 2)` plus a constant, so
    its gradients are `dims * ln 2` times smaller than those of the per-example
    NLL that PyTorch and TFP users minimise (543x for MNIST). Adam is blind to
    that factor except through `epsilon`. Given `dims`, `epsilon` is read on
    the NLL scale and converted, `epsilon / (dims * ln 2)`, so this optimizer
    takes the same steps as `torch.optim.Adam(eps=epsilon)` on the NLL. Without
    `dims`, `epsilon` is used as is. `FlowModel.compile()` passes its `dims`.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules` schedule.
        clipnorm: global-norm gradient clipping threshold (`None`: no clipping).
        dims: data dimensions per example (`FlowModel.dims`), or `None`.
        epsilon: Adam's epsilon on the NLL scale (with `dims`) or as is.
        ema_momentum: keep an exponential moving average (Polyak averaging)
            of the weights with this momentum, e.g. 0.999 (Keras'
            `use_ema`). `fit` writes the average into the model when it
            ends; `tfflows.training.ema_weights` swaps it in meanwhile.
            `None` (the default): no average.
    """
    if dims is not None:
        epsilon = epsilon / (int(dims) * math.log(2.0))
    ema = {} if ema_momentum is None else dict(use_ema=True, ema_momentum=float(ema_momentum))
    return keras.optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clipnorm, epsilon=epsilon, **ema)


@keras.saving.register_keras_serializable(package="tfflows")
class FlowModel(keras.Model):
    """A normalizing flow as a Keras model.

    `log p(x) = log p_base(f(x)) + log|det df/dx|`, with `f = flow.forward`
    mapping data to latent. Data is continuous in `[0, 1)` (dequantized), so
    bits/dim for `n_bits`-bit data is
    `bpd = (-log p(x) + D * n_bits * ln 2) / (D * ln 2)`, counting every
    preprocessing log-det (the preprocessing layers are part of `flow`).

    `fit` minimises mean bits/dim; the reported `loss` and the `bpd` metric
    are both bits/dim. Data-dependent initialisation (ActNorm) runs on the
    first `fit` batch unless `initialize(batch)` was called before.

    Args:
        flow: a `FlowLayer` (usually a `FlowSequence`) or a list of them.
        base: `"normal"`, `"logistic"` or a distribution layer.
            Defaults to `"normal"`.
        data_shape: event shape of the data, e.g. `(28, 28, 1)`.
        n_bits: bits per dimension of the discrete data. Defaults to 8.

    >>> import numpy as np, tfflows
    >>> from tfflows.layers import AffineCoupling, FlowSequence
    >>> model = tfflows.FlowModel(FlowSequence([AffineCoupling(hidden=8)]), data_shape=(4,))
    >>> tuple(model.log_prob(np.random.rand(3, 4).astype("float32")).shape)
    (3,)
    """

    def __init__(self, flow, base="normal", data_shape=None, n_bits=8, **kwargs):
        # The flow's own arithmetic, log-dets and the loss stay float32 under a
        # mixed-precision global policy; only the coupling nets (plain Keras
        # layers called inside) compute in bfloat16/float16.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(flow, (list, tuple)):
            flow = FlowSequence(list(flow))
        if isinstance(flow, dict):
            flow = keras.saving.deserialize_keras_object(flow)
        if not isinstance(flow, FlowLayer):
            raise TypeError(f"FlowModel flow must be a FlowLayer, got {type(flow).__name__}.")
        if data_shape is None:
            raise ValueError("FlowModel needs data_shape, the event shape of the data, e.g. (28, 28, 1).")
        if not 1 <= int(n_bits) <= 16:
            raise ValueError(f"FlowModel n_bits must be in 1..16. Received: n_bits={n_bits}")
        self.flow = flow
        self.base = distributions.get(base)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.n_bits = int(n_bits)
        self.dims = int(np.prod(self.data_shape))
        self.bpd_tracker = keras.metrics.Mean(name="bpd")
        self.build((None,) + self.data_shape)

    # -- building -------------------------------------------------------------
    def build(self, input_shape=None):
        if not self.flow.built:
            self.flow.build((None,) + self.data_shape)
        self.latent_shape = tuple(self.flow.compute_output_shape((None,) + self.data_shape)[1:])
        self.built = True

    # -- density ---------------------------------------------------------------
    def _check_data(self, x):
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "float" not in dtype:
            raise TypeError(
                f"FlowModel expects float data in [0, 1) (dequantized), got dtype {dtype}. "
                f"Use tfflows.zoo.data to dequantize uint8 images."
            )
        if dtype != "float32":  # float64 numpy (or half precision) in, like keras.Model
            x = x.astype("float32") if isinstance(x, np.ndarray) else keras.ops.cast(x, "float32")
        if isinstance(x, np.ndarray) and not np.all(np.isfinite(x)):
            raise ValueError(f"FlowModel got {int(np.size(x) - np.count_nonzero(np.isfinite(x)))} "
                             f"NaN or infinite value(s) in its input.")
        if len(x.shape) >= 1 and x.shape[0] == 0:
            raise ValueError(f"FlowModel got an empty batch (shape {tuple(x.shape)}).")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"FlowModel expects data of shape (batch, {', '.join(map(str, self.data_shape))}), "
                f"got {tuple(x.shape)}."
            )
        return x

    def log_prob(self, x, training=False):
        """`log p(x)` in nats per example, `(batch,)`, density on `[0, 1)^D`."""
        x = self._check_data(x)
        z, log_det = self.flow.forward(x, training=training)
        return self.base.log_prob(z) + log_det

    def bits_per_dim(self, x, training=False):
        """Bits per dimension of `n_bits`-bit data per example, `(batch,)`."""
        return self._bpd_from_log_prob(self.log_prob(x, training=training))

    def _bpd_from_log_prob(self, log_p):
        return (-log_p + self.dims * self.n_bits * math.log(2.0)) / (self.dims * math.log(2.0))

    def encode(self, x):
        """Data -> latent `z` (flat `(batch, D)` for multi-scale flows)."""
        return self.flow.forward(self._check_data(x))[0]

    def decode(self, z):
        """Latent -> data (not clipped; images lie in about [0, 1))."""
        return self.flow.inverse(z)[0]

    def sample(self, n, temperature=1.0, seed=None):
        """Draws `n` samples at `temperature` (scalar or per row), in data space.

        Temperature scales the base distribution's spread (Glow), including
        the factored-out latents of every level; 0 gives the mode. Like
        `decode`, the result is not clipped: with logit preprocessing values
        reach `-alpha / (1 - 2 alpha)` below 0 and as far above 1; clip to
        `[0, 1]` for display (`tfflows sample` does).
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"sample needs n >= 1. Received: n={n}")
        z = self.base.sample((n,) + self.latent_shape, temperature=temperature, seed=seed)
        return self.make_decode_function()(z)

    def make_decode_function(self, force=False):
        """A compiled `z -> x` (`decode` under `tf.function` or `jax.jit`).

        Like Keras' `make_predict_function`: built once and cached; `sample`
        uses it. It reads the model's current variables on every call, so it
        stays valid while training. On other backends it is `decode` itself.
        """
        return self._compiled("_decode_fn", self.decode, force)

    def make_bits_per_dim_function(self, force=False):
        """A compiled `x -> bits/dim per example` (`bits_per_dim` under
        `tf.function` or `jax.jit`), built once and cached like
        `make_decode_function`; `tfflows.training.evaluate_bpd` uses it. It
        skips `bits_per_dim`'s NaN/Inf check on its input (a traced value
        cannot be checked in Python): check numpy input first, as
        `evaluate_bpd` does."""
        return self._compiled("_bpd_fn", self.bits_per_dim, force)

    def _compiled(self, attr, method, force):
        cached = getattr(self, attr, None)
        if cached is not None and not force:
            return cached.fn
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf  # TF-only; lazy so models.py stays backend-agnostic

            fn = tf.function(method, reduce_retracing=True)
        elif backend == "jax":
            import jax

            variables = list(self.variables)

            def pure(values, x):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return method(x)

            jitted = jax.jit(pure)

            def fn(x):
                return jitted([v.value for v in variables], x)
        else:
            fn = method
        # A plain holder, so the function is not tracked (and not saved) as
        # part of the model.
        setattr(self, attr, _Compiled(fn))
        return fn

    # -- Keras training ---------------------------------------------------------
    def call(self, x, training=False):
        return self.bits_per_dim(x, training=training)

    def compile(self, optimizer=None, **kwargs):
        """Like `keras.Model.compile`; the optimizer defaults to `default_optimizer(dims=self.dims)`.

        The loss is bits/dim, whose gradients are `dims * ln 2` times smaller
        than the per-example NLL's: a user-supplied Adam's `epsilon` acts on
        that scale (see `default_optimizer`).
        """
        if optimizer is None:
            optimizer = default_optimizer(dims=self.dims)
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = ops.mean(ops.cast(y_pred, "float32"))
        if keras.backend.backend() == "tensorflow":
            # Under tf.distribute each replica sees 1/N of the global batch and
            # Keras sums the replicas' gradients (and multiplies the tracked
            # loss back by N), so the per-replica mean must be divided by N.
            import tensorflow as tf

            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                loss = loss / replicas
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.bpd_tracker.update_state(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    @property
    def needs_initialization(self):
        """True while some layer still waits for data-dependent init."""
        return any(
            hasattr(w, "path") and w.path.endswith("initialized") and float(ops.convert_to_numpy(w.value)) == 0.0
            for w in self.flow.non_trainable_weights
        )

    def initialize(self, batch):
        """Data-dependent initialisation (ActNorm) from a batch of data.

        Accepts an array, or an `(x, ...)` tuple as datasets yield. Runs each
        layer's init in order so every ActNorm sees the activations that
        reach it. Returns the batch's mean bits/dim after initialisation.
        """
        if keras.backend.backend() == "tensorflow":
            from tfflows import distribute  # TF-only; lazy so models.py stays backend-agnostic

            if not distribute.is_default_strategy(distribute.model_strategy(self)):
                # Under tf.distribute: global-batch init, identical on every replica.
                return distribute.initialize(self, batch)
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = self._check_data(x)
        z, log_det = self.flow.initialize(x)
        return float(ops.convert_to_numpy(ops.mean(self._bpd_from_log_prob(self.base.log_prob(z) + log_det))))

    def fit(self, x=None, y=None, *args, stop_on_nan=True, callbacks=None, **kwargs):
        """`keras.Model.fit`, plus ActNorm init on the first batch and NaN stop.

        Under `tf.distribute.MultiWorkerMirroredStrategy`, where Keras 3's own
        `fit` fails (keras-team/keras#20585), this runs
        `tfflows.distribute.fit` instead: a custom distributed loop taking
        the same arguments and callbacks.
        """
        if keras.backend.backend() == "tensorflow":
            from tfflows import distribute  # TF-only; lazy so models.py stays backend-agnostic

            if distribute.uses_custom_loop(self):
                return distribute.fit(self, x, y, *args, stop_on_nan=stop_on_nan,
                                      callbacks=callbacks, **kwargs)
            if getattr(self, "optimizer", None) is None:  # optimizer variables: mirrored too
                with distribute.model_strategy(self).scope():
                    self.compile()
        if self.needs_initialization:
            self.initialize(_first_batch(x, kwargs.get("batch_size")))
        if hasattr(x, "element_spec"):  # tf.data: already shuffled by its pipeline
            kwargs.setdefault("shuffle", False)
        callbacks = list(callbacks or [])
        if stop_on_nan and not any(isinstance(c, StopOnNaN) for c in callbacks):
            callbacks.append(StopOnNaN())
        if getattr(self, "optimizer", None) is None:
            self.compile()
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            flow=keras.saving.serialize_keras_object(self.flow),
            base=keras.saving.serialize_keras_object(self.base),
            data_shape=list(self.data_shape),
            n_bits=self.n_bits,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["flow"] = keras.saving.deserialize_keras_object(config["flow"])
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)


class _Compiled:
    """Holds a compiled function outside Keras/TF attribute tracking."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn


def _first_batch(x, batch_size=None):
    """The first batch of a dataset, iterator, PyDataset or array."""
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not hasattr(x, "__iter__"):
        return np.asarray(x[: batch_size or 32])
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x[: batch_size or 32]
    if isinstance(x, keras.utils.PyDataset):
        return x[0]
    return next(iter(x))
