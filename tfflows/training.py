"""Long CPU training that survives interruptions: wall-clock budgets,
checkpoints every few minutes (the `tfflows.checkpoint` format), a
test-bits/dim learning curve, moving-average weights, inference weights
files, and the test bits/dim over dequantization draws.

`TrainState` also turns SIGTERM and SIGINT (`kill PID`, Ctrl-C) into a clean
stop: training ends after the running batch and `tfflows train` writes its
checkpoint and outputs as at the end of its budget, so stopping a long run for
something else costs nothing.
"""

import contextlib
import math
import os
import signal
import threading
import time

import keras
import numpy as np

# The checkpoint format lives in `tfflows.checkpoint` (one format for the
# CLI, `fit` and multi-worker runs); these names stay importable from here.
from tfflows.checkpoint import latest_checkpoint, load_checkpoint, read_state, save_checkpoint  # noqa: F401


def save_inference_weights(model, path, net_kernels_float16=False):
    """`.weights.h5` with the model's weights only (Keras 3's `save_weights`
    also stores a compiled model's optimizer state, tripling the file).

    With `net_kernels_float16=True` the coupling networks' large kernels are
    stored as float16 (see `store_net_kernels_float16`); Keras'
    `load_weights` casts them back to the variables' float32 on either
    backend, so the file loads like any other. Either way the file carries
    a sha256 of its weights (`tfflows.weights_file.sign`) that tfflows'
    loaders verify, and it is written under a temporary name and moved into
    place only when complete and signed.
    """
    from tfflows import weights_file

    twin = type(model).from_config(model.get_config())
    twin.set_weights(model.get_weights())
    tmp = f"{path}.tmp-{os.getpid()}.weights.h5"
    try:
        twin.save_weights(tmp)
        if net_kernels_float16:
            store_net_kernels_float16(tmp, path)  # signs what it writes
        else:
            weights_file.sign(tmp)  # (again, if the model's save_weights signs: same digest)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _is_net_kernel(name, dataset, min_size):
    # Keras stores a layer's variables as `<layer path>/vars/<i>`; a coupling
    # layer's network is its `net` sublayer (`.../affine_coupling_3/net/conv2/vars/0`).
    parts = name.split("/")
    return ("net" in parts[:-2] and dataset.dtype == np.float32 and dataset.ndim >= 2
            and dataset.size >= min_size)


