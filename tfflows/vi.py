"""Variational inference with flows: fit `q(z | context)` to an unnormalised density.

A `FlowModel` is the variational distribution: `sample_and_log_prob(n,
context)` draws `z ~ q` with `log q(z)` from one inverse pass (one pass for
flows whose latent -> data direction is analytic: planar, radial, Sylvester,
IAF, couplings), `log_prob(z, context)` evaluates it, and its weights are
what training changes. This module adds the reverse-KL objective:

- `fit_to_density(target_log_prob, model, steps=..., batch_size=...)`
  maximises the reparameterised ELBO `E_q[log p~(z) - log q(z)]`, i.e.
  minimises `KL(q || p) = log Z - ELBO`, with the Keras trainer of the
  active backend (TensorFlow or JAX); `ReverseKL` is that trainer, a
  `keras.Model` whose `fit` step is one ELBO step.
- `elbo`, `iw_bound` (the importance-weighted bound of Burda et al. 2016,
  a log-mean-exp of `k` weights, which tightens towards `log Z` as `k`
  grows) and `log_weights`, their common part.

`target_log_prob` maps a batch `z` `(n, dim)` to `log p~(z)` `(n,)` with
`keras.ops` (it runs inside the compiled step); for a conditional target,
`target_log_prob(z, context)`.

References: Rezende & Mohamed 2015, https://arxiv.org/abs/1505.05770;
Roeder, Wu & Duvenaud 2017 (path-derivative, "sticking the landing"
gradients), https://arxiv.org/abs/1703.09194; Burda, Grosse &
Salakhutdinov 2016 (importance-weighted bound), https://arxiv.org/abs/1509.00519
"""

import math
import time

import keras
import numpy as np
from keras import ops

from tfflows import optimizers
from tfflows.models import FlowModel, StopOnNaN, default_optimizer


def _check_model(model):
    if not isinstance(model, FlowModel):
        raise TypeError(f"the variational family must be a tfflows FlowModel, got {type(model).__name__}.")
    if len(model.data_shape) != 1:
        raise ValueError(f"variational inference here is over vectors z of shape (dim,); the model's data "
                         f"shape is {model.data_shape}.")


def _check_context(model, context):
    """The context as a float32 numpy array `(B, *context_shape)`, or `None`."""
    if model.context_shape is None:
        if context is not None:
            raise ValueError(f"FlowModel '{model.name}' is unconditional (no context_shape) but got a context; "
                             f"build it with context_dim=... to condition q on one.")
        return None
    if context is None:
        raise ValueError(f"FlowModel '{model.name}' is conditional (context_shape={model.context_shape}) and "
                         f"needs a context, e.g. context=np.zeros((1, {', '.join(map(str, model.context_shape))})).")
    context = np.asarray(ops.convert_to_numpy(context), dtype="float32")
    if context.ndim < 1 or tuple(context.shape[1:]) != model.context_shape or context.shape[0] < 1:
        raise ValueError(f"FlowModel '{model.name}' expects a context of shape (batch, "
                         f"{', '.join(map(str, model.context_shape))}), got {context.shape}.")
    if not np.all(np.isfinite(context)):
        raise ValueError(f"the context given to FlowModel '{model.name}' holds NaN or infinite values.")
    return context


def _target(target_log_prob, z, context):
    """`log p~(z)` `(n,)` in `z`'s dtype, checking the shape the target returns."""
    out = target_log_prob(z) if context is None else target_log_prob(z, context)
    out = ops.convert_to_tensor(out)
    n = z.shape[0]
    if len(out.shape) != 1 or (out.shape[0] is not None and n is not None and out.shape[0] != n):
        raise ValueError(f"target_log_prob must map a batch z of shape (n, dim) to log-densities of shape (n,); "
                         f"for z of shape {tuple(z.shape)} it returned shape {tuple(out.shape)}.")
    return ops.cast(out, z.dtype)


