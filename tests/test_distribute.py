"""tfflows.distribute: strategies, ActNorm init under a strategy, replica-count
invariance, multi-worker training and recovery from a killed worker.

Runs that need several devices or workers happen in subprocesses driven by
`tests/dist_worker.py`: logical CPU devices must be configured before
TensorFlow starts, and every `MultiWorkerMirroredStrategy` worker is its own
process on 127.0.0.1 (ports picked at run time). Every subprocess runs under
a deadline and is killed in a `finally`, whatever happens.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tfflows.distribute is TensorFlow-only", allow_module_level=True)

import tensorflow as tf  # noqa: E402

from tfflows import checkpoint, distribute  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "dist_worker.py")
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402

# Tolerances (float32).
SAME_ARITHMETIC_ATOL = 1e-6  # same ops on the same numbers, e.g. init on the global batch
REPLICA_SUM_ATOL = 1e-5  # 1 vs 2 replicas: gradients summed in another order
MULTIWORKER_ATOL = 5e-5  # 12 steps with momentum on 2 workers vs 1 device
MOVED_BY_AT_LEAST = 1e-3  # training must move weights well past the tolerances

EPOCHS, STEPS_PER_EPOCH = 3, dist_worker.N_EXAMPLES // dist_worker.GLOBAL_BATCH
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
CLUSTER_TIMEOUT_S = 180


# -- subprocess plumbing --------------------------------------------------------------
def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, **extra)
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def _processes():
    """A list to add `Popen`s to; each is killed (its own session) on exit."""
    procs = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _spawn(procs, args, log, env):
    with open(log, "ab") as f:
        p = subprocess.Popen([sys.executable, WORKER] + args, stdout=f, stderr=subprocess.STDOUT,
                             env=env, cwd=REPO, start_new_session=True)
    p.log = log
    procs.append(p)
    return p


def _start_cluster(procs, out, args, n=2):
    ports = _free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    started = []
    for i in range(n):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        started.append(_spawn(procs, ["worker", str(out)] + args, os.path.join(out, f"log{i}.txt"),
                              _env(TF_CONFIG=tf_config)))
    return started


def _tail(path, n=4000):
    with open(path, errors="replace") as f:
        return f.read()[-n:]


def _wait_ok(procs, timeout):
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{p.args[2:]} still running after {timeout}s; log:\n{_tail(p.log)}")
        assert rc == 0, f"{p.args[2:]} exited with {rc}; log:\n{_tail(p.log)}"


def _load(out, tag):
    with open(os.path.join(out, f"{tag}.json")) as f:
        report = json.load(f)
    return report, dict(np.load(os.path.join(out, f"{tag}.npz")))


def _max_diff(a, b):
    assert list(a) == list(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _replica0(values):
    return {k: v for k, v in values.items() if k.endswith("/replica_0")}


def _progress(out, tag):
    path = os.path.join(out, f"progress_{tag}.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line) for line in f.read().split()]


# -- MirroredStrategy on 2 logical CPUs -----------------------------------------------
@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    with _processes() as procs:
        _spawn(procs, ["mirrored", str(out)], os.path.join(out, "log.txt"), _env())
        _wait_ok(procs, timeout=240)
    report, arrays = _load(out, "mirrored")
    def part(prefix):
        return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

    return report, part


def _per_replica_vs_single(part, name):
    """Max |mirrored replica_k - single| over all weights and both replicas."""
    single, mirrored = part(f"{name}_single"), part(f"{name}_mirrored")
    diffs = [
        float(np.max(np.abs(v - single[k.rsplit("/", 1)[0] + "/replica_0"])))
        for k, v in mirrored.items()
    ]
    replicas = {k.rsplit("/", 1)[1] for k in mirrored}
    return max(diffs), replicas


def test_actnorm_init_under_mirrored_matches_single_device(mirrored_run):
    report, part = mirrored_run
    diff, replicas = _per_replica_vs_single(part, "init")
    assert replicas == {"replica_0", "replica_1"}
    assert diff <= SAME_ARITHMETIC_ATOL
    assert report["init_bpd_mirrored"] == pytest.approx(report["init_bpd_single"], abs=1e-6)
    actnorm = [v for k, v in part("init_mirrored").items() if "log_scale" in k]
    assert actnorm and all(np.any(v != 0) for v in actnorm), "ActNorm was not initialised"


def test_train_step_on_two_replicas_matches_one(mirrored_run):
    report, part = mirrored_run
    diff, _ = _per_replica_vs_single(part, "train")
    assert diff <= REPLICA_SUM_ATOL
    assert report["train_mirrored_loss"] == pytest.approx(report["train_single_loss"], rel=1e-6)
    assert report["train_mirrored_iterations"] == report["train_single_iterations"] == 2
    moved = _max_diff(_replica0(part("train_single")), _replica0(part("init_single")))
    assert moved > MOVED_BY_AT_LEAST


def test_flowmodel_fit_on_two_replicas_matches_one(mirrored_run):
    report, part = mirrored_run
    diff, _ = _per_replica_vs_single(part, "fit")
    assert diff <= REPLICA_SUM_ATOL
    # Keras' loss tracker multiplies the per-replica loss back by the replica
    # count: a missing 1/N in FlowModel.compute_loss would double this.
    assert report["fit_mirrored_loss"] == pytest.approx(report["fit_single_loss"], rel=1e-6)
    assert report["fit_mirrored_bpd"] == pytest.approx(report["fit_single_bpd"], rel=1e-6)


# -- MultiWorkerMirroredStrategy: 2 workers on 127.0.0.1 ------------------------------
@pytest.fixture(scope="module")
def multiworker_run(tmp_path_factory):
    """2 workers through `FlowModel.fit`, plus the same training on one device."""
    out = tmp_path_factory.mktemp("multiworker")
    args = ["--epochs", str(EPOCHS)]
    with _processes() as procs:
        _wait_ok(_start_cluster(procs, out, args + ["--api", "fit"]), timeout=CLUSTER_TIMEOUT_S)
    with _processes() as procs:
        # `train`, not Keras' `fit`: FlowModel.fit's first-batch init on one
        # device opens an extra iterator, which advances a reshuffling
        # dataset by one epoch.
        _spawn(procs, ["reference", str(out)] + args + ["--api", "train"],
               os.path.join(out, "log_ref.txt"), _env())
        _wait_ok(procs, timeout=CLUSTER_TIMEOUT_S)
    return out


def test_multiworker_fit_trains_and_workers_end_identical(multiworker_run):
    (r0, w0), (r1, w1) = _load(multiworker_run, "worker0"), _load(multiworker_run, "worker1")
    assert r0["replicas"] == r1["replicas"] == 2
    assert r0["iterations"] == r1["iterations"] == TOTAL_STEPS
    assert r0["epochs_run"] == r1["epochs_run"] == list(range(EPOCHS))
    assert r0["history"] == r1["history"]
    assert _max_diff(w0, w1) == 0.0
    init0 = dict(np.load(os.path.join(multiworker_run, "worker0_init.npz")))
    init1 = dict(np.load(os.path.join(multiworker_run, "worker1_init.npz")))
    assert _max_diff(init0, init1) == 0.0
    assert _max_diff(w0, init0) > MOVED_BY_AT_LEAST


def test_multiworker_matches_single_device(multiworker_run):
    r0, w0 = _load(multiworker_run, "worker0")
    ref, w_ref = _load(multiworker_run, "reference")
    assert ref["iterations"] == TOTAL_STEPS
    init0 = dict(np.load(os.path.join(multiworker_run, "worker0_init.npz")))
    init_ref = dict(np.load(os.path.join(multiworker_run, "reference_init.npz")))
    # ActNorm init from the gathered global batch == init on one device.
    assert _max_diff(init0, init_ref) <= SAME_ARITHMETIC_ATOL
    assert _max_diff(w0, w_ref) <= MULTIWORKER_ATOL
    np.testing.assert_allclose(r0["history"]["loss"], ref["history"]["loss"], rtol=1e-5)


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(multiworker_run, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    os.makedirs(out)
    args = ["--api", "train", "--epochs", str(EPOCHS), "--save-freq", "2", "--ckpt", str(ckpt)]
    with _processes() as procs:
        worker0, worker1 = _start_cluster(procs, out, args + ["--sleep", "0.3"])
        deadline = time.monotonic() + CLUSTER_TIMEOUT_S
        while len(_progress(out, "worker0")) < 5:  # mid-epoch 2, after the step-4 checkpoint
            assert worker0.poll() is None and worker1.poll() is None, _tail(worker0.log)
            assert time.monotonic() < deadline, f"no progress; log:\n{_tail(worker0.log)}"
            time.sleep(0.05)
        worker1.send_signal(signal.SIGKILL)
        # The survivor cannot go on without its peer (it would exit with an
        # UnavailableError once the peer's heartbeats stop); the cluster
        # manager restarts everyone, so the finally below kills it now.
    first_run = _progress(out, "worker0")
    killed_at = first_run[-1]
    assert killed_at < TOTAL_STEPS

    with _processes() as procs:  # restart the whole cluster, as a job scheduler would
        _wait_ok(_start_cluster(procs, out, args), timeout=CLUSTER_TIMEOUT_S)
    (r0, w0), (r1, w1) = _load(out, "worker0"), _load(out, "worker1")
    resumed = r0["start_step"]
    assert r1["start_step"] == resumed
    assert 0 < resumed <= killed_at and resumed % 2 == 0, (resumed, killed_at)
    assert _progress(out, "worker0")[len(first_run):] == list(range(resumed + 1, TOTAL_STEPS + 1))
    # No lost or repeated steps: the optimizer's counter is checkpointed too.
    assert r0["iterations"] == r1["iterations"] == TOTAL_STEPS
    assert r0["epochs_run"] == list(range(resumed // STEPS_PER_EPOCH, EPOCHS))
    assert _max_diff(w0, w1) == 0.0
    # Same arithmetic as the uninterrupted 2-worker run.
    _, w_full = _load(multiworker_run, "worker0")
    assert _max_diff(w0, w_full) <= SAME_ARITHMETIC_ATOL
    # tfflows.checkpoint's format, written by the chief: the last save is the run's end.
    state = checkpoint.read_state(checkpoint.latest_checkpoint(str(ckpt)))
    assert (state["step"], state["epoch"], state["epoch_count"]) == (TOTAL_STEPS, EPOCHS, 0.0)
    assert len(list(ckpt.glob("ckpt-*"))) == 2 and not list(ckpt.glob(".tmp-*"))


# -- checkpoints ----------------------------------------------------------------------
_SAVER = r"""
import sys
import numpy as np, keras
from tfflows import checkpoint
model = keras.Sequential([keras.Input((2000,)), keras.layers.Dense(2000, use_bias=False)])
model.compile(optimizer=keras.optimizers.SGD(0.1))
(big,) = model.weights
_, state = checkpoint.restore_latest(model, sys.argv[1])
step = state["step"] if state else 0
while True:
    step += 1
    big.assign(np.full(big.shape, step, "float32"))
    checkpoint.save_checkpoint(model, sys.argv[1], {"step": step})
    with open(sys.argv[2], "a") as f:
        f.write(f"{step}\n")
