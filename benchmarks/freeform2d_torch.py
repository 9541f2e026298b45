#!/usr/bin/env python3
"""Free-form flows benchmark worker for the PyTorch peers: normflows' residual
flow and zuko's CNF.

Run by `benchmarks/freeform2d.py` under the peers' interpreter, one process
per model; it trains the model on every set in `--sets` in turn and prints
one JSON line per set (and saves the per-point test log-likelihoods to
`--logp-out`). Same batches, Adam, cosine schedule, evaluation and timing as
the TensorFlow worker (`_density_common`).

- `normflows-resflow`: `--blocks` x (`nf.flows.Residual(nf.nets.LipschitzMLP(
  [2] + hidden + [2], lipschitz_const, init_zeros=True), n_exact_terms=
  --exact-terms - 1, n_samples=1, reduce_memory=True, reverse=True)`, then
  `nf.flows.ActNorm(2)`), data to latent in that order (normflows lists
  flows latent to data, so the list is reversed), over a fixed
  `DiagGaussian`. After every optimizer step
  `nf.utils.update_lipschitz(model, --power-iterations)` (normflows only
  updates its spectral norms when called, as its examples do); before the
  test, `--eval-power-iterations` more. In `eval()` mode normflows computes
  the exact (brute-force 2 x 2) log-det of every block, so the test
  log-likelihood is exact.
- `zuko-cnf`: `zuko.flows.CNF(2, hidden_features=hidden, atol, rtol,
  exact=(--trace == "exact"), activation=--activation)`; with `--peer-actnorm
  on` its transform is followed by an elementwise affine initialised from
  the first batch like tfflows' ActNorm. Evaluated with `exact=True`.

    /work/peers/bin/python benchmarks/freeform2d_torch.py --data D.npz --models zuko-cnf \
        --sets moons --steps 10 --batch-size 256 --lr 1e-3 --warmup 3 --threads 1
"""
import argparse
import os
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as C  # noqa: E402
from benchmarks.freeform2d_tf import add_freeform_args  # noqa: E402  (argparse only: no TensorFlow)

MODELS = ("normflows-resflow", "zuko-cnf")
#: normflows' iResBlock parameters that training never updates (read with `.item()`).
NORMFLOWS_UNUSED = ("geom_p", "lamb")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    return add_freeform_args(C.common_args(p)).parse_args(argv)


def build_normflows(dim, args):
    import normflows as nf

    hidden = list(C.hidden_tuple(args.hidden))
    if args.exact_terms < 1:
        raise ValueError("normflows always computes at least one power-series term: --exact-terms >= 1")
    blocks = []
    for _ in range(args.blocks):
        net = nf.nets.LipschitzMLP([dim] + hidden + [dim], lipschitz_const=args.lipschitz, init_zeros=True,
                                   max_lipschitz_iter=args.power_iterations)
        # normflows draws N ~ Geometric(geom_p) on {1, 2, ...} and sums N + n_exact_terms terms: its first
        # n_exact_terms + 1 terms are always computed, as tfflows' first n_exact_terms.
        blocks += [nf.flows.Residual(net, n_exact_terms=args.exact_terms - 1, n_samples=1, reduce_memory=True,
                                     reverse=True, geom_p=args.stop_probability),
                   nf.flows.ActNorm(dim)]
    model = nf.NormalizingFlow(q0=nf.distributions.DiagGaussian(dim, trainable=False), flows=blocks[::-1])

    def after_step():
        nf.utils.update_lipschitz(model, args.power_iterations)

    def before_eval():
        nf.utils.update_lipschitz(model, args.eval_power_iterations)

    params = [(n, p) for n, p in model.named_parameters()
              if p.requires_grad and n.rsplit(".", 1)[-1] not in NORMFLOWS_UNUSED]
    info = dict(unused_params=sum(p.numel() for n, p in model.named_parameters()
                                  if n.rsplit(".", 1)[-1] in NORMFLOWS_UNUSED),
                eval=f"model.eval(): normflows' brute-force exact 2x2 log-det per block, after "
                     f"update_lipschitz({args.eval_power_iterations})")
    return model, model.log_prob, after_step, before_eval, [p for _, p in params], info


class _ZukoActNorm:
    """An elementwise affine `z = x * exp(log_scale) + shift` as a zuko lazy
    transform (data -> latent), initialised from a batch like ActNorm."""

    def __new__(cls, first_batch):
        import torch
        import zuko

        class ActNorm(zuko.flows.LazyTransform):
            def __init__(self, x):
                super().__init__()
                std = x.std(dim=0) + 1e-6
                self.log_scale = torch.nn.Parameter(-torch.log(std))
                self.shift = torch.nn.Parameter(-x.mean(dim=0) / std)

            def forward(self, c=None):
                return torch.distributions.transforms.AffineTransform(self.shift, self.log_scale.exp(), event_dim=1)

        return ActNorm(first_batch)


