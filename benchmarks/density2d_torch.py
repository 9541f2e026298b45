#!/usr/bin/env python3
"""Density benchmark worker for the PyTorch peers: zuko and nflows.

Run by `benchmarks/density2d.py` under the peers' interpreter (torch, zuko,
nflows), one process per model; it trains the model on every set in
`--sets` in turn and prints one JSON line per set. Same batches, schedule,
evaluation and timing as the TensorFlow worker (`_density_common`).

    /work/peers/bin/python benchmarks/density2d_torch.py --data D.npz --models zuko-maf \
        --sets moons --steps 60 --batch-size 1024 --lr 1e-3 --warmup 10
"""
import argparse
import functools
import os
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as C  # noqa: E402


def parse_args(argv=None):
    p = C.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    return p.parse_args(argv)


def build(family, framework, dim, args):
    """A torch module and the functions `log_prob(x)` and `sample(n)` of one model."""
    import torch

    hidden = C.hidden_tuple(args.hidden)
    bins, bound = args.bins, args.bound
    if framework == "zuko":
        import zuko
        from zuko.transforms import MonotonicRQSTransform

        if family == "maf":
            flow = zuko.flows.MAF(dim, transforms=args.flows, hidden_features=hidden)
        elif family == "nsf":
            if bound == 5.0:  # zuko's own NSF: its spline domain is [-5, 5]
                flow = zuko.flows.NSF(dim, transforms=args.flows, bins=bins, hidden_features=hidden)
            else:  # zuko.flows.NSF with the domain set to [-bound, bound]
                flow = zuko.flows.MAF(dim, transforms=args.flows, hidden_features=hidden,
                                      univariate=functools.partial(MonotonicRQSTransform, bound=bound, slope=1e-3),
                                      shapes=[(bins,), (bins,), (bins - 1,)])
        else:
            raise ValueError(f"zuko has no model {family!r} here")
        return flow, (lambda x: flow().log_prob(x)), (lambda n: flow().sample((n,)))

    if framework == "nflows":
        from nflows.distributions.normal import StandardNormal
        from nflows.flows.base import Flow
        from nflows.transforms.autoregressive import (MaskedAffineAutoregressiveTransform,
                                                      MaskedPiecewiseRationalQuadraticAutoregressiveTransform)
        from nflows.transforms.base import CompositeTransform
        from nflows.transforms.permutations import ReversePermutation

        if len(set(hidden)) != 1:
            raise ValueError(f"nflows' MADE has one hidden width; got hidden={hidden}")
        # MADE: input layer, then num_blocks feed-forward blocks, then the output
        # layer, i.e. len(hidden) hidden layers (no residual blocks, as tfflows/zuko).
        made = dict(features=dim, hidden_features=hidden[0], num_blocks=len(hidden) - 1,
                    use_residual_blocks=False)
        layers = []
        for k in range(args.flows):
            if k:
                layers.append(ReversePermutation(features=dim))  # alternate orders, as zuko/tfflows
            if family == "maf":
                layers.append(MaskedAffineAutoregressiveTransform(**made))
            elif family == "nsf":
                layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    num_bins=bins, tails="linear", tail_bound=bound, **made))
            else:
                raise ValueError(f"nflows has no model {family!r} here")
        flow = Flow(CompositeTransform(layers), StandardNormal([dim]))
        return flow, flow.log_prob, flow.sample
    raise ValueError(f"unknown framework {framework!r}")


def run_one(name, set_name, data, args):
    import numpy as np
    import torch

    framework, family = C.MODELS[name]
    x_train, x_test, true_lp, groups = C.load_set(data, set_name)
    dim = x_train.shape[1]
    torch.manual_seed(args.seed)
    model, log_prob, sample = build(family, framework, dim, args)
    n_params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: C.cosine_lr(1.0, t, args.steps))
    stream = torch.from_numpy(C.train_stream(x_train, args.batch_size, args.steps, args.seed))
    b = args.batch_size

    model.train()
    marks, losses = [], []
    nan_step = None
    t0 = time.perf_counter()
    for t in range(args.steps):
        x = stream[t * b:(t + 1) * b]
        loss = -log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        v = loss.item()
        marks.append((t + 1, time.perf_counter()))
        losses.append(v)
        if not np.isfinite(v):
            nan_step = t + 1
            break
    train_s = marks[-1][1] - t0
    first_s = marks[0][1] - t0

    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(x_test)
        lp = torch.cat([log_prob(xt[i:i + args.eval_batch]) for i in range(0, len(xt), args.eval_batch)])
        lp = lp.double().numpy()
        sample_s, bad_samples = None, None
        if args.sample_n:
            s = sample(args.sample_n)  # first call (nothing to compile in eager PyTorch)
            ts = time.perf_counter()
            s = sample(args.sample_n)
            sample_s = round(time.perf_counter() - ts, 4)
            bad_samples = int((~torch.isfinite(s)).any(dim=-1).sum())
    out = dict(model=name, set=set_name, framework=framework, family=family, params=n_params, dim=dim,
               steps=len(marks), nan_step=nan_step,
               first_steps_s=round(marks[min(args.warmup, len(marks)) - 1][1] - t0, 3),
               first_step_s=round(first_s, 3), train_s=round(train_s, 2),
               train_steps_s=C.steps_per_s(marks, args.warmup),
               sample_s=sample_s, sample_n=args.sample_n, sample_nonfinite=bad_samples,
               peak_rss_mb=round(C.peak_rss_mb(), 1))
    out.update(C.nll_summary(lp, true_lp, groups))
    return out


def main(argv=None):
    args = parse_args(argv)
    C.set_threads_env(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    versions = {"torch": torch.__version__}
    for pkg in ("zuko", "nflows"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            pass
    data = np.load(args.data)
    rc = 0
    for name in args.models.split(","):
        for set_name in args.sets.split(","):
            try:
                out = run_one(name, set_name, data, args)
            except Exception as e:  # noqa: BLE001  one failure must not lose the other sets
                traceback.print_exc()
                out = dict(model=name, set=set_name, error=f"{type(e).__name__}: {e}")
                rc = 1
            out.update(threads=args.threads, versions=versions)
            C.emit(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
