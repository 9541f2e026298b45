"""`FlowModel`: a `keras.Model` that trains a flow by maximum likelihood.

Backend-agnostic (keras + keras.ops only): `fit` runs Keras' own train step
on the TensorFlow and JAX backends. For images (`n_bits` set) the loss is
the per-example bits/dim; for continuous data (`n_bits=None`) it is the
negative log-likelihood in nats per example.
"""

import math
import numbers
import time

import keras
import numpy as np
from keras import ops

from tfflows import distributions, optimizers
from tfflows.layers.base import FlowLayer, FlowSequence, concrete_value, event_size


class TrainingDivergedError(RuntimeError):
    """Raised when a training loss becomes NaN or infinite."""


class StopOnNaN(keras.callbacks.Callback):
    """Stops training with `TrainingDivergedError` at the first non-finite loss.

    On by default in `FlowModel.fit` (`stop_on_nan=True`). It keeps a copy of
    the model's and the optimizer's variables, taken when training starts and
    then after a batch with a finite loss once `snapshot_seconds` have passed
    since the last copy (so the copies cost well under 1 % of training). When
    a batch's loss is NaN or infinite it puts the last copy back, so the
    model is left with finite weights from before the divergence, not full of
    NaN, and the message names the step they are from. Checkpoints written
    before that step are left untouched.

    Args:
        restore: put the last finite weights back. Defaults to `True`.
        snapshot_seconds: the most training time a restore can lose.
            Defaults to 10; 0 copies after every batch.
    """

    def __init__(self, restore=True, snapshot_seconds=10.0):
        super().__init__()
        self._epoch = 0
        self.restore = bool(restore)
        self.snapshot_seconds = float(snapshot_seconds)
        self._snapshot = None
        self._snapshot_time = 0.0
        self.restored_step = None  # the optimizer step of the weights put back, after a divergence

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _variables(self):
        variables = list(self.model.weights)
        opt = getattr(self.model, "optimizer", None)
        if opt is not None:
            variables += list(opt.variables)
        return variables

    def _take_snapshot(self):
        # Copies of the values (on TensorFlow, convert_to_tensor would hand
        # back the variable itself).
        self._snapshot = [(v, ops.copy(v.value)) for v in self._variables()]
        opt = getattr(self.model, "optimizer", None)
        self._snapshot_step = int(ops.convert_to_numpy(opt.iterations)) if opt is not None else None
        self._snapshot_time = time.monotonic()

    def on_train_begin(self, logs=None):
        if self.restore:
            self._take_snapshot()

    def _restore_snapshot(self):
        """Puts the last finite snapshot back (if `restore` and one was taken); True when it did."""
        if not self.restore or self._snapshot is None:
            return False
        for v, value in self._snapshot:
            v.assign(value)
        self.restored_step = self._snapshot_step
        return True

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            if self.restore and time.monotonic() - self._snapshot_time >= self.snapshot_seconds:
                self._take_snapshot()
            return
        self.model.stop_training = True
        restored = ""
        if self._restore_snapshot():
            restored = (f" The model's and the optimizer's weights were restored to their last finite values "
                        f"(a copy from optimizer step {self._snapshot_step}, before the divergence).")
        raise TrainingDivergedError(
            f"Training diverged: loss became {float(loss)} at epoch {self._epoch + 1}, "
            f"step {batch + 1}.{restored} Lower the learning rate (or add warm-up / gradient "
            f"clipping) and resume from the last checkpoint."
        )