def store_net_kernels_float16(src, dst, min_size=4096):
    """Copies the Keras `.weights.h5` `src` to `dst`, storing the coupling
    networks' kernels of `min_size` or more entries as float16 and every
    other dataset (flow parameters: actnorm, 1x1 convolutions and their LU
    factors, scales; biases, small kernels) unchanged.

    The coupling networks hold most of a flow's parameters and tolerate
    float16 rounding (MNIST Glow, issue #11: 94% of the parameters rounded,
    test bits/dim unchanged to 1e-4), while rounding the flow's own
    parameters moves its log-determinants. Refuses (`ValueError`, nothing
    written to `dst`) a kernel that is not finite or that float16 cannot
    hold (magnitude above 65504). Returns `(n_rounded, n_total)` entries.
    `dst` is written under a temporary name, signed with a sha256 of its
    weights (`tfflows.weights_file.sign`) and then moved into place, so an
    existing `dst` is only replaced by a complete file.
    """
    import h5py

    from tfflows import weights_file

    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"store_net_kernels_float16: src and dst are the same file ({src}).")
    counts = [0, 0]
    tmp = f"{dst}.tmp-{os.getpid()}"

    try:
        # libver="latest": smaller object headers (the class-conditional Glow: 10.75 -> 9.57 MB).
        with h5py.File(src, "r") as fin, h5py.File(tmp, "w", libver="latest") as fout:
            # Keras' metadata; not the source's checksum, which the copy's replaces.
            fout.attrs.update({k: v for k, v in fin.attrs.items()
                               if k not in (weights_file.DIGEST_ATTR, weights_file.VERSION_ATTR)})

            def copy(name, obj):
                if isinstance(obj, h5py.Group):
                    fout.require_group(name).attrs.update(obj.attrs)
                    return
                data = obj[()]
                counts[1] += int(np.size(data))
                if _is_net_kernel(name, obj, min_size):
                    if not np.all(np.isfinite(data)):
                        raise ValueError(f"{src}: {name} holds NaN or Inf; not converting to float16.")
                    big = float(np.abs(data).max()) if data.size else 0.0
                    if big > float(np.finfo(np.float16).max):
                        raise ValueError(f"{src}: {name} has a value of magnitude {big:.4g}, beyond float16's "
                                         f"{float(np.finfo(np.float16).max):.0f}; store it as float32.")
                    data = data.astype(np.float16)
                    counts[0] += int(data.size)
                fout.create_dataset(name, data=data).attrs.update(obj.attrs)

            fin.visititems(copy)
        weights_file.sign(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return tuple(counts)


def float16_entries(path):
    """`(float16 values, all values)` stored in the `.weights.h5` file `path`."""
    import h5py

    counts = [0, 0]

    def count(_, obj):
        if isinstance(obj, h5py.Dataset):
            counts[1] += int(obj.size)
            counts[0] += int(obj.size) if obj.dtype == np.float16 else 0

    with h5py.File(path, "r") as f:
        f.visititems(count)
    return tuple(counts)


@contextlib.contextmanager
def live_weights_after_fit(model):
    """Inside the block `model.fit` returns with the live weights in place.

    Keras' `fit` ends by writing the optimizer's moving average (`use_ema`)
    into the model (`finalize_variable_values`); a checkpoint saved after it
    would then resume from the average instead of where training was, and a
    resumed run would drift from an uninterrupted one. Save the checkpoint
    after the block, then call `finalize_ema(model)` for Keras' end state.
    """
    opt = getattr(model, "optimizer", None)
    if opt is None or not getattr(opt, "use_ema", False):
        yield
        return
    opt.finalize_variable_values = lambda var_list: None
    try:
        yield
    finally:
        del opt.finalize_variable_values


def finalize_ema(model):
    """Writes the optimizer's moving average into the model's trainable
    weights, as Keras' `fit` does when it ends (no-op without `use_ema`)."""
    opt = getattr(model, "optimizer", None)
    if opt is not None and getattr(opt, "use_ema", False) and int(keras.ops.convert_to_numpy(opt.iterations)) > 0:
        opt.finalize_variable_values(model.trainable_weights)


@contextlib.contextmanager
def ema_weights(model):
    """Inside the block the model's trainable weights are the optimizer's
    moving average (`default_optimizer(ema_momentum=...)`); the live weights
    come back on exit. Yields whether an average was swapped in (False for
    an optimizer without one, or before its first step).
    """
    opt = getattr(model, "optimizer", None)
    if opt is None or not getattr(opt, "use_ema", False) or int(keras.ops.convert_to_numpy(opt.iterations)) == 0:
        yield False
        return
    variables = list(model.trainable_weights)
    live = [keras.ops.convert_to_numpy(v) for v in variables]
    # The class's method: `live_weights_after_fit` silences the instance's
    # during `fit`, when the learning curve evaluates the average.
    type(opt).finalize_variable_values(opt, variables)
    try:
        yield True
    finally:
        for var, value in zip(variables, live):
            var.assign(value)


class TrainState(keras.callbacks.Callback):
    """Counts steps and time, saves checkpoints every `every_minutes`, stops
    at the wall-clock budget, and records test bits/dim every `eval_minutes`.

    Args:
        directory: checkpoint folder, or `None` for no checkpoints.
        state: the resumed state dict (step, epoch, minutes, curve), or `{}`.
        minutes: wall-clock budget for this run (None for none).
        every_minutes: checkpoint period.
        eval_fn: `model -> test bits/dim` for the learning curve, or None.
        eval_minutes: evaluation period (in training minutes).
        log: print function.

    While training runs, SIGTERM and SIGINT set `stop_signal` (the signal's
    name) and stop after the current batch instead of killing the process;
    the previous handlers come back at the end of training. A second signal
    of the same kind while stopping runs the previous handler (a second
    Ctrl-C interrupts at once).
    """

    def __init__(self, directory, state, minutes=None, every_minutes=5.0, eval_fn=None,
                 eval_minutes=2.0, log=print, extra_state=None):
        super().__init__()
        self.directory = directory
        self.state = {**dict(step=0, epoch=0, minutes=0.0, curve=[]), **(state or {})}
        self.state.update(extra_state or {})
        self.minutes = minutes
        self.every = every_minutes
        self.eval_fn = eval_fn
        self.eval_minutes = eval_minutes
        self.log = log
        self.budget_hit = False
        self.max_steps = None
        self.stop_signal = None
        self._old_handlers = {}
        # Set again when training begins; here so that a resumed run with no
        # step left to train can still checkpoint and finish.
        self._t0 = self._last_ckpt = self._last_eval = time.time()

    def _elapsed(self):
        return self.state["minutes"] + (time.time() - self._t0) / 60.0

    def on_train_begin(self, logs=None):
        self._t0 = time.time()
        self._last_ckpt = self._last_eval = time.time()
        self._install_signal_handlers()
        if self.eval_fn is not None and not self.state["curve"]:
            self._evaluate()

    def on_train_end(self, logs=None):
        self._restore_signal_handlers()

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self):
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.stop_signal == name:  # asked twice: do what the signal did before
            old = self._old_handlers.get(signum)
            self._restore_signal_handlers()
            if callable(old):
                old(signum, frame)
            else:
                raise KeyboardInterrupt(name)
            return
        self.stop_signal = name
        self.log(f"[tfflows] {name}: stopping after this batch; the checkpoint and outputs "
                 f"are written as at the end of the budget")
        if self.model is not None:
            self.model.stop_training = True

    def _evaluate(self):
        t = time.time()
        point = dict(minutes=round(self._elapsed(), 3), step=self.state["step"])
        with ema_weights(self.model) as averaged:
            point["test_bpd"] = round(float(self.eval_fn(self.model)), 5)
        msg = f"test bpd {point['test_bpd']:.4f}"
        if averaged:  # the curve follows the averaged weights (what training writes); the live ones too
            point["test_bpd_live"] = round(float(self.eval_fn(self.model)), 5)
            msg += f" (EMA weights; live weights {point['test_bpd_live']:.4f})"
        self.state["curve"].append(point)
        self.log(f"[tfflows] step {self.state['step']}  {self._elapsed():.1f} min  {msg}")
        # Evaluation time is not training time.
        self._t0 += time.time() - t
        self._last_eval = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.state["step"] += 1
        now = time.time()
        if self.stop_signal is not None:
            self.model.stop_training = True
        if self.max_steps is not None and self.state["step"] >= self.max_steps:
            self.model.stop_training = True
        if self.minutes is not None and (now - self._t0) / 60.0 >= self.minutes:
            self.budget_hit = True
            self.model.stop_training = True
        if self.eval_fn is not None and (now - self._last_eval) / 60.0 >= self.eval_minutes:
            self._evaluate()
        if self.directory and (now - self._last_ckpt) / 60.0 >= self.every:
            self.checkpoint()

    def on_epoch_end(self, epoch, logs=None):
        self.state["epoch"] = epoch + 1
        loss = (logs or {}).get("loss")
        if loss is not None and math.isfinite(float(loss)):
            self.state.setdefault("train_bpd", []).append(round(float(loss), 5))

    def checkpoint(self):
        if not self.directory:
            return None
        state = dict(self.state, minutes=round(self._elapsed(), 4))
        path = save_checkpoint(self.model, self.directory, state)
        self._last_ckpt = time.time()
        return path

    def finish(self):
        """The final state (minutes updated), after a last checkpoint."""
        self.state["minutes"] = round(self._elapsed(), 4)
        return self.state


