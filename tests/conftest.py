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