def default_optimizer(learning_rate=1e-3, clipnorm=100.0, dims=None, epsilon=1e-8, ema_momentum=None):
    """Adam with global-norm gradient clipping: the tfflows training default.

    The Adam is `tfflows.optimizers.Adam`: Keras' Adam with one fused update
    op per variable on TensorFlow (a first training step about half as long).

    `FlowModel` minimises bits/dim, `NLL / (dims * ln 2)` plus a constant, so
    its gradients are `dims * ln 2` times smaller than those of the per-example
    NLL that PyTorch and TFP users minimise (543x for MNIST). Adam is blind to
    that factor except through `epsilon`. Given `dims`, `epsilon` is read on
    the NLL scale and converted, `epsilon / (dims * ln 2)`, so this optimizer
    takes the same steps as `torch.optim.Adam(eps=epsilon)` on the NLL. Without
    `dims` (and for continuous data, whose loss is the NLL), `epsilon` is used
    as is. `FlowModel.compile()` passes its `dims` for image models.

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
    return optimizers.Adam(learning_rate=learning_rate, global_clipnorm=clipnorm, epsilon=epsilon, **ema)


# `tfflows.distribute` (TensorFlow only) plugs itself in here when it is
# imported (`tfflows/__init__.py` imports it on the TensorFlow backend), so
# this module never imports the layer above it.
_STRATEGY_HOOKS = {}


def set_strategy_hooks(hooks):
    """Registers what `FlowModel` asks about `tf.distribute` strategies.

    `hooks` has `is_distributed(model) -> bool`, `initialize(model, batch)
    -> float` (data-dependent init identical on every replica),
    `uses_custom_loop(model) -> bool`, `fit(model, x, y, *args, **kwargs)`
    (the custom distributed loop) and `scope(model)` (the strategy scope the
    model's variables live in). `tfflows.distribute` registers its own;
    `None` unregisters.
    """
    if hooks is None:
        _STRATEGY_HOOKS.pop("hooks", None)
    else:
        _STRATEGY_HOOKS["hooks"] = hooks


def bits_per_dim(log_prob, dims, n_bits):
    """Bits per dimension of `n_bits`-bit data from `log p(x)` (nats) of the
    density on `[0, 1)^dims`: `(-log p + dims * n_bits * ln 2) / (dims * ln 2)`.

    The one place tfflows writes this formula (`FlowModel`, `tfflows.export`).
    """
    return (-log_prob + dims * n_bits * math.log(2.0)) / (dims * math.log(2.0))


def _non_finite_rows(values):
    """Indices of the rows of numpy `values` that hold a NaN or an Inf."""
    flat = np.reshape(values, (values.shape[0], -1))
    return np.flatnonzero(~np.all(np.isfinite(flat), axis=1))


def _rows_str(rows, limit=8):
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return f"[{shown}{', ...' if len(rows) > limit else ''}]"


def _int_arg(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer. Received: {name}={value!r} of type {type(value).__name__}")
    return int(value)


@keras.saving.register_keras_serializable(package="tfflows")
class FlowModel(keras.Model):
    """A normalizing flow as a Keras model.

    `log p(x | c) = log p_base(f(x; c) | c) + log|det df/dx|`, with
    `f = flow.forward` mapping data to latent and `c` an optional context.

    Images (`n_bits` set): data is continuous in `[0, 1)` (dequantized), and
    bits/dim for `n_bits`-bit data is
    `bpd = (-log p(x) + D * n_bits * ln 2) / (D * ln 2)`, counting every
    preprocessing log-det (the preprocessing layers are part of `flow`);
    `fit` minimises mean bits/dim, and the `loss` and the `bpd` metric are
    both bits/dim. Continuous data (`n_bits=None`): the loss and the `nll`
    metric are the negative log-likelihood in nats per example.

    `fit` takes batches of `x`, or `(x, context)` for a conditional model
    (`context_shape` set). Data-dependent initialisation (ActNorm) runs on
    the first `fit` batch unless `initialize(batch)` was called before.

    Args:
        flow: a `FlowLayer` (usually a `FlowSequence`) or a list of them.
        base: `"normal"`, `"logistic"` or a `tfflows.distributions.Distribution`.
            Defaults to `"normal"`.
        data_shape: event shape of the data, e.g. `(28, 28, 1)` or `(2,)`.
        n_bits: bits per dimension of discrete data (images), or `None` for
            continuous data. Defaults to 8.
        context_shape: event shape of the context, or `None` (unconditional).
        num_classes: for a class-conditional model: the context is then an
            integer class label per example, `(batch,)` in
            `[0, num_classes)`, one-hot encoded inside the model (a float
            `(batch, num_classes)` row, one-hot or mixed, is taken as is).
            Sets `context_shape=(num_classes,)`.

    >>> import numpy as np, tfflows
    >>> from tfflows.layers import AffineCoupling, FlowSequence
    >>> model = tfflows.FlowModel(FlowSequence([AffineCoupling(hidden=8)]), data_shape=(4,))
    >>> tuple(model.log_prob(np.random.rand(3, 4).astype("float32")).shape)
    (3,)
    """

    def __init__(self, flow, base="normal", data_shape=None, n_bits=8, context_shape=None, num_classes=None,
                 dequantizer=None, **kwargs):
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
        if n_bits is not None and not 1 <= int(n_bits) <= 16:
            raise ValueError(f"FlowModel n_bits must be in 1..16, or None for continuous data. "
                             f"Received: n_bits={n_bits}")
        self.flow = flow
        self.base = distributions.get(base)
        self.data_shape = tuple(int(d) for d in data_shape)
        self.n_bits = None if n_bits is None else int(n_bits)
        if num_classes is not None:
            if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
                raise ValueError(f"FlowModel num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
            num_classes = int(num_classes)
            if context_shape is not None and tuple(context_shape) != (num_classes,):
                raise ValueError(f"FlowModel num_classes={num_classes} means context_shape=({num_classes},); "
                                 f"got context_shape={tuple(context_shape)}.")
            context_shape = (num_classes,)
        self.num_classes = num_classes
        self.context_shape = None if context_shape is None else tuple(int(d) for d in context_shape)
        self.dims = event_size((None,) + self.data_shape)
        if isinstance(dequantizer, dict):
            dequantizer = keras.saving.deserialize_keras_object(dequantizer)
        if dequantizer is not None:
            from tfflows.layers.dequantize import VariationalDequantizer

            if not isinstance(dequantizer, VariationalDequantizer):
                raise TypeError(f"FlowModel dequantizer must be a tfflows.layers.VariationalDequantizer; "
                                f"got {type(dequantizer).__name__}.")
            if self.n_bits is None or (dequantizer.data_shape, dequantizer.n_bits) != (self.data_shape, self.n_bits):
                raise ValueError(f"FlowModel's dequantizer models {dequantizer.n_bits}-bit images of shape "
                                 f"{dequantizer.data_shape}; the model has data_shape={self.data_shape}, "
                                 f"n_bits={self.n_bits}.")
        self.dequantizer = dequantizer
        self.loss_tracker = keras.metrics.Mean(name="bpd" if self.n_bits is not None else "nll")
        self.build((None,) + self.data_shape)

    # -- building -------------------------------------------------------------
    def build(self, input_shape=None):
        if not self.flow.built:
            self.flow.build((None,) + self.data_shape)
        self.latent_shape = tuple(self.flow.compute_output_shape((None,) + self.data_shape)[1:])
        if not self.base.built:
            self.base.build((None,) + self.latent_shape)
        if self.dequantizer is not None and not self.dequantizer.built:
            self.dequantizer.build((None,) + self.data_shape)
        self.built = True

    def latent_layout(self):
        """The parts of the flat latent (see `FlowSequence.latent_layout`)."""
        if isinstance(self.flow, FlowSequence):
            return self.flow.latent_layout()
        size = event_size((None,) + self.latent_shape)
        return [dict(name="latent", shape=list(self.latent_shape), offset=0, size=size)]

    # -- input checks -----------------------------------------------------------
    def check_data(self, x, what="data", unit_interval=False):
        """Checks a batch of data and returns it in the model's dtype.

        Raises `TypeError` for non-float data and `ValueError` naming the
        problem for a wrong shape, an empty batch, NaN/Inf values, or, with
        `unit_interval` (bits/dim of an image model), values outside
        `[0, 1]`. Value checks run where the values are known (numpy or
        eager tensors), not while tracing.
        """
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "float" not in dtype:
            if self.n_bits is None:
                raise TypeError(f"FlowModel expects float {what}, got dtype {dtype}.")
            raise TypeError(f"FlowModel expects float {what} in [0, 1) (dequantized), got dtype {dtype}. "
                            f"Use tfflows.zoo.data to dequantize uint8 images.")
        self._check_batch_shape(x, what)
        value = concrete_value(x)
        if value is not None:
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise ValueError(f"FlowModel got {bad} NaN or infinite value(s) in its {what}.")
            if unit_interval and value.size and (value.min() < 0.0 or value.max() > 1.0):
                raise ValueError(
                    f"FlowModel expects dequantized {what} in [0, 1) (images / 2^n_bits plus noise), got "
                    f"values in [{float(value.min()):g}, {float(value.max()):g}]. Scale 8-bit pixels by "
                    f"1/256, or use tfflows.zoo.data."
                )
        if dtype != self.compute_dtype:
            x = x.astype(self.compute_dtype) if isinstance(x, np.ndarray) else ops.cast(x, self.compute_dtype)
        return x

    def _check_batch_shape(self, x, what):
        """`ValueError` for an empty batch or one whose examples are not `data_shape`."""
        if len(x.shape) >= 1 and x.shape[0] == 0:
            raise ValueError(f"FlowModel got an empty batch of {what} (shape {tuple(x.shape)}).")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"FlowModel expects {what} of shape (batch, {', '.join(map(str, self.data_shape))}), "
                             f"got {tuple(x.shape)}.")

    def check_pixels(self, x, what="images"):
        """Checks a batch of integer pixel values for a model with a
        `dequantizer` (any int or float dtype holding integers in
        `[0, 2^n_bits)`) and returns it as floats. Raises `ValueError` naming
        the problem (shape, empty batch, NaN/Inf, non-integer or
        out-of-range values) where the values are known."""
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "float" not in dtype and "int" not in dtype:
            raise TypeError(f"FlowModel '{self.name}' (variational dequantization) expects integer pixel values, "
                            f"got dtype {dtype}.")
        self._check_batch_shape(x, what)
        value = concrete_value(x)
        if value is not None and value.size:
            top = 2 ** self.n_bits - 1
            if "float" in dtype and not np.all(np.isfinite(value)):
                raise ValueError(f"FlowModel got {int(np.sum(~np.isfinite(value)))} NaN or infinite value(s) in "
                                 f"its {what}.")
            if value.min() < 0 or value.max() > top or ("float" in dtype and np.any(value != np.round(value))):
                raise ValueError(
                    f"FlowModel '{self.name}' takes integer pixel values in [0, {top}] here ({self.n_bits}-bit "
                    f"bin indices: uint8 images as they are for 8 bits, else shifted right by "
                    f"{8 - self.n_bits}), got values in "
                    f"[{float(value.min()):g}, {float(value.max()):g}]"
                    + (" that are not all integers" if "float" in dtype and np.any(value != np.round(value))
                       else "") + ".")
        return x.astype(self.compute_dtype) if isinstance(x, np.ndarray) else ops.cast(x, self.compute_dtype)

    def check_continuous_density(self, what):
        """Raises `ValueError` for a model with a `dequantizer`, whose
        `log_prob` takes integer pixels and returns a stochastic bound:
        `what` (an app) needs the density on `[0, 1)^D`."""
        if self.dequantizer is not None:
            raise ValueError(f"{what} needs the model's density of continuous images in [0, 1); FlowModel "
                             f"'{self.name}' has a variational dequantizer, so its log_prob takes integer pixel "
                             f"values and returns a stochastic bound. Use a model trained with uniform noise (for "
                             f"shipped weights, the ones shipped beside them: tfflows.zoo.glow(preset=..., "
                             f"pretrained=True, dequantize='uniform')).")

    def dequantize(self, x, training=False):
        """`(y, log q(u | x))` for a model with a `dequantizer`: `y = (x + u)
        / 2^n_bits` in `[0, 1)` with `u ~ q(u | x)`, one draw per row."""
        if self.dequantizer is None:
            raise ValueError(f"FlowModel '{self.name}' has no dequantizer (it takes dequantized data).")
        x = self.check_pixels(x)
        u, log_q = self.dequantizer(x, training=training)
        return self._dequantized(x, u), ops.cast(log_q, x.dtype)

    def _dequantized(self, x, u):
        # float32 rounds 255 + u up to 256 for u > 1 - 2^-17: keep y below 1.
        y = (x + ops.cast(u, x.dtype)) / float(2 ** self.n_bits)
        return ops.minimum(y, 1.0 - 2.0 ** -24)

    def check_context(self, context, batch):
        """Checks `context` against `context_shape` and `batch` rows; returns
        it in the model's dtype, or `None` for an unconditional model."""
        if self.context_shape is None:
            if context is not None:
                if _is_labels(context):
                    raise ValueError(f"FlowModel '{self.name}' has no classes (it was built without "
                                     f"num_classes) but was asked for class labels; build a class-conditional "
                                     f"model, e.g. tfflows.zoo.glow(preset='mnist', num_classes=10).")
                raise ValueError(f"FlowModel '{self.name}' is unconditional (no context_shape) but got a "
                                 f"context.")
            return None
        if context is None:
            if self.num_classes is not None:
                raise ValueError(f"FlowModel '{self.name}' is class-conditional (num_classes={self.num_classes}) "
                                 f"and needs class labels as its context: integers of shape (batch,).")
            raise ValueError(f"FlowModel '{self.name}' is conditional (context_shape={self.context_shape}) "
                             f"and needs a context.")
        if not hasattr(context, "shape"):
            context = np.asarray(context)
        if self.num_classes is not None and _is_labels(context):
            return self._one_hot(context, batch)
        shape = tuple(context.shape)
        if self.num_classes is not None and len(shape) == 1:
            raise ValueError(f"FlowModel '{self.name}' takes integer class labels (batch,) or float one-hot rows "
                             f"(batch, {self.num_classes}); got {keras.backend.standardize_dtype(context.dtype)} "
                             f"values of shape {shape}.")
        if shape[1:] != self.context_shape:
            raise ValueError(f"FlowModel '{self.name}' expects a context of shape (batch, "
                             f"{', '.join(map(str, self.context_shape))}), got {shape}.")
        if batch is not None and shape[0] is not None and shape[0] != batch:
            raise ValueError(f"FlowModel '{self.name}' got a context for {shape[0]} examples and {batch} "
                             f"examples of data.")
        value = concrete_value(context)
        if value is not None and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"FlowModel '{self.name}' got NaN or infinite value(s) in its context.")
        return ops.cast(context, self.compute_dtype)

    def _one_hot(self, labels, batch):
        shape = tuple(labels.shape)
        if len(shape) != 1:
            raise ValueError(f"FlowModel '{self.name}' takes class labels of shape (batch,), got {shape}.")
        if batch is not None and shape[0] is not None and shape[0] != batch:
            raise ValueError(f"FlowModel '{self.name}' got labels for {shape[0]} examples and {batch} "
                             f"examples of data.")
        value = concrete_value(labels)
        if value is not None and value.size and (value.min() < 0 or value.max() >= self.num_classes):
            raise ValueError(f"FlowModel '{self.name}' has classes 0..{self.num_classes - 1}; got labels in "
                             f"[{int(value.min())}, {int(value.max())}].")
        labels = ops.cast(labels, "int32")
        one_hot = ops.one_hot(labels, self.num_classes, dtype=self.compute_dtype)
        if value is None:
            # Traced (fit, compiled functions): a label outside the classes
            # would be an all-zero row; it makes its row NaN instead, so the
            # loss is NaN and fit stops (StopOnNaN) rather than train on it.
            bad = ops.logical_or(ops.less(labels, 0), ops.greater_equal(labels, self.num_classes))
            one_hot = one_hot + ops.expand_dims(ops.where(bad, float("nan"), 0.0), -1)
        return one_hot

    def _check_latent(self, z):
        if not hasattr(z, "shape"):
            z = np.asarray(z)
        dtype = keras.backend.standardize_dtype(z.dtype)
        if "float" not in dtype:
            raise TypeError(f"FlowModel.decode expects float latents, got dtype {dtype}.")
        if len(z.shape) >= 1 and z.shape[0] == 0:
            raise ValueError(f"FlowModel.decode got an empty batch (shape {tuple(z.shape)}).")
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"FlowModel.decode expects latents of shape (batch, "
                             f"{', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}.")
        value = concrete_value(z)
        if value is not None and not np.all(np.isfinite(value)):
            rows = _non_finite_rows(value)
            raise ValueError(f"FlowModel.decode got NaN or infinite latents in rows {_rows_str(rows)}.")
        return ops.cast(z, self.compute_dtype)

    # -- density ---------------------------------------------------------------
    def log_prob(self, x, context=None, training=False):
        """`log p(x | context)` in nats per example, `(batch,)`; for images the
        density on `[0, 1)^D`.

        With a `dequantizer` (variational dequantization), `x` holds integer
        pixel values and the result is a one-draw estimate of the bound
        `E_q[log p(y) - log q(u | x)]`, `y = (x + u) / 2^n_bits`, so that
        `bits_per_dim` and the training loss are the bound in bits/dim."""
        if self.dequantizer is not None:
            x, log_q = self.dequantize(x, training=training)
        else:
            x, log_q = self.check_data(x), None
        context = self.check_context(context, x.shape[0])
        z, log_det = self.flow.forward(x, context=context, training=training)
        log_p = self.base.log_prob(z, context=context) + log_det
        return log_p if log_q is None else log_p - log_q

    def dequantized_bound(self, x, context=None, draws=16, importance=False, seed=None):
        """The dequantization bound of integer images `x` in bits/dim per
        example, `(batch,)`, from `draws` noise draws each: their mean (the
        bound `E_q[...]`, as `bits_per_dim` estimates from one draw) or, with
        `importance=True`, the importance-weighted bound `-log (1/K) sum_k
        p(y_k) / q(u_k | x)` (Burda et al.; tighter, and tending to the
        model's discrete likelihood as `draws` grows). Also works for a
        model without a dequantizer (uniform noise, `log q = 0`). numpy
        float64; `seed` seeds the draws."""
        if self.n_bits is None:
            raise ValueError(f"FlowModel '{self.name}' models continuous data (n_bits=None).")
        draws = _int_arg(draws, "draws")
        if draws < 1:
            raise ValueError(f"FlowModel.dequantized_bound needs draws >= 1. Received: draws={draws}")
        pixels = np.asarray(ops.convert_to_numpy(self.check_pixels(x)))
        context = self.check_context(context, pixels.shape[0])
        rng = np.random.default_rng(seed)
        log_w = []
        for _ in range(draws):
            if self.dequantizer is not None:
                eps = rng.standard_normal(np.shape(pixels)).astype(self.compute_dtype)
                u, log_q = self.dequantizer.log_q(pixels, eps)
                y, log_q = self._dequantized(pixels, u), ops.cast(log_q, self.compute_dtype)
            else:
                y = self._dequantized(pixels, rng.uniform(size=np.shape(pixels)).astype(self.compute_dtype))
                log_q = 0.0
            z, log_det = self.flow.forward(y, context=context)
            log_p = self.base.log_prob(z, context=context) + log_det
            log_w.append(np.asarray(ops.convert_to_numpy(log_p - log_q), dtype=np.float64))
        log_w = np.stack(log_w)  # (draws, batch)
        if importance:
            m = log_w.max(axis=0)
            bound = m + np.log(np.mean(np.exp(log_w - m), axis=0))
        else:
            bound = log_w.mean(axis=0)
        return bits_per_dim(bound, self.dims, self.n_bits)

    def bits_per_dim(self, x, context=None, training=False):
        """Bits per dimension of `n_bits`-bit data per example, `(batch,)`."""
        if self.n_bits is None:
            raise ValueError(f"FlowModel '{self.name}' models continuous data (n_bits=None): bits/dim is "
                             f"defined for discrete data only; use log_prob.")
        if self.dequantizer is None:  # integer pixels with one: log_prob checks them
            x = self.check_data(x, unit_interval=True)
        return bits_per_dim(self.log_prob(x, context=context, training=training), self.dims, self.n_bits)

    def loss_from_log_prob(self, log_prob):
        """The per-example training loss: bits/dim (images) or `-log p` (nats)."""
        if self.n_bits is None:
            return -log_prob
        return bits_per_dim(log_prob, self.dims, self.n_bits)

    def encode(self, x, context=None):
        """Data -> latent `z` (flat `(batch, D)` for multi-scale flows)."""
        x = self.check_data(x)
        return self.flow.forward(x, context=self.check_context(context, x.shape[0]))[0]

    def decode(self, z, context=None):
        """Latent -> data (not clipped; images lie in about [0, 1)).

        Raises `ValueError` naming the rows when a latent, or the data it
        maps to, is NaN or infinite.
        """
        z = self._check_latent(z)
        x = self._decode(z, self.check_context(context, z.shape[0]))
        self._raise_on_non_finite(x, "decode")
        return x

    def _decode(self, z, context=None):
        return self.flow.inverse(z, context=context)[0]

    def _raise_on_non_finite(self, x, what, temperature=None):
        value = concrete_value(x)
        if value is None:
            return
        rows = _non_finite_rows(value)
        if not len(rows):
            return
        at = ""
        if temperature is not None:
            t = np.asarray(temperature, dtype="float64")
            temps = sorted({float(t)} if t.ndim == 0 else {float(t[r]) for r in rows})
            at = f" at temperature {', '.join(f'{v:g}' for v in temps)}"
        raise ValueError(
            f"FlowModel.{what}: {len(rows)} of {value.shape[0]} rows{at} are not finite (rows "
            f"{_rows_str(rows)}): the inverse flow overflowed. "
            + ("Lower the temperature." if temperature is not None else "Check the latents.")
        )

    # -- sampling ---------------------------------------------------------------
    def _check_sampling(self, n, temperature, seed, context):
        n = _int_arg(n, "n")
        if n < 1:
            raise ValueError(f"sample needs n >= 1. Received: n={n}")
        t = np.asarray(temperature, dtype="float64") if not hasattr(temperature, "dtype") or isinstance(
            temperature, np.ndarray) else concrete_value(temperature)
        if t is not None:
            if t.ndim > 1 or t.ndim == 1 and t.shape[0] != n:
                raise ValueError(f"sample takes one temperature or one per row ({n}); got shape {t.shape}.")
            if not np.all(np.isfinite(t)) or np.any(t < 0):
                raise ValueError(f"sample needs finite, non-negative temperatures (0 gives the mode). "
                                 f"Received: temperature={t.tolist()}")
            temperature = t.astype("float32")
        if seed is not None and not isinstance(seed, keras.random.SeedGenerator):
            seed = _int_arg(seed, "seed")
        return n, temperature, seed, self.check_context(context, n)

    def sample(self, n, context=None, temperature=1.0, seed=None):
        """Draws `n` samples at `temperature` (scalar or per row), in data space.

        Temperature scales the base distribution's spread (Glow), including
        the factored-out latents of every level; 0 gives the mode. Like
        `decode`, the result is not clipped: with logit preprocessing values
        reach `-alpha / (1 - 2 alpha)` below 0 and as far above 1; clip to
        `[0, 1]` for display (`tfflows sample` does). A conditional model
        takes one context row per sample.

        Raises:
            ValueError: for a bad `n`, temperature or context, or when rows
                come out NaN or infinite (the inverse overflowed: the error
                names the rows and their temperature).
        """
        n, temperature, seed, context = self._check_sampling(n, temperature, seed, context)
        z = self.base.sample((n,) + self.latent_shape, context=context, temperature=temperature, seed=seed)
        x = self.make_decode_function()(z, context)
        self._raise_on_non_finite(x, "sample", temperature)
        return x

    def sample_and_log_prob(self, n, context=None, seed=None, temperature=1.0):
        """`(x, log q(x | context))` for `n` samples from one inverse pass.

        `log q(x) = log p_base(z) - log|det dx/dz|`. One pass for flows
        whose inverse is analytic (coupling, IAF, planar/radial ... layers);
        what variational inference needs. At a temperature other than 1 the
        log-density is still the model's, not the tempered distribution's.
        """
        n, temperature, seed, context = self._check_sampling(n, temperature, seed, context)
        z = self.base.sample((n,) + self.latent_shape, context=context, temperature=temperature, seed=seed)
        x, log_det = self.flow.inverse(z, context=context)
        self._raise_on_non_finite(x, "sample_and_log_prob", temperature)
        return x, self.base.log_prob(z, context=context) - log_det

    # -- compiled functions -------------------------------------------------------
    def make_decode_function(self, force=False):
        """A compiled `(z, context) -> x` (the inverse flow under `tf.function`
        or `jax.jit`; `context` may be `None`).

        Like Keras' `make_predict_function`: built once and cached; `sample`
        uses it. It reads the model's current variables on every call, so it
        stays valid while training. It skips `decode`'s value checks (a
        traced value cannot be checked in Python).
        """
        return self._compiled("_decode_fn", self._decode, force)

    def make_bits_per_dim_function(self, force=False):
        """A compiled `(x, context=None) -> bits/dim per example`
        (`bits_per_dim` under `tf.function` or `jax.jit`), built once and
        cached like `make_decode_function`; `tfflows.training.evaluate_bpd`
        uses it. It skips `bits_per_dim`'s NaN/Inf and range checks on its
        input (a traced value cannot be checked in Python): check numpy input
        first, as `evaluate_bpd` does."""
        return self._compiled("_bpd_fn", self.bits_per_dim, force)

    def make_log_prob_function(self, force=False):
        """A compiled `(x, context=None) -> log p(x | context)` per example
        (`log_prob` under `tf.function` or `jax.jit`), cached like
        `make_decode_function`; it skips `log_prob`'s value checks on its
        input (check numpy input first). `tfflows.apps` scores with it."""
        return self._compiled("_log_prob_fn", self.log_prob, force)

    def make_encode_function(self, force=False):
        """A compiled `(x, context=None) -> z` (`encode` under `tf.function`
        or `jax.jit`), cached like `make_decode_function`."""
        return self._compiled("_encode_fn", self.encode, force)

    def _compiled(self, attr, method, force):
        cached = getattr(self, attr, None)
        if cached is not None and not force:
            return cached.fn
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf  # TF-only; lazy so models.py stays backend-agnostic

            traced = tf.function(method, reduce_retracing=True)

            def fn(x, context=None):
                return traced(x, context)
        elif backend == "jax":
            import jax

            variables = list(self.variables)

            def pure(values, x, context):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                    out = method(x, context)
                    # Seed-generator states (stochastic log-dets) move on between calls.
                    return out, [scope.get_current_value(v) for v in state]

            state = [v for v in variables if not v.trainable]
            jitted = jax.jit(pure)

            def fn(x, context=None):
                out, new = jitted([v.value for v in variables], x, context)
                for v, value in zip(state, new):
                    if value is not None:
                        v.assign(value)
                return out
        else:
            def fn(x, context=None):
                return method(x, context)
        # A plain holder, so the function is not tracked (and not saved) as
        # part of the model.
        setattr(self, attr, _Compiled(fn))
        return fn

    # -- Keras training ---------------------------------------------------------
    def _strategy_hooks(self):
        """`tfflows.distribute`'s hooks, or `None` without them.

        Under `MultiWorkerMirroredStrategy` or `TPUStrategy` they are needed
        (Keras 3's own `fit` fails there, keras-team/keras#20585, and the init
        must gather the global batch), so this refuses without them; under
        `MirroredStrategy` Keras' `fit` and a plain init are correct.
        """
        hooks = _STRATEGY_HOOKS.get("hooks")
        if hooks is None and keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # TF-only; lazy so models.py stays backend-agnostic

            strategy = getattr(self, "distribute_strategy", None) or tf.distribute.get_strategy()
            if isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)):
                raise RuntimeError(
                    f"FlowModel '{self.name}' was built under {type(strategy).__name__}: import "
                    f"tfflows.distribute first (tfflows.distribute.get_strategy(...) does), so that fit and "
                    f"the data-dependent init run correctly there.")
        return hooks

    def _strategy_scope(self):
        """The scope of the strategy the model's variables live in (TF), else a no-op."""
        import contextlib

        strategy = getattr(self, "distribute_strategy", None)
        return strategy.scope() if strategy is not None and hasattr(strategy, "scope") else contextlib.nullcontext()

    def _unpack(self, inputs):
        if isinstance(inputs, dict):
            return inputs["x"], inputs.get("context")
        if isinstance(inputs, (tuple, list)):
            if len(inputs) != 2:
                raise ValueError(f"FlowModel takes x or (x, context); got a sequence of {len(inputs)}.")
            return inputs[0], inputs[1]
        return inputs, None

    def call(self, inputs, training=False):
        """The per-example loss of `x` or `(x, context)`: bits/dim or nats."""
        x, context = self._unpack(inputs)
        return self.loss_from_log_prob(self.log_prob(x, context=context, training=training))

    def compile(self, optimizer=None, **kwargs):
        """Like `keras.Model.compile`; the optimizer defaults to `default_optimizer(dims=self.dims)`
        for image models (`default_optimizer()` for continuous data).

        The loss is bits/dim for images, whose gradients are `dims * ln 2`
        times smaller than the per-example NLL's: a user-supplied Adam's
        `epsilon` acts on that scale (see `default_optimizer`).
        """
        if optimizer is None:
            optimizer = default_optimizer(dims=self.dims if self.n_bits is not None else None)
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
        self.loss_tracker.update_state(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    @property
    def needs_initialization(self):
        """True while some layer still waits for data-dependent init."""
        return self.flow.needs_initialization

    def initialize(self, batch, context=None):
        """Data-dependent initialisation (ActNorm) from a batch of data.

        Accepts an array, or an `(x, context)` / `(x, ...)` tuple as datasets
        yield. Runs each layer's init in order so every ActNorm sees the
        activations that reach it. Returns the batch's mean loss (bits/dim,
        or nats for continuous data) after initialisation.
        """
        hooks = self._strategy_hooks()
        if hooks is not None and hooks.is_distributed(self):
            # Under tf.distribute: global-batch init, identical on every replica.
            return hooks.initialize(self, batch, context=context)
        x, batch_context = self.split_batch(batch)
        context = batch_context if context is None else context
        if self.dequantizer is not None:
            x, log_q = self.dequantize(x)
        else:
            x, log_q = self.check_data(x), 0.0
        context = self.check_context(context, x.shape[0])
        z, log_det = self.flow.initialize(x, context=context)
        loss = self.loss_from_log_prob(self.base.log_prob(z, context=context) + log_det - log_q)
        return float(ops.convert_to_numpy(ops.mean(loss)))

    def split_batch(self, batch):
        """`(x, context)` of a batch as datasets yield it: `x`, `(x,)`,
        `(x, context)` (conditional models) or `(x, labels)` (labels ignored by
        unconditional models), or `((x, context),)` as `fit` feeds Keras."""
        if isinstance(batch, (tuple, list)):
            if len(batch) == 1:
                return self.split_batch(batch[0])
            if isinstance(batch[0], (tuple, list)):
                return self.split_batch(batch[0])
            return batch[0], (batch[1] if self.context_shape is not None else None)
        if isinstance(batch, dict):
            return batch["x"], batch.get("context")
        return batch, None

    def _as_keras_inputs(self, x, y):
        """Puts the context where Keras hands it to `call`: `x = (x, context)`."""
        if self.context_shape is None:
            return x, y
        if y is not None:  # fit(x, context)
            return (x, y), None
        if hasattr(x, "element_spec"):  # tf.data yielding (x, context, ...)
            spec = x.element_spec
            if isinstance(spec, tuple) and len(spec) >= 2 and not isinstance(spec[0], tuple):
                return x.map(lambda *e: ((e[0], e[1]),)), None
        return x, y

    def fit(self, x=None, y=None, *args, stop_on_nan=True, callbacks=None, **kwargs):
        """`keras.Model.fit`, plus ActNorm init on the first batch and NaN stop.

        A conditional model takes `(x, context)` batches: a tf.data dataset
        yielding `(x, context)`, `fit(x, context)` with arrays, or
        `fit((x, context))`.

        Under `tf.distribute.MultiWorkerMirroredStrategy`, where Keras 3's own
        `fit` fails (keras-team/keras#20585), this runs
        `tfflows.distribute.fit` instead: a custom distributed loop taking
        the same arguments and callbacks.
        """
        if self.num_classes is not None and y is not None and not hasattr(y, "element_spec"):
            self.check_context(y if hasattr(y, "shape") else np.asarray(y), None)  # every label, before Keras
        x, y = self._as_keras_inputs(x, y)
        hooks = self._strategy_hooks()
        if hooks is not None and hooks.uses_custom_loop(self):
            return hooks.fit(self, x, y, *args, stop_on_nan=stop_on_nan, callbacks=callbacks, **kwargs)
        if getattr(self, "optimizer", None) is None:  # optimizer variables: mirrored too
            with (hooks.scope(self) if hooks is not None else self._strategy_scope()):
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
        self._build_optimizer(hooks)
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def _build_optimizer(self, hooks=None):
        optimizers.build_before_tracing(self, hooks.scope(self) if hooks is not None else self._strategy_scope())

    def train_on_batch(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`, building the optimizer first (see `fit`)."""
        if getattr(self, "optimizer", None) is None:
            self.compile()
        self._build_optimizer(self._strategy_hooks())
        return super().train_on_batch(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, taking `(x, context)` batches like `fit`."""
        x, y = self._as_keras_inputs(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    # -- weights files ---------------------------------------------------------
    def save_weights(self, filepath, overwrite=True, **kwargs):
        """`keras.Model.save_weights`, then a sha256 of the weights stored in
        the file (`tfflows.weights_file.sign`), which `load_weights` checks."""
        from tfflows import weights_file

        super().save_weights(filepath, overwrite=overwrite, **kwargs)
        if str(filepath).endswith(".weights.h5"):
            weights_file.sign(filepath)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """`keras.Model.load_weights` after checking the file's stored sha256
        (`tfflows.weights_file.verify`): a corrupted or truncated file is
        refused with `WeightsFileError` instead of loading garbage."""
        from tfflows import weights_file

        if str(filepath).endswith(".weights.h5"):
            weights_file.verify(filepath)
        return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            flow=keras.saving.serialize_keras_object(self.flow),
            base=keras.saving.serialize_keras_object(self.base),
            data_shape=list(self.data_shape),
            n_bits=self.n_bits,
        )
        if self.num_classes is not None:
            config["num_classes"] = self.num_classes
        elif self.context_shape is not None:
            config["context_shape"] = list(self.context_shape)
        if self.dequantizer is not None:
            config["dequantizer"] = keras.saving.serialize_keras_object(self.dequantizer)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["flow"] = keras.saving.deserialize_keras_object(config["flow"])
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)


def _is_labels(context):
    """Whether `context` holds integer class labels (any integer dtype)."""
    dtype = getattr(context, "dtype", None)
    if dtype is None:
        return False
    return "int" in keras.backend.standardize_dtype(dtype)


class _Compiled:
    """Holds a compiled function outside Keras/TF attribute tracking."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn


def _first_batch(x, batch_size=None):
    """The first batch of a dataset, iterator, PyDataset or array (or a
    tuple of arrays: `(x, context)`)."""
    if isinstance(x, tuple) and all(hasattr(a, "shape") for a in x):
        return tuple(a[: batch_size or 32] for a in x)
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not hasattr(x, "__iter__"):
        return np.asarray(x[: batch_size or 32])
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x[: batch_size or 32]
    if isinstance(x, keras.utils.PyDataset):
        return x[0]
    return next(iter(x))
