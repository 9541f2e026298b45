"""Shared test set-up: seeds, tolerances and where the real MNIST lies."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

# Tolerances in one place (see ../shared/STYLE.md section 3.8).
ROUND_TRIP_RTOL = 1e-5  # float32 round trip, relative to max(1, |x|)
LOG_DET_ATOL = 2e-3  # log-det vs autodiff slogdet (float32 Jacobians)
LOG_DET_CANCEL_ATOL = 1e-4

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_NPZ = os.environ.get(
    "TFFLOWS_MNIST", os.path.join(os.path.dirname(REPO), "shared", "data", "mnist.npz")
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def mnist_npz():
    if not os.path.exists(MNIST_NPZ):
        pytest.skip(f"real MNIST not found at {MNIST_NPZ} (set TFFLOWS_MNIST)")
    return MNIST_NPZ


def backend():
    return keras.backend.backend()


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# -- JAX reruns in the background ------------------------------------------------------
# Some files rerun themselves under KERAS_BACKEND=jax in a subprocess (the
# backend is process-global). When such a test is collected on TensorFlow,
# its rerun starts as soon as collection ends, one rerun at a time in a
# background thread, so it uses the second core while the TensorFlow tests
# run; the test then waits for and checks its result.
JAX_RERUNS = {
    # test id suffix -> (file, extra pytest arguments)
    "test_contract.py::test_contract_under_jax": ("test_contract.py", []),
    "test_nets.py::test_nets_under_jax": ("test_nets.py", []),
    "test_transforms.py::test_round_trips_and_finiteness_under_jax": (
        "test_transforms.py",
        ["-k", "round_trip_is_identity or autodiff or bayesflow721 or nflows87 or reads_its_own or pass_through"]),
}
_RERUN_RESULTS = {}


def _jax_rerun_command(file, extra):
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    # Op-by-op eager JAX compiles every op: skipping XLA's optimisation passes
    # makes that faster here without changing any value checked.
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    # The rerun is part of the default suite: it skips the slow-marked tests too.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow",
           os.path.join(here, file), *extra]
    return cmd, env, here


def _run_rerun(key):
    import subprocess

    cmd, env, here = _jax_rerun_command(*JAX_RERUNS[key])
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=here)
        return proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        return -1, str(err.stdout or ""), f"timed out after {err.timeout} s"


def pytest_collection_finish(session):
    import importlib.util
    import threading

    if keras.backend.backend() != "tensorflow" or importlib.util.find_spec("jax") is None:
        return
    keys = [k for k in JAX_RERUNS if any(item.nodeid.endswith(k) for item in session.items)]
    if not keys:
        return
    for key in keys:
        _RERUN_RESULTS[key] = [threading.Event(), None]

    def work():
        for key in keys:
            _RERUN_RESULTS[key][1] = _run_rerun(key)
            _RERUN_RESULTS[key][0].set()

    threading.Thread(target=work, name="jax-reruns", daemon=True).start()


def jax_rerun(key):
    """`(returncode, stdout, stderr)` of the JAX rerun `key` (see
    `JAX_RERUNS`): the background result when it was started, else run now."""
    if key in _RERUN_RESULTS:
        event, _ = _RERUN_RESULTS[key]
        event.wait(timeout=1500)
        result = _RERUN_RESULTS[key][1]
        if result is not None:
            return result
    return _run_rerun(key)
