"""tfflows.datasets: FFJORD's toy sets, their closed-form densities, and the digits.

The distribution checks compare `toy` against `_ffjord`, a separate numpy
transcription of FFJORD's `lib/toy_data.py` (rtqichen/ffjord) kept close to the
original line by line, with scikit-learn's `make_moons`, `make_circles` and
`make_swiss_roll` transcribed the same way (`_sk_*`). They draw from a
`RandomState` passed in where FFJORD uses the global one. Two samples of
N_STATS points are compared on six marginals (axes, diagonals, radius, angle):
mean and std within SE_TOL standard errors, the KS distance, and a fine
two-sample histogram chi-square, which catches a wrong noise scale.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tfflows import datasets
from tfflows.datasets import TOY, TOY_WITH_LOG_PROB, digits, toy, toy_entropy, toy_log_prob

N_STATS = 20000  # sample size of the distribution checks
N_MC = 200000  # sample size of the Monte-Carlo entropy checks
SE_TOL = 5.0  # summary statistics agree within this many standard errors
KS_C = 2.69  # two-sample KS critical value coefficient at alpha = 1e-6
MC_SE_TOL = 3.0
CHI2_BINS = 200  # equal-count bins of the two-sample histogram test
INTEGRAL_ATOL = 1e-3

_trapezoid = getattr(np, "trapezoid", None) or np.trapz


# --------------------------------------------------------------------------- the reference


def _sk_shuffle(x, rs):
    return x[rs.permutation(len(x))]


def _sk_make_moons(n_samples, noise, rs):
    n_samples_out = n_samples // 2
    n_samples_in = n_samples - n_samples_out
    outer_circ_x = np.cos(np.linspace(0, np.pi, n_samples_out))
    outer_circ_y = np.sin(np.linspace(0, np.pi, n_samples_out))
    inner_circ_x = 1 - np.cos(np.linspace(0, np.pi, n_samples_in))
    inner_circ_y = 1 - np.sin(np.linspace(0, np.pi, n_samples_in)) - 0.5
    X = np.vstack([np.append(outer_circ_x, inner_circ_x), np.append(outer_circ_y, inner_circ_y)]).T
    X = _sk_shuffle(X, rs)
    return X + rs.normal(scale=noise, size=X.shape)


def _sk_make_circles(n_samples, factor, noise, rs):
    n_samples_out = n_samples // 2
    n_samples_in = n_samples - n_samples_out
    linspace_out = np.linspace(0, 2 * np.pi, n_samples_out, endpoint=False)
    linspace_in = np.linspace(0, 2 * np.pi, n_samples_in, endpoint=False)
    outer_circ_x = np.cos(linspace_out)
    outer_circ_y = np.sin(linspace_out)
    inner_circ_x = np.cos(linspace_in) * factor
    inner_circ_y = np.sin(linspace_in) * factor
    X = np.vstack([np.append(outer_circ_x, inner_circ_x), np.append(outer_circ_y, inner_circ_y)]).T
    X = _sk_shuffle(X, rs)
    return X + rs.normal(scale=noise, size=X.shape)


def _sk_make_swiss_roll(n_samples, noise, rs):
    t = 1.5 * np.pi * (1 + 2 * rs.uniform(size=n_samples))
    y = 21 * rs.uniform(size=n_samples)
    x = t * np.cos(t)
    z = t * np.sin(t)
    X = np.vstack((x, y, z))
    X += noise * rs.standard_normal(size=(3, n_samples))
    return X.T


def _ffjord(data, rng, batch_size):
    """FFJORD's inf_train_gen, transcribed (np.random.* replaced by `rng`)."""
    if data == "swissroll":
        data = _sk_make_swiss_roll(batch_size, 1.0, rng)
        data = data.astype("float32")[:, [0, 2]]
        data /= 5
        return data
    if data == "circles":
        data = _sk_make_circles(batch_size, 0.5, 0.08, rng)
        data = data.astype("float32")
        data *= 3
        return data
    if data == "rings":
        n_samples4 = n_samples3 = n_samples2 = batch_size // 4
        n_samples1 = batch_size - n_samples4 - n_samples3 - n_samples2
        linspace4 = np.linspace(0, 2 * np.pi, n_samples4, endpoint=False)
        linspace3 = np.linspace(0, 2 * np.pi, n_samples3, endpoint=False)
        linspace2 = np.linspace(0, 2 * np.pi, n_samples2, endpoint=False)
        linspace1 = np.linspace(0, 2 * np.pi, n_samples1, endpoint=False)
        circ4_x, circ4_y = np.cos(linspace4), np.sin(linspace4)
        circ3_x, circ3_y = np.cos(linspace4) * 0.75, np.sin(linspace3) * 0.75
        circ2_x, circ2_y = np.cos(linspace2) * 0.5, np.sin(linspace2) * 0.5
        circ1_x, circ1_y = np.cos(linspace1) * 0.25, np.sin(linspace1) * 0.25
        X = np.vstack([
            np.hstack([circ4_x, circ3_x, circ2_x, circ1_x]),
            np.hstack([circ4_y, circ3_y, circ2_y, circ1_y]),
        ]).T * 3.0
        X = _sk_shuffle(X, rng)
        X = X + rng.normal(scale=0.08, size=X.shape)
        return X.astype("float32")
    if data == "moons":
        data = _sk_make_moons(batch_size, 0.1, rng)
        data = data.astype("float32")
        return data * 2 + np.array([-1, -0.2])
    if data == "8gaussians":
        scale = 4.
        centers = [(1, 0), (-1, 0), (0, 1), (0, -1), (1. / np.sqrt(2), 1. / np.sqrt(2)),
                   (1. / np.sqrt(2), -1. / np.sqrt(2)), (-1. / np.sqrt(2), 1. / np.sqrt(2)),
                   (-1. / np.sqrt(2), -1. / np.sqrt(2))]
        centers = [(scale * x, scale * y) for x, y in centers]
        dataset = []
        for _ in range(batch_size):
            point = rng.randn(2) * 0.5
            center = centers[rng.randint(8)]
            point[0] += center[0]
            point[1] += center[1]
            dataset.append(point)
        dataset = np.array(dataset, dtype="float32")
        dataset /= 1.414
        return dataset
    if data == "pinwheel":
        radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
        num_per_class = batch_size // 5
        rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
        features = rng.randn(num_classes * num_per_class, 2) * np.array([radial_std, tangential_std])
        features[:, 0] += 1.
        labels = np.repeat(np.arange(num_classes), num_per_class)
        angles = rads[labels] + rate * np.exp(features[:, 0])
        rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
        rotations = np.reshape(rotations.T, (-1, 2, 2))
        return 2 * rng.permutation(np.einsum("ti,tij->tj", features, rotations))
    if data == "2spirals":
        n = np.sqrt(rng.rand(batch_size // 2, 1)) * 540 * (2 * np.pi) / 360
        d1x = -np.cos(n) * n + rng.rand(batch_size // 2, 1) * 0.5
        d1y = np.sin(n) * n + rng.rand(batch_size // 2, 1) * 0.5
        x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y)))) / 3
        x += rng.randn(*x.shape) * 0.1
        return x
    if data == "checkerboard":
        x1 = rng.rand(batch_size) * 4 - 2
        x2_ = rng.rand(batch_size) - rng.randint(0, 2, batch_size) * 2
        x2 = x2_ + (np.floor(x1) % 2)
        return np.concatenate([x1[:, None], x2[:, None]], 1) * 2
    raise AssertionError(data)


