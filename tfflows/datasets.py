"""Offline datasets: FFJORD's 2-D toy densities and scikit-learn's 8x8 digits.

`toy(name, n, seed)` draws the eight 2-D sets of FFJORD's `lib/toy_data.py`
(Grathwohl et al. 2019, https://arxiv.org/abs/1810.01367) with the same
formulas and constants, seeded through `numpy.random.default_rng` (FFJORD
draws from numpy's global `RandomState`, so the values differ but the
distribution is the same). FFJORD calls scikit-learn's `make_moons`,
`make_circles` and `make_swiss_roll` for three of them; those generators are
written out here in numpy, following scikit-learn's definitions, so that the
sets need no scikit-learn and do not depend on its version.

`toy_log_prob(name, x)` is the exact log-density where one has a closed form
(`checkerboard`, `8gaussians`) and `toy_entropy(name)` its expectation
E[-log p]: the target a density model's test NLL (in nats) approaches.

This module imports numpy only (`digits` imports scikit-learn when called), so
benchmarks and notebooks can load data without TensorFlow or Keras.
"""

import functools
import math
import numbers

import numpy as np

#: The toy set names `toy` knows, as in FFJORD's `lib/toy_data.py`.
TOY = ("moons", "circles", "rings", "8gaussians", "pinwheel", "2spirals", "checkerboard", "swissroll")

#: The toy sets whose density has a closed form (`toy_log_prob`, `toy_entropy`).
TOY_WITH_LOG_PROB = ("checkerboard", "8gaussians")

# 8gaussians: centres scale * (cos k pi/4, sin k pi/4), std 0.5, all divided by
# 1.414 (FFJORD's literal, not sqrt(2)) after the noise is added.
_EIGHT_SCALE = 4.0
_EIGHT_STD = 0.5
_EIGHT_DIVISOR = 1.414
_R = 1.0 / math.sqrt(2.0)
_EIGHT_UNIT = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (_R, _R), (_R, -_R), (-_R, _R), (-_R, -_R)])
#: Means and std of the 8 components of the final 8gaussians point.
_EIGHT_MEANS = _EIGHT_SCALE * _EIGHT_UNIT / _EIGHT_DIVISOR
_EIGHT_SIGMA = _EIGHT_STD / _EIGHT_DIVISOR

# checkerboard: uniform on 8 squares of side 2 (after FFJORD's final "* 2").
_CHECKER_AREA = 32.0


# --------------------------------------------------------------------------- checks


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, one of {', '.join(TOY)}; got name={name!r}")
    if name not in TOY:
        raise ValueError(f"Unknown toy set name={name!r}; known names: {', '.join(TOY)}")
    return name


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer number of points, got n={n!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got n={n}")
    return int(n)


def _rng(seed):
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise type(e)(f"seed must be None, a non-negative integer or a numpy Generator; got seed={seed!r}") from e


def _check_points(x):
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"x must be a numeric array of shape (n, 2), got {type(x).__name__} {x!r:.80}") from e
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"x must have shape (n, 2), got x.shape={arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"x must be finite, got {int(bad.sum())} row(s) with NaN or Inf, "
                         f"the first x[{i}]={arr[i].tolist()}")
    return arr


# --------------------------------------------------------------------------- generators
# Each takes a numpy Generator and n >= 1 and returns float64 (n, 2). Where FFJORD
# stratifies (equal class counts, evenly spaced angles) so do these, with the
# remainder of n placed as scikit-learn or FFJORD place it.


