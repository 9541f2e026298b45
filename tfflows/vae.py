"""Variational autoencoders whose posterior is a tfflows flow.

`VAE` is a `keras.Model` for binary data (dynamically binarized MNIST, say):

- an encoder `x -> h` (an MLP by default), the *context* of the posterior;
- the posterior `q(z | x) = q(z | h(x))`, any `FlowModel` over `(latent_dim,)`
  with `context_shape=(h_dim,)` (`tfflows.zoo.planar(..., context_dim=h_dim)`
  and the other builders of `tfflows.zoo.vi`; `tfflows.zoo.vae` builds the
  whole model). A draw `z ~ q(z | x)` and its `log q` come from one pass of
  the flow's latent -> data direction, as `FlowModel.sample_and_log_prob`;
- a standard normal prior `p(z)` and a Bernoulli decoder `p(x | z)` whose
  network outputs the logits.

`fit` minimises the negative ELBO,
`-(log p(x | z) + log p(z) - log q(z | x))` with one draw `z ~ q(z | x)` per
example (reparameterised), optionally with the KL part weighted by `beta`
ramping from 0 to 1 over `warmup_steps` (the warm-up of Bowman et al. 2016
and Sonderby et al. 2016, which the Sylvester paper uses). It runs the
backend's own Keras trainer, on TensorFlow and JAX. Evaluation:
`neg_elbo(x, n_samples)` and `importance_nll(x, k)` (the importance-weighted
estimate of `-log p(x)` of Burda et al. 2016, a log-mean-exp of `k` weights,
in chunks so `k = 5000` fits in memory) per example, in nats.

Their noise is numpy's, drawn from `seed`, and passed to a compiled
function: the same seed gives the same numbers on TensorFlow and JAX, and
before and after a save and load.

Data: `binarize(images, seed)` draws one Bernoulli binarization (the test
set, with a fixed seed); `DynamicBinarization(images, batch_size, seed)`
is a `keras.utils.PyDataset` that draws a fresh one for every batch of
every epoch (dynamic binarization, the usual protocol for the real MNIST).

References: Kingma & Welling 2014, https://arxiv.org/abs/1312.6114;
Rezende & Mohamed 2015, https://arxiv.org/abs/1505.05770; Burda, Grosse &
Salakhutdinov 2016, https://arxiv.org/abs/1509.00519; van den Berg et al.
2018 (Sylvester flows), https://arxiv.org/abs/1803.05649
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from tfflows import optimizers
from tfflows.layers.base import concrete_value
from tfflows.models import FlowModel, StopOnNaN, default_optimizer

__all__ = ["VAE", "DynamicBinarization", "binarize", "check_images"]

_LOG_2PI = math.log(2.0 * math.pi)


def _positive_int(name, value, what, low=1):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < low:
        raise ValueError(f"{what} needs an integer {name} >= {low}. Received: {name}={value!r}")
    return int(value)


def _seed_value(seed, what):
    """An int seed; `None` draws one from numpy's global state (which
    `keras.utils.set_random_seed` seeds)."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    return _positive_int("seed", seed, what, low=0)


# ---------------------------------------------------------------- binarization


def check_images(images, what="images"):
    """Pixel intensities in `[0, 1]` as float32 `(N, D)`.

    Takes uint8 images (`0..255`, divided by 255) or floats in `[0, 1]`, of
    shape `(N, H, W)`, `(N, H, W, 1)` or `(N, D)`. Raises `ValueError`
    naming the problem for an empty or one-dimensional array, NaN or
    infinite values, or floats outside `[0, 1]`; `TypeError` for other dtypes.
    """
    x = np.asarray(images)
    if x.ndim < 2 or x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{what} must be a non-empty batch of shape (N, H, W), (N, H, W, 1) or (N, D); "
                         f"got shape {x.shape}.")
    if x.dtype == np.uint8:
        return (x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255.0))
    if x.dtype.kind == "b":
        return x.reshape(x.shape[0], -1).astype(np.float32)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be uint8 (0..255) or float in [0, 1]; got dtype {x.dtype}.")
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{what} hold {bad} NaN or infinite value(s).")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{what} must be intensities in [0, 1] (or uint8 0..255); got values in "
                         f"[{lo:g}, {hi:g}]. Divide 8-bit pixels stored as {x.dtype} by 255.")
    return x


