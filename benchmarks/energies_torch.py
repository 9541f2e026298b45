#!/usr/bin/env python3
"""Variational-inference benchmark worker for the PyTorch peers: normflows and pyro.

Run by `benchmarks/energies.py` under the peers' interpreter (torch,
normflows, pyro-ppl), one process per model; it fits the model to every
energy in `--energies` with every K in `--flows`, in turn, and prints one
JSON line per (energy, K). Same steps, batch, optimizer, schedule,
annealing and final ELBO estimator as the TensorFlow worker
(`_energies_common`).

- normflows (`normflows-planar`, `normflows-radial`): K x
  `nf.flows.Planar((2,))` / `nf.flows.Radial((2,))` on
  `nf.distributions.DiagGaussian(2)` (trainable loc and log-scale), in
  `nf.NormalizingFlow(q0, flows, p=target)` with the energy as a
  `nf.distributions.Target`; the loss is `model.reverse_kld(batch, beta)`,
  as normflows' own examples train.
- pyro (`pyro-sylvester`, `pyro-householder`): K x
  `pyro.distributions.transforms.Sylvester(2, count_transforms=R)` (the
  Householder variant: Q from R reflections), or one
  `Householder(2, count_transforms=K)`, on a learned diagonal Gaussian
  `Normal(loc, exp(log_scale)).to_event(1)`, in a
  `dist.TransformedDistribution`; each step draws `rsample((batch,))` and
  minimises `mean(log q(z) - beta log p~(z))` with `log q` from the
  transforms' cached log-dets, a plain torch loop. (pyro 1.9.2's Sylvester
  log-det is wrong once Q is not the identity: see benchmarks/README.md;
  the final evaluation uses the exact log q, `evaluate`.)

The energies are written here in torch, term for term as
`tfflows.datasets.energy`; `--dump-energies` writes them at `--points` so
the driver can check the two agree.

    /work/peers/bin/python benchmarks/energies_torch.py --models normflows-planar --energies U1 \
        --flows 2 --steps 60 --warmup 10
    /work/peers/bin/python benchmarks/energies_torch.py --models normflows-planar --points P.npz \
        --dump-energies E.npz
"""
import argparse
import math
import os
import sys
import time
import traceback
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _density_common as DC  # noqa: E402
from benchmarks import _energies_common as C  # noqa: E402

#: U2-U4 are confined to |z1| <= ENERGY_BOX by a wall of this width (tfflows.datasets.ENERGY_BOX, ENERGY_WALL_WIDTH).
ENERGY_BOX = 4.0
ENERGY_WALL_WIDTH = 0.2


def parse_args(argv=None):
    p = C.common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    return p.parse_args(argv)


def energy_u(name, z):
    """`U(z)` of Rezende & Mohamed's energy `name` at the rows of `z` `(n, 2)`,
    with the confining wall of U2-U4 (see `tfflows.datasets.energy`)."""
    import torch

    z1, z2 = z[:, 0], z[:, 1]
    w1 = torch.sin(0.5 * math.pi * z1)
    if name == "U1":
        r = torch.sqrt(z1 ** 2 + z2 ** 2)
        return 0.5 * ((r - 2.0) / 0.4) ** 2 - torch.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2,
                                                              -0.5 * ((z1 + 2.0) / 0.6) ** 2)
    if name == "U2":
        u = 0.5 * ((z2 - w1) / 0.4) ** 2
    elif name == "U3":
        w2 = 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
        u = -torch.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
    elif name == "U4":
        w3 = 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)
        u = -torch.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    else:
        raise ValueError(f"unknown energy {name!r}")
    return u + 0.5 * (torch.relu(torch.abs(z1) - ENERGY_BOX) / ENERGY_WALL_WIDTH) ** 2


def log_p_fn(name):
    return lambda z: -energy_u(name, z)


def normflows_target(name):
    """The energy as normflows users write a target: a `Target` with `log_prob`."""
    import normflows as nf

    class Energy(nf.distributions.Target):
        def __init__(self):
            super().__init__()
            self.n_dims = 2
            self.max_log_prob = 0.0

        def log_prob(self, z):
            return -energy_u(name, z)

    return Energy()