def _moons(rng, n):
    # sklearn.datasets.make_moons(n, noise=0.1), then x * 2 + (-1, -0.2).
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    x = np.concatenate([
        np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
        np.stack([1.0 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1),
    ])
    x = rng.permutation(x) + rng.normal(scale=0.1, size=(n, 2))
    return x * 2.0 + np.array([-1.0, -0.2])


def _circle_grid(radii_counts):
    # Evenly spaced angles, endpoint excluded, as sklearn's make_circles and FFJORD's rings.
    parts = []
    for radius, count in radii_counts:
        t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
        parts.append(radius * np.stack([np.cos(t), np.sin(t)], axis=1))
    return np.concatenate(parts)


def _circles(rng, n):
    # sklearn.datasets.make_circles(n, factor=0.5, noise=0.08), then x * 3.
    n_out = n // 2
    x = _circle_grid([(1.0, n_out), (0.5, n - n_out)])
    x = rng.permutation(x) + rng.normal(scale=0.08, size=(n, 2))
    return x * 3.0


def _rings(rng, n):
    # Radii (1, 0.75, 0.5, 0.25) * 3, n // 4 points on each of the outer three and
    # the rest on the inner one; shuffled; noise 0.08 added after the scaling.
    q = n // 4
    x = _circle_grid([(3.0, q), (2.25, q), (1.5, q), (0.75, n - 3 * q)])
    return rng.permutation(x) + rng.normal(scale=0.08, size=(n, 2))


def _eight_gaussians(rng, n):
    k = rng.integers(0, 8, size=n)
    point = rng.standard_normal((n, 2)) * _EIGHT_STD + _EIGHT_SCALE * _EIGHT_UNIT[k]
    return point / _EIGHT_DIVISOR


def _pinwheel(rng, n):
    # 5 arms (i mod 5, equal counts up to one); radial N(1, 0.3^2), tangential
    # N(0, 0.1^2); angle 2 pi k / 5 + 0.25 exp(radial); FFJORD's einsum
    # "ti,tij->tj" with [[cos, -sin], [sin, cos]] rotates the feature by -angle.
    k = np.arange(n) % 5
    f = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    f[:, 0] += 1.0
    a = 2.0 * np.pi * k / 5.0 + 0.25 * np.exp(f[:, 0])
    c, s = np.cos(a), np.sin(a)
    y = np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], axis=1)
    return 2.0 * rng.permutation(y)


def _two_spirals(rng, n):
    # t = sqrt(u) * 540 degrees; one arm p = (-t cos t + u1/2, t sin t + u2/2),
    # the other -p (FFJORD stacks p and -p, so points come in mirrored pairs);
    # / 3, then N(0, 0.1^2) noise. Shuffled (FFJORD returns the arms in order).
    m = n - n // 2
    t = np.sqrt(rng.random(m)) * 540.0 * (2.0 * np.pi) / 360.0
    p = np.stack([-np.cos(t) * t + rng.random(m) * 0.5, np.sin(t) * t + rng.random(m) * 0.5], axis=1)
    x = np.concatenate([p, -p])[:n] / 3.0
    x = x + rng.standard_normal((n, 2)) * 0.1
    return rng.permutation(x)


def _checkerboard(rng, n):
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2.0 + np.floor(x1) % 2.0
    return np.stack([x1, x2], axis=1) * 2.0


def _swissroll(rng, n):
    # sklearn.datasets.make_swiss_roll(n, noise=1.0)[:, [0, 2]] / 5 (the unused
    # height coordinate is not drawn).
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return x / 5.0


_GENERATORS = {
    "moons": _moons, "circles": _circles, "rings": _rings, "8gaussians": _eight_gaussians,
    "pinwheel": _pinwheel, "2spirals": _two_spirals, "checkerboard": _checkerboard, "swissroll": _swissroll,
}


def _checkerboard_to_float32(x):
    # Rounding to float32 can carry a point just below a square's upper edge onto
    # the edge, i.e. into a white square; keep it on its (half-open) square.
    upper = (2.0 * (np.floor(x / 2.0) + 1.0)).astype(np.float32)
    return np.minimum(x.astype(np.float32), np.nextafter(upper, np.float32(-np.inf)))


