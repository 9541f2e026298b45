#!/usr/bin/env python3
"""Issue #47's A/B at equal CPU minutes: test bits/dim on the first 2000 test
images against CPU minutes, for the shipped Glow's own learning curve
(`zoo/glow-mnist/curve.json`, its stages' CPU-hours from `history.json`) and
for runs of a changed recipe (`tfflows train --out DIR`, one point per
`--eval-minutes`), all in one plot.

    python -m benchmarks.zoo_ab --run "spline Glow (scratch)=runs/glow-spline:scratch:1" \\
        --run "variational dequantization (from shipped)=runs/glow-vd:shipped:1" \\
        --out benchmarks/results/DATE-MACHINE/zoo_ab

A run is `LABEL=DIR:START:CORES`: START is `scratch` (its CPU minutes count
from 0, against the shipped curve's first hours) or `shipped` (it starts
from the shipped weights, so its minutes continue the shipped curve's
total); CORES the cores it ran on (`taskset`), so CPU minutes = training
minutes x CORES. The shipped curve's wall minutes are mapped to CPU minutes
stage by stage (`cpu_hours / minutes` per stage; stage 1 ran its first 40.6
minutes on one thread, then two). Minutes on different machines buy
different work (the card's stages name theirs); the runs here name theirs.
Writes `OUT.png`, `OUT.json` (all points, and each run's bits/dim against
the shipped curve's at the same CPU minutes) and prints a table.
"""

import argparse
import json
import os

import numpy as np

CARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo", "glow-mnist")


def shipped_cpu_curve(card=CARD):
    """`([(cpu_minutes, test_bpd)], [(cpu_minutes, test_bpd_live)], total CPU minutes)` of the
    shipped Glow's curve: the weights it wrote (the EMA) and, where recorded, the live ones."""
    with open(os.path.join(card, "curve.json")) as f:
        curve = json.load(f)
    with open(os.path.join(card, "history.json")) as f:
        stages = json.load(f)["stages"]
    # Piecewise-constant cores per wall minute: (wall minutes, cores) spans.
    spans = []
    for i, s in enumerate(stages):
        if i == 0 and "first 40.6 min on 1 thread" in s.get("hardware", ""):
            spans += [(40.6, 1.0), (s["minutes"] - 40.6, (s["cpu_hours"] * 60 - 40.6) / (s["minutes"] - 40.6))]
        else:
            spans.append((s["minutes"], s["cpu_hours"] * 60 / s["minutes"]))

    def cpu(m):
        total, left = 0.0, m
        for length, cores in spans:
            step = min(left, length)
            total += step * cores
            left -= step
            if left <= 0:
                return total
        return total + left * spans[-1][1]

    live = [(cpu(c["minutes"]), c["test_bpd_live"]) for c in curve if "test_bpd_live" in c]
    return [(cpu(c["minutes"]), c["test_bpd"]) for c in curve], live, cpu(sum(s["minutes"] for s in stages))


