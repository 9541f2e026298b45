#!/usr/bin/env python3
"""Model FLOPs per image of the benchmark Glow, analytic and from XLA.

Analytic count (multiply-adds x 2; elementwise work, biases and the tiny
per-step log-det sums are left out, they are < 0.1 %). Per level `l` the
image has `HW_l = (H / 2^(l+1)) * (W / 2^(l+1))` positions and `C_l` channels
(C_0 = 4 C after the first squeeze; a split halves C, the next squeeze
quadruples it: 4 then 8 channels for MNIST). With `c_a = C_l // 2` conditioning
channels, `c_b = C_l - c_a` transformed channels and hidden width `h`, one
step of flow costs, per image, in multiply-adds:

    invertible 1x1 conv    HW_l * C_l^2
    coupling conv3x3       HW_l * 9 * c_a * h
    coupling conv1x1       HW_l * h^2
    coupling conv3x3 out   HW_l * 9 * h * 2 c_b
    split prior (between levels, once)  HW_l * 9 * keep * 2 (C_l - keep)

forward FLOPs = 2 x sum of multiply-adds over the K steps of every level.
A training step costs about 3x the forward (the backward pass computes the
gradient with respect to the activations and to the weights, each about one
forward; every coupling input depends on earlier parameters, so no input
gradient is skipped): `train FLOPs/image = 3 x forward FLOPs/image`.

For MNIST, L=2, K=8, h=400: forward 0.729 GFLOP/image, training 2.19
GFLOP/image; 99.98 % of it in the coupling nets (86 % in the 400x400 1x1
convolutions alone). XLA's cost analysis of the compiled tfflows model
counts 0.720 / 2.162 GFLOP per image (forward / training), within 1.3 % of
the analytic count (XLA does not count the zero-padded taps at the borders
of the 3x3 convolutions, and does count elementwise work).

`python -m benchmarks.flops --xla` cross-checks the count with XLA's cost
analysis of the compiled tfflows model (JAX backend): the forward (bits/dim)
and the full value-and-gradient, per image.
"""
import argparse
import json
import os
import sys


def glow_flops(height=28, width=28, channels=1, levels=2, depth=8, hidden=400):
    """Analytic forward and training FLOPs per image, with a breakdown."""
    parts = {"invconv": 0, "coupling_conv3x3_in": 0, "coupling_conv1x1": 0,
             "coupling_conv3x3_out": 0, "split_prior": 0}
    h, w, c = height, width, channels
    for level in range(levels):
        h, w, c = h // 2, w // 2, c * 4
        hw = h * w
        c_a = c // 2
        c_b = c - c_a
        parts["invconv"] += depth * hw * c * c
        parts["coupling_conv3x3_in"] += depth * hw * 9 * c_a * hidden
        parts["coupling_conv1x1"] += depth * hw * hidden * hidden
        parts["coupling_conv3x3_out"] += depth * hw * 9 * hidden * 2 * c_b
        if level < levels - 1:
            keep = c // 2
            parts["split_prior"] += hw * 9 * keep * 2 * (c - keep)
            c = keep
    macs = sum(parts.values())
    forward = 2 * macs
    return {
        "forward_flops_per_image": forward,
        "train_flops_per_image": 3 * forward,
        "forward_macs_breakdown": parts,
        "formula": "train = 3 x forward; forward = 2 x multiply-adds of the convolutions "
                   "(see benchmarks/flops.py)",
    }


def xla_flops(levels=2, depth=8, hidden=400, batch=8):
    """XLA cost analysis of tfflows' compiled forward and value-and-grad (JAX)."""
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import keras
    import numpy as np
    from keras import ops

    import tfflows

    keras.utils.set_random_seed(0)
    model = tfflows.zoo.glow(preset="mnist", levels=levels, steps=depth, hidden=hidden)
    tv, ntv = list(model.trainable_variables), list(model.non_trainable_variables)

    def loss(tvals, ntvals, x):
        mapping = list(zip(tv, tvals)) + list(zip(ntv, ntvals))
        with keras.StatelessScope(state_mapping=mapping):
            return ops.mean(model.bits_per_dim(x))

    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    args = ([v.value for v in tv], [v.value for v in ntv], x)

    def cost(fn):
        ca = jax.jit(fn).lower(*args).compile().cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca["flops"]) / batch

    return {"xla_forward_flops_per_image": cost(loss),
            "xla_train_flops_per_image": cost(jax.value_and_grad(loss)),
            "xla_batch": batch, "jax": jax.__version__}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--xla", action="store_true",
                   help="also count with XLA's cost analysis of the tfflows model (JAX)")
    args = p.parse_args(argv)
    out = glow_flops(levels=args.levels, depth=args.depth, hidden=args.hidden)
    if args.xla:
        out.update(xla_flops(args.levels, args.depth, args.hidden))
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
