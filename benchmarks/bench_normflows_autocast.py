#!/usr/bin/env python3
"""normflows' Glow (the shared script, unchanged) under PyTorch CPU autocast to bfloat16.

`python benchmarks/bench_normflows_autocast.py [the shared script's flags]`
runs `../shared/tools/bench_normflows_glow.py`'s `main()` inside
`torch.autocast("cpu", dtype=torch.bfloat16)`: what a PyTorch user gets by
turning on mixed precision with one line. Autocast runs convolutions and
matmuls in bfloat16 (fp32 weights and accumulation), and other ops in their
inputs' dtype. It covers the whole script, so the evaluation (`bpd_end`) and
sampling run under it as well. It is the baseline for tfflows'
`--dtype mixed_bfloat16` row, so that the bf16 ratio is taken against bf16.
"""
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import load_shared_script  # noqa: E402


def main():
    import torch

    mod = load_shared_script("bench_normflows_glow.py")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mod.main()


if __name__ == "__main__":
    sys.exit(main())