def binarize(images, seed=0):
    """One Bernoulli binarization: pixel `i` is 1 with probability `x_i`.

    Args:
        images: uint8 `(N, H, W)` (or `(N, H, W, 1)`, `(N, D)`) images, or
            intensities in `[0, 1]`.
        seed: seed of the draw. Defaults to 0: a fixed binarization, for the
            test set.

    Returns:
        float32 `(N, D)` of 0s and 1s.
    """
    p = check_images(images)
    rng = np.random.default_rng(_seed_value(seed, "binarize"))
    return (rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)


class DynamicBinarization(keras.utils.PyDataset):
    """Batches of freshly binarized images for `VAE.fit`: every batch of
    every epoch is a new Bernoulli draw (dynamic binarization).

    Batch `i` of epoch `e` is drawn from `numpy.random.default_rng([seed,
    e, i])` (and epoch `e`'s order from `[seed, e]`), so a run is
    reproducible whatever the order Keras asks for the batches in, and works
    on every backend (no tf.data).

    Args:
        images: uint8 images `(N, H, W)` or intensities in `[0, 1]` (see
            `check_images`).
        batch_size: examples per batch. Defaults to 100.
        seed: seed of the draws and the shuffling. Defaults to 0.
        shuffle: a new order every epoch. Defaults to `True`.
        drop_remainder: leave out the last partial batch (so every batch has
            the same shape). Defaults to `True`.
        **kwargs: `keras.utils.PyDataset`'s `workers`, `use_multiprocessing`,
            `max_queue_size`.
    """

    def __init__(self, images, batch_size=100, seed=0, shuffle=True, drop_remainder=True, **kwargs):
        super().__init__(**kwargs)
        self.p = check_images(images)
        self.batch_size = _positive_int("batch_size", batch_size, "DynamicBinarization")
        if self.batch_size > self.p.shape[0] and drop_remainder:
            raise ValueError(f"DynamicBinarization got {self.p.shape[0]} images, fewer than one batch of "
                             f"{self.batch_size}; lower batch_size or pass drop_remainder=False.")
        self.seed = _seed_value(seed, "DynamicBinarization")
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.epoch = 0

    def __len__(self):
        n = self.p.shape[0]
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def order(self, epoch):
        """The example order of `epoch`."""
        if not self.shuffle:
            return np.arange(self.p.shape[0])
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.p.shape[0])

    def batch(self, index, epoch):
        """Batch `index` of `epoch`, binarized: float32 `(batch_size, D)`."""
        if not 0 <= index < len(self):
            raise IndexError(f"DynamicBinarization has {len(self)} batches; asked for batch {index}.")
        rows = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        p = self.p[rows]
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        return (rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)

    def __getitem__(self, index):
        return self.batch(index, self.epoch)

    def on_epoch_end(self):
        self.epoch += 1


# ------------------------------------------------------------------ the model