def log_weights(target_log_prob, model, n, context=None, seed=None):
    """`log p~(z) - log q(z | context)` for `n` draws `z ~ q`: `(n,)`, or
    `(n, B)` with a context of `B` rows (`n` draws per row).

    The log importance weights, differentiable in the model's weights
    (reparameterised). `elbo` and `iw_bound` average them.
    """
    _check_model(model)
    if context is None:
        if model.context_shape is not None:
            _check_context(model, context)
        z, log_q = model.sample_and_log_prob(n, seed=seed)
        return _target(target_log_prob, z, None) - log_q
    if not hasattr(context, "shape"):
        context = np.asarray(context, dtype="float32")
    rows = context.shape[0]
    tiled = ops.tile(ops.convert_to_tensor(context), (n,) + (1,) * (len(context.shape) - 1))  # draw i, row b: i*B+b
    z, log_q = model.sample_and_log_prob(n * rows, context=tiled, seed=seed)
    lw = _target(target_log_prob, z, ops.cast(tiled, z.dtype)) - log_q
    return ops.reshape(lw, (n, rows))


def elbo(target_log_prob, model, n, context=None, seed=None):
    """The evidence lower bound `E_q[log p~(z) - log q(z)] <= log Z`, a Monte
    Carlo mean over `n` draws: a scalar tensor, or `(B,)` with a context of
    `B` rows. `log Z - elbo` is `KL(q || p)` (plus Monte Carlo noise).

    >>> import numpy as np, tfflows
    >>> from keras import ops
    >>> q = tfflows.zoo.planar(2, flows=2)
    >>> target = lambda z: -0.5 * ops.sum(z * z, axis=1) - np.log(2 * np.pi)  # N(0, I): log Z = 0
    >>> bool(float(elbo(target, q, 256, seed=0)) <= 0.05)
    True
    """
    return ops.mean(log_weights(target_log_prob, model, n, context=context, seed=seed), axis=0)


