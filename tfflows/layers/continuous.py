"""Continuous normalizing flows: `ContinuousFlow` (Neural ODE, FFJORD).

- forward (data -> latent, `"iterative"`): solve `dz/dt = f(z, t, context)`
  from `z(0) = x` to `t = T` (`time_length`); `y = z(T)`.
- inverse (latent -> data, `"iterative"`): the same ODE solved backwards,
  from `z(T) = y` to `t = 0`.
- log-det (instantaneous change of variables, Chen et al. 2018, theorem 1):
  `log|det dz(T)/dz(0)| = int_0^T tr(df/dz(z(t), t)) dt`, integrated in the
  same solve as `z`. The trace is exact (`trace="exact"`: `D`
  vector-Jacobian products per evaluation, for small `D`) or Hutchinson's
  estimate `e^T (df/dz) e` with one probe `e` per solve (FFJORD,
  Grathwohl et al. 2019, section 3): unbiased, `"estimate"`.

Solvers are the maintained adaptive Dormand-Prince (dopri5) ones:
`tfp.math.ode.DormandPrince` on TensorFlow (`tfflows.ode_tf`) and
`jax.experimental.ode.odeint` on JAX (`tfflows.ode_jax`), to `rtol`/`atol`.
Gradients: `gradient="adjoint"` (the adjoint sensitivity method, Chen et
al. 2018, section 2; both backends) or `"direct"` (backpropagation through
the solver's steps; TensorFlow only: JAX's `odeint` differentiates only by
the adjoint, and asking for `"direct"` there raises).

The dynamics net `f` is an MLP for vectors `(batch, D)` and a "same"
convolution stack for images `(batch, H, W, C)`, with `t` (and the context,
if any) concatenated to the input of every layer (FFJORD's `ConcatLinear` /
`ConcatConv2d`) and smooth activations (`tanh` or `softplus`). Its last
layer starts at 1 % of the usual scale, so a new layer is close to the
identity (exactly zero dynamics would give the solver a zero error
estimate, whose step-size rule has an infinite derivative: NaN gradients
with `gradient="direct"`).
"""

import keras
import numpy as np
from keras import ops

from tfflows.layers.base import FlowLayer, concrete_value, event_size, register
from tfflows.transforms import accurate_tanh

TRACES = ("exact", "hutchinson")
GRADIENTS = ("adjoint", "direct")
ACTIVATIONS = {"tanh": accurate_tanh, "softplus": ops.softplus}  # ops.tanh is float32 on JAX