def bpd_per_draw(model, images_u8, draws=4, batch_size=500, seed=1234, n_bits=8):
    """Bits/dim of every image under each of `draws` uniform dequantization draws.

    Returns a float64 array of shape `(draws, n_images)`; the noise comes from
    `numpy.random.default_rng(seed)`, one draw of the whole set after another.
    A model with a variational dequantizer (`model.dequantizer`) gets the
    integer pixels and draws its own noise: each row is then a one-draw
    estimate of its bound. Its seed generator is set from `seed` for the
    evaluation and put back afterwards, so the result depends on `seed` only
    and training's noise stream is left as it was.
    """
    images = np.asarray(images_u8)
    if images.ndim == 3:
        images = images[..., None]
    rng = np.random.default_rng(seed)
    learned = getattr(model, "dequantizer", None) is not None
    if learned:
        gen = model.dequantizer.seed_generator
        saved = np.array(keras.ops.convert_to_numpy(gen.state.value))
        gen.state.assign(np.array([int(seed) % (2 ** 31 - 1), 0], dtype=saved.dtype))
        try:
            return _bpd_per_draw(model, images, draws, batch_size, rng, n_bits, learned)
        finally:
            gen.state.assign(saved)
    return _bpd_per_draw(model, images, draws, batch_size, rng, n_bits, learned)


def _bpd_per_draw(model, images, draws, batch_size, rng, n_bits, learned):
    from tfflows.zoo.data import dequantize_images  # the one dequantization formula

    out = np.zeros((draws, images.shape[0]), dtype=np.float64)
    # Compiled (tf.function / jax.jit) rather than eager: traced once per batch
    # shape. The input is finite by construction, so the NaN check it skips
    # cannot fire here.
    make = getattr(model, "make_bits_per_dim_function", None)
    bpd = make() if make is not None else model.bits_per_dim
    if learned:  # the bin indices, the same every draw; the model adds its own noise
        pixels = np.right_shift(images.astype(np.int32), 8 - n_bits).astype(np.float32)
    for d in range(draws):
        if learned:
            x = pixels
        else:
            x = np.asarray(dequantize_images(images, rng.random(images.shape, dtype=np.float32), n_bits))
        out[d] = np.concatenate([
            np.asarray(keras.ops.convert_to_numpy(bpd(x[i:i + batch_size])))
            for i in range(0, x.shape[0], batch_size)
        ])
    return out


def evaluate_bpd(model, images_u8, draws=4, batch_size=500, seed=1234, n_bits=8):
    """Test bits/dim averaged over `draws` of the uniform dequantization noise.

    Returns `(mean, stderr, per_draw_means)`; the standard error is over
    images of the per-image bits/dim averaged over the draws.
    """
    return summarize_bpd(bpd_per_draw(model, images_u8, draws, batch_size, seed, n_bits))


def summarize_bpd(per_draw):
    """`(mean, stderr, per_draw_means)` of a `(draws, n_images)` array from `bpd_per_draw`."""
    per_image = per_draw.mean(axis=0)
    n = per_image.shape[0]
    stderr = float(np.std(per_image, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(np.mean(per_image)), stderr, [float(m) for m in per_draw.mean(axis=1)]