def build(family, framework, energy, k, args):
    """`(module, loss(batch, beta), push(eps) -> (z, log_q))` of one model:
    `push` maps base noise `eps` through the model's sample path and returns
    the framework's own `log q(z)` (for the final evaluation)."""
    import torch

    if framework == "normflows":
        import normflows as nf

        q0 = nf.distributions.DiagGaussian(2)  # trainable loc and log_scale, started at N(0, I)
        if family == "planar":
            flows = [nf.flows.Planar((2,)) for _ in range(k)]
        elif family == "radial":
            flows = [nf.flows.Radial((2,)) for _ in range(k)]
        else:
            raise ValueError(f"normflows has no model {family!r} here")
        model = nf.NormalizingFlow(q0=q0, flows=flows, p=normflows_target(energy))

        def push(eps):  # model.sample(n) with the noise given: q0's forward, then each flow's
            z = q0.loc + torch.exp(q0.log_scale) * eps
            log_q = -0.5 * (eps ** 2).sum(1) - math.log(2 * math.pi) - q0.log_scale.sum()
            for flow in flows:
                z, log_det = flow(z)
                log_q = log_q - log_det
            return z, log_q

        return model, (lambda n, beta: model.reverse_kld(n, beta=beta)), push

    if framework == "pyro":
        import pyro.distributions as dist
        import pyro.distributions.transforms as T

        if family == "sylvester-householder":
            transforms = [T.Sylvester(2, count_transforms=args.sylvester_reflections) for _ in range(k)]
        elif family == "householder":
            with warnings.catch_warnings():  # K > 2 reflections "over-parametrise" R^2: pyro warns, as it should
                warnings.simplefilter("ignore")
                transforms = [T.Householder(2, count_transforms=k)]
        else:
            raise ValueError(f"pyro has no model {family!r} here")
        module = torch.nn.Module()
        module.loc = torch.nn.Parameter(torch.zeros(2))
        module.log_scale = torch.nn.Parameter(torch.zeros(2))
        module.transforms = torch.nn.ModuleList(transforms)
        log_p = log_p_fn(energy)

        def q():
            base = dist.Normal(module.loc, torch.exp(module.log_scale)).to_event(1)
            return dist.TransformedDistribution(base, transforms)

        def loss(n, beta):
            qd = q()
            z = qd.rsample((n,))
            log_q = qd.log_prob(z)  # the transforms' cached inverses and log-dets
            return torch.mean(log_q - beta * log_p(z))

        def push(eps):  # rsample with the noise given, then the same log_prob
            qd = q()
            z = module.loc + torch.exp(module.log_scale) * eps
            for t in transforms:
                z = t(z)
            return z, qd.log_prob(z)

        return module, loss, push
    raise ValueError(f"unknown framework {framework!r}")


def run_one(name, energy, k, args):
    import numpy as np
    import torch

    framework, family = C.MODELS[name]
    torch.manual_seed(args.seed)
    model, loss_fn, push = build(family, framework, energy, k, args)
    n_params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: C.learning_rate(1.0, t, args.steps, args.schedule))
    log_p = log_p_fn(energy)

    marks, losses = [], []
    nan_step = None
    t0 = time.perf_counter()
    for t in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(args.batch_size, C.anneal_beta(t, args.anneal_steps))
        loss.backward()
        opt.step()
        sched.step()
        v = loss.item()
        marks.append((t + 1, time.perf_counter()))
        losses.append(v)
        if not math.isfinite(v):
            nan_step = t + 1
            break

    te = time.perf_counter()
    summary = evaluate(push, log_p, args.eval_n, args.seed + 1)
    summary["eval_s"] = round(time.perf_counter() - te, 2)
    tail = np.array(losses[-100:], dtype=np.float64)
    out = dict(model=name, energy=energy, flows=k, framework=framework, family=family, params=n_params,
               steps=len(marks), nan_step=nan_step, train_error=None,
               first_step_s=round(marks[0][1] - t0, 3),
               first_steps_s=round(marks[min(args.warmup, len(marks)) - 1][1] - t0, 3),
               train_s=round(marks[-1][1] - t0, 2), train_steps_s=DC.steps_per_s(marks, args.warmup),
               # -loss is the step's ELBO once beta = 1 (after --anneal-steps)
               train_elbo_last100=float(-tail.mean()) if nan_step is None else None,
               peak_rss_mb=round(DC.peak_rss_mb(), 1))
    out.update(summary)
    return out


def evaluate(push, log_p, n, seed):
    """`C.eval_summary` of the model on `n` fresh draws: the base noise
    through `push`, the exact log-determinant of the sample map from its
    autodiff Jacobian (one backward pass per output coordinate), and the
    framework's own `log q` of the same points."""
    import numpy as np
    import torch

    eps_all = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 2)).astype("float32"))
    parts = []
    for i in range(0, n, 5000):
        eps = eps_all[i:i + 5000].clone().requires_grad_(True)
        z, log_q_own = push(eps)
        rows = [torch.autograd.grad(z[:, j].sum(), eps, retain_graph=True)[0] for j in range(2)]
        jac = torch.stack(rows, dim=1)  # (n, i, j) = dz_i / d eps_j (the draws are independent)
        with torch.no_grad():
            base = -0.5 * (eps ** 2).sum(1) - math.log(2 * math.pi)
            exact = base - torch.linalg.slogdet(jac)[1]
            parts.append([v.detach().double().numpy() for v in (log_p(z), exact, log_q_own)])
    return C.eval_summary(*(np.concatenate(p) for p in zip(*parts)))


def dump_energies(points):
    import torch

    z = torch.from_numpy(points)
    return {e: (-energy_u(e, z)).numpy() for e in C.ENERGIES}


def main(argv=None):
    args = parse_args(argv)
    DC.set_threads_env(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    if args.dump_energies:
        with np.load(args.points) as f:
            z = f["z"].astype(np.float32)
        np.savez(args.dump_energies, **dump_energies(z))
        return 0
    versions = {"torch": torch.__version__}
    for pkg in ("normflows", "pyro-ppl"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            pass
    rc = 0
    for name in [m for m in args.models.split(",") if m]:
        for energy in args.energies.split(","):
            for k in C.flows_list(args.flows):
                try:
                    out = run_one(name, energy, k, args)
                except Exception as e:  # noqa: BLE001  one failure must not lose the other runs
                    traceback.print_exc()
                    out = dict(model=name, energy=energy, flows=k, error=f"{type(e).__name__}: {e}")
                    rc = 1
                out.update(threads=args.threads, versions=versions)
                C.emit(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
