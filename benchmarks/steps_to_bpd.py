#!/usr/bin/env python3
"""Test bits/dim after a fixed number of training steps (quality per step, not per second).

`python -m benchmarks.steps_to_bpd --impl tfflows-tf-jit-off-bf16 --marks 100,200,400 --seed 0`
trains the benchmark Glow of `benchmarks.ttb_worker` (same set-up, same batch
stream and noise as `time_to_bpd`) and prints one JSON line with the test
bits/dim on the first `--eval-n` test images (fixed noise) at each step mark.
Step counts do not depend on how busy the machine is, so this can run beside
other work; it answers "does change X learn faster per step", which
`time_to_bpd` then has to confirm per minute on an idle machine.

`--conv-init` re-draws the hidden convolutions (not the zero-initialised output
conv) of every tfflows coupling net before training:
* `library`: as `tfflows.layers.nets.ConvNet` draws them (no change);
* `glorot`: Keras' default, kernel glorot-uniform, bias zero;
* `torch`: PyTorch's `Conv2d` default, kernel and bias U(-1/sqrt(fan_in),
  1/sqrt(fan_in)) (kaiming-uniform with a=sqrt(5)), which normflows' nets get.
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import ttb_worker  # noqa: E402
from benchmarks._common import (add_model_args, default_data, emit, epoch_batches, eval_set,  # noqa: E402
                                finite_or_none, load_mnist, to_bpd)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=ttb_worker.IMPLS, required=True)
    p.add_argument("--marks", default="100,200,300,400", help="comma-separated step counts")
    p.add_argument("--conv-init", choices=["library", "glorot", "torch"], default="library")
    p.add_argument("--preprocess", choices=["center", "logit"], default="center",
                   help="tfflows only: tfflows.zoo.glow's preprocess")
    p.add_argument("--prior", choices=["learned", "fixed"], default=None,
                   help="tfflows only: Split's learned conv prior or a fixed N(0, 1) (as normflows); "
                        "default: the --impl's")
    p.add_argument("--eval-n", type=int, default=2000)
    p.add_argument("--eval-batch", type=int, default=200)
    add_model_args(p)
    p.add_argument("--data", default=default_data())
    return p.parse_args(argv)


def redraw_hidden_convs(model, how, seed):
    """Re-draws `conv1`/`conv2` of every `ConvNet` in `model` (see module doc)."""
    import numpy as np
    from tfflows.layers.nets import ConvNet

    rng = np.random.default_rng(seed + 1000)
    nets = [m for m in model._flatten_layers() if isinstance(m, ConvNet)]
    for net in nets:
        for conv in (net.conv1, net.conv2):
            kh, kw, cin, cout = conv.kernel.shape
            fan_in, fan_out = kh * kw * cin, kh * kw * cout
            if how == "glorot":
                lim = np.sqrt(6.0 / (fan_in + fan_out))
                conv.kernel.assign(rng.uniform(-lim, lim, conv.kernel.shape).astype("float32"))
                conv.bias.assign(np.zeros(conv.bias.shape, "float32"))
            else:
                lim = 1.0 / np.sqrt(fan_in)
                conv.kernel.assign(rng.uniform(-lim, lim, conv.kernel.shape).astype("float32"))
                conv.bias.assign(rng.uniform(-lim, lim, conv.bias.shape).astype("float32"))
    return len(nets)


def main(argv=None):
    args = parse_args(argv)
    marks = sorted(int(m) for m in args.marks.split(","))
    if args.impl not in ttb_worker.TFFLOWS and (args.preprocess != "center" or args.prior):
        raise SystemExit("--preprocess and --prior apply to the tfflows implementations only")
    tw_args = ttb_worker.parse_args(["--impl", args.impl, "--eval-n", str(args.eval_n),
                                     "--eval-batch", str(args.eval_batch), "--batch", str(args.batch),
                                     "--lr", str(args.lr), "--hidden", str(args.hidden),
                                     "--levels", str(args.levels), "--depth", str(args.depth),
                                     "--seed", str(args.seed), "--threads", str(args.threads),
                                     "--data", args.data])
    n_redrawn = 0
    if args.impl in ttb_worker.TFFLOWS:
        if args.conv_init != "library":
            import benchmarks.bench_tfflows_glow as btg
            build = btg.build_model

            def build_and_redraw(targs):
                nonlocal n_redrawn
                model = build(targs)
                n_redrawn = redraw_hidden_convs(model, args.conv_init, args.seed)
                return model
            btg.build_model = build_and_redraw
        tw_args.preprocess = args.preprocess
        tw_args.prior = args.prior
        first_step, step, evaluate, n_params, versions = ttb_worker.setup_tfflows(tw_args, args.impl)
    elif args.impl.startswith("tfp"):
        first_step, step, evaluate, n_params, versions = ttb_worker.setup_tfp(
            tw_args, "identity" if args.impl.endswith("identity") else "default")
    else:
        if args.conv_init not in ("library", "torch"):
            raise SystemExit("normflows' nets are always PyTorch-initialised; use --conv-init library")
        first_step, step, evaluate, n_params, versions = ttb_worker.setup_normflows(
            tw_args, autocast=args.impl == "normflows-bf16")
    import numpy as np
    x_train, x_test = load_mnist(args.data)
    x_eval = eval_set(x_test, args.eval_n)
    stream = epoch_batches(x_train, args.batch, np.random.default_rng(args.seed))
    curve, train_bpd, n = [], [], 0
    for mark in marks:
        while n < mark:
            loss = (first_step if n == 0 else step)(next(stream))
            n += 1
            train_bpd.append(finite_or_none(to_bpd(loss)))
            if train_bpd[-1] is None:
                break
        if train_bpd and train_bpd[-1] is None:
            curve.append({"step": n, "test_bpd": None})
            break
        bpd = finite_or_none(to_bpd(evaluate(x_eval)))
        curve.append({"step": n, "test_bpd": None if bpd is None else round(bpd, 4)})
        print(f"[{args.impl} {args.conv_init} prior {args.prior} seed {args.seed}] step {n}: test bpd {bpd}",
              flush=True)
    # Mean training bits/dim per window between marks: far less noisy than
    # one test evaluation of the weights at the mark.
    windows, lo = [], 0
    for c in curve:
        vals = [b for b in train_bpd[lo:c["step"]] if b is not None]
        windows.append({"steps": [lo, c["step"]],
                        "train_bpd_mean": round(sum(vals) / len(vals), 4) if vals else None})
        lo = c["step"]
    # Loss spikes: steps whose training bits/dim jumps by more than 0.6 over the
    # step before (one bad update, as opposed to a slow drift).
    spikes = [i for i in range(1, len(train_bpd)) if train_bpd[i] is not None and train_bpd[i - 1] is not None
              and train_bpd[i] - train_bpd[i - 1] > 0.6]
    emit({"impl": args.impl, "train_windows": windows, "conv_init": args.conv_init, "preprocess": args.preprocess,
          "prior": args.prior or ("fixed" if "fixed-prior" in args.impl else "learned"), "spike_steps": spikes,
          "train_bpd": [None if b is None else round(b, 4) for b in train_bpd],
          "hidden": args.hidden, "seed": args.seed, "params": n_params,
          "nets_redrawn": n_redrawn, "curve": curve, "eval_n": args.eval_n, "lr": args.lr,
          "batch": args.batch, "versions": versions})


if __name__ == "__main__":
    sys.exit(main())