@register
class ContinuousFlow(FlowLayer):
    """A continuous normalizing flow (Chen et al. 2018, "Neural Ordinary
    Differential Equations"; Grathwohl et al. 2019, "FFJORD").

    Forward (data -> latent): `y = x + int_0^T f(z(t), t) dt`, log-det
    `int_0^T tr(df/dz) dt`; inverse: the ODE backwards, log-det negated.
    Both are adaptive ODE solves (`"iterative"`, to `rtol`/`atol`).

    Args:
        hidden: widths (channels for images) of the dynamics net's hidden layers.
        kernel_size: the convolutions' kernel size (images).
        activation: `"tanh"` or `"softplus"`.
        time_length: the integration time `T`.
        trace: `"exact"` (small `D`) or `"hutchinson"` (one probe per solve).
        hutchinson: `"normal"` or `"rademacher"` probes.
        gradient: `"adjoint"` or `"direct"` (TensorFlow only).
        rtol, atol: the solver's tolerances.
        max_num_steps: a cap on the solver's steps; a solve that reaches it
            raises (TensorFlow; JAX's `odeint` does not report it).
        seed: initial weights and Hutchinson probes.
        context_shape: event shape of an optional context (vectors).
    """

    input_ranks = (2, 4)
    forward_mode = "iterative"
    inverse_mode = "iterative"
    accepts_context = True

    def __init__(self, hidden=(64, 64), kernel_size=3, activation="tanh", time_length=1.0, trace="exact",
                 hutchinson="normal", gradient="adjoint", rtol=1e-5, atol=1e-5, max_num_steps=1000, seed=None,
                 context_shape=None, **kwargs):
        super().__init__(context_shape=context_shape, **kwargs)
        name = f"ContinuousFlow '{self.name}'"
        hidden = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"{name} needs one or more positive hidden widths. Received: hidden={hidden!r}")
        self.hidden = tuple(int(h) for h in hidden)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
            raise ValueError(f"{name} needs a positive integer kernel_size. Received: {kernel_size!r}")
        self.kernel_size = int(kernel_size)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name} activation must be one of {tuple(ACTIVATIONS)} (smooth, for the adaptive "
                             f"solver). Received: activation={activation!r}")
        self.activation = activation
        if not (isinstance(time_length, (int, float)) and time_length > 0):
            raise ValueError(f"{name} needs time_length > 0. Received: time_length={time_length!r}")
        self.time_length = float(time_length)
        if trace not in TRACES:
            raise ValueError(f"{name} trace must be one of {TRACES}. Received: trace={trace!r}")
        if hutchinson not in ("normal", "rademacher"):
            raise ValueError(f"{name} hutchinson must be 'normal' or 'rademacher'. Received: {hutchinson!r}")
        if gradient not in GRADIENTS:
            raise ValueError(f"{name} gradient must be one of {GRADIENTS}. Received: gradient={gradient!r}")
        if gradient == "direct" and keras.backend.backend() == "jax":
            raise NotImplementedError(
                f"{name}: gradient='direct' (backpropagating through the solver's steps) needs TensorFlow; "
                f"on JAX, jax.experimental.ode.odeint differentiates only by the adjoint method. Use "
                f"gradient='adjoint'.")
        for arg, value in (("rtol", rtol), ("atol", atol)):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ValueError(f"{name} needs {arg} in (0, 1). Received: {arg}={value!r}")
        if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, (int, np.integer)) or max_num_steps < 1:
            raise ValueError(f"{name} needs an integer max_num_steps >= 1. Received: {max_num_steps!r}")
        self.trace, self.hutchinson, self.gradient = trace, hutchinson, gradient
        self.rtol, self.atol, self.max_num_steps = float(rtol), float(atol), int(max_num_steps)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        if keras.backend.backend() == "tensorflow":
            self.supports_jit = False  # TFP's solver loop is not compiled with XLA here
        self.last_num_evaluations = None

    @property
    def log_det_kind(self):
        return "exact" if self.trace == "exact" else "estimate"

    def build(self, input_shape):
        self._check_rank(input_shape)
        input_shape = tuple(input_shape)
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"ContinuousFlow '{self.name}' needs a known event shape; got {input_shape}.")
        self._image = len(input_shape) == 4
        channels = int(input_shape[-1])
        extra = 1 + (event_size((None,) + self.context_shape) if self.context_shape is not None else 0)
        rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)) if self.seed is None else self.seed)
        self._kernels, self._biases = [], []
        prev = channels
        widths = list(self.hidden) + [channels]
        for i, width in enumerate(widths):
            fan_in = prev + extra
            shape = (self.kernel_size, self.kernel_size, fan_in, width) if self._image else (fan_in, width)
            scale = 1.0 / np.sqrt(fan_in * (self.kernel_size ** 2 if self._image else 1))
            if i == len(widths) - 1:
                scale *= 1e-2  # near the identity; exactly zero dynamics give the direct gradient 0 * inf
            value = scale * rng.standard_normal(shape)
            self._kernels.append(self.add_weight(shape=shape, initializer=_constant(value), name=f"kernel_{i}"))
            self._biases.append(self.add_weight(shape=(width,), initializer="zeros", name=f"bias_{i}"))
            prev = width

    # -- the dynamics -------------------------------------------------------------
    def dynamics(self, z, t, weights, context=None):
        """`f(z, t, context)` with the given weight tensors (kernels then
        biases, as `dynamics_weights` orders them): `z`'s shape."""
        n = len(self._kernels)
        kernels, biases = weights[:n], weights[n:]
        act = ACTIVATIONS[self.activation]
        batch = ops.shape(z)[0]
        t = ops.cast(t, z.dtype)
        if self._image:
            h, w = z.shape[1], z.shape[2]
            side = ops.ones((batch, h, w, 1), dtype=z.dtype) * t
            if context is not None:
                flat = ops.reshape(context, (batch, 1, 1, -1))
                side = ops.concatenate([side, ops.broadcast_to(flat, (batch, h, w, flat.shape[-1]))], axis=-1)
        else:
            side = ops.ones((batch, 1), dtype=z.dtype) * t
            if context is not None:
                side = ops.concatenate([side, ops.reshape(context, (batch, -1))], axis=-1)
        x = z
        for i, (k, b) in enumerate(zip(kernels, biases)):
            x = ops.concatenate([x, side], axis=-1)
            x = (ops.conv(x, k, padding="same") if self._image else ops.matmul(x, k)) + b
            if i < n - 1:
                x = act(x)
        return x

    def dynamics_weights(self, dtype):
        return [ops.cast(v, dtype) for v in self._kernels + self._biases]

    def _probe(self, z):
        if self.trace == "exact":
            return None
        e = keras.random.normal(ops.shape(z), dtype=z.dtype, seed=self.seed_generator)
        return ops.sign(e) if self.hutchinson == "rademacher" else e

    # -- the two directions -----------------------------------------------------------
    def exact_log_det(self, x, context=None):
        """The forward log-det with the exact trace, whatever `trace` is (one
        solve; small `D`): to check the Hutchinson estimate."""
        x = ops.convert_to_tensor(x)
        self._check_input(x, "forward")
        self._ensure_built(x.shape, "forward")
        context = self._check_context(context, x)
        return self._solve(x, context, 1.0, exact=True)[1]

    def _solve(self, z, context, sign, exact=False):
        if keras.backend.backend() == "tensorflow":
            from tfflows import ode_tf as solver
        elif keras.backend.backend() == "jax":
            from tfflows import ode_jax as solver
        else:
            raise NotImplementedError(
                f"ContinuousFlow '{self.name}' has ODE solvers for TensorFlow (tfp.math.ode) and JAX "
                f"(jax.experimental.ode), not for the {keras.backend.backend()} backend.")
        self._check_dynamics_finite(z, context)
        out, log_det, info = solver.solve(self, z, context, sign, None if exact else self._probe(z))
        self._check_solution(out, log_det, info)
        return out, log_det

    def _forward(self, x, context=None, training=False):
        return self._solve(x, context, 1.0)

    def _inverse(self, y, context=None, training=False):
        return self._solve(y, context, -1.0)

    def _check_dynamics_finite(self, z, context):
        """Eagerly, one evaluation of `f` at the start: NaN or Inf there would
        otherwise surface as a solver stuck at `max_num_steps`."""
        if concrete_value(z) is None:
            return
        f0 = concrete_value(self.dynamics(z, 0.0, self.dynamics_weights(z.dtype), context))
        if f0 is None or np.all(np.isfinite(f0)):
            return
        rows = np.flatnonzero(~np.all(np.isfinite(f0.reshape(f0.shape[0], -1)), axis=1))
        raise FloatingPointError(
            f"ContinuousFlow '{self.name}': the dynamics f(z, t) returned non-finite values (NaN or Inf) at the "
            f"start of the solve for {len(rows)} of {f0.shape[0]} rows (rows {rows[:8].tolist()}): non-finite "
            f"input, context or weights.")

    def _check_solution(self, out, log_det, info):
        status, evaluations = (None if info.get(k) is None else concrete_value(info[k]) for k in ("status", "evaluations"))
        if evaluations is not None:
            self.last_num_evaluations = int(evaluations)
        if status is not None and int(status) != 0:
            raise RuntimeError(
                f"ContinuousFlow '{self.name}': the ODE solver failed (status {int(status)}) after "
                f"{self.last_num_evaluations} evaluations of the dynamics: it reached max_num_steps="
                f"{self.max_num_steps} at rtol={self.rtol:g}, atol={self.atol:g}. Raise max_num_steps or "
                f"the tolerances, or regularise the dynamics.")
        values = concrete_value(out), concrete_value(log_det)
        if values[0] is not None and values[1] is not None and not (
                np.all(np.isfinite(values[0])) and np.all(np.isfinite(values[1]))):
            raise FloatingPointError(
                f"ContinuousFlow '{self.name}': the ODE solve gave non-finite values: the dynamics returned "
                f"NaN or Inf (non-finite input or weights, or dynamics that blow up before t = "
                f"{self.time_length:g}).")

    def get_config(self):
        config = super().get_config()
        config.update(hidden=list(self.hidden), kernel_size=self.kernel_size, activation=self.activation,
                      time_length=self.time_length, trace=self.trace, hutchinson=self.hutchinson,
                      gradient=self.gradient, rtol=self.rtol, atol=self.atol, max_num_steps=self.max_num_steps,
                      seed=self.seed)
        return config


def _constant(value):
    def init(shape, dtype=None):
        return np.asarray(value, dtype=dtype or "float32")
    return init
