"""The flow-layer contract (v2): `FlowLayer`, `FactorOut` and `FlowSequence`.

Every tfflows layer maps data to latent in `forward` (the papers'
normalizing direction: NICE, RealNVP, Glow, MAF) and back in `inverse`.

- `forward(x, context=None, training=False) -> (y, log_det)` and
  `inverse(y, context=None, training=False) -> (x, log_det)`. `log_det` is
  a `(batch,)` tensor holding log|det J| of that direction, in the dtype of
  the input (float64 in float64 runs; float32 under mixed precision, where
  the data and the flow's own arithmetic stay float32 and only the
  conditioner nets compute in bfloat16).
- Each layer declares how each direction is computed, in `forward_mode` and
  `inverse_mode`: `"analytic"` (one pass), `"sequential"` (exact, one pass
  per dimension: autoregressive), `"iterative"` (a solver to a stated
  tolerance) or `None` (not available). Calling an unavailable direction
  raises `NotImplementedError` naming the layer. `log_det_kind` is
  `"exact"` or `"estimate"` (stochastic).
- `context`: an optional conditioning tensor `(batch, ...)`. A layer built
  with a `context_shape` needs one (and says so when it gets none, or one of
  the wrong shape); a layer without one ignores it.
- Data-dependent initialisation is explicit: `needs_initialization` and
  `initialize(x, context=None)`, which returns `forward(x, context)`.
- `call(x, context=None)` is `forward(x, context)[0]`.

Subclasses implement `_forward(x, context, training)` and
`_inverse(y, context, training)`, each returning `(output, log_det)` from a
single pass, and override `compute_output_shape` /
`compute_inverse_shape` when they change the shape.
"""

import numbers

import keras
import numpy as np
from keras import ops

from tfflows.transforms import split_channels  # noqa: F401  (layers import it from here)

# Every public flow layer registers itself here (see `register`), so the
# contract test suite can check that none is missing an entry.
LAYER_REGISTRY = {}

MODES = ("analytic", "sequential", "iterative", None)
LOG_DET_KINDS = ("exact", "estimate")
# How costly a direction is, for combining layers: the sequence's direction
# is as costly as its costliest layer's.
_MODE_RANK = {"analytic": 0, "sequential": 1, "iterative": 2, None: 3}


def register(cls):
    """Registers `cls` with Keras serialization and the tfflows registry."""
    cls = keras.saving.register_keras_serializable(package="tfflows")(cls)
    LAYER_REGISTRY[cls.__name__] = cls
    return cls


def event_size(shape):
    """The number of values in one example: the product of `shape[1:]`
    (`shape` includes the batch axis)."""
    n = 1
    for d in tuple(shape)[1:]:
        n *= int(d)
    return n


def sum_except_batch(x):
    """Sums `x` over every axis but the first: `(batch, ...) -> (batch,)`."""
    if len(x.shape) == 1:
        return x
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def zeros_log_det(x):
    """A `(batch,)` tensor of zeros in `x`'s dtype, for volume-preserving maps."""
    return ops.zeros((ops.shape(x)[0],), dtype=x.dtype)


def constant_log_det(x, value):
    """`value` (a scalar) broadcast to `(batch,)` in `x`'s dtype."""
    return ops.broadcast_to(ops.cast(value, x.dtype), (ops.shape(x)[0],))