def _features(x):
    # Marginals that together pin the shape: the axes, the diagonals (which tell
    # a checkerboard from its complement), the radius and the angle (which tell a
    # spiral from its mirror image).
    x = np.asarray(x, dtype=np.float64)
    return {
        "x1": x[:, 0], "x2": x[:, 1],
        "x1+x2": (x[:, 0] + x[:, 1]) / math.sqrt(2.0), "x1-x2": (x[:, 0] - x[:, 1]) / math.sqrt(2.0),
        "radius": np.hypot(x[:, 0], x[:, 1]), "angle": np.arctan2(x[:, 1], x[:, 0]),
    }


def _mean_and_se(v):
    return v.mean(), v.std() / math.sqrt(len(v))


def _std_and_se(v):
    # SE of the sample std from the 4th central moment: se(var) / (2 std).
    c = v - v.mean()
    var = (c ** 2).mean()
    se_var = math.sqrt(max((c ** 4).mean() - var ** 2, 0.0) / len(v))
    return math.sqrt(var), se_var / (2.0 * math.sqrt(var))


def _ks_statistic(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max()


def _chi2_statistic(a, b, bins):
    # Two-sample chi-square on `bins` equal-count bins of the pooled sample; a
    # histogram this fine sees the width of a ring or an arc, which means and
    # KS distances average away. Under equal distributions ~ chi2(bins - 1).
    edges = np.quantile(np.concatenate([a, b]), np.linspace(0.0, 1.0, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    ca, cb = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    ka, kb = math.sqrt(len(b) / len(a)), math.sqrt(len(a) / len(b))
    keep = ca + cb > 0
    return float((((ka * ca - kb * cb) ** 2)[keep] / (ca + cb)[keep]).sum())


def _assert_same_distribution(ours, ref, label):
    f_ours, f_ref = _features(ours), _features(ref)
    for key in f_ours:
        a, b = f_ours[key], f_ref[key]
        for stat, fn in (("mean", _mean_and_se), ("std", _std_and_se)):
            (va, sa), (vb, sb) = fn(a), fn(b)
            tol = SE_TOL * math.hypot(sa, sb)
            assert abs(va - vb) <= tol, f"{label}: {stat} of {key} {va:.4f} vs FFJORD's {vb:.4f} (tol {tol:.4f})"
        d = _ks_statistic(a, b)
        crit = KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
        assert d <= crit, f"{label}: KS distance of {key} {d:.4f} > {crit:.4f}"
        dof = CHI2_BINS - 1
        chi2, crit = _chi2_statistic(a, b, CHI2_BINS), dof + SE_TOL * math.sqrt(2.0 * dof)
        assert chi2 <= crit, f"{label}: chi-square of {key} histograms {chi2:.1f} > {crit:.1f} ({dof} dof)"


# --------------------------------------------------------------------------- toy


@pytest.mark.parametrize("n", [1, 7, 1001])
@pytest.mark.parametrize("name", TOY)
def test_toy_gives_n_finite_float32_points(name, n):
    x = toy(name, n, seed=0)
    assert isinstance(x, np.ndarray) and x.shape == (n, 2) and x.dtype == np.float32
    assert np.isfinite(x).all()


@pytest.mark.parametrize("name", TOY)
def test_toy_is_reproducible_with_a_seed(name):
    np.testing.assert_array_equal(toy(name, 500, seed=3), toy(name, 500, seed=3))
    np.testing.assert_array_equal(toy(name, 500, seed=3), toy(name, 500, seed=np.random.default_rng(3)))


@pytest.mark.parametrize("name", TOY)
def test_toy_changes_with_the_seed(name):
    a, b = toy(name, 500, seed=3), toy(name, 500, seed=4)
    assert not np.array_equal(a, b)
    assert not np.array_equal(np.sort(a, axis=0), np.sort(b, axis=0))


def test_toy_leaves_the_global_numpy_rng_alone():
    state = np.random.get_state()
    for name in TOY:
        toy(name, 50)
    after = np.random.get_state()
    assert state[1].tolist() == after[1].tolist() and state[2:] == after[2:]


@pytest.mark.parametrize("name", TOY)
def test_toy_matches_ffjord_distribution(name):
    ours = toy(name, N_STATS, seed=11)
    ref = _ffjord(name, np.random.RandomState(12), N_STATS)
    assert ref.shape == ours.shape  # N_STATS divisible by 2, 4 and 5
    _assert_same_distribution(ours, ref, name)


@pytest.mark.parametrize("name", ["moons", "circles", "swissroll"])
def test_toy_matches_ffjord_with_real_sklearn(name):
    sk = pytest.importorskip("sklearn.datasets")
    if name == "moons":
        ref = sk.make_moons(n_samples=N_STATS, noise=0.1, random_state=5)[0] * 2 + np.array([-1, -0.2])
    elif name == "circles":
        ref = sk.make_circles(n_samples=N_STATS, factor=.5, noise=0.08, random_state=5)[0] * 3
    else:
        ref = sk.make_swiss_roll(n_samples=N_STATS, noise=1.0, random_state=5)[0][:, [0, 2]] / 5
    _assert_same_distribution(toy(name, N_STATS, seed=6), ref, name)


def test_toy_splits_stratified_sets_as_ffjord_does():
    # rings: n // 4 on each outer ring, the rest on the inner one (noise sd 0.08
    # against ring spacing 0.75, so the nearest radius is the ring).
    r = np.hypot(*toy("rings", 4003, seed=0).T.astype(np.float64))
    counts = np.bincount(np.argmin(np.abs(r[:, None] - np.array([3.0, 2.25, 1.5, 0.75])), axis=1), minlength=4)
    assert counts.tolist() == [1000, 1000, 1000, 1003]
    # 2spirals: points come in mirrored pairs, so the mean is 0 up to the noise.
    x = toy("2spirals", 20000, seed=0).astype(np.float64)
    assert np.abs(x.mean(axis=0)).max() < SE_TOL * 0.1 / math.sqrt(len(x))


# --------------------------------------------------------------------------- densities


@pytest.mark.parametrize("name", TOY_WITH_LOG_PROB)
def test_log_prob_integrates_to_one(name):
    g = np.linspace(-5.0, 5.0, 1001)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    p = np.concatenate([np.exp(toy_log_prob(name, c)) for c in np.array_split(pts, 10)]).reshape(xx.shape)
    total = _trapezoid(_trapezoid(p, g, axis=1), g)
    assert abs(total - 1.0) < INTEGRAL_ATOL, total


@pytest.mark.parametrize("name", TOY_WITH_LOG_PROB)
def test_monte_carlo_nll_of_samples_matches_entropy(name):
    nll = -toy_log_prob(name, toy(name, N_MC, seed=21))
    assert np.isfinite(nll).all()  # every sample lies where the density is positive
    mean, se = _mean_and_se(nll)
    assert abs(mean - toy_entropy(name)) <= MC_SE_TOL * se + 1e-12, (mean, se, toy_entropy(name))


def test_checkerboard_entropy_is_ln_32():
    assert toy_entropy("checkerboard") == math.log(32)
    assert round(toy_entropy("checkerboard"), 3) == 3.466


def test_8gaussians_entropy_is_converged_quadrature():
    h = toy_entropy("8gaussians")
    assert abs(h - 2.8318804061376) < 1e-10
    assert abs(h - datasets._quadrature_entropy("8gaussians", 9.0, 0.02)) < 1e-10
    # below the entropy of 8 disjoint Gaussians, ln 8 + ln(2 pi e s^2), by the overlap
    s = 0.5 / 1.414
    assert 0.0 < math.log(8) + math.log(2 * math.pi * math.e * s * s) - h < 0.01


def test_8gaussians_log_prob_at_a_centre_is_one_component_peak():
    s = 0.5 / 1.414
    # the 7 other components add < 1e-7 relative density at a centre
    expected = -math.log(8) - math.log(2 * math.pi * s * s)
    lp = toy_log_prob("8gaussians", np.array([[4 / 1.414, 0.0], [0.0, -4 / 1.414]]))
    np.testing.assert_allclose(lp, expected, atol=1e-6)


def test_checkerboard_log_prob_is_on_half_open_black_squares():
    x = np.array([[0.0, 0.0], [1.99, 1.99], [2.0, 0.0], [-4.0, -4.0], [4.0, 0.5], [-0.5, 0.5], [0.5, 10.0]])
    lp = toy_log_prob("checkerboard", x)
    np.testing.assert_array_equal(np.isfinite(lp), [True, True, False, True, False, False, False])
    assert lp.dtype == np.float64 and lp.shape == (len(x),)
    np.testing.assert_array_equal(lp[np.isfinite(lp)], -math.log(32))


@pytest.mark.parametrize("name", sorted(set(TOY) - set(TOY_WITH_LOG_PROB)))
def test_sets_without_closed_form_density_say_which_have_one(name):
    with pytest.raises(ValueError, match=r"only for name in checkerboard, 8gaussians; got name='" + name):
        toy_log_prob(name, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="only for name in checkerboard, 8gaussians"):
        toy_entropy(name)


# --------------------------------------------------------------------------- bad input

BAD_INPUTS = {
    "unknown_name": (lambda: toy("spiral", 10), ValueError,
                     r"name='spiral'; known names: moons, circles, rings, 8gaussians, pinwheel, 2spirals"),
    "name_not_a_string": (lambda: toy(3, 10), TypeError, r"name must be a string.*got name=3"),
    "n_zero": (lambda: toy("moons", 0), ValueError, r"n must be at least 1, got n=0"),
    "n_negative": (lambda: toy("moons", -5), ValueError, r"n must be at least 1, got n=-5"),
    "n_float": (lambda: toy("moons", 10.0), TypeError, r"n must be an integer .*got n=10\.0"),
    "n_string": (lambda: toy("moons", "10"), TypeError, r"n must be an integer .*got n='10'"),
    "n_bool": (lambda: toy("moons", True), TypeError, r"got n=True"),
    "bad_seed": (lambda: toy("moons", 10, seed="abc"), TypeError, r"seed must be .*got seed='abc'"),
    "log_prob_unknown_name": (lambda: toy_log_prob("gauss", np.zeros((2, 2))), ValueError,
                              r"name='gauss'; known names: moons"),
    "x_1d": (lambda: toy_log_prob("checkerboard", np.zeros(4)), ValueError,
             r"x must have shape \(n, 2\), got x.shape=\(4,\)"),
    "x_three_columns": (lambda: toy_log_prob("8gaussians", np.zeros((5, 3))), ValueError,
                        r"x must have shape \(n, 2\), got x.shape=\(5, 3\)"),
    "x_nan": (lambda: toy_log_prob("8gaussians", [[0.0, 0.0], [np.nan, 1.0]]), ValueError,
              r"x must be finite, got 1 row\(s\) with NaN or Inf, the first x\[1\]=\[nan, 1.0\]"),
    "x_inf": (lambda: toy_log_prob("checkerboard", [[np.inf, 0.0]]), ValueError,
              r"x must be finite.*x\[0\]=\[inf, 0.0\]"),
    "x_not_numeric": (lambda: toy_log_prob("checkerboard", [["a", "b"]]), TypeError,
                      r"x must be a numeric array of shape \(n, 2\), got list"),
    "digits_bad_split": (lambda: digits("valid"), ValueError,
                         r"split must be one of train, test; got split='valid'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_raises_naming_the_argument_and_value(case):
    call, exc, match = BAD_INPUTS[case]
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- digits


def test_digits_splits_80_20_deterministically():
    pytest.importorskip("sklearn")
    x_train, y_train = digits("train")
    x_test, y_test = digits("test")
    assert x_train.shape == (1438, 64) and y_train.shape == (1438,)
    assert x_test.shape == (359, 64) and y_test.shape == (359,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() >= 0.0 and x_train.max() <= 16.0 and set(np.unique(y_train)) == set(range(10))
    np.testing.assert_array_equal(digits("train")[0], x_train)
    # train and test together are the 1797 images, each once (as multisets of rows)
    from sklearn.datasets import load_digits

    def keys(x, y):
        return sorted(r.astype(np.float32).tobytes() + bytes([int(c)]) for r, c in zip(x, y))

    full = load_digits()
    assert keys(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])) == keys(full.data, full.target)
    assert not np.array_equal(digits("train", seed=1)[1], y_train)


def test_digits_without_sklearn_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="digits\\(\\) needs scikit-learn"):
        digits()


# --------------------------------------------------------------------------- layering


def test_datasets_module_imports_numpy_only():
    path = os.path.abspath(datasets.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('tfflows_datasets', {path!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.toy('moons', 3); m.toy_log_prob('checkerboard', [[0.0, 0.0]])\n"
        "bad = sorted({k.split('.')[0] for k in sys.modules} & {'tensorflow', 'keras', 'jax', 'tfflows', 'sklearn'})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