def iw_bound(target_log_prob, model, n, k, context=None, seed=None):
    """The importance-weighted bound `E[log (1/k) sum_j w_j]`, `w_j = p~(z_j)
    / q(z_j)` over `k` draws, averaged over `n` independent estimates: a
    scalar tensor, or `(B,)` with a context of `B` rows.

    `elbo <= iw_bound(k) <= iw_bound(k') <= log Z` for `k <= k'` (in
    expectation), and it tends to `log Z` as `k` grows: the estimate of
    `log p(x)` for a VAE whose posterior is `q`. It draws `n * k` samples
    (times `B`) in one pass.
    """
    for name, value in (("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"iw_bound needs a positive integer {name}. Received: {name}={value!r}")
    lw = log_weights(target_log_prob, model, int(n) * int(k), context=context, seed=seed)
    lw = ops.reshape(lw, (int(n), int(k)) + tuple(lw.shape[1:]))
    return ops.mean(ops.logsumexp(lw, axis=1) - math.log(k), axis=0)


class _LastValue(keras.metrics.Metric):
    """A metric that reports the value of the last step (not a running mean)."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.value.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        self.value.assign(0.0)


class ReverseKL(keras.Model):
    """Trains a flow `q(z | context)` towards `p~` by reverse KL: `fit` takes
    one reparameterised ELBO step per batch.

    Each step draws `batch_size` samples `z ~ q` with `log q(z)` from
    `model.sample_and_log_prob` (one inverse pass) and minimises
    `mean(log q(z) - beta log p~(z))`, `beta` ramping linearly from 0.01 to 1
    over `anneal_steps` (Rezende & Mohamed's annealing; 0 for none). The
    inputs `fit` feeds are the step indices, one per batch
    (`fit_to_density` does that); the metrics are `elbo` (the step's ELBO,
    at `beta = 1`) and `non_finite` (how many of the step's samples the
    target returned NaN or Inf for).

    With `path_derivative=True` the `log q(z)` in the loss is evaluated at
    the samples with the weights held constant (`stop_gradient`), the
    "sticking the landing" estimator of Roeder et al. (2017): it drops the
    score term, whose expectation is zero, so its variance vanishes as q
    approaches p. It needs `log q` of given points, i.e. the flow's forward
    direction (data -> latent), so not Sylvester layers.

    Args:
        model: the `FlowModel` `q` (vectors, `n_bits=None`).
        target_log_prob: `z (n, dim) -> log p~(z) (n,)`, or `(z, context)`
            for a conditional model, in `keras.ops`.
        batch_size: samples per step. Defaults to 256.
        context: `(B, k)` context rows for a conditional `q`; the step's
            samples take the rows in turn (`i mod B`).
        path_derivative: the path-derivative gradient. Defaults to `False`.
        anneal_steps: steps of the `beta` ramp. Defaults to 0.
        seed: seed of the sampling noise. Defaults to 0.
    """

    def __init__(self, model, target_log_prob, batch_size=256, context=None, path_derivative=False,
                 anneal_steps=0, seed=0, **kwargs):
        super().__init__(**kwargs)
        _check_model(model)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"ReverseKL needs a positive integer batch_size. Received: batch_size={batch_size!r}")
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, (int, np.integer)) or anneal_steps < 0:
            raise ValueError(f"ReverseKL needs an integer anneal_steps >= 0. Received: anneal_steps={anneal_steps!r}")
        if not callable(target_log_prob):
            raise TypeError(f"target_log_prob must be a callable z -> log p~(z); got {type(target_log_prob).__name__}.")
        if path_derivative and model.flow.forward_mode is None:
            raise ValueError(
                f"path_derivative=True evaluates log q at the samples with the weights held fixed, which needs the "
                f"flow's forward direction (data -> latent); FlowModel '{model.name}' has none (a Sylvester layer, "
                f"say). Use path_derivative=False.")
        self.model = model
        self.target_log_prob = target_log_prob
        self.batch_size = int(batch_size)
        self.path_derivative = bool(path_derivative)
        self.anneal_steps = int(anneal_steps)
        context = _check_context(model, context)
        # A constant of the compiled step: each sample takes a context row in turn.
        self.context_rows = None if context is None else context[np.arange(self.batch_size) % context.shape[0]]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.elbo_tracker = _LastValue("elbo")
        self.non_finite_tracker = _LastValue("non_finite")
        self.built = True

    def _log_q_at_fixed_weights(self, z, context):
        # log q(z) with every weight of q read through stop_gradient: the
        # gradient reaches the weights only through z (the path).
        mapping = [(v, ops.stop_gradient(v.value)) for v in self.model.variables]
        with keras.StatelessScope(state_mapping=mapping):
            return self.model.log_prob(z, context=context)

    def call(self, inputs, training=False):
        context = None if self.context_rows is None else ops.convert_to_tensor(self.context_rows)
        z, log_q = self.model.sample_and_log_prob(self.batch_size, context=context, seed=self.seed_generator)
        log_p = _target(self.target_log_prob, z, context)
        finite = ops.isfinite(log_p)
        if self.path_derivative:
            log_q_loss = self._log_q_at_fixed_weights(z, context)
        else:
            log_q_loss = log_q
        beta = 1.0
        if self.anneal_steps:
            step = ops.cast(ops.reshape(inputs, (-1,))[0], log_p.dtype)
            beta = ops.minimum(1.0, 0.01 + 0.99 * step / self.anneal_steps)
        loss = ops.where(finite, log_q_loss - beta * ops.where(finite, log_p, 0.0), 0.0)
        non_finite = ops.sum(ops.cast(ops.logical_not(finite), "float32"))
        return loss, ops.mean(log_p - log_q), non_finite

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(ops.cast(y_pred[0], "float32"))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.elbo_tracker.update_state(y_pred[1])
        self.non_finite_tracker.update_state(y_pred[2])
        return super().compute_metrics(x, y, y_pred, sample_weight)


class _Watch(StopOnNaN):
    """Records the ELBO of every step, calls the user's callback, and stops
    with a clear error at the first step where the target is not finite
    (restoring the last finite weights, as `StopOnNaN` does)."""

    def __init__(self, steps, batch_size, callback):
        super().__init__(restore=True)
        self.steps, self.batch_size, self.callback = steps, batch_size, callback
        self.elbo = []
        self.start = self.first_step_end = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        bad = int(round(float(logs.get("non_finite", 0.0))))
        if bad:
            self.model.stop_training = True
            restored = ""
            if self._restore_snapshot():
                restored = (f" The weights were restored to a copy from optimizer step {self._snapshot_step}, "
                            f"before it.")
            raise ValueError(
                f"target_log_prob returned NaN or Inf for {bad} of {self.batch_size} samples at step {batch + 1} "
                f"(of {self.steps}).{restored} Make the target finite wherever q can put a sample (e.g. clip "
                f"before a log, or return a large negative value outside its support).")
        super().on_train_batch_end(batch, logs)
        self.elbo.append(float(logs["elbo"]))
        if batch == 0:
            self.first_step_end = time.perf_counter()
        if self.callback is not None and self.callback(batch + 1, self.elbo[-1]):
            self.model.stop_training = True


def fit_to_density(target_log_prob, model, steps=1000, batch_size=256, optimizer=None, path_derivative=False,
                   context=None, seed=0, callback=None, anneal_steps=0, jit_compile="auto"):
    """Fits the flow `model` (`q`) to the unnormalised density `p~` by reverse KL.

    Maximises the reparameterised ELBO `E_q[log p~(z) - log q(z)]` (so
    minimises `KL(q || p) = log Z - ELBO`) for `steps` steps of
    `batch_size` samples with the backend's Keras trainer (`ReverseKL`),
    on TensorFlow or JAX.

    Args:
        target_log_prob: `z (n, dim) -> log p~(z) (n,)` in `keras.ops`
            (e.g. `tfflows.datasets.energy`); `(z, context) -> (n,)` for a
            conditional model.
        model: a `FlowModel` over vectors (`tfflows.zoo.planar(...)`, ...).
        steps: optimisation steps. Defaults to 1000.
        batch_size: samples per step. Defaults to 256.
        optimizer: a Keras optimizer. Defaults to Adam(1e-3) with gradient
            norm clipping at 100 (`tfflows.models.default_optimizer`).
        path_derivative: use the path-derivative ("sticking the landing")
            gradient (needs the flow's forward direction). Defaults to `False`.
        context: `(B, k)` context rows for a conditional model.
        seed: seed of the sampling noise. Defaults to 0.
        callback: `callback(step, elbo)` after each step; returning `True`
            stops training.
        anneal_steps: ramp the target's weight from 0.01 to 1 over this many
            steps (Rezende & Mohamed's annealing). Defaults to 0 (off).
        jit_compile: passed to `compile`. Defaults to `"auto"`.

    Returns:
        a dict: `"elbo"`, the ELBO of each step (float64 numpy, at
        `beta = 1`); `"seconds"`, the wall time; `"steps_per_second"`,
        measured after the first (compiling) step.

    Raises:
        ValueError: a context missing, unexpected or of the wrong shape, a
            target returning the wrong shape, or NaN/Inf (naming the step
            and how many samples; the weights are put back to their last
            finite values), or `path_derivative` for a flow without a
            forward direction.
        TrainingDivergedError: the loss itself became NaN or infinite.

    >>> import numpy as np, tfflows
    >>> from keras import ops
    >>> q = tfflows.zoo.radial(2, flows=2)
    >>> target = lambda z: -0.5 * ops.sum(ops.square(z - 1.0), axis=1)  # N(1, I), log Z = log(2 pi)
    >>> h = fit_to_density(target, q, steps=5, batch_size=32)
    >>> h["elbo"].shape
    (5,)
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"fit_to_density needs a positive integer steps. Received: steps={steps!r}")
    trainer = ReverseKL(model, target_log_prob, batch_size=batch_size, context=context,
                        path_derivative=path_derivative, anneal_steps=anneal_steps, seed=seed)
    trainer.compile(optimizer=optimizer or default_optimizer(), jit_compile=jit_compile)
    if model.built:  # the trainer's variables are the model's
        optimizers.build_before_tracing(trainer)
    watch = _Watch(int(steps), int(batch_size), callback)
    step_index = np.arange(int(steps), dtype="float32")[:, None]
    trainer.fit(step_index, batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    end = time.perf_counter()
    done = len(watch.elbo)
    rate = (done - 1) / (end - watch.first_step_end) if done > 1 and end > watch.first_step_end else float("nan")
    return {"elbo": np.asarray(watch.elbo, dtype="float64"), "seconds": end - watch.start, "steps_per_second": rate}
