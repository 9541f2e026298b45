"""TensorFlow ODE solves for `tfflows.layers.ContinuousFlow`: TFP's
adaptive Dormand-Prince solver (`tfp.math.ode.DormandPrince`), with the
adjoint sensitivity method (TFP's own gradient) or backpropagation through
the solver's steps (`gradient="direct"`). TensorFlow-only; the layer imports
it lazily."""

import functools
import weakref

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp


class DirectDormandPrince(tfp.math.ode.DormandPrince):
    """`tfp.math.ode.DormandPrince` differentiated through its steps.

    TFP's `solve` wraps the integration in a custom gradient that runs the
    adjoint ODE backwards; this subclass's `solve` runs the solver's own
    integration loop (`_solve`, which every TFP solver implements) so that
    TensorFlow backpropagates through each step instead: more memory, no
    second solve, gradients of the discretised solution."""

    def solve(self, ode_fn, initial_time, initial_state, solution_times, jacobian_fn=None,
              jacobian_sparsity=None, batch_ndims=None, previous_solver_internal_state=None, constants=None):
        return self._solve(ode_fn=functools.partial(ode_fn, **(constants or {})), initial_time=initial_time,
                           initial_state=initial_state, solution_times=solution_times, jacobian_fn=jacobian_fn,
                           jacobian_sparsity=jacobian_sparsity, batch_ndims=batch_ndims,
                           previous_solver_internal_state=previous_solver_internal_state)


def solve(layer, z, context, sign, probe):
    """Integrates `layer`'s dynamics (and the trace of its Jacobian) over
    `[0, layer.time_length]`, forwards (`sign=1`) or backwards (`sign=-1`,
    time reversed). Returns `(z_end, log_det, info)`; `info` holds the
    solver's `status` (0: success) and the number of dynamics evaluations.

    Called eagerly, the solve runs as a `tf.function` cached on the layer
    (TFP's solver loop op by op in eager mode is about 100x slower); inside
    a traced function it is inlined."""
    weights = layer.dynamics_weights(z.dtype)
    if not tf.executing_eagerly():
        return _solve(layer, z, context, sign, probe, weights)
    key = (float(sign), probe is None, context is None, z.dtype.name, layer.gradient, layer.rtol, layer.atol,
           layer.max_num_steps, layer.time_length)
    cache = _COMPILED.setdefault(layer, {})
    if key not in cache:
        ref = weakref.ref(layer)  # the cache must not keep its layer alive
        cache[key] = tf.function(
            lambda z, context, probe, weights: _solve(ref(), z, context, sign, probe, weights), reduce_retracing=True)
    try:
        return cache[key](z, context, probe, weights)
    except tf.errors.InvalidArgumentError as err:
        if "max_num_steps exceeded" not in str(err):
            raise
        raise RuntimeError(
            f"ContinuousFlow '{layer.name}': the ODE solver reached max_num_steps={layer.max_num_steps} before "
            f"t = {layer.time_length:g} at rtol={layer.rtol:g}, atol={layer.atol:g} (the dynamics are stiff, "
            f"blow up or turn NaN). Raise max_num_steps or the tolerances, or regularise the dynamics.") from None


#: layer -> {(sign, exact, no context, dtype): tf.function}
_COMPILED = weakref.WeakKeyDictionary()


def _solve(layer, z, context, sign, probe, weights):
    dtype = z.dtype
    length = float(layer.time_length)
    exact = probe is None
    constants = {"weights": weights}
    if context is not None:
        constants["context"] = context

    def ode_fn(s, state, weights, context=None):
        zt = state[0]
        t = s if sign > 0 else length - s
        with tf.GradientTape(persistent=exact) as tape:
            tape.watch(zt)
            f = layer.dynamics(zt, t, weights, context)
        if exact:  # the diagonal, one vector-Jacobian product per dimension (small D)
            d = int(np.prod(zt.shape[1:]))
            eye = np.eye(d, dtype=zt.dtype.as_numpy_dtype).reshape((d, 1) + tuple(zt.shape[1:]))
            trace = tf.add_n([tf.reduce_sum(tf.reshape(tape.gradient(f, zt, output_gradients=tf.broadcast_to(
                e, tf.shape(zt))) * e, [-1, d]), axis=1) for e in eye])
        else:
            g = tape.gradient(f, zt, output_gradients=probe)
            trace = tf.reduce_sum(tf.reshape(g * probe, [-1, int(np.prod(zt.shape[1:]))]), axis=1)
        return sign * f, sign * trace

    cls = tfp.math.ode.DormandPrince if layer.gradient == "adjoint" else DirectDormandPrince
    solver = cls(rtol=layer.rtol, atol=layer.atol, max_num_steps=layer.max_num_steps)
    results = solver.solve(ode_fn, tf.constant(0.0, dtype), (z, tf.reduce_sum(tf.zeros_like(z), axis=list(range(1, len(z.shape))))),
                           solution_times=tf.constant([length], dtype), constants=constants)
    info = {"status": results.diagnostics.status, "evaluations": results.diagnostics.num_ode_fn_evaluations}
    return results.states[0][-1], results.states[1][-1], info
