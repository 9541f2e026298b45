#!/usr/bin/env python3
"""Summarise several `benchmarks.energies` runs that differ only in `--seed`.

A reverse-KL fit to a multimodal energy lands in different local optima from
different starts, so one seed per (model, energy, K) says little about which
framework fits better. This reads the `energies.json` of each run, takes
every model's KL = log Z - ELBO per seed, and compares each tfflows model
with its peer (`_energies_common.PEER_OF`) on the mean over seeds:
target "KL no worse than the peer's" is met when the tfflows mean is at most
the peer's mean plus 2 standard errors of the difference of means (the SE
over seeds). Steps/s are not summarised here: take them from one run on an
idle machine.

    python -m benchmarks.energies_seeds RUN_DIR [RUN_DIR ...] --out-dir DIR

Where a model appears in several files for the same seed, the later file
wins (so a rerun of one model after a change replaces its old rows).
Writes `energies_seeds.json` and `energies_seeds.md` to `--out-dir`.
"""
import argparse
import collections
import json
import math
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _energies_common as C  # noqa: E402

KL_SE_ALLOWED = 2.0


def load(paths):
    """`{(model, energy, K): {seed: KL}}` from the runs' json files."""
    kl = collections.defaultdict(dict)
    for path in paths:
        path = os.path.join(path, "energies.json") if os.path.isdir(path) else path
        with open(path) as f:
            run = json.load(f)
        seed = run["args"]["seed"]
        for row in run["results"]:
            if row.get("elbo") is None:
                continue
            kl[(row["model"], row["energy"], int(row["flows"]))][seed] = run["log_z"][row["energy"]] - row["elbo"]
    return kl


def mean_se(values):
    v = list(values)
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def summarise(kl):
    rows = []
    for (model, energy, k), by_seed in sorted(kl.items()):
        peer = C.PEER_OF.get(model)
        if peer is None or (peer, energy, k) not in kl:
            continue
        mine, theirs = mean_se(by_seed.values()), mean_se(kl[(peer, energy, k)].values())
        se_diff = math.sqrt(mine[1] ** 2 + theirs[1] ** 2)
        if math.isnan(se_diff):  # one seed: no spread to allow for
            se_diff = 0.0
        rows.append(dict(model=model, peer=peer, energy=energy, flows=k, seeds=sorted(by_seed),
                         peer_seeds=sorted(kl[(peer, energy, k)]), kl=mine[0], kl_se=mine[1], peer_kl=theirs[0],
                         peer_kl_se=theirs[1], met=bool(mine[0] <= theirs[0] + KL_SE_ALLOWED * se_diff),
                         met_strict=bool(mine[0] <= theirs[0])))
    return rows


def markdown(rows, paths):
    out = ["# energies over seeds", "",
           f"Runs: {', '.join(paths)}. KL = log Z - ELBO (nats), mean ± SE over seeds; target met when the "
           f"tfflows mean is at most the peer's plus {KL_SE_ALLOWED:g} SE of the difference (with one seed: at "
           f"most the peer's; 'strict': at most the peer's mean).", "",
           "| model | peer | energy | K | seeds | KL | peer KL | met | strict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['model']} | {r['peer']} | {r['energy']} | {r['flows']} | {len(r['seeds'])} | "
                   f"{r['kl']:.3f} ± {r['kl_se']:.3f} | {r['peer_kl']:.3f} ± {r['peer_kl_se']:.3f} | "
                   f"{'MET' if r['met'] else 'MISS'} | {'yes' if r['met_strict'] else 'no'} |")
    out.append("")
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        out.append(f"- {model} vs {mine[0]['peer']}: {sum(r['met'] for r in mine)}/{len(mine)} met, "
                   f"{sum(r['met_strict'] for r in mine)}/{len(mine)} with a mean KL at most the peer's")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="energies.json files or the folders holding them")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    rows = summarise(load(args.runs))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "energies_seeds.json"), "w") as f:
        json.dump({"runs": args.runs, "kl_se_allowed": KL_SE_ALLOWED, "rows": rows}, f, indent=1)
    md = markdown(rows, args.runs)
    with open(os.path.join(args.out_dir, "energies_seeds.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
