"""The contract registry: one small instance per flow layer, with an input shape.

Every class in `tfflows.layers.LAYER_REGISTRY` must have at least one case
here; `test_every_layer_has_a_contract_case` enforces it.
"""

from tfflows import layers as L


def _glow_step(c_hidden=8):
    return L.FlowSequence([L.ActNorm(), L.Invertible1x1Conv(seed=1), L.AffineCoupling(hidden=c_hidden)])


# id -> (factory, input shape with batch axis, input range)
CASES = {
    "AdditiveCoupling-channel-vector": (lambda: L.AdditiveCoupling(hidden=8), (3, 6), "normal"),
    "AdditiveCoupling-checkerboard-image": (
        lambda: L.AdditiveCoupling(mask="checkerboard", hidden=8), (2, 4, 4, 2), "normal"),
    "AdditiveCoupling-user-net": (
        lambda: L.AdditiveCoupling(mask="checkerboard", net=L.DenseNet(8, 6, depth=1, name="user_net")),
        (3, 6), "normal"),
    "AffineCoupling-channel-image": (lambda: L.AffineCoupling(hidden=8), (2, 4, 4, 4), "normal"),
    "AffineCoupling-channel-reverse-odd": (
        lambda: L.AffineCoupling(reverse=True, hidden=8), (2, 3, 3, 3), "normal"),
    "AffineCoupling-checkerboard-exp": (
        lambda: L.AffineCoupling(mask="checkerboard", scale="exp", hidden=8), (2, 4, 4, 2), "normal"),
    "AffineCoupling-checkerboard-vector": (
        lambda: L.AffineCoupling(mask="checkerboard", hidden=8), (3, 6), "normal"),
    "ActNorm": (lambda: L.ActNorm(), (2, 3, 3, 4), "normal"),
    "DiagonalScaling": (lambda: L.DiagonalScaling(), (3, 8), "normal"),
    "Invertible1x1Conv-lu": (lambda: L.Invertible1x1Conv(seed=0), (2, 3, 3, 4), "normal"),
    "Invertible1x1Conv-plain": (lambda: L.Invertible1x1Conv(lu=False, seed=0), (2, 3, 3, 4), "normal"),
    "Permute": (lambda: L.Permute(seed=3), (2, 2, 2, 5), "normal"),
    "Reverse": (lambda: L.Reverse(), (3, 5), "normal"),
    "Squeeze": (lambda: L.Squeeze(), (2, 4, 4, 2), "normal"),
    "Unsqueeze": (lambda: L.Unsqueeze(), (2, 2, 2, 8), "normal"),
    "Reshape": (lambda: L.Reshape((18,)), (2, 3, 3, 2), "normal"),
    "Split-learned-prior": (lambda: L.Split(), (2, 3, 3, 4), "normal"),
    "Split-vector-keep3": (lambda: L.Split(keep=3), (2, 5), "normal"),
    "Rescale": (lambda: L.Rescale(2.0, -1.0), (3, 2, 2, 1), "unit"),
    "LogitTransform": (lambda: L.LogitTransform(alpha=0.05), (3, 2, 2, 2), "unit"),
    "FlowSequence-glow-step": (_glow_step, (2, 3, 3, 4), "normal"),
    "FlowSequence-multiscale": (
        lambda: L.FlowSequence([
            L.Squeeze(), L.ActNorm(), L.AffineCoupling(hidden=8), L.Split(),
            L.Squeeze(), L.Invertible1x1Conv(seed=2), L.AffineCoupling(hidden=8),
        ]),
        (2, 4, 4, 1), "unit"),
}
