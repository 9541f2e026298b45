"""The contract registry: one small case per flow layer, declaring its capabilities.

Every class in `tfflows.layers.LAYER_REGISTRY` must have at least one case
here (`test_every_layer_has_a_contract_case`). A case builds a small
instance in a given dtype (`make(dtype)`), says which input it takes, and
declares what the layer can do: how each direction is computed
(`"analytic"`, `"sequential"`, `"iterative"` or `None`), whether its log-det
is exact, and the context it conditions on. The suite in
`test_contract.py` checks every declared direction and checks that the
layer declares the same capabilities itself. A new family needs only new
cases.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

from tfflows import layers as L


@dataclass(frozen=True)
class Case:
    make: Callable  # dtype -> a fresh, unbuilt layer
    shape: tuple  # input shape, batch axis first
    inputs: str = "normal"  # "normal" (N(0, 1)) or "unit" (uniform in [0.05, 0.95])
    forward: Optional[str] = "analytic"  # how data -> latent is computed; None: unavailable
    inverse: Optional[str] = "analytic"  # how latent -> data is computed; None: unavailable
    log_det: str = "exact"  # "exact" or "estimate"
    context_shape: Optional[tuple] = None  # event shape of the context, for conditional cases
    tolerances: dict = field(default_factory=dict)  # per-case overrides, each with a reason
    local_log_det: bool = False  # forward_local: the log-det per image position (FastFlow's maps)
    # For log_det="estimate": "unbiased" or "biased" (checked against the layer's
    # `exact_log_det` over many seeds in test_estimated_log_det_bias).
    estimator: Optional[str] = None
    # How test_log_det_matches_autodiff_jacobian_in_float64 gets the Jacobian:
    # "autodiff", or "finite-difference" where autodiff would differentiate
    # an adaptive ODE solve (the adjoint: another solve, no more exact than
    # central differences at a 1e-10 solver tolerance, and minutes per case).
    jacobian: str = "autodiff"
    # Marks the case's tests `slow` (out of the default suite): True for all of
    # them, a tuple of test-function names, or `AllBut(names)`. Each slow
    # test keeps a faster sibling in the default suite.
    slow: object = False
    # For the estimator bias test: a function of the built, perturbed layer that
    # moves it where the estimator's random part matters (e.g. a residual
    # block at its Lipschitz cap).
    stress: Optional[Callable] = None


def _glow_step(dtype, c_hidden=8):
    return L.FlowSequence([L.ActNorm(dtype=dtype), L.Invertible1x1Conv(seed=1, dtype=dtype),
                           L.AffineCoupling(hidden=c_hidden, dtype=dtype)], dtype=dtype)


def _multiscale(dtype):
    return L.FlowSequence([
        L.Squeeze(dtype=dtype), L.ActNorm(dtype=dtype), L.AffineCoupling(hidden=8, dtype=dtype),
        L.Split(dtype=dtype), L.Squeeze(dtype=dtype), L.Invertible1x1Conv(seed=2, dtype=dtype),
        L.AffineCoupling(hidden=8, dtype=dtype),
    ], dtype=dtype)


def _conditional_multiscale(dtype):
    c = (3,)
    return L.FlowSequence([
        L.Squeeze(dtype=dtype), L.AffineCoupling(hidden=8, context_shape=c, dtype=dtype),
        L.Split(context_shape=c, dtype=dtype), L.Coupling("additive", hidden=8, context_shape=c, dtype=dtype),
    ], dtype=dtype)


def _at_lipschitz_cap(layer):
    """Every kernel scaled far past its spectral cap, so the normalised ones
    sit at it and the series' later terms matter."""
    for w in layer.trainable_weights:
        if "kernel" in w.path:
            w.assign(w.value * 20.0)


def _ode_tolerances(dtype):
    tight = dtype == "float64"
    return {"rtol": 1e-10 if tight else 1e-6, "atol": 1e-10 if tight else 1e-6, "max_num_steps": 5000}


# An adaptive solve to rtol = atol = 1e-6 (1e-10 in float64) is accurate to
# about ten times that after integrating both ways.
# With a Hutchinson probe in the solver's state, the steps (and so the output)
# vary from draw to draw at a few times the tolerance (2.4e-5 seen).
class AllBut(tuple):
    """`Case.slow=AllBut(names)`: every test of the case is slow but these."""