def toy(name, n, seed=None):
    """`n` points of FFJORD's 2-D toy set `name`, as float32 `(n, 2)`.

    The sets as in FFJORD (Grathwohl et al. 2019), `lib/toy_data.py`, with the
    same formulas and constants (u, u1, u2 ~ U[0, 1), z ~ N(0, I)):

    - `moons`: scikit-learn's `make_moons(noise=0.1)` mapped by `x * 2 + (-1, -0.2)`:
      `(cos t, sin t)` (n // 2 points) and `(1 - cos t, 0.5 - sin t)` (the rest),
      t evenly spaced on [0, pi] ends included, shuffled, `+ 0.1 z`, then the map.
    - `circles`: scikit-learn's `make_circles(factor=0.5, noise=0.08) * 3`: radius
      1 (n // 2 points) and 0.5, angles evenly spaced (end excluded), shuffled,
      `+ 0.08 z`, times 3 (radii 3 and 1.5, noise sd 0.24).
    - `rings`: radii 3, 2.25, 1.5 (n // 4 points each) and 0.75 (the rest), angles
      evenly spaced (end excluded), shuffled, `+ 0.08 z`.
    - `8gaussians`: `(4 (cos k pi/4, sin k pi/4) + 0.5 z) / 1.414`, k uniform on 0..7.
    - `pinwheel`: arm `k = i mod 5`, `r = 1 + 0.3 z1`, `s = 0.1 z2`,
      `a = 2 pi k / 5 + 0.25 exp(r)`, point `2 (r cos a + s sin a, -r sin a + s cos a)`, shuffled.
    - `2spirals`: `t = 3 pi sqrt(u)`, `p = (-t cos t + u1 / 2, t sin t + u2 / 2)`;
      half the points `p`, half `-p` (mirrored pairs), `/ 3 + 0.1 z`, shuffled.
    - `checkerboard`: `x1 = 4 u - 2`, `x2 = u1 - 2 b + (floor(x1) mod 2)` with b
      uniform on {0, 1}, times 2: uniform on the 8 squares of side 2 in
      [-4, 4)^2 with `floor(x1 / 2) + floor(x2 / 2)` even (area 32).
    - `swissroll`: scikit-learn's `make_swiss_roll(noise=1.0)[:, [0, 2]] / 5`:
      `t = 1.5 pi (1 + 2 u)`, `((t cos t, t sin t) + z) / 5`.

    The draws come from `numpy.random.default_rng(seed)`, not FFJORD's global
    `RandomState`: the values differ, the distribution is the same. Where FFJORD
    stratifies (moons, circles, rings: points on a fixed grid of angles;
    pinwheel, 2spirals: equal counts per arm) so does `toy`, so for these sets
    the distribution depends on `n` as FFJORD's does on its batch size; use one
    large draw rather than many small ones for a dense grid. Rows are shuffled,
    so any prefix is a fair sample. Unlike FFJORD, `toy` always returns exactly
    `n` rows (FFJORD returns `5 * (n // 5)` for pinwheel, `2 * (n // 2)` for
    2spirals).

    Args:
        name: one of `TOY`.
        n: number of points, an integer >= 1.
        seed: anything `numpy.random.default_rng` takes (None, an int, a Generator).

    Returns:
        float32 array of shape `(n, 2)`.

    Raises:
        ValueError: unknown `name`, or `n < 1`.
        TypeError: `n` not an integer, `seed` not a seed.

    References:
        Grathwohl et al., FFJORD, ICLR 2019. https://arxiv.org/abs/1810.01367

    >>> x = toy("checkerboard", 5, seed=0)
    >>> x.shape, x.dtype
    ((5, 2), dtype('float32'))
    >>> bool(np.isfinite(toy_log_prob("checkerboard", x)).all())
    True
    """
    name = _check_name(name)
    n = _check_n(n)
    x = _GENERATORS[name](_rng(seed), n)
    if name == "checkerboard":
        return _checkerboard_to_float32(x)
    return x.astype(np.float32)


# --------------------------------------------------------------------------- densities


def _checkerboard_log_prob(x):
    u = np.floor(x / 2.0)
    inside = np.all((x >= -4.0) & (x < 4.0), axis=1) & ((u[:, 0] + u[:, 1]) % 2.0 == 0.0)
    return np.where(inside, -math.log(_CHECKER_AREA), -np.inf)


def _eight_gaussians_log_prob(x):
    s2 = _EIGHT_SIGMA ** 2
    a = -np.sum((x[:, None, :] - _EIGHT_MEANS[None]) ** 2, axis=-1) / (2.0 * s2)
    m = a.max(axis=1)
    lse = m + np.log(np.exp(a - m[:, None]).sum(axis=1))
    return lse - math.log(8.0) - math.log(2.0 * math.pi * s2)


_LOG_PROBS = {"checkerboard": _checkerboard_log_prob, "8gaussians": _eight_gaussians_log_prob}