class _Holder:
    """Holds a compiled function outside Keras attribute tracking (not saved)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn


def _mlp(widths, out, activation, out_activation, seed, name):
    layers = []
    for i, w in enumerate(list(widths) + [out]):
        last = i == len(widths)
        init = "glorot_uniform" if seed is None else keras.initializers.GlorotUniform(seed=int(seed) + i)
        layers.append(keras.layers.Dense(int(w), activation=out_activation if last else activation,
                                         kernel_initializer=init, name=f"dense{i}"))
    return keras.Sequential(layers, name=name)


def _widths(hidden):
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        hidden = (int(hidden),)
    try:
        widths = tuple(int(w) for w in hidden)
    except (TypeError, ValueError):
        raise ValueError(f"VAE hidden must be a sequence of positive layer widths. "
                         f"Received: hidden={hidden!r}") from None
    if any(w < 1 for w in widths) or any(isinstance(w, bool) for w in hidden):
        raise ValueError(f"VAE hidden must be a sequence of positive layer widths. Received: hidden={hidden!r}")
    return widths


@keras.saving.register_keras_serializable(package="tfflows")
class VAE(keras.Model):
    """A VAE with a flow posterior amortised through the encoder's output.

    `log p(x) >= E_q[log p(x | z) + log p(z) - log q(z | x)]`, with
    `q(z | x)` the flow `posterior` conditioned on `h = encoder(x)`,
    `p(z) = N(0, I)` and `p(x | z) = Bernoulli(sigmoid(decoder(z)))` per
    pixel.

    `fit` takes batches of `x` only (a `DynamicBinarization`, or an array of
    0/1 values), one draw `z ~ q(z | x)` per example, and minimises
    `mean(-log p(x | z) + beta (log q(z | x) - log p(z)))`, `beta =
    min(1, step / warmup_steps)` (1 without warm-up); `step` counts training
    steps and is saved with the model, so a resumed run continues the
    ramp. Metrics: `loss` (at that `beta`), `neg_elbo` (at `beta = 1`) and
    `kl` (the one-draw estimate of `KL(q(z | x) || p(z))`). `evaluate` and
    the test step use `beta = 1`.

    Args:
        posterior: a `FlowModel` over `(latent_dim,)` with `n_bits=None`
            and `context_shape=(h_dim,)`, whose latent -> data direction
            (`inverse`) is available (every `tfflows.zoo.vi` builder and
            `tfflows.zoo.iaf`).
        data_shape: shape of one example, e.g. `(784,)` or `(28, 28)`
            (flattened inside). Defaults to `(784,)`.
        hidden: widths of the default MLPs' hidden layers: the encoder is
            `D -> hidden... -> h_dim`, the decoder `latent_dim ->
            reversed(hidden)... -> D` logits. Defaults to `(300, 300)`.
        activation: the MLPs' activation (the encoder's output `h` too).
            Defaults to `"elu"`.
        warmup_steps: steps of the KL warm-up (0: none). Defaults to 0.
        encoder: a Keras layer `(batch, D) -> (batch, h_dim)` instead of the
            MLP (it must be serializable for `save`).
        decoder: a Keras layer `(batch, latent_dim) -> (batch, D)` logits
            instead of the MLP.
        seed: seed of the default MLPs' initial weights and of the training
            noise. Defaults to `None`.

    >>> import numpy as np, tfflows
    >>> q = tfflows.zoo.planar(2, flows=2, context_dim=8)
    >>> vae = VAE(q, data_shape=(6,), hidden=(16,), seed=0)
    >>> x = np.array([[0, 1, 1, 0, 1, 0]] * 3, "float32")
    >>> vae.neg_elbo(x, seed=0).shape, bool(np.all(vae.importance_nll(x, k=10, seed=0) > 0))
    ((3,), True)
    """

    def __init__(self, posterior, data_shape=(784,), hidden=(300, 300), activation="elu", warmup_steps=0,
                 encoder=None, decoder=None, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(posterior, dict):
            posterior = keras.saving.deserialize_keras_object(posterior)
        self._check_posterior(posterior)
        self.posterior = posterior
        self.latent_dim = int(posterior.data_shape[0])
        self.context_dim = int(posterior.context_shape[0])
        try:
            self.data_shape = tuple(int(d) for d in data_shape)
        except (TypeError, ValueError):
            raise ValueError(f"VAE data_shape must be a tuple of positive sizes. "
                             f"Received: data_shape={data_shape!r}") from None
        if not self.data_shape or any(d < 1 for d in self.data_shape):
            raise ValueError(f"VAE data_shape must be a tuple of positive sizes. Received: data_shape={data_shape!r}")
        self.input_dim = int(np.prod(self.data_shape))
        self.hidden = _widths(hidden)
        self.activation = activation
        self.warmup_steps = _positive_int("warmup_steps", warmup_steps, "VAE", low=0)
        self.seed = None if seed is None else _positive_int("seed", seed, "VAE", low=0)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if isinstance(decoder, dict):
            decoder = keras.saving.deserialize_keras_object(decoder)
        self.encoder = encoder if encoder is not None else _mlp(
            self.hidden, self.context_dim, activation, activation, self.seed, "encoder")
        self.decoder = decoder if decoder is not None else _mlp(
            self.hidden[::-1], self.input_dim, activation, None, None if self.seed is None else self.seed + 100,
            "decoder")
        for net, name, n_in, n_out in ((self.encoder, "encoder", self.input_dim, self.context_dim),
                                       (self.decoder, "decoder", self.latent_dim, self.input_dim)):
            if not isinstance(net, keras.layers.Layer):
                raise TypeError(f"VAE {name} must be a Keras layer; got {type(net).__name__}.")
            out = net(np.zeros((2, n_in), "float32"))
            if tuple(out.shape) != (2, n_out):
                raise ValueError(f"VAE {name} must map (batch, {n_in}) to (batch, {n_out}); it maps (2, {n_in}) "
                                 f"to {tuple(out.shape)}.")
        self.step = self.add_weight(name="step", shape=(), initializer="zeros", trainable=False)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.neg_elbo_tracker = keras.metrics.Mean(name="neg_elbo")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.built = True

    @staticmethod
    def _check_posterior(q):
        if not isinstance(q, FlowModel):
            raise TypeError(f"VAE posterior must be a tfflows FlowModel (e.g. tfflows.zoo.planar(dim, "
                            f"context_dim=h_dim)); got {type(q).__name__}.")
        if len(q.data_shape) != 1 or q.n_bits is not None:
            raise ValueError(f"VAE posterior must be a FlowModel over vectors (latent_dim,) with n_bits=None; "
                             f"FlowModel '{q.name}' has data_shape={q.data_shape}, n_bits={q.n_bits}.")
        if q.context_shape is None or len(q.context_shape) != 1:
            raise ValueError(f"VAE posterior must be conditional on the encoder's output, context_shape=(h_dim,) "
                             f"(build it with context_dim=h_dim); FlowModel '{q.name}' has "
                             f"context_shape={q.context_shape}.")
        if q.flow.inverse_mode is None:
            raise ValueError(f"VAE posterior draws z ~ q by the flow's latent -> data direction (inverse), which "
                             f"FlowModel '{q.name}' does not have.")
        if tuple(q.latent_shape) != tuple(q.data_shape):
            raise ValueError(f"VAE posterior's latent shape {q.latent_shape} differs from its data shape "
                             f"{q.data_shape}.")

    # -- input checks -------------------------------------------------------------
    def check_data(self, x, what="x"):
        """`x` as float32 `(batch, D)` after checking it: the shape (batch,
        *data_shape), no NaN or infinite values and values in `[0, 1]`
        (where the values are known: numpy or eager tensors)."""
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        shape = tuple(x.shape)
        if len(shape) < 1 or shape[0] == 0:
            raise ValueError(f"VAE got an empty batch of {what} (shape {shape}).")
        if shape[1:] != self.data_shape:
            hint = ""
            if None not in shape[1:] and int(np.prod(shape[1:])) == self.input_dim:
                hint = (f" Reshape it, e.g. x.reshape(len(x), {', '.join(map(str, self.data_shape))}), or build "
                        f"the VAE with data_shape={shape[1:]}.")
            raise ValueError(f"VAE expects {what} of shape (batch, {', '.join(map(str, self.data_shape))}), "
                             f"got {shape}.{hint}")
        value = concrete_value(x)
        if value is not None:
            if value.dtype.kind not in "fiub":
                raise TypeError(f"VAE expects numeric {what} in [0, 1], got dtype {value.dtype}.")
            value = value.astype(np.float32, copy=False)
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise ValueError(f"VAE got {bad} NaN or infinite value(s) in its {what}.")
            lo, hi = float(value.min()), float(value.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"VAE models binary {what} (pixels in [0, 1]); got values in [{lo:g}, {hi:g}]. "
                                 f"Binarize uint8 images first: tfflows.vae.binarize(images, seed) or "
                                 f"tfflows.vae.DynamicBinarization(images).")
            return value.reshape(shape[0], self.input_dim)
        return ops.reshape(ops.cast(x, self.compute_dtype), (-1, self.input_dim))

    # -- the model's terms --------------------------------------------------------
    def _terms(self, x, h, eps):
        """For flat `x` `(N, D)`, contexts `h` `(N, H)` and base noise `eps`
        `(N, L)`: `(z, log q(z | x), log p(z), log p(x | z))`, each `(N,)`
        but `z`."""
        base = self.posterior.base
        z0 = base.from_noise(eps, context=h)
        log_q0 = base.log_prob(z0, context=h)
        z, log_det = self.posterior.flow.inverse(z0, context=h)
        log_q = log_q0 - log_det
        log_pz = -0.5 * ops.sum(ops.square(z), axis=1) - 0.5 * self.latent_dim * _LOG_2PI
        logits = self.decoder(z)
        log_px = ops.sum(x * logits - ops.softplus(logits), axis=1)  # Bernoulli(sigmoid(logits))
        return z, log_q, log_pz, log_px

    def _noise(self, rng, shape):
        if self.posterior.base.noise == "uniform":
            return rng.random(shape, dtype=np.float32)
        return rng.standard_normal(shape, dtype=np.float32)

    def call(self, x, training=False):
        """Per example: `(loss at beta, -ELBO, KL estimate)`, each `(batch,)`."""
        x = ops.reshape(ops.cast(x, self.compute_dtype), (-1, self.input_dim))
        h = self.encoder(x, training=training)
        eps = self.posterior.base.draw_noise((ops.shape(x)[0], self.latent_dim), seed=self.seed_generator,
                                             dtype=self.compute_dtype)
        _, log_q, log_pz, log_px = self._terms(x, h, eps)
        kl = log_q - log_pz
        beta = 1.0
        if training:
            step = ops.convert_to_tensor(self.step.value)
            if self.warmup_steps:
                beta = ops.minimum(1.0, step / float(self.warmup_steps))
            self.step.assign(step + 1.0)
        return -log_px + beta * kl, kl - log_px, kl

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(ops.cast(y_pred[0], "float32"))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.neg_elbo_tracker.update_state(y_pred[1])
        self.kl_tracker.update_state(y_pred[2])
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # -- compiled evaluation -----------------------------------------------------
    def _log_weights(self, x, eps):
        """`log p(x, z) - log q(z | x)` `(S, E)` for flat `x` `(E, D)` and
        noise `eps` `(S, E, L)`: `S` draws per example, the encoder run once."""
        draws, rows = ops.shape(eps)[0], ops.shape(eps)[1]  # dynamic under a retracing-averse tf.function
        h = self.encoder(x)
        h = ops.tile(h, (draws, 1))  # row s*E + e: draw s of example e
        xt = ops.tile(x, (draws, 1))
        _, log_q, log_pz, log_px = self._terms(xt, h, ops.reshape(eps, (draws * rows, self.latent_dim)))
        return ops.reshape(log_px + log_pz - log_q, (draws, rows))

    def make_log_weights_function(self, force=False):
        """A compiled `(x (E, D), eps (S, E, L)) -> log weights (S, E)`
        (under `tf.function` or `jax.jit`), built once and cached; it reads
        the current weights on every call. `neg_elbo` and `importance_nll`
        use it."""
        holder = getattr(self, "_log_weights_holder", None)
        if holder is not None and not force:
            return holder.fn
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf  # TF-only; lazy so this module stays backend-agnostic

            fn = tf.function(self._log_weights, input_signature=[
                tf.TensorSpec((None, self.input_dim), self.compute_dtype),
                tf.TensorSpec((None, None, self.latent_dim), self.compute_dtype)])  # one trace for every chunk
        elif backend == "jax":
            import jax

            variables = list(self.variables)

            def pure(values, x, eps):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return self._log_weights(x, eps)

            jitted = jax.jit(pure)

            def fn(x, eps):
                return jitted([v.value for v in variables], x, eps)
        else:
            fn = self._log_weights
        self._log_weights_holder = _Holder(fn)
        return fn

    def _chunks(self, n_examples, draws, batch):
        """`(examples per pass, draws per pass)` so a pass holds at most
        `batch` rows (at least one example and one draw)."""
        per = max(1, batch // draws)
        return min(per, n_examples), min(draws, max(1, batch))

    def _lse_over_draws(self, x, draws, batch, seed, what, mean=False):
        """Per example, over `draws` draws of `z ~ q(z | x)`: the logsumexp
        of the log weights (or their mean, with `mean=True`), float64."""
        x = self.check_data(x)
        rng = np.random.default_rng(_seed_value(seed, what))
        fn = self.make_log_weights_function()
        per, step = self._chunks(x.shape[0], draws, batch)
        out = np.empty(x.shape[0], dtype=np.float64)
        for start in range(0, x.shape[0], per):
            xs = x[start:start + per]
            acc = np.full(xs.shape[0], -np.inf if not mean else 0.0)
            done = 0
            while done < draws:
                s = min(step, draws - done)
                eps = self._noise(rng, (s, xs.shape[0], self.latent_dim))
                lw = np.asarray(ops.convert_to_numpy(fn(xs, eps)), dtype=np.float64)
                if mean:
                    acc += lw.sum(axis=0)
                else:
                    top = lw.max(axis=0)
                    top = np.where(np.isfinite(top), top, 0.0)
                    acc = np.logaddexp(acc, top + np.log(np.exp(lw - top).sum(axis=0)))
                done += s
            out[start:start + xs.shape[0]] = acc / draws if mean else acc
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise ValueError(f"VAE.{what}: the estimate is not finite for {bad.size} of {out.size} examples "
                             f"(first rows {bad[:8].tolist()}): the weights or the posterior overflowed.")
        return out

    def neg_elbo(self, x, n_samples=1, seed=None, batch=10000):
        """The negative ELBO per example, in nats: `-mean_s [log p(x, z_s) -
        log q(z_s | x)]` over `n_samples` draws `z_s ~ q(z | x)`.

        Args:
            x: binary data `(N, *data_shape)` (values in `[0, 1]`).
            n_samples: draws per example. Defaults to 1 (the usual test
                -ELBO); more gives the expectation with less noise.
            seed: seed of the draws (numpy's): the same seed gives the same
                result on every backend and after a save and load.
                Defaults to `None` (drawn from numpy's global state).
            batch: the most rows (examples times draws) per compiled pass.

        Returns:
            float64 numpy `(N,)`; `.mean()` is the data set's -ELBO.
        """
        n_samples = _positive_int("n_samples", n_samples, "VAE.neg_elbo")
        batch = _positive_int("batch", batch, "VAE.neg_elbo")
        return -self._lse_over_draws(x, n_samples, batch, seed, "neg_elbo", mean=True)

    def importance_nll(self, x, k=1000, seed=None, batch=10000):
        """The importance-sampled estimate of `-log p(x)` per example, in nats:
        `-log (1/k) sum_j p(x, z_j) / q(z_j | x)`, `z_j ~ q(z | x)`
        (Burda et al.'s `L_k`; the Sylvester paper's NLL uses `k = 5000`).

        `-log p(x) <= importance_nll(k) <= importance_nll(1) = neg_elbo`
        in expectation, and it decreases towards `-log p(x)` as `k` grows.
        The `k` draws run in chunks of at most `batch` rows, so any `k` fits
        in memory; the log-mean-exp is accumulated exactly across chunks.

        Args:
            x: binary data `(N, *data_shape)`.
            k: importance samples per example. Defaults to 1000.
            seed: as `neg_elbo`.
            batch: the most rows (examples times draws) per compiled pass.

        Returns:
            float64 numpy `(N,)`.
        """
        k = _positive_int("k", k, "VAE.importance_nll")
        batch = _positive_int("batch", batch, "VAE.importance_nll")
        return -(self._lse_over_draws(x, k, batch, seed, "importance_nll") - math.log(k))

    # -- encoding, sampling --------------------------------------------------------
    def encode(self, x):
        """The encoder's output `h(x)` `(N, h_dim)`: the posterior's context,
        so `vae.posterior.log_prob(z, context=vae.encode(x))` is `log q(z | x)`
        (for a flow with a data -> latent direction)."""
        return self.encoder(self.check_data(x))

    def posterior_sample(self, x, n=1, seed=None):
        """`(z, log q(z | x))` for `n` draws per example: `(n, N, latent_dim)`
        and `(n, N)`, by the same path as the ELBO (numpy noise from `seed`)."""
        n = _positive_int("n", n, "VAE.posterior_sample")
        x = self.check_data(x)
        rng = np.random.default_rng(_seed_value(seed, "posterior_sample"))
        eps = self._noise(rng, (n, x.shape[0], self.latent_dim)).reshape(n * x.shape[0], self.latent_dim)
        h = ops.tile(self.encoder(x), (n, 1))
        z, log_q, _, _ = self._terms(ops.tile(x, (n, 1)), h, eps)
        return (ops.reshape(z, (n, x.shape[0], self.latent_dim)), ops.reshape(log_q, (n, x.shape[0])))

    def decode(self, z):
        """Pixel probabilities `sigmoid(decoder(z))` `(N, *data_shape)` of latents `z` `(N, latent_dim)`."""
        z = np.asarray(ops.convert_to_numpy(z), dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or z.shape[0] == 0:
            raise ValueError(f"VAE.decode expects latents of shape (batch, {self.latent_dim}), got {z.shape}.")
        if not np.all(np.isfinite(z)):
            raise ValueError("VAE.decode got NaN or infinite latents.")
        return ops.reshape(ops.sigmoid(self.decoder(z)), (z.shape[0],) + self.data_shape)

    def reconstruct(self, x, seed=None):
        """Pixel probabilities of `p(x | z)` for one draw `z ~ q(z | x)` per
        example: `(N, *data_shape)`."""
        z, _ = self.posterior_sample(x, 1, seed=seed)
        return self.decode(z[0])

    def sample(self, n, seed=None, binary=False):
        """`n` draws from the model: `z ~ N(0, I)`, then the pixel
        probabilities of `p(x | z)` `(n, *data_shape)`, or with `binary=True`
        a Bernoulli draw of them (0s and 1s)."""
        n = _positive_int("n", n, "VAE.sample")
        rng = np.random.default_rng(_seed_value(seed, "sample"))
        probs = self.decode(rng.standard_normal((n, self.latent_dim), dtype=np.float32))
        if not binary:
            return probs
        p = np.asarray(ops.convert_to_numpy(probs))
        return (rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)

    # -- Keras training ------------------------------------------------------------
    def compile(self, optimizer=None, **kwargs):
        """Like `keras.Model.compile`; the optimizer defaults to
        `tfflows.models.default_optimizer()` (Adam 1e-3, global-norm
        clipping at 100). The loss is the model's own (`loss` is ignored)."""
        kwargs.pop("loss", None)
        super().compile(optimizer=optimizer or default_optimizer(), **kwargs)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _checked_inputs(self, x, y, what):
        if y is not None:
            raise ValueError(f"VAE.{what} takes the data x only (the model reconstructs x); got y as well.")
        if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)) and not isinstance(x, str):
            x = self.check_data(x)
        elif isinstance(x, DynamicBinarization):
            if x.p.shape[1] != self.input_dim:
                raise ValueError(f"VAE.{what}: the DynamicBinarization holds examples of {x.p.shape[1]} pixels; "
                                 f"the VAE models {self.input_dim}.")
            if self.data_shape != (self.input_dim,):
                raise ValueError(f"VAE.{what}: DynamicBinarization yields flat (batch, {self.input_dim}) batches; "
                                 f"build the VAE with data_shape=({self.input_dim},).")
        return x

    def fit(self, x=None, y=None, *args, stop_on_nan=True, callbacks=None, **kwargs):
        """`keras.Model.fit` on batches of `x` (a `DynamicBinarization`, or
        a 0/1 array whose values are checked first), compiling with the
        default optimizer if needed; `stop_on_nan` adds
        `tfflows.models.StopOnNaN` (a NaN loss stops training with the last
        finite weights put back)."""
        x = self._checked_inputs(x, y, "fit")
        if getattr(self, "optimizer", None) is None:
            self.compile()
        callbacks = list(callbacks or [])
        if stop_on_nan and not any(isinstance(c, StopOnNaN) for c in callbacks):
            callbacks.append(StopOnNaN())
        optimizers.build_before_tracing(self)
        return super().fit(x, None, *args, callbacks=callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate` on batches of `x`: `loss` is the one-draw -ELBO."""
        x = self._checked_inputs(x, y, "evaluate")
        if getattr(self, "optimizer", None) is None:
            self.compile()
        return super().evaluate(x, None, *args, **kwargs)

    # -- serialization -----------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            posterior=keras.saving.serialize_keras_object(self.posterior),
            data_shape=list(self.data_shape),
            hidden=list(self.hidden),
            activation=self.activation,
            warmup_steps=self.warmup_steps,
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("posterior", "encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
