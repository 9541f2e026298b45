"""The flow-layer contract: `FlowLayer` and `FlowSequence`.

Every tfflows layer maps data to latent in `forward` (as in the NICE, RealNVP
and Glow papers) and back in `inverse`; both return `(output, log_det)` where
`log_det` is a float `(batch,)` tensor holding log|det J| of that direction.
"""

import keras
from keras import ops

# Every public flow layer registers itself here (see `register`), so the
# contract test suite can check that none is missing an entry.
LAYER_REGISTRY = {}


def register(cls):
    """Registers `cls` with Keras serialization and the tfflows registry."""
    cls = keras.saving.register_keras_serializable(package="tfflows")(cls)
    LAYER_REGISTRY[cls.__name__] = cls
    return cls


def sum_except_batch(x):
    """Sums `x` over every axis but the first: `(batch, ...) -> (batch,)`."""
    if len(x.shape) == 1:
        return x
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def split_channels(x, c):
    """`(x[..., :c], x[..., c:])` as one `split` op.

    Its gradient is a concatenation; the gradient of a strided slice
    (`StridedSliceGrad` on TensorFlow) costs about 10 % of a Glow train step
    on CPU.
    """
    return tuple(ops.split(x, [int(c)], axis=-1))


def zeros_log_det(x):
    """A float32 `(batch,)` tensor of zeros, for volume-preserving maps."""
    return ops.zeros((ops.shape(x)[0],), dtype="float32")


def _shape_str(shape):
    return "x".join("?" if d is None else str(d) for d in shape)