_NO_CLOSED_FORM = (
    "moons, pinwheel, 2spirals and swissroll are noisy curves with no closed-form density; "
    "circles and rings are points on a grid of angles plus Gaussian noise, a finite mixture "
    "that depends on n"
)


def _check_has_density(name, func):
    name = _check_name(name)
    if name not in _LOG_PROBS:
        raise ValueError(f"{func} has a closed form only for name in {', '.join(TOY_WITH_LOG_PROB)}; "
                         f"got name={name!r} ({_NO_CLOSED_FORM})")
    return name


def toy_log_prob(name, x):
    """Exact log-density (nats) of FFJORD's toy set `name` at the rows of `x`, float64 `(n,)`.

    The densities of the sets as in FFJORD (Grathwohl et al. 2019),
    `lib/toy_data.py`, where they have a closed form:

    - `checkerboard`: uniform on 8 squares of side 2, total area 32:
      `log p = -ln 32 = -3.4657` on `[-4, 4)^2` where `floor(x1 / 2) + floor(x2 / 2)`
      is even (squares half-open, as the generator draws them), `-inf` elsewhere.
    - `8gaussians`: since FFJORD divides by 1.414 after adding the noise, the point
      is exactly `(1/8) sum_k N(4 c_k / 1.414, (0.5 / 1.414)^2 I)`, c_k =
      `(cos k pi/4, sin k pi/4)`: centres at radius 2.8289, std 0.35361.

    The other sets have none: moons, pinwheel, 2spirals and swissroll are noisy
    curves; circles and rings put their points on a grid of angles that depends
    on `n` (only as n grows does the density tend to a ring mixture).

    Args:
        name: one of `TOY_WITH_LOG_PROB`.
        x: array-like `(n, 2)`, finite.

    Returns:
        float64 array `(n,)`.

    Raises:
        ValueError: unknown `name` or one with no closed form, `x` not `(n, 2)`,
            `x` with NaN or Inf.
        TypeError: `x` not numeric.

    >>> float(toy_log_prob("checkerboard", [[0.5, 0.5]])[0])  # -ln 32
    -3.4657359027997265
    >>> float(toy_log_prob("checkerboard", [[2.5, 0.5]])[0])
    -inf
    """
    name = _check_has_density(name, "toy_log_prob")
    return _LOG_PROBS[name](_check_points(x))


@functools.lru_cache(maxsize=None)
def _quadrature_entropy(name, half_width=8.0, step=0.05):
    # The trapezoid rule converges exponentially for smooth, fast-decaying
    # integrands; at this step it agrees with step / 4 to 1e-13.
    g = np.arange(-half_width, half_width + step / 2, step)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    lp = _LOG_PROBS[name](np.stack([xx.ravel(), yy.ravel()], axis=1))
    return float(-(np.exp(lp) * lp).sum() * step * step)


def toy_entropy(name):
    """E[-log p] in nats of FFJORD's toy set `name`: the best test NLL a density model can reach.

    For the sets as in FFJORD (Grathwohl et al. 2019), `lib/toy_data.py`, whose
    density `toy_log_prob` gives:

    - `checkerboard`: `ln 32 = 3.4657359` (closed form: uniform on area 32).
    - `8gaussians`: `2.8318804` (the mixture entropy has no closed form; this is a
      2-D trapezoid quadrature of `-p log p` over `[-8, 8]^2`, accurate to about
      1e-12; the overlap of the components puts it 0.0063 below
      `ln 8 + ln(2 pi e sigma^2) = 2.8382`).

    >>> round(toy_entropy("checkerboard"), 4)
    3.4657
    >>> round(toy_entropy("8gaussians"), 4)
    2.8319
    """
    name = _check_has_density(name, "toy_entropy")
    if name == "checkerboard":
        return math.log(_CHECKER_AREA)
    return _quadrature_entropy(name)


# --------------------------------------------------------------------------- digits

DIGITS_SPLITS = ("train", "test")


