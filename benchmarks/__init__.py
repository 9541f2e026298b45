"""Benchmarks of tfflows against TFP (`tfb.Glow`, MAF, splines), normflows, zuko and nflows.

Not part of the installed package (`tfflows/` never imports from here, and
only these scripts read the MNIST file). Entry points, run from the repo root:

* `python -m benchmarks.glow_mnist`: training throughput, first-step time,
  bits/dim after N steps, sampling time and peak RSS, one JSON line per
  implementation, plus the tfflows / baseline ratios.
* `python -m benchmarks.time_to_bpd --minutes M`: test bits/dim reached
  within the same wall-clock training budget per implementation.
* `python -m benchmarks.density2d`: tfflows MAF / NSF against zuko, nflows
  and TFP on FFJORD's 2-D toy sets (and the 64-D digits with `--tabular`):
  test NLL in nats, train steps/s, sampling time, parameter counts.

See `benchmarks/README.md` for the commands, the environments and what the
fields mean. This package must import nothing heavier than numpy at import
time: the normflows workers import it from the PyTorch virtualenv.
"""
