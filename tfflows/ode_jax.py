"""JAX ODE solves for `tfflows.layers.ContinuousFlow`:
`jax.experimental.ode.odeint` (adaptive Dormand-Prince, differentiated by
the adjoint method). JAX-only; the layer imports it lazily.

`odeint` does not report a solve that stops at `mxstep` steps (it returns
values extrapolated from its last step), so on JAX `max_num_steps` is not
applied: a solve takes the steps its tolerances need (TensorFlow's solver
raises at the cap instead)."""

import jax
import jax.numpy as jnp
from jax.experimental.ode import odeint


def solve(layer, z, context, sign, probe):
    """As `tfflows.ode_tf.solve`: returns `(z_end, log_det, info)`; `info`
    is empty (odeint gives no diagnostics)."""
    dtype = z.dtype
    length = float(layer.time_length)
    exact = probe is None
    args = [layer.dynamics_weights(dtype)]
    if context is not None:
        args.append(context)
    if not exact:
        args.append(probe)

    def func(state, s, weights, *rest):
        zt = state[0]
        ctx = rest[0] if context is not None else None
        t = s if sign > 0 else length - s
        if exact:
            f = layer.dynamics(zt, t, weights, ctx)

            def single(zi, *ci):
                return layer.dynamics(zi[None], t, weights, ci[0][None] if ci else None)[0]

            jac = jax.vmap(jax.jacfwd(single))(zt, *([ctx] if ctx is not None else []))
            d = 1
            for n in zt.shape[1:]:
                d *= n
            trace = jnp.trace(jnp.reshape(jac, (zt.shape[0], d, d)), axis1=1, axis2=2)
        else:
            e = rest[-1]
            f, vjp = jax.vjp(lambda v: layer.dynamics(v, t, weights, ctx), zt)
            trace = jnp.sum(jnp.reshape(vjp(e)[0] * e, (zt.shape[0], -1)), axis=1)
        return sign * f, sign * trace

    ts = jnp.asarray([0.0, length], dtype=dtype)
    states = odeint(func, (z, jnp.zeros((z.shape[0],), dtype)), ts, *args, rtol=layer.rtol, atol=layer.atol)
    return states[0][-1], states[1][-1], {}