def digits(split="train", seed=0):
    """scikit-learn's bundled 8x8 digits: float32 features `(n, 64)` in [0, 16] and int64 labels `(n,)`.

    The 1797 images of `sklearn.datasets.load_digits` (the UCI optical
    recognition of handwritten digits test set, shipped with scikit-learn, so
    offline), a small tabular benchmark. The split is a fixed 80/20 one: the
    rows are permuted by `numpy.random.default_rng(seed)` and the first 1438 are
    `"train"`, the last 359 `"test"`, so a seed gives the same disjoint split on
    every call. Features are integer counts; dequantize them (add U[0, 1)
    noise) before fitting a density.

    Args:
        split: `"train"` or `"test"`.
        seed: seed of the permutation that makes the split.

    Returns:
        `(x, y)`: float32 `(n, 64)`, int64 `(n,)`.

    Raises:
        ValueError: unknown `split`.
        ImportError: scikit-learn is not installed.

    >>> x, y = digits("test")  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    ((359, 64), (359,))
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"split must be one of {', '.join(DIGITS_SPLITS)}; got split={split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("digits() needs scikit-learn, which ships the 8x8 digits: "
                          "pip install scikit-learn") from e
    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    order = _rng(seed).permutation(len(x))
    n_test = len(x) // 5
    idx = order[: len(x) - n_test] if split == "train" else order[len(x) - n_test:]
    return x[idx], y[idx]


# --------------------------------------------------------------------------- energies

#: Rezende & Mohamed's 2-D energies (2015, Table 1), the targets of their
#: variational-inference experiments (`energy`, `energy_log_z`).
ENERGIES = ("U1", "U2", "U3", "U4")

#: U2-U4 do not normalise on the plane (they are periodic in `z1`); like the
#: paper's plots on `[-4, 4]^2`, they are confined to `|z1| <= ENERGY_BOX` by
#: a wall `0.5 ((|z1| - ENERGY_BOX)_+ / ENERGY_WALL_WIDTH)^2` added to `U`
#: (zero inside the box, so `U` there is exactly the paper's).
ENERGY_BOX = 4.0
ENERGY_WALL_WIDTH = 0.2

# energy_log_z's grid: the square [-8, 8]^2 with this step (1601^2 points).
# At the square's edge every density is below exp(-50) of its peak.
_QUADRATURE_HALF_WIDTH = 8.0
_QUADRATURE_STEP = 0.01


class _NumpyOps:
    """The few array functions `_energy_u` needs, in numpy (float64)."""

    sin, sqrt, exp, abs, square, logaddexp = np.sin, np.sqrt, np.exp, np.abs, np.square, np.logaddexp

    @staticmethod
    def sigmoid(x):
        return 0.5 * (1.0 + np.tanh(0.5 * x))

    @staticmethod
    def relu(x):
        return np.maximum(x, 0.0)


def _energy_u(name, z1, z2, xp):
    """`U(z)` of energy `name` from the coordinates, with `xp`'s functions
    (`keras.ops` or `_NumpyOps`): one formula for training and quadrature."""
    w1 = xp.sin(0.5 * math.pi * z1)  # sin(2 pi z1 / 4)
    if name == "U1":
        r = xp.sqrt(xp.square(z1) + xp.square(z2))
        return 0.5 * xp.square((r - 2.0) / 0.4) - xp.logaddexp(-0.5 * xp.square((z1 - 2.0) / 0.6),
                                                              -0.5 * xp.square((z1 + 2.0) / 0.6))
    if name == "U2":
        u = 0.5 * xp.square((z2 - w1) / 0.4)
    elif name == "U3":
        w2 = 3.0 * xp.exp(-0.5 * xp.square((z1 - 1.0) / 0.6))
        u = -xp.logaddexp(-0.5 * xp.square((z2 - w1) / 0.35), -0.5 * xp.square((z2 - w1 + w2) / 0.35))
    else:
        w3 = 3.0 * xp.sigmoid((z1 - 1.0) / 0.3)
        u = -xp.logaddexp(-0.5 * xp.square((z2 - w1) / 0.4), -0.5 * xp.square((z2 - w1 + w3) / 0.35))
    return u + 0.5 * xp.square(xp.relu(xp.abs(z1) - ENERGY_BOX) / ENERGY_WALL_WIDTH)


def _check_energy(name):
    if not isinstance(name, str) or name not in ENERGIES:
        raise ValueError(f"Unknown energy name={name!r}; known names: {', '.join(ENERGIES)}")
    return name


def energy(name, z):
    """The unnormalised log-density `log p~(z) = -U(z)` of Rezende & Mohamed's
    energy `name` at the rows of `z` `(n, 2)`, as `(n,)`, in `keras.ops`.

    From Table 1 of Rezende & Mohamed (2015), with
    `w1 = sin(2 pi z1 / 4)`, `w2 = 3 exp(-0.5 ((z1 - 1) / 0.6)^2)`,
    `w3 = 3 sigmoid((z1 - 1) / 0.3)`:

    - `U1 = 0.5 ((|z| - 2) / 0.4)^2 - ln(exp(-0.5 ((z1 - 2) / 0.6)^2) + exp(-0.5 ((z1 + 2) / 0.6)^2))`
    - `U2 = 0.5 ((z2 - w1) / 0.4)^2`
    - `U3 = -ln(exp(-0.5 ((z2 - w1) / 0.35)^2) + exp(-0.5 ((z2 - w1 + w2) / 0.35)^2))`
    - `U4 = -ln(exp(-0.5 ((z2 - w1) / 0.4)^2) + exp(-0.5 ((z2 - w1 + w3) / 0.35)^2))`

    U2-U4 as printed are periodic in `z1` and have no finite normaliser, so
    they carry a wall `0.5 ((|z1| - 4)_+ / 0.2)^2` outside the paper's
    plotting box `|z1| <= 4` (`ENERGY_BOX`), which leaves them unchanged
    inside it. It is the target of `tfflows.vi.fit_to_density` (it runs in
    the compiled step, on TensorFlow or JAX); `energy_log_z(name)` is its
    `log Z`, so `KL(q || p) = energy_log_z(name) - ELBO`.

    This module imports Keras only when this function is called.

    Args:
        name: one of `ENERGIES`.
        z: a float tensor or array `(n, 2)`.

    Returns:
        `(n,)`, in `z`'s dtype (float32 for numpy float64 input).

    References: Rezende & Mohamed, Variational Inference with Normalizing
    Flows, https://arxiv.org/abs/1505.05770 (Table 1, Figure 3)

    >>> import numpy as np
    >>> round(float(np.asarray(energy("U2", np.zeros((1, 2), "float32")))[0]), 6)
    -0.0
    """
    from keras import ops  # lazy: the rest of this module needs numpy only

    name = _check_energy(name)
    z = ops.convert_to_tensor(z)
    if len(z.shape) != 2 or z.shape[-1] != 2:
        raise ValueError(f"energy takes points z of shape (n, 2), got shape {tuple(z.shape)}.")
    if "float" not in str(z.dtype):
        z = ops.cast(z, "float32")
    return -_energy_u(name, z[:, 0], z[:, 1], ops)


@functools.lru_cache(maxsize=None)
def _quadrature_log_z(name, half_width, step):
    g = np.arange(-half_width, half_width + step / 2, step)
    neg_u = np.empty((len(g), len(g)))
    for i in range(0, len(g), 200):  # rows of the grid in chunks, to bound memory
        z1 = g[i:i + 200, None]
        neg_u[i:i + 200] = -_energy_u(name, z1, g[None, :], _NumpyOps)
    m = neg_u.max()
    return float(m + np.log(np.exp(neg_u - m).sum() * step * step))


def energy_log_z(name):
    """`log Z = log of the integral of exp(-U)` of Rezende & Mohamed's energy
    `name` (see `energy`), by quadrature.

    The trapezoid rule (a plain sum: the integrand is below `exp(-50)` of
    its peak at the edge) on a grid of step 0.01 over `[-8, 8]^2`, 1601^2
    points, in float64. The integrand is smooth except where the wall
    starts (`|z1| = 4`, a jump in the second derivative), which is a grid
    node: steps 0.01, 0.05 and 0.1 agree to 1e-11, and a step of 0.0123
    that misses the node moves U2-U4 by 7e-8, so the grid error is below
    1e-7, far below the Monte Carlo error of any ELBO. U2 has a closed
    form, `log(0.4 sqrt(2 pi) (8 + 0.2 sqrt(2 pi)))` = 2.1428699121, which
    the quadrature matches to 1e-13. Under a second, cached after the first
    call.

    >>> round(energy_log_z("U2"), 6)
    2.14287
    """
    return _quadrature_log_z(_check_energy(name), _QUADRATURE_HALF_WIDTH, _QUADRATURE_STEP)