def run_curve(folder):
    """The run's curve: `metrics.json` if it finished, else its newest checkpoint's state."""
    path = os.path.join(folder, "metrics.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["curve"]
    ckpt = os.path.join(folder, "checkpoints")
    with open(os.path.join(ckpt, "LATEST")) as f:
        latest = f.read().strip()
    with open(os.path.join(ckpt, latest, "state.json")) as f:
        return json.load(f)["curve"]


def tail_slope(curve, span=300.0):
    """Least-squares slope (bits/dim per CPU minute) of the curve's last `span` CPU minutes."""
    xs, ys = map(np.asarray, zip(*curve))
    keep = xs >= xs[-1] - span
    return float(np.polyfit(xs[keep], ys[keep], 1)[0])


def at(curve, x):
    """The shipped curve's bits/dim at CPU minutes `x` (linear in between);
    past its end, its last point continued at its last 300 CPU-minutes'
    slope (`(value, True)` then, for "extrapolated")."""
    xs, ys = zip(*curve)
    if x > xs[-1]:
        return ys[-1] + tail_slope(curve) * (x - xs[-1]), True
    return float(np.interp(x, xs, ys)), False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], help="LABEL=DIR:START:CORES (see above)")
    p.add_argument("--out", required=True, help="path prefix of the .png and .json written")
    args = p.parse_args(argv)

    shipped, shipped_live, shipped_total = shipped_cpu_curve()
    runs = []
    for spec in args.run:
        label, rest = spec.rsplit("=", 1)  # labels may hold "=" (K=8), paths do not
        folder, start, cores = rest.rsplit(":", 2)
        if start not in ("scratch", "shipped"):
            raise SystemExit(f"--run {spec}: START must be scratch or shipped")
        offset = 0.0 if start == "scratch" else shipped_total  # the end of its training, past its last point
        curve = run_curve(folder)
        points = [(offset + c["minutes"] * float(cores), c["test_bpd"], c["step"]) for c in curve]
        live = [(offset + c["minutes"] * float(cores), c["test_bpd_live"], c["step"])
                for c in curve if "test_bpd_live" in c]
        live_at_step = {s: y for _, y, s in live}
        versus = []
        for x, y, s in points:
            ref, extrapolated = at(shipped, x)
            row = dict(cpu_minutes=round(x, 1), step=s, test_bpd=y, shipped_curve=round(ref, 5),
                       extrapolated=extrapolated)
            if s in live_at_step:
                row["test_bpd_live"] = live_at_step[s]
                if start == "scratch" and shipped_live and x <= shipped_live[-1][0]:
                    row["shipped_curve_live"] = round(at(shipped_live, x)[0], 5)
            versus.append(row)
        runs.append(dict(label=label, folder=folder, start=start, cores=float(cores), points=points,
                         live=live, versus=versus))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, zoom in zip(axes, (False, True)):
        xs, ys = zip(*shipped)
        ax.plot(xs, ys, "k.-", ms=3, lw=1, label="shipped Glow (old recipe), written (EMA) weights")
        if shipped_live:
            xs, ys = zip(*shipped_live)
            ax.plot(xs, ys, "k:", lw=1, label="shipped Glow, live weights")
        for r in runs:
            x, y, _ = zip(*r["points"])
            line, = ax.plot(x, y, "o-", ms=3, label=f"{r['label']}, EMA")
            if r["live"]:
                x, y, _ = zip(*r["live"])
                ax.plot(x, y, "s--", ms=3, color=line.get_color(), label=f"{r['label']}, live")
        ax.set_xlabel("CPU minutes")
        ax.set_ylabel("test bits/dim (first 2000 test images)")
        ax.grid(alpha=0.3)
        if zoom:
            tail = [r for r in runs if r["start"] == "shipped"]
            lo = shipped_total - 600
            hi = max([shipped_total + 60] + [max(p[0] for p in r["points"]) + 20 for r in tail])
            ax.set_xlim(lo, hi)
            ax.set_ylim(1.10, 1.16)
            ax.axhline(1.12, color="r", ls="--", lw=0.8, label="target 1.12 (10k test)")
            ax.set_title("the last 10 CPU-hours and the runs from the shipped weights")
        else:
            ax.set_xscale("log")
            ax.set_xlim(4, None)
            ax.set_ylim(1.05, 2.5)
            ax.set_title("all of it (log minutes); runs from scratch start at 0")
        ax.legend(fontsize=8)
    plt.tight_layout()
    plt.savefig(args.out + ".png", dpi=100)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(shipped_total_cpu_minutes=shipped_total, shipped=shipped, runs=runs,
                       shipped_tail_slope_per_100_cpu_minutes=100 * tail_slope(shipped)), f, indent=1)
    print(f"shipped curve: ends at {shipped[-1][1]:.5f} after {shipped[-1][0]:.0f} CPU minutes; its last 300 "
          f"CPU minutes gained {-100 * tail_slope(shipped):.5f} bits/dim per 100 CPU minutes")
    for r in runs:
        print(f"## {r['label']} ({r['folder']}, from {r['start']}, {r['cores']:g} core(s))")
        print("| CPU minutes | step | test bits/dim (EMA) | live weights | shipped curve (EMA) at the same CPU "
              "minutes | shipped curve (live) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for v in r["versus"]:
            ref = f"{v['shipped_curve']:.4f}" + (" (its end, extrapolated)" if v["extrapolated"] else "")
            live = f"{v['test_bpd_live']:.4f}" if "test_bpd_live" in v else "-"
            ref_live = f"{v['shipped_curve_live']:.4f}" if "shipped_curve_live" in v else "-"
            print(f"| {v['cpu_minutes']:.1f} | {v['step']} | {v['test_bpd']:.4f} | {live} | {ref} | {ref_live} |")
    print(f"wrote {args.out}.png and {args.out}.json")


if __name__ == "__main__":
    main()
