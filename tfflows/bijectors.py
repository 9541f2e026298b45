"""TFP interop: any tfflows layer or sequence as a `tfp.bijectors.Bijector`.

Direction flip, explained once: a tfflows layer's `forward` maps data to
latent (as in the NICE/RealNVP/Glow papers), while a TFP bijector's
`forward` maps latent (base samples) to data. So the adapter's `forward` is
the layer's `inverse` and vice versa, and
`tfd.TransformedDistribution(base, as_bijector(flow)).log_prob(x)` equals
`base.log_prob(flow.forward(x)[0]) + flow.forward(x)[1]`.

TensorFlow backend only (TFP's TF substrate).
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfflows.layers.base import FlowLayer

tfb = tfp.bijectors


class FlowBijector(tfb.Bijector):
    """A `tfb.Bijector` calling a built tfflows `FlowLayer`.

    The layer's variables are held as attributes (`tf.Module` tracking), so
    `trainable_variables` of the bijector, and of any `TransformedDistribution`
    or `Chain` built on it, includes them and gradients reach them.

    Args:
        layer: a built `FlowLayer` (or `FlowSequence`).
        validate_args: passed to `tfb.Bijector`.
        name: bijector name. Defaults to `"tfflows_" + layer.name`.
    """

    def __init__(self, layer, validate_args=False, name=None):
        parameters = dict(locals())
        if not isinstance(layer, FlowLayer):
            raise TypeError(f"as_bijector takes a tfflows FlowLayer, got {type(layer).__name__}.")
        if not layer.built:
            raise ValueError(
                f"as_bijector: layer '{layer.name}' is not built; call layer.build(input_shape) "
                f"or run it on data first (pass event_shape= to as_bijector to build it)."
            )
        self._layer = layer
        self._data_event_shape = tuple(layer.built_input_shape[1:])
        self._latent_event_shape = tuple(layer.compute_output_shape((None,) + self._data_event_shape)[1:])
        # The underlying tf.Variables, so tf.Module finds them.
        self._layer_variables = [getattr(v, "value", v) for v in layer.weights]
        super().__init__(
            forward_min_event_ndims=len(self._latent_event_shape),
            inverse_min_event_ndims=len(self._data_event_shape),
            validate_args=validate_args,
            parameters=parameters,
            name=name or f"tfflows_{layer.name}",
        )

    @property
    def layer(self):
        return self._layer

    def _forward_event_shape(self, input_shape):
        return tf.TensorShape(self._data_event_shape)

    def _inverse_event_shape(self, output_shape):
        return tf.TensorShape(self._latent_event_shape)

    def _forward_event_shape_tensor(self, input_shape):
        return tf.constant(self._data_event_shape, dtype=tf.int32)

    def _inverse_event_shape_tensor(self, output_shape):
        return tf.constant(self._latent_event_shape, dtype=tf.int32)

    @staticmethod
    def _batched(fn, t, event_rank, context=None):
        """Runs `fn` on `t` flattened to one batch axis, then restores it.

        A `context` shares `t`'s batch shape and is flattened the same way.
        """
        t = tf.convert_to_tensor(t)
        batch_rank = tf.rank(t) - event_rank
        batch_shape = tf.shape(t)[:batch_rank]
        event_shape = t.shape[t.shape.rank - event_rank:]
        flat = tf.reshape(t, tf.concat([[-1], tf.shape(t)[batch_rank:]], 0))
        flat.set_shape([None] + event_shape.as_list())
        if context is not None:
            context = tf.convert_to_tensor(context, dtype=t.dtype)
            context_event = context.shape[t.shape.rank - event_rank:]
            context = tf.reshape(context, tf.concat([[-1], tf.shape(context)[batch_rank:]], 0))
            context.set_shape([None] + context_event.as_list())
        out, log_det = fn(flat, context=context)
        out_event = tf.shape(out)[1:]
        out = tf.reshape(out, tf.concat([batch_shape, out_event], 0))
        return out, tf.reshape(log_det, batch_shape)

    # A conditional flow takes its context as a bijector keyword, as TFP's
    # conditional bijectors do: `bijector.forward(z, context=c)`, or
    # `TransformedDistribution(...).log_prob(x, bijector_kwargs={"context": c})`.
    def _forward(self, z, context=None):
        return self._batched(self._layer.inverse, z, len(self._latent_event_shape), context)[0]

    def _inverse(self, x, context=None):
        return self._batched(self._layer.forward, x, len(self._data_event_shape), context)[0]

    def _forward_log_det_jacobian(self, z, context=None):
        return self._batched(self._layer.inverse, z, len(self._latent_event_shape), context)[1]

    def _inverse_log_det_jacobian(self, x, context=None):
        return self._batched(self._layer.forward, x, len(self._data_event_shape), context)[1]


def as_bijector(layer, event_shape=None, validate_args=False, name=None):
    """Wraps a tfflows layer (or `FlowModel`'s `flow`) as a `tfp.bijectors.Bijector`.

    The bijector's `forward` is the layer's `inverse` (latent -> data), so it
    goes where TFP expects: `tfd.TransformedDistribution(base, bij)`.

    Args:
        layer: a `FlowLayer`, or a `FlowModel` (its `flow` is used).
        event_shape: the data event shape, to build an unbuilt layer.

    >>> import numpy as np, tensorflow_probability as tfp, tfflows
    >>> from tfflows.layers import AffineCoupling
    >>> flow = AffineCoupling(hidden=8)
    >>> dist = tfp.distributions.TransformedDistribution(
    ...     tfp.distributions.Sample(tfp.distributions.Normal(0., 1.), [4]),
    ...     tfflows.as_bijector(flow, event_shape=(4,)))
    >>> tuple(dist.log_prob(np.zeros((3, 4), "float32")).shape), len(dist.trainable_variables) > 0
    ((3,), True)
    """
    if hasattr(layer, "flow") and isinstance(getattr(layer, "flow"), FlowLayer):
        layer = layer.flow
    if event_shape is not None and isinstance(layer, FlowLayer) and not layer.built:
        layer.build((None,) + tuple(event_shape))
    return FlowBijector(layer, validate_args=validate_args, name=name)