"""


def _big_model():
    """The saver's model: 4M weights, so a kill lands mid-save."""
    model = keras.Sequential([keras.Input((2000,)), keras.layers.Dense(2000, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_checkpoint_stays_readable_when_killed_while_saving(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    restorer = _big_model()
    saved = tmp_path / "saved.txt"  # steps whose save_checkpoint() returned
    saved.write_text("")
    for delay in (0.137,):  # add delays to land at other points of a save
        with _processes() as procs:
            with open(tmp_path / "log.txt", "wb") as log:
                p = subprocess.Popen([sys.executable, "-c", _SAVER, ckpt_dir, str(saved)], stdout=log,
                                     stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
            procs.append(p)
            deadline = time.monotonic() + 120
            start = len(saved.read_text().split())
            while len(saved.read_text().split()) < start + 3:
                assert p.poll() is None, _tail(tmp_path / "log.txt")
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(delay)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        last_reported = int(saved.read_text().split()[-1])
        path, state = checkpoint.restore_latest(restorer, ckpt_dir)
        assert path is not None
        step = state["step"]
        # Every save that returned is kept; the torn one (if any) is ignored.
        assert last_reported <= step <= last_reported + 1
        assert np.all(np.asarray(restorer.weights[0]) == step)


def _tiny(strategy=None):
    return dist_worker.tiny_glow(strategy or tf.distribute.get_strategy())


def test_restore_skips_unreadable_and_unfinished_checkpoints(tmp_path):
    model = _tiny()
    distribute.train(model, dist_worker.dataset(tf), epochs=2, verbose=0,
                     checkpoint_dir=str(tmp_path), save_freq=2)
    assert checkpoint.latest_checkpoint(str(tmp_path)).endswith("ckpt-000000008")
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000000006", "ckpt-000000008"]
    state = checkpoint.read_state(str(tmp_path / "ckpt-000000008"))
    assert (state["step"], state["epoch"], state["epoch_count"]) == (8, 2, 0.0)
    # A save that died before updating the `LATEST` pointer (its folder torn) ...
    (tmp_path / "ckpt-000000010").mkdir()
    (tmp_path / "ckpt-000000010" / "model.keras").write_bytes(b"torn")
    # ... one cut off while writing its temporary folder ...
    (tmp_path / ".tmp-ckpt-000000012-4242").mkdir()
    (tmp_path / ".tmp-ckpt-000000012-4242" / "model.keras").write_bytes(b"torn")
    # ... and the latest checkpoint, whose data was damaged afterwards.
    data = tmp_path / "ckpt-000000008" / "model.keras"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    fresh = _tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = distribute.train(fresh, dist_worker.dataset(tf), epochs=2, verbose=0,
                                   checkpoint_dir=str(tmp_path), save_freq=2)
    skipped = [str(w.message) for w in caught if "Skipping unreadable checkpoint" in str(w.message)]
    assert len(skipped) == 1 and "ckpt-000000008" in skipped[0], skipped
    assert history.epoch == [1]  # back at step 6, not at 12, 10 or 8
    assert int(fresh.optimizer.iterations.numpy()) == 8
    assert checkpoint.read_state(checkpoint.latest_checkpoint(str(tmp_path)))["step"] == 8


def test_restore_refuses_checkpoints_that_do_not_fit_the_model(tmp_path):
    model = _tiny()
    distribute.train(model, dist_worker.dataset(tf), epochs=1, verbose=0, checkpoint_dir=str(tmp_path))
    other = dist_worker.tiny_glow(tf.distribute.get_strategy())
    other.compile(optimizer=keras.optimizers.Adam(1e-3))  # another optimizer: other slots
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="No checkpoint in .* could be restored into this model"):
            distribute.train(other, dist_worker.dataset(tf), epochs=2, verbose=0, checkpoint_dir=str(tmp_path))
    assert checkpoint.read_state(checkpoint.latest_checkpoint(str(tmp_path)))["step"] == 4  # not overwritten
    old = tmp_path / "tf_format"  # the distributed loop's TensorFlow checkpoints before tfflows.checkpoint
    old.mkdir()
    (old / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\n')
    with pytest.raises(ValueError, match="holds TensorFlow checkpoints"):
        distribute.train(_tiny(), dist_worker.dataset(tf), epochs=1, verbose=0, checkpoint_dir=str(old))


def test_keras_backup_and_restore_becomes_checkpointing(tmp_path):
    model = _tiny()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=2)
    distribute.train(model, dist_worker.dataset(tf), epochs=1, verbose=0, callbacks=[backup])
    assert checkpoint.latest_checkpoint(str(tmp_path)).endswith("ckpt-000000004")
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000000002", "ckpt-000000004"]
    with pytest.raises(ValueError, match="pass one"):
        distribute.train(model, dist_worker.dataset(tf), verbose=0, callbacks=[backup],
                         checkpoint_dir=str(tmp_path / "other"))


# -- strategies, dtype, data and argument checks -----------------------------------------
def test_get_strategy_resolves_names():
    assert distribute.is_default_strategy(distribute.get_strategy("default"))
    mirrored = distribute.get_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="Unknown strategy 'gpu'"):
        distribute.get_strategy("gpu")
    with pytest.raises(RuntimeError, match="No TPU found"):
        distribute.get_strategy("tpu", tpu="")


def test_set_dtype_policy():
    try:
        assert distribute.set_dtype_policy("mixed_bfloat16").name == "mixed_bfloat16"
        model = _tiny()
        assert {v.dtype for v in model.weights if "float" in v.dtype} == {"float32"}
        with pytest.raises(ValueError, match="mixed_float16 is not supported"):
            distribute.set_dtype_policy("mixed_float16")
    finally:
        assert distribute.set_dtype_policy("float32").name == "float32"


def test_mixed_bfloat16_step_keeps_log_dets_and_loss_float32():
    try:
        distribute.set_dtype_policy("mixed_bfloat16")
        model = _tiny()
        x = dist_worker.images(8)
        bpd = model(x)
        assert bpd.dtype == "float32"
        net_kernels = [w for w in model.weights if "conv" in w.path and "kernel" in w.path]
        assert net_kernels and all(w.dtype == "float32" for w in net_kernels)  # float32 master weights
        z, log_det = model.flow.forward(x)
        assert log_det.dtype == "float32" and z.dtype == "float32"
        history = distribute.train(model, dist_worker.dataset(tf), epochs=1, steps_per_epoch=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        distribute.set_dtype_policy("float32")


def test_mixed_bfloat16_runs_the_nets_in_bfloat16_and_keeps_the_coupling_exactly_invertible():
    """The speed of `--dtype mixed_bfloat16` comes from the nets' matmuls in
    bfloat16; invertibility must not depend on their precision: the inverse
    recomputes the same net output from the same kept half, so x round-trips
    to float32 accuracy (bfloat16 arithmetic in the flow would miss by ~1e-2)."""
    from tfflows.layers import AffineCoupling

    try:
        distribute.set_dtype_policy("mixed_bfloat16")
        layer = AffineCoupling(hidden=32, scale="sigmoid")
        x = np.random.default_rng(0).normal(size=(4, 8, 8, 4)).astype("float32")
        layer.build(x.shape)
        layer.net.conv3.kernel.assign(  # not the identity map: a trained-looking net
            np.random.default_rng(1).normal(scale=0.05, size=layer.net.conv3.kernel.shape))
        assert layer.net(x[..., :2]).dtype == "bfloat16"
        y, ld = layer.forward(x)
        assert y.dtype == "float32" and ld.dtype == "float32"
        x_back, ld_inv = layer.inverse(y)
        np.testing.assert_allclose(np.asarray(x_back), x, atol=2e-6)
        np.testing.assert_allclose(np.asarray(ld_inv), -np.asarray(ld), rtol=1e-6)
        assert float(np.max(np.abs(np.asarray(ld)))) > 0.1  # the scales are not all 1
    finally:
        distribute.set_dtype_policy("float32")


def test_resolve_dtype_auto_follows_the_cpus_bfloat16_instructions(tmp_path):
    bf16 = tmp_path / "cpuinfo_bf16"
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    plain = tmp_path / "cpuinfo_plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert distribute.cpu_bf16_flags(str(bf16)) == ["avx512_bf16"]
    assert distribute.cpu_bf16_flags(str(plain)) == []
    assert distribute.cpu_bf16_flags(str(tmp_path / "missing")) == []
    gpu = bool(tf.config.list_physical_devices("GPU"))
    name, why = distribute.resolve_dtype("auto", str(bf16))
    assert name == ("float32" if gpu else "mixed_bfloat16") and why.startswith("auto")
    assert distribute.resolve_dtype("auto", str(plain))[0] == "float32"
    assert distribute.resolve_dtype("auto", str(tmp_path / "missing"))[0] == "float32"
    assert distribute.resolve_dtype("float32", str(bf16)) == ("float32", "requested")
    assert distribute.resolve_dtype("mixed_bfloat16", str(plain)) == ("mixed_bfloat16", "requested")


def test_with_shard_policy_defaults_to_data():
    ds = distribute.with_shard_policy(tf.data.Dataset.range(4))
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    ds = distribute.with_shard_policy(tf.data.Dataset.range(4), "file")
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.FILE
    with pytest.raises(ValueError, match="Unknown shard_policy 'rows'"):
        distribute.with_shard_policy(tf.data.Dataset.range(4), "rows")


def test_train_refuses_a_model_built_outside_the_strategy():
    model = _tiny()
    mirrored = distribute.get_strategy("mirrored", devices=["/cpu:0"])
    with pytest.raises(ValueError, match="not created under this strategy's scope"):
        distribute.train(model, dist_worker.dataset(tf), mirrored, verbose=0)


def test_train_checks_its_arguments():
    model = _tiny()
    ds = dist_worker.dataset(tf)
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive integer"):
        distribute.train(model, ds, save_freq=0, verbose=0)
    with pytest.raises(ValueError, match="max_to_keep must be a positive integer"):
        distribute.train(model, ds, max_to_keep=0, verbose=0)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        distribute.train(model, ds, epochs=0, verbose=0)
    with pytest.raises(ValueError, match="infinite; pass steps_per_epoch"):
        distribute.train(model, ds.repeat(), verbose=0)
    with pytest.raises(ValueError, match="length is unknown"):
        distribute.train(model, ds.filter(lambda x: True), verbose=0)


def test_clip_gradients_follows_the_optimizers_clip_settings():
    g1 = np.array([[3.0, 4.0]], "float32")  # norm 5
    g2 = np.array([12.0], "float32")  # norm 12; global norm 13
    grads = [tf.constant(g1), None, tf.constant(g2)]

    def clipped(**kw):
        out = distribute.clip_gradients(keras.optimizers.SGD(0.1, **kw), grads)
        assert out[1] is None
        return [np.asarray(out[0]), np.asarray(out[2])]

    for got, want in zip(clipped(global_clipnorm=6.5), [g1 / 2, g2 / 2]):  # all scaled by 6.5 / 13
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for got, want in zip(clipped(global_clipnorm=100.0), [g1, g2]):  # under the threshold: unchanged
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for got, want in zip(clipped(clipnorm=6.0), [g1, g2 / 2]):  # each tensor on its own
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for got, want in zip(clipped(clipvalue=3.5), [[[3.0, 3.5]], [3.5]]):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for got, want in zip(clipped(), [g1, g2]):
        np.testing.assert_allclose(got, want)
    nan = distribute.clip_gradients(keras.optimizers.SGD(0.1, global_clipnorm=1.0),
                                    [tf.constant([np.inf, 1.0])])
    assert np.all(np.isnan(np.asarray(nan[0])))  # as Keras: a non-finite norm poisons the step


def test_train_feeds_conditional_batches_like_keras_fit():
    import tfflows
    from tfflows.layers import AffineCoupling, FlowSequence

    def build():
        keras.utils.set_random_seed(3)
        flow = FlowSequence([AffineCoupling(hidden=8, context_shape=(3,)),
                             AffineCoupling(hidden=8, reverse=True, context_shape=(3,))])
        model = tfflows.FlowModel(flow, data_shape=(4,), n_bits=None, context_shape=(3,))
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        return model

    rng = np.random.default_rng(0)
    context = rng.normal(size=(32, 3)).astype("float32")
    x = (rng.normal(size=(32, 4)) + context @ rng.normal(size=(3, 4))).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, context)).batch(8)
    ours, theirs = build(), build()
    history = distribute.train(ours, ds, epochs=2, verbose=0)
    reference = theirs.fit(ds, epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["loss"], reference.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(history.history["nll"], reference.history["nll"], rtol=1e-5)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)
    # The context reaches the nets: another context gives another loss.
    loss = float(np.mean(np.asarray(ours((x, context)))))
    assert abs(float(np.mean(np.asarray(ours((x, np.zeros_like(context)))))) - loss) > 1e-3