class FlowLayer(keras.layers.Layer):
    """Base class of every tfflows flow layer.

    Subclasses implement `_forward(x, training)` and `_inverse(y, training)`,
    each returning `(output, log_det)` from a single pass, and may override
    `compute_output_shape` / `compute_inverse_shape` when they change shape.
    `forward`/`inverse` build the layer on first use, check the input's dtype
    and rank, and cast the log-det to float32.

    `call(x)` returns `forward(x)[0]`, so a flow layer also works in a plain
    Keras graph. The `training` flag never changes which map is computed.
    """

    #: Ranks (counting the batch axis) this layer accepts; `None` for any.
    input_ranks = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

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
                f"shape {_shape_str(shape)}."
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
                f"(shape {_shape_str(shape)})."
            )

    def _ensure_built(self, shape, direction):
        if self.built:
            return
        if direction == "inverse":
            shape = self.compute_inverse_shape(tuple(shape))
        self.build(tuple(shape))

    @property
    def built_input_shape(self):
        """The (data-side) input shape the layer was built with."""
        shapes = getattr(self, "_build_shapes_dict", None)
        if not self.built or not shapes:
            raise ValueError(f"{type(self).__name__} '{self.name}' is not built yet.")
        return tuple(next(iter(shapes.values())))

    # -- public API --------------------------------------------------------
    def forward(self, x, training=False):
        """Maps data `x` to latent `y`. Returns `(y, log|det dy/dx|)`."""
        x = ops.convert_to_tensor(x)
        self._check_input(x, "forward")
        self._ensure_built(x.shape, "forward")
        y, log_det = self._forward(x, training=training)
        return y, ops.cast(log_det, "float32")

    def inverse(self, y, training=False):
        """Maps latent `y` back to data `x`. Returns `(x, log|det dx/dy|)`."""
        y = ops.convert_to_tensor(y)
        self._check_input(y, "inverse")
        self._ensure_built(y.shape, "inverse")
        x, log_det = self._inverse(y, training=training)
        return x, ops.cast(log_det, "float32")

    def call(self, x, training=False):
        return self._forward(x, training=training)[0]

    def _forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement _forward")

    def _inverse(self, y, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement _inverse")

    def initialize(self, x):
        """Data-dependent initialisation hook; a no-op for most layers.

        Returns `forward(x)` so that a `FlowSequence` can push the batch on.
        """
        return self.forward(x)


@register
class FlowSequence(FlowLayer):
    """Composes flow layers; itself a `FlowLayer`.

    `forward` applies `layers` in list order (data -> latent), `inverse` in
    reverse order; log-dets add up. Unlike `tfb.Chain`, the list is in
    application order.

    Multi-scale factor-out: after a `Split` layer, the split-off channels are
    set aside and the remaining layers act on the kept channels only. The
    factored parts travel as values; `forward` then returns one flat latent of
    shape `(batch, D)` laid out as
    `[split_1.flatten(), split_2.flatten(), ..., final.flatten()]` (each part
    flattened in row-major HWC order), and `inverse` takes that layout back.
    Sequences without a `Split` keep the last layer's output shape.

    Args:
        layers: list of `FlowLayer`s.
    """

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

    @property
    def has_split(self):
        return any(getattr(l, "is_split", False) for l in self.flow_layers)

    def build(self, input_shape):
        # Walk the shapes once: the per-stage shapes let `inverse` unflatten.
        shape = tuple(input_shape)
        self._split_shapes = []
        for layer in self.flow_layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
            if getattr(layer, "is_split", False):
                kept, factored = layer.split_shapes(shape)
                self._split_shapes.append(factored)
                shape = kept
        self._final_shape = shape
        self._input_shape_built = tuple(input_shape)

    def _flat_dim(self, shape):
        n = 1
        for d in shape[1:]:
            n *= d
        return n

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        if not self.has_split:
            return (input_shape[0],) + tuple(self._final_shape[1:])
        dim = sum(self._flat_dim(s) for s in self._split_shapes)
        return (input_shape[0], dim + self._flat_dim(self._final_shape))

    def compute_inverse_shape(self, output_shape):
        if self.built:
            return (output_shape[0],) + tuple(self._input_shape_built[1:])
        if self.has_split:
            raise ValueError(
                f"FlowSequence '{self.name}' contains a Split: build it on "
                f"data (call forward, or build(input_shape)) before inverse."
            )
        shape = tuple(output_shape)
        for layer in reversed(self.flow_layers):
            shape = tuple(layer.compute_inverse_shape(shape))
        return shape

    def _run_forward(self, x, training, init=False):
        log_det = zeros_log_det(x)
        factored = []
        for layer in self.flow_layers:
            if init:
                x, ld = layer.initialize(x)
            else:
                x, ld = layer.forward(x, training=training)
            log_det = log_det + ld
            if getattr(layer, "is_split", False):
                x, z = layer.separate(x)
                factored.append(z)
        if factored:
            parts = [ops.reshape(z, (-1, self._flat_dim(z.shape))) for z in factored + [x]]
            x = ops.concatenate(parts, axis=1)
        return x, log_det

    def _forward(self, x, training=False):
        return self._run_forward(x, training)

    def _inverse(self, y, training=False):
        log_det = zeros_log_det(y)
        if self.has_split:
            batch = ops.shape(y)[0]
            expected = self.compute_output_shape((None,) + self._input_shape_built[1:])[1]
            if len(y.shape) != 2 or y.shape[1] != expected:
                raise ValueError(
                    f"FlowSequence '{self.name}' (multi-scale) inverts flat "
                    f"latents of shape (batch, {expected}), got "
                    f"{_shape_str(tuple(y.shape))}."
                )
            offset = 0
            factored = []
            for s in self._split_shapes:
                n = self._flat_dim(s)
                factored.append(ops.reshape(y[:, offset:offset + n], (batch,) + tuple(s[1:])))
                offset += n
            x = ops.reshape(y[:, offset:], (batch,) + tuple(self._final_shape[1:]))
        else:
            x = y
        for layer in reversed(self.flow_layers):
            if getattr(layer, "is_split", False):
                x = layer.merge(x, factored.pop())
            x, ld = layer.inverse(x, training=training)
            log_det = log_det + ld
        return x, log_det

    def initialize(self, x):
        """Runs data-dependent init of every sub-layer in order on batch `x`.

        Each layer (e.g. `ActNorm`) sets its parameters from the activations
        that reach it, then the batch moves on. Returns `forward(x)`.
        """
        self._check_input(x, "initialize")
        self._ensure_built(x.shape, "forward")
        return self._run_forward(x, training=False, init=True)

    def get_config(self):
        config = super().get_config()
        config["layers"] = [keras.saving.serialize_keras_object(l) for l in self.flow_layers]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layers"] = [keras.saving.deserialize_keras_object(l) for l in config["layers"]]
        return cls(**config)