def build_zuko(dim, args, first_batch):
    import torch
    import zuko

    act = {"tanh": torch.nn.Tanh, "softplus": torch.nn.Softplus, "elu": torch.nn.ELU}[args.activation]
    cnf = zuko.flows.CNF(features=dim, hidden_features=C.hidden_tuple(args.hidden), atol=args.atol, rtol=args.rtol,
                         exact=args.trace == "exact", activation=act)
    ffj = cnf.transform  # the FFJTransform (its `exact` attribute picks the trace)
    if args.peer_actnorm == "on":
        flow = zuko.flows.Flow(transform=[ffj, _ZukoActNorm(first_batch)], base=cnf.base)
    else:
        flow = cnf

    def before_eval():
        ffj.exact = True

    params = [p for p in flow.parameters() if p.requires_grad]
    info = dict(eval="flow().log_prob in eval() mode with exact=True, adaptive solve to rtol/atol",
                peer_actnorm=args.peer_actnorm, time_embedding_features=int(2 * ffj.freqs.numel()))
    return flow, (lambda x: flow().log_prob(x)), (lambda: None), before_eval, params, info


def run_one(name, set_name, data, args):
    import numpy as np
    import torch

    x_train, x_test, true_lp, groups = C.load_set(data, set_name)
    dim = x_train.shape[1]
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # normflows draws its roulette lengths from numpy's global generator
    stream = torch.from_numpy(C.train_stream(x_train, args.batch_size, args.steps, args.seed))
    b = args.batch_size
    if name == "normflows-resflow":
        model, log_prob, after_step, before_eval, params, info = build_normflows(dim, args)
    elif name == "zuko-cnf":
        model, log_prob, after_step, before_eval, params, info = build_zuko(dim, args, stream[:b])
    else:
        raise ValueError(f"this worker runs {MODELS}, not {name!r}")
    n_params = int(sum(p.numel() for p in params))
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: C.cosine_lr(1.0, t, args.steps))

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
        after_step()
        v = loss.item()
        marks.append((t + 1, time.perf_counter()))
        losses.append(v)
        if not np.isfinite(v):
            nan_step = t + 1
            break

    te = time.perf_counter()
    before_eval()
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(x_test)
        lp = torch.cat([log_prob(xt[i:i + args.eval_batch]).detach() for i in range(0, len(xt), args.eval_batch)])
        lp = lp.double().numpy()
    eval_s = time.perf_counter() - te
    steps_s = C.steps_per_s(marks, args.warmup)
    tail = [v for v in losses[-max(1, len(losses) // 10):] if np.isfinite(v)]
    out = dict(model=name, set=set_name, framework=name.split("-")[0],
               family="resflow" if name.endswith("resflow") else "cnf", dim=dim, params=n_params,
               steps=len(marks), batch_size=b, nan_step=nan_step,
               first_steps_s=round(marks[min(args.warmup, len(marks)) - 1][1] - t0, 3),
               train_s=round(marks[-1][1] - t0, 2), train_steps_s=steps_s,
               s_per_step=None if not steps_s else 1.0 / steps_s,
               final_train_loss=float(np.mean(tail)) if tail else None, eval_s=round(eval_s, 2),
               peak_rss_mb=round(C.peak_rss_mb(), 1))
    out.update(info)
    out.update(C.nll_summary(lp, true_lp, groups))
    return out, lp


def main(argv=None):
    args = parse_args(argv)
    C.set_threads_env(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    versions = {"torch": torch.__version__}
    for pkg in ("zuko", "normflows"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            pass
    data = np.load(args.data)
    rc, saved = 0, {}
    for name in args.models.split(","):
        for set_name in args.sets.split(","):
            try:
                out, lp = run_one(name, set_name, data, args)
                saved[f"{name}/{set_name}"] = lp
            except Exception as e:  # noqa: BLE001  one failure must not lose the other sets
                traceback.print_exc()
                out = dict(model=name, set=set_name, error=f"{type(e).__name__}: {str(e)[:2000]}")
                rc = 1
            out.update(threads=args.threads, versions=versions)
            C.emit(out)
            if args.logp_out and saved:
                np.savez(args.logp_out, **saved)
    return rc


if __name__ == "__main__":
    sys.exit(main())