def concrete_value(x):
    """`x` as a numpy array when its value is known now (numpy, or an eager
    TF/JAX tensor), `None` while tracing (`tf.function`, `jax.jit`, Keras
    symbolic tensors), where a value cannot be inspected."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (numbers.Number, list, tuple)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # TF-only; lazy so layers stay backend-agnostic

        if isinstance(x, tf.Tensor) and not tf.executing_eagerly() or not hasattr(x, "numpy"):
            return None
        try:
            return x.numpy()
        except (AttributeError, TypeError, ValueError):
            return None
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # noqa: BLE001 - any backend's "not concrete" error
        return None


def shape_str(shape):
    return "x".join("?" if d is None else str(d) for d in shape)


def _check_mode(cls, attr):
    value = getattr(cls, attr)
    if not isinstance(value, property) and value not in MODES:
        raise TypeError(f"{cls.__name__}.{attr} must be one of {MODES}, got {value!r}.")


class FlowLayer(keras.layers.Layer):
    """Base class of every tfflows flow layer (see the module docstring).

    `forward`/`inverse` build the layer on first use, check the input's
    dtype, rank and batch, check the context, refuse an unavailable
    direction, and cast the log-det to the input's dtype.

    Args:
        context_shape: event shape of the context this layer conditions on
            (e.g. `(10,)`), or `None` (the default) for an unconditional
            layer. Only layers with a conditioner accept it.
    """

    #: Ranks (counting the batch axis) this layer accepts; `None` for any.
    input_ranks = None
    #: How `forward` (data -> latent) is computed: see `MODES`.
    forward_mode = "analytic"
    #: How `inverse` (latent -> data) is computed: see `MODES`.
    inverse_mode = "analytic"
    #: `"exact"` or `"estimate"` (stochastic, seeded).
    log_det_kind = "exact"
    #: Whether this class can condition on a context at all.
    accepts_context = False
    #: Whether `forward_local` gives an image's log-det position by position:
    #: true where the Jacobian's determinant factors over positions (1x1
    #: maps such as ActNorm and the 1x1 conv; couplings, whose Jacobian is
    #: triangular with the kept half first).
    local_log_det = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _check_mode(cls, "forward_mode")
        _check_mode(cls, "inverse_mode")
        if not isinstance(cls.log_det_kind, property) and cls.log_det_kind not in LOG_DET_KINDS:
            raise TypeError(f"{cls.__name__}.log_det_kind must be one of {LOG_DET_KINDS}.")

    def __init__(self, context_shape=None, **kwargs):
        super().__init__(**kwargs)
        if context_shape is not None:
            if not self.accepts_context:
                raise ValueError(
                    f"{type(self).__name__} takes no context (it has no conditioner). "
                    f"Received: context_shape={context_shape}"
                )
            context_shape = tuple(int(d) for d in context_shape)
            if not context_shape or min(context_shape) < 1:
                raise ValueError(
                    f"{type(self).__name__} context_shape must be a non-empty event shape of "
                    f"positive sizes, e.g. (10,). Received: context_shape={context_shape}"
                )
        self.context_shape = context_shape

    # -- shape bookkeeping -------------------------------------------------
    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_inverse_shape(self, output_shape):
        """The input shape that `forward` maps to `output_shape`."""
        return tuple(output_shape)

    def _check_rank(self, shape):
        if self.input_ranks is not None and len(shape) not in self.input_ranks:
            ranks = " or ".join(str(r) for r in self.input_ranks)
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects inputs of rank "
                f"{ranks} (batch axis included), got rank {len(shape)} with "
                f"shape {shape_str(shape)}."
            )

    def _check_input(self, x, direction):
        dtype = keras.backend.standardize_dtype(getattr(x, "dtype", "float32"))
        if "float" not in dtype:
            raise TypeError(
                f"{type(self).__name__} '{self.name}' needs a floating-point "
                f"input to {direction}, got dtype {dtype}. Cast images to "
                f"float32 (e.g. with tfflows.zoo.data) first."
            )
        shape = tuple(x.shape)
        self._check_rank(shape)
        if shape and shape[0] == 0:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' got an empty batch "
                f"(shape {shape_str(shape)})."
            )

    def _check_context(self, context, x):
        """Returns the context as a tensor of `x`'s dtype, or `None`."""
        if self.context_shape is None:
            return None  # unconditional layers ignore any context
        if context is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' is conditional (context_shape="
                f"{self.context_shape}) and needs a context; got none."
            )
        context = ops.convert_to_tensor(context)
        if tuple(context.shape[1:]) != self.context_shape:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects a context of shape (batch, "
                f"{', '.join(map(str, self.context_shape))}), got {shape_str(tuple(context.shape))}."
            )
        if context.shape[0] is not None and x.shape[0] is not None and context.shape[0] != x.shape[0]:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' got a context for {context.shape[0]} "
                f"examples and an input of {x.shape[0]}."
            )
        return ops.cast(context, x.dtype)

    def _ensure_built(self, shape, direction):
        if self.built:
            return
        if direction == "inverse":
            shape = self.compute_inverse_shape(tuple(shape))
        self.build(tuple(shape))

    def _check_direction(self, direction):
        mode = self.forward_mode if direction == "forward" else self.inverse_mode
        if mode is None:
            other = "inverse" if direction == "forward" else "forward"
            raise NotImplementedError(
                f"{type(self).__name__} '{self.name}' has no {direction} direction "
                f"({'data -> latent' if direction == 'forward' else 'latent -> data'}); "
                f"only {other} is available."
            )

    @property
    def built_input_shape(self):
        """The (data-side) input shape the layer was built with."""
        shapes = getattr(self, "_build_shapes_dict", None)
        if not self.built or not shapes:
            raise ValueError(f"{type(self).__name__} '{self.name}' is not built yet.")
        return tuple(next(iter(shapes.values())))

    # -- public API --------------------------------------------------------
    def forward(self, x, context=None, training=False):
        """Maps data `x` to latent `y`. Returns `(y, log|det dy/dx|)`."""
        return self._run("forward", self._forward, x, context, training)

    def inverse(self, y, context=None, training=False):
        """Maps latent `y` back to data `x`. Returns `(x, log|det dx/dy|)`."""
        return self._run("inverse", self._inverse, y, context, training)

    def _run(self, direction, fn, x, context, training):
        self._check_direction(direction)
        x = ops.convert_to_tensor(x)
        self._check_input(x, direction)
        self._ensure_built(x.shape, direction)
        context = self._check_context(context, x)
        out, log_det = fn(x, context=context, training=training)
        return out, ops.cast(log_det, x.dtype)

    def call(self, x, context=None, training=False):
        return self.forward(x, context=context, training=training)[0]

    def forward_local(self, x, context=None, training=False):
        """Like `forward` for an image `(batch, H, W, C)`, with the log-det
        per position: returns `(y, log_det_map)`, the map `(batch, H, W)`
        summing to `forward`'s log-det. Available where `local_log_det`
        (a position's outputs depend on the other positions only through
        the part the layer keeps fixed, so the determinant is a product over
        positions of each position's channel block). FastFlow's anomaly maps
        use it."""
        if not self.local_log_det:
            blocking = [l for l in getattr(self, "flow_layers", []) if not l.local_log_det]
            where = f" (its layer {blocking[0].name!r}, a {type(blocking[0]).__name__}, does not)" if blocking else ""
            raise NotImplementedError(
                f"{type(self).__name__} '{self.name}' has no per-position log-det (forward_local): its "
                f"Jacobian mixes positions{where}.")
        x = ops.convert_to_tensor(x)
        if len(x.shape) != 4:
            raise ValueError(f"{type(self).__name__} '{self.name}'.forward_local takes images (batch, H, W, C); "
                             f"got shape {shape_str(tuple(x.shape))}.")
        self._check_direction("forward")
        self._check_input(x, "forward")
        self._ensure_built(x.shape, "forward")
        context = self._check_context(context, x)
        y, log_det_map = self._forward_local(x, context=context, training=training)
        return y, ops.cast(log_det_map, x.dtype)

    def _forward_local(self, x, context=None, training=False):
        # The same Jacobian block at every position (1x1 maps): spread evenly.
        y, log_det = self._forward(x, context=context, training=training)
        h, w = x.shape[1], x.shape[2]
        per_position = ops.reshape(ops.cast(log_det, x.dtype) / float(h * w), (-1, 1, 1))
        return y, ops.broadcast_to(per_position, (ops.shape(x)[0], h, w))

    def _forward(self, x, context=None, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement _forward")

    def _inverse(self, y, context=None, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement _inverse")

    # -- data-dependent initialisation ---------------------------------------
    @property
    def needs_initialization(self):
        """True while this layer waits for `initialize` (data-dependent init)."""
        return False

    def initialize(self, x, context=None):
        """Data-dependent initialisation from batch `x`; a no-op by default.

        Returns `forward(x, context)`, so a `FlowSequence` can push the
        batch on to the next layer.
        """
        return self.forward(x, context=context)

    def get_config(self):
        config = super().get_config()
        if self.context_shape is not None:
            config["context_shape"] = list(self.context_shape)
        return config


class FactorOut(FlowLayer):
    """A layer after which a `FlowSequence` sets part of the tensor aside.

    `split_shapes(shape)` gives `(kept_shape, factored_shape)` for a forward
    output of `shape`; `separate(y)` splits a forward output into
    `(kept, factored)` and `merge(kept, factored)` undoes it. The layers
    after it in the sequence see only the kept part; the factored part goes
    straight to the latent (multi-scale flows: RealNVP, Glow).
    """

    def split_shapes(self, shape):
        raise NotImplementedError(f"{type(self).__name__} must implement split_shapes")

    def separate(self, y):
        raise NotImplementedError(f"{type(self).__name__} must implement separate")

    def merge(self, kept, factored):
        raise NotImplementedError(f"{type(self).__name__} must implement merge")


@register
class FlowSequence(FlowLayer):
    """Composes flow layers; itself a `FlowLayer`.

    `forward` applies `layers` in list order (data -> latent), `inverse` in
    reverse order; log-dets add up, and the context reaches every layer.
    Unlike `tfb.Chain`, the list is in application order. A direction is as
    costly as the costliest layer's (`forward_mode`, `inverse_mode`), and
    the log-det is an estimate if any layer's is.

    Multi-scale factor-out: after a `FactorOut` layer (`Split`), the
    factored channels are set aside and the remaining layers act on the kept
    channels only. The factored parts travel as values; `forward` then
    returns one flat latent of shape `(batch, D)`, laid out as
    `latent_layout()` describes: `[split_1.flatten(), split_2.flatten(),
    ..., final.flatten()]`, each part flattened in row-major HWC order; and
    `inverse` takes that layout back. Sequences without a `FactorOut` keep
    the last layer's output shape.

    Args:
        layers: list of `FlowLayer`s.
    """

    accepts_context = True  # it hands the context on; its layers check it

    def __init__(self, layers, **kwargs):
        super().__init__(**kwargs)
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, FlowLayer):
                raise TypeError(
                    f"FlowSequence '{self.name}' takes FlowLayer instances; "
                    f"item {i} is a {type(layer).__name__}."
                )
        self.flow_layers = layers

    # The capabilities follow the layers (instance properties shadow the
    # class attributes).
    @property
    def forward_mode(self):
        return max((l.forward_mode for l in self.flow_layers), key=_MODE_RANK.get, default="analytic")

    @property
    def inverse_mode(self):
        return max((l.inverse_mode for l in self.flow_layers), key=_MODE_RANK.get, default="analytic")

    @property
    def log_det_kind(self):
        return "estimate" if any(l.log_det_kind == "estimate" for l in self.flow_layers) else "exact"

    @property
    def local_log_det(self):
        return bool(self.flow_layers) and all(l.local_log_det for l in self.flow_layers)

    def _forward_local(self, x, context=None, training=False):
        log_det = None
        for layer in self.flow_layers:
            x, ld = layer.forward_local(x, context=context, training=training)
            log_det = ld if log_det is None else log_det + ld
        return x, log_det

    @property
    def has_factor_out(self):
        return any(isinstance(l, FactorOut) for l in self.flow_layers)

    @property
    def needs_initialization(self):
        return any(l.needs_initialization for l in self.flow_layers)

    def build(self, input_shape):
        # Walk the shapes once: the per-stage shapes let `inverse` unflatten.
        shape = tuple(input_shape)
        self._factored_shapes = []
        for layer in self.flow_layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
            if isinstance(layer, FactorOut):
                kept, factored = layer.split_shapes(shape)
                self._factored_shapes.append(factored)
                shape = kept
        self._final_shape = shape
        self._input_shape_built = tuple(input_shape)

    def latent_layout(self):
        """The parts of the latent, in order, as a list of dicts.

        Each dict has `name` (`"split_1"`, ..., `"final"`; `"latent"` for a
        sequence without a `FactorOut`), `shape` (the part's event shape),
        `offset` and `size` in the flat `(batch, D)` latent.
        """
        if not self.built:
            raise ValueError(f"FlowSequence '{self.name}' must be built before its latent layout is known.")
        if self.has_factor_out:
            named = [(f"split_{i + 1}", s[1:]) for i, s in enumerate(self._factored_shapes)]
            named.append(("final", self._final_shape[1:]))
        else:
            named = [("latent", self._final_shape[1:])]
        parts, offset = [], 0
        for name, shape in named:
            size = event_size((None,) + tuple(shape))
            parts.append(dict(name=name, shape=[int(d) for d in shape], offset=offset, size=size))
            offset += size
        return parts

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        if not self.has_factor_out:
            return (input_shape[0],) + tuple(self._final_shape[1:])
        dim = sum(event_size(s) for s in self._factored_shapes)
        return (input_shape[0], dim + event_size(self._final_shape))

    def compute_inverse_shape(self, output_shape):
        if self.built:
            return (output_shape[0],) + tuple(self._input_shape_built[1:])
        if self.has_factor_out:
            raise ValueError(
                f"FlowSequence '{self.name}' contains a Split: build it on "
                f"data (call forward, or build(input_shape)) before inverse."
            )
        shape = tuple(output_shape)
        for layer in reversed(self.flow_layers):
            shape = tuple(layer.compute_inverse_shape(shape))
        return shape

    def _run_forward(self, x, context, training, init=False):
        log_det = zeros_log_det(x)
        factored = []
        for layer in self.flow_layers:
            if init:
                x, ld = layer.initialize(x, context=context)
            else:
                x, ld = layer.forward(x, context=context, training=training)
            log_det = log_det + ld
            if isinstance(layer, FactorOut):
                x, z = layer.separate(x)
                factored.append(z)
        if factored:
            parts = [ops.reshape(z, (-1, event_size(z.shape))) for z in factored + [x]]
            x = ops.concatenate(parts, axis=1)
        return x, log_det

    def _check_context(self, context, x):
        return context  # each layer checks its own

    def _forward(self, x, context=None, training=False):
        return self._run_forward(x, context, training)

    def _inverse(self, y, context=None, training=False):
        log_det = zeros_log_det(y)
        if self.has_factor_out:
            batch = ops.shape(y)[0]
            expected = self.compute_output_shape((None,) + self._input_shape_built[1:])[1]
            if len(y.shape) != 2 or y.shape[1] != expected:
                raise ValueError(
                    f"FlowSequence '{self.name}' (multi-scale) inverts flat "
                    f"latents of shape (batch, {expected}), got "
                    f"{shape_str(tuple(y.shape))}."
                )
            offset = 0
            factored = []
            for s in self._factored_shapes:
                n = event_size(s)
                factored.append(ops.reshape(y[:, offset:offset + n], (batch,) + tuple(s[1:])))
                offset += n
            x = ops.reshape(y[:, offset:], (batch,) + tuple(self._final_shape[1:]))
        else:
            x = y
        for layer in reversed(self.flow_layers):
            if isinstance(layer, FactorOut):
                x = layer.merge(x, factored.pop())
            x, ld = layer.inverse(x, context=context, training=training)
            log_det = log_det + ld
        return x, log_det

    def initialize(self, x, context=None):
        """Runs data-dependent init of every sub-layer in order on batch `x`.

        Each layer (e.g. `ActNorm`) sets its parameters from the activations
        that reach it, then the batch moves on. Returns `forward(x, context)`.
        """
        x = ops.convert_to_tensor(x)
        self._check_input(x, "initialize")
        self._ensure_built(x.shape, "forward")
        return self._run_forward(x, context, training=False, init=True)

    def get_config(self):
        config = super().get_config()
        config["layers"] = [keras.saving.serialize_keras_object(l) for l in self.flow_layers]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layers"] = [keras.saving.deserialize_keras_object(l) for l in config["layers"]]
        return cls(**config)