# Each ODE test traces TFP's solve afresh (seconds each): the default suite
# keeps the round trip and the log-det against the finite-difference Jacobian
# (exact case), and the estimator, context and training checks (Hutchinson
# case); the rest of both, and the image case, run with the slow tests.
_CNF_EXACT_FAST = AllBut(("test_layer_declares_the_cases_capabilities", "test_inverse_undoes_forward",
                          "test_log_det_matches_autodiff_jacobian_in_float64"))
_CNF_HUTCHINSON_FAST = AllBut(("test_layer_declares_the_cases_capabilities", "test_estimated_log_det_bias",
                               "test_context_changes_the_output", "test_one_compiled_fit_step"))
_ODE_TOLERANCES = {"round_trip_rtol": 2e-5, "round_trip_f64_rtol": 1e-8, "log_det_f64_rtol": 1e-6, "draw_rtol": 1e-4}


CASES = {
    "Coupling-affine-exp-vector": Case(
        lambda dt: L.Coupling({"name": "affine", "scale": "exp"}, hidden=8, dtype=dt), (3, 5), local_log_det=True),
    "Coupling-additive-conditional-image": Case(
        lambda dt: L.Coupling("additive", mask="checkerboard", hidden=8, context_shape=(3,), dtype=dt),
        (2, 4, 4, 2), context_shape=(3,), local_log_det=True),
    "Coupling-affine-conditional-image-context": Case(
        lambda dt: L.Coupling("affine", hidden=8, context_shape=(4, 4, 1), dtype=dt),
        (2, 4, 4, 2), context_shape=(4, 4, 1), local_log_det=True),
    "AdditiveCoupling-channel-vector": Case(lambda dt: L.AdditiveCoupling(hidden=8, dtype=dt), (3, 6), local_log_det=True),
    "AdditiveCoupling-checkerboard-image": Case(
        lambda dt: L.AdditiveCoupling(mask="checkerboard", hidden=8, dtype=dt), (2, 4, 4, 2), local_log_det=True),
    "AdditiveCoupling-user-net": Case(
        lambda dt: L.AdditiveCoupling(mask="checkerboard",
                                      net=L.DenseNet(8, 6, depth=1, name="user_net", dtype=dt), dtype=dt),
        (3, 6), local_log_det=True),
    "AffineCoupling-channel-image": Case(lambda dt: L.AffineCoupling(hidden=8, dtype=dt), (2, 4, 4, 4), local_log_det=True),
    "AffineCoupling-channel-reverse-odd": Case(
        lambda dt: L.AffineCoupling(reverse=True, hidden=8, dtype=dt), (2, 3, 3, 3), local_log_det=True),
    "AffineCoupling-checkerboard-exp": Case(
        lambda dt: L.AffineCoupling(mask="checkerboard", scale="exp", hidden=8, dtype=dt), (2, 4, 4, 2), local_log_det=True),
    "AffineCoupling-checkerboard-vector": Case(
        lambda dt: L.AffineCoupling(mask="checkerboard", hidden=8, dtype=dt), (3, 6), local_log_det=True),
    "AffineCoupling-conditional-vector": Case(
        lambda dt: L.AffineCoupling(hidden=8, context_shape=(2,), dtype=dt), (3, 4), context_shape=(2,), local_log_det=True),
    "MaskedAutoregressive-maf-affine": Case(
        lambda dt: L.MaskedAutoregressive(hidden=(16, 16), dtype=dt), (3, 5), inverse="sequential"),
    "MaskedAutoregressive-iaf-affine-random-order": Case(
        lambda dt: L.MaskedAutoregressive(direction="iaf", hidden=(16,), order="random", seed=3, dtype=dt),
        (3, 4), forward="sequential"),
    "MaskedAutoregressive-maf-conditional": Case(
        lambda dt: L.MaskedAutoregressive(hidden=(16,), context_shape=(2,), dtype=dt), (3, 4),
        inverse="sequential", context_shape=(2,)),
    "MaskedAutoregressive-iaf-conditional-one-feature": Case(
        lambda dt: L.MaskedAutoregressive(direction="iaf", hidden=(8,), context_shape=(2,), dtype=dt), (3, 1),
        forward="sequential", context_shape=(2,)),
    "MaskedAutoregressive-maf-spline": Case(
        lambda dt: L.MaskedAutoregressive({"name": "spline", "bins": 4, "bound": 2.0}, hidden=(16,), dtype=dt),
        (3, 3), inverse="sequential"),
    "MaskedAutoregressive-iaf-spline-conditional": Case(
        lambda dt: L.MaskedAutoregressive("spline", direction="iaf", hidden=(16,), context_shape=(2,), dtype=dt),
        (3, 3), forward="sequential", context_shape=(2,)),
    "SplineCoupling-channel-vector": Case(lambda dt: L.SplineCoupling(bins=4, hidden=8, dtype=dt), (3, 5), local_log_det=True),
    "SplineCoupling-checkerboard-image": Case(
        lambda dt: L.SplineCoupling(bins=4, bound=2.0, mask="checkerboard", hidden=8, dtype=dt), (2, 4, 4, 2), local_log_det=True),
    "SplineCoupling-channel-image-conditional": Case(
        lambda dt: L.SplineCoupling(bins=3, hidden=8, context_shape=(2,), dtype=dt), (2, 2, 2, 4),
        context_shape=(2,), local_log_det=True),
    "ElementwiseSpline-vector": Case(lambda dt: L.ElementwiseSpline(bins=4, bound=2.0, dtype=dt), (3, 4)),
    "ElementwiseSpline-image-conditional": Case(
        lambda dt: L.ElementwiseSpline(bins=3, context_shape=(2,), dtype=dt), (2, 2, 2, 1), context_shape=(2,)),
    "PiecewiseLinear": Case(lambda dt: L.PiecewiseLinear(bins=5, dtype=dt), (3, 4), inputs="unit"),
    "PiecewiseLinear-conditional": Case(
        lambda dt: L.PiecewiseLinear(bins=4, bound=2.0, context_shape=(3,), dtype=dt), (3, 2), context_shape=(3,)),
    "LULinear": Case(lambda dt: L.LULinear(seed=0, dtype=dt), (3, 4)),
    "QRLinear": Case(lambda dt: L.QRLinear(seed=0, dtype=dt), (3, 4)),
    "QRLinear-two-reflections-no-bias": Case(lambda dt: L.QRLinear(2, use_bias=False, seed=1, dtype=dt), (3, 5)),
    "Householder": Case(lambda dt: L.Householder(3, seed=0, dtype=dt), (3, 4)),
    "ActNorm": Case(lambda dt: L.ActNorm(dtype=dt), (2, 3, 3, 4), local_log_det=True),
    "DiagonalScaling": Case(lambda dt: L.DiagonalScaling(dtype=dt), (3, 8)),
    "Invertible1x1Conv-lu": Case(lambda dt: L.Invertible1x1Conv(seed=0, dtype=dt), (2, 3, 3, 4), local_log_det=True),
    "Invertible1x1Conv-plain": Case(lambda dt: L.Invertible1x1Conv(lu=False, seed=0, dtype=dt), (2, 3, 3, 4), local_log_det=True),
    "Permute": Case(lambda dt: L.Permute(seed=3, dtype=dt), (2, 2, 2, 5)),
    "Reverse": Case(lambda dt: L.Reverse(dtype=dt), (3, 5)),
    "Squeeze": Case(lambda dt: L.Squeeze(dtype=dt), (2, 4, 4, 2)),
    "Unsqueeze": Case(lambda dt: L.Unsqueeze(dtype=dt), (2, 2, 2, 8)),
    "Reshape": Case(lambda dt: L.Reshape((18,), dtype=dt), (2, 3, 3, 2)),
    "Split-learned-prior": Case(lambda dt: L.Split(dtype=dt), (2, 3, 3, 4)),
    "Split-vector-keep3": Case(lambda dt: L.Split(keep=3, dtype=dt), (2, 5)),
    "Split-conditional-vector": Case(
        lambda dt: L.Split(context_shape=(2,), dtype=dt), (2, 4), context_shape=(2,)),
    "Rescale": Case(lambda dt: L.Rescale(2.0, -1.0, dtype=dt), (3, 2, 2, 1), inputs="unit"),
    "LogitTransform": Case(lambda dt: L.LogitTransform(alpha=0.05, dtype=dt), (3, 2, 2, 2), inputs="unit"),
    # VI flows: the generative direction (latent -> data, `inverse`) is one pass.
    "Planar": Case(lambda dt: L.Planar(seed=0, dtype=dt), (3, 4), forward="iterative"),
    "Planar-amortised": Case(
        lambda dt: L.Planar(context_shape=(2,), dtype=dt), (3, 3), forward="iterative", context_shape=(2,)),
    "Radial": Case(lambda dt: L.Radial(seed=0, dtype=dt), (3, 4)),
    "Radial-amortised": Case(lambda dt: L.Radial(context_shape=(2,), dtype=dt), (3, 3), context_shape=(2,)),
    "Sylvester-orthogonal-m2": Case(lambda dt: L.Sylvester("orthogonal", m=2, seed=0, dtype=dt), (3, 4), forward=None),
    "Sylvester-orthogonal-m1-amortised": Case(
        lambda dt: L.Sylvester("orthogonal", m=1, context_shape=(2,), dtype=dt), (3, 3), forward=None,
        context_shape=(2,)),
    "Sylvester-householder": Case(
        lambda dt: L.Sylvester("householder", n_reflections=2, seed=0, dtype=dt), (3, 4), forward=None),
    "Sylvester-householder-amortised": Case(
        lambda dt: L.Sylvester("householder", m=2, context_shape=(2,), dtype=dt), (3, 3), forward=None,
        context_shape=(2,)),
    "Sylvester-triangular-reverse": Case(
        lambda dt: L.Sylvester("triangular", reverse=True, seed=0, dtype=dt), (3, 4), forward=None),
    "Sylvester-triangular-amortised": Case(
        lambda dt: L.Sylvester("triangular", m=2, context_shape=(2,), dtype=dt), (3, 3), forward=None,
        context_shape=(2,)),
    # Residual flows: forward is one pass, inverse a fixed-point iteration.
    "ResidualBlock-exact-vector": Case(
        lambda dt: L.ResidualBlock(hidden=(8,), lipschitz=0.9, log_det="exact", seed=0, dtype=dt), (3, 4),
        inverse="iterative"),
    "ResidualBlock-exact-image-conditional": Case(
        lambda dt: L.ResidualBlock(hidden=(4,), lipschitz=0.9, log_det="exact", context_shape=(2,), seed=1,
                                   dtype=dt), (2, 3, 3, 2), inverse="iterative", context_shape=(2,)),
    "ResidualBlock-roulette-vector": Case(
        lambda dt: L.ResidualBlock(hidden=(8,), lipschitz=0.95, n_exact_terms=1, seed=2, dtype=dt), (3, 2),
        inverse="iterative", log_det="estimate", estimator="unbiased", stress=_at_lipschitz_cap),
    "ResidualBlock-series-image": Case(
        lambda dt: L.ResidualBlock(hidden=(4,), lipschitz=0.9, log_det="series", n_terms=3,
                                   hutchinson="rademacher", seed=3, dtype=dt), (2, 3, 3, 2),
        inverse="iterative", log_det="estimate", estimator="biased", stress=_at_lipschitz_cap),
    # Continuous flows: both directions are adaptive ODE solves (tolerances by dtype).
    "ContinuousFlow-exact-vector": Case(
        lambda dt: L.ContinuousFlow(hidden=(8,), seed=0, dtype=dt, **_ode_tolerances(dt)), (3, 3),
        forward="iterative", inverse="iterative", tolerances=_ODE_TOLERANCES,
        jacobian="finite-difference", slow=_CNF_EXACT_FAST),
    "ContinuousFlow-exact-image": Case(
        lambda dt: L.ContinuousFlow(hidden=(4,), activation="softplus", seed=1, dtype=dt, **_ode_tolerances(dt)),
        (2, 2, 2, 1), forward="iterative", inverse="iterative", tolerances=_ODE_TOLERANCES,
        jacobian="finite-difference", slow=True),
    "ContinuousFlow-hutchinson-conditional": Case(
        lambda dt: L.ContinuousFlow(hidden=(8,), trace="hutchinson", context_shape=(2,), seed=2, dtype=dt,
                                    **_ode_tolerances(dt)), (3, 2), forward="iterative", inverse="iterative",
        log_det="estimate", estimator="unbiased", context_shape=(2,), tolerances=_ODE_TOLERANCES,
        jacobian="finite-difference", slow=_CNF_HUTCHINSON_FAST),
    "FlowSequence-glow-step": Case(_glow_step, (2, 3, 3, 4), local_log_det=True),
    "FlowSequence-multiscale": Case(_multiscale, (2, 4, 4, 1), inputs="unit"),
    "FlowSequence-conditional-multiscale": Case(
        _conditional_multiscale, (2, 4, 4, 1), inputs="unit", context_shape=(3,)),
}
