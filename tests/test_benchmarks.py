"""The benchmarks' bookkeeping (no framework, no training), plus one few-step
smoke run of the density benchmark's tfflows worker (`benchmarks/density2d.py`)."""

import os
import re

import numpy as np

from benchmarks import _common, time_to_bpd


class _FakeClock:
    """Stands in for `time.perf_counter`: each training step takes exactly 1 s,
    each evaluation 100 s (which must not count on the training clock)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_time_budget_evaluates_at_every_mark_and_the_extra_ones(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(_common.time, "perf_counter", clock)
    x_train = np.zeros((256, 28, 28, 1), "float32")
    evals = []

    def step(x):
        clock.t += 1.0
        return 1000.0

    def evaluate(x):
        clock.t += 100.0
        evals.append(len(x))
        return 900.0

    # 10 minutes of 1-second steps, evaluations every 2 minutes and at 5.
    out = _common.run_time_budget("fake", step, step, evaluate, x_train, x_train[:8], minutes=10.0,
                                  eval_every_min=2.0, batch=64, extra_marks=[5.0], log_every_s=1e9)
    assert [p["mark"] for p in out["curve"]] == [2.0, 4.0, 5.0, 6.0, 8.0, 10.0]
    # Each evaluation runs at the first step on or past its mark; evaluations do not use the budget.
    assert [p["step"] for p in out["curve"]] == [120, 240, 300, 360, 480, 600]
    assert out["steps"] == 600 and evals == [8] * 6
    # A step that crosses two marks (a long compile) gives one evaluation, labelled with the later one.
    clock.t = 0.0

    def slow_first(x):
        clock.t += 130.0
        return 1000.0

    out = _common.run_time_budget("fake", slow_first, step, evaluate, x_train, x_train[:8], minutes=4.0,
                                  eval_every_min=1.0, batch=64, log_every_s=1e9)
    assert [p["mark"] for p in out["curve"]] == [2.0, 3.0, 4.0]


def test_half_time_target_is_first_passage_through_the_half_time_evaluation():
    nf = {"final_test_bpd": 2.0, "curve": [{"mark": 5.0, "minutes": 5.0, "test_bpd": 3.0},
                                           {"mark": 10.0, "minutes": 10.0, "test_bpd": 2.0}]}
    fast = {"curve": [{"mark": 4.0, "minutes": 4.0, "test_bpd": 2.5}, {"mark": 5.0, "minutes": 5.0, "test_bpd": 1.99},
                      {"mark": 6.0, "minutes": 6.0, "test_bpd": 1.9}, {"mark": 10.0, "minutes": 10.0, "test_bpd": 1.8}]}
    out = time_to_bpd.compare_one(fast, nf, 10.0)
    assert out["reached_in_half_the_time"] and out["tfflows_bpd_at_half_time"] == 1.99
    slow = {"curve": [dict(p, test_bpd=b) for p, b in zip(fast["curve"], (2.5, 2.01, 1.9, 1.8))]}
    out = time_to_bpd.compare_one(slow, nf, 10.0)
    assert not out["reached_in_half_the_time"]
    # Interpolated time to normflows' final figure, between the 5- and 6-minute evaluations.
    assert 5.0 < out["tfflows_minutes_to_normflows_final"] < 6.0
    # Without a half-time evaluation the interpolation decides.
    no_half = {"curve": [p for p in fast["curve"] if p["mark"] != 5.0]}
    out = time_to_bpd.compare_one(no_half, nf, 10.0)
    assert out["tfflows_bpd_at_half_time"] is None
    assert out["reached_in_half_the_time"] is False  # 2.5 at 4 min, 1.9 at 6: crosses at 5.67
    # Reaching it before half the time counts even if a spike lifts the half-time evaluation.
    early = {"curve": [dict(p, test_bpd=b) for p, b in zip(fast["curve"], (1.95, 2.3, 1.9, 1.8))]}
    out = time_to_bpd.compare_one(early, nf, 10.0)
    assert out["reached_in_half_the_time"] and out["tfflows_minutes_to_normflows_final"] == 4.0


def test_tfflows_train_default_row_follows_the_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "cpuinfo_bf16"
    with_bf16.write_text("processor : 0\nflags : fpu sse2 avx512f amx_bf16 avx512_bf16\n")
    without = tmp_path / "cpuinfo"
    without.write_text("processor : 0\nflags : fpu sse2 avx2\n")
    assert _common.tfflows_train_default_impl(str(with_bf16)) == "tfflows-tf-jit-off-bf16"
    assert _common.tfflows_train_default_impl(str(without)) == "tfflows-tf-jit-off"
    assert _common.tfflows_train_default_impl(str(tmp_path / "missing")) == "tfflows-tf-jit-off"


def test_machine_slug_names_family_matmul_isa_and_cores(tmp_path):
    xeon = tmp_path / "xeon"
    xeon.write_text("vendor_id : GenuineIntel\nmodel name : Intel(R) Xeon(R) Processor\n"
                    "flags : fpu avx2 avx512f avx512_bf16 amx_bf16\n\nprocessor : 1\nmodel name : other\n")
    epyc = tmp_path / "epyc"
    epyc.write_text("vendor_id : AuthenticAMD\nmodel name : AMD EPYC 9R14 96-Core Processor\n"
                    "flags : fpu avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("vendor_id : AuthenticAMD\nmodel name : AMD Eng Sample\nflags : fpu avx2\n")
    assert _common.machine_slug(str(xeon), cpu_count=2) == "xeon-amx-2core"
    assert _common.machine_slug(str(epyc), cpu_count=2) == "epyc-avx512bf16-2core"
    assert _common.machine_slug(str(plain), cpu_count=16) == "amd-avx2-16core"
    assert _common.machine_slug(str(tmp_path / "missing"), cpu_count=2) == "unknown-2core"


def test_run_results_dir_is_date_machine_and_never_overwrites(tmp_path):
    first = _common.run_results_dir("time_to_bpd.json", date="2026-12-01", machine="xeon-amx-2core",
                                    root=str(tmp_path))
    assert first == str(tmp_path / "2026-12-01-xeon-amx-2core")
    os.makedirs(first)
    open(os.path.join(first, "glow_mnist.json"), "w").close()
    # Another script's run on the same day and machine shares the folder ...
    assert _common.run_results_dir("time_to_bpd.json", date="2026-12-01", machine="xeon-amx-2core",
                                   root=str(tmp_path)) == first
    # ... a second run of the same script gets the next free suffix.
    assert _common.run_results_dir("glow_mnist.json", date="2026-12-01", machine="xeon-amx-2core",
                                   root=str(tmp_path)) == first + "-2"
    assert os.path.basename(_common.run_results_dir("x.json", root=str(tmp_path))).startswith(
        f"{_common.datetime.date.today().isoformat()}-")


def test_drivers_default_to_a_dated_machine_folder():
    from benchmarks import glow_mnist

    for parse in (glow_mnist.parse_args, time_to_bpd.parse_args):
        out = parse([]).out_dir
        assert os.path.dirname(out) == _common.RESULTS_DIR
        assert re.match(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+$", os.path.basename(out))
        assert parse(["--out-dir", "/tmp/bench"]).out_dir == "/tmp/bench"


def test_committed_results_are_in_indexed_date_machine_folders():
    entries = sorted(os.listdir(_common.RESULTS_DIR))
    with open(os.path.join(_common.RESULTS_DIR, "README.md")) as f:
        index = f.read()
    folders = [e for e in entries if e != "README.md"]
    assert folders and "README.md" in entries
    for name in folders:
        assert os.path.isdir(os.path.join(_common.RESULTS_DIR, name)), name
        assert re.match(r"\d{4}-\d{2}-\d{2}-[a-z0-9]+(-[a-z0-9]+)*$", name), name
        assert f"`{name}/`" in index, f"{name} is missing from benchmarks/results/README.md"


def test_density2d_trains_a_tfflows_nsf_and_judges_the_targets(tmp_path):
    """A few steps of the density benchmark's tfflows worker, in this process
    (no subprocess, no peers), then the driver's ratios, targets and tables."""
    import math

    from benchmarks import density2d, density2d_tf

    data = str(tmp_path / "d.npz")
    summary = density2d.make_data(data, ["checkerboard"], n_train=256, n_test=200, seed=0)
    assert math.isclose(summary["checkerboard"]["entropy"], math.log(32.0))
    args = density2d_tf.parse_args(["--data", data, "--models", "tfflows-nsf", "--sets", "checkerboard",
                                    "--steps", "6", "--batch-size", "64", "--lr", "1e-3", "--warmup", "2",
                                    "--flows", "2", "--hidden", "8", "--bins", "4", "--sample-n", "50",
                                    "--jit", "off", "--stop-on-nan", "off", "--steps-per-execution", "3"])
    with np.load(data) as d:
        mine = density2d_tf.run_one("tfflows-nsf", "checkerboard", d, args)
    assert mine["steps"] == 6 and mine["params"] > 0 and mine["sample_nonfinite"] == 0
    assert math.isfinite(mine["test_nll"]) and mine["test_nll_se"] > 0
    assert math.isclose(mine["gap_to_true"], mine["test_nll"] - math.log(32.0), abs_tol=1e-9)
    # A made-up peer: 0.01 nats better (within the 0.02 allowed) and twice as fast.
    peer = dict(mine, model="zuko-nsf", framework="zuko", test_nll=mine["test_nll"] - 0.01,
                train_steps_s=2 * mine["train_steps_s"])
    dargs = density2d.parse_args(["--sets", "checkerboard", "--out-dir", str(tmp_path)])
    report = density2d.build_report(dargs, {"cpu": "test", "cpu_count": 2}, summary, [mine, peer])
    tg = report["targets"]
    assert [t["met"] for t in tg["closed_form"]] == [mine["gap_to_true"] <= 0.03]
    assert tg["vs_best_peer"][0]["best_peer"] == "zuko-nsf" and tg["vs_best_peer"][0]["met"]
    assert tg["speed"][0]["ratio"] == 0.5 and not tg["speed"][0]["met"]
    (row,) = report["ratios"]
    assert row["peer"] == "zuko-nsf" and math.isclose(row["nll_diff"], 0.01)
    md = density2d.markdown(report)
    assert "| tfflows-nsf |" in md and "**MISS**" in md and "**MET**" in md


def test_energies_fits_a_tfflows_planar_and_judges_the_targets(tmp_path):
    """The VI benchmark (`benchmarks/energies.py`): the tfflows worker's
    energies against the float64 formula on the check points, a few steps of
    its fit in this process (no subprocess, no peers), then the driver's KL,
    ratios, targets and tables against made-up peers."""
    import math

    from benchmarks import _energies_common as EC
    from benchmarks import density2d, energies, energies_tf

    ds = density2d.load_datasets_module()
    z = EC.check_points(n=512)
    dumped = energies_tf.dump_energies(z)
    for name in EC.ENERGIES:
        ref = -ds._energy_u(name, z[:, 0].astype(np.float64), z[:, 1].astype(np.float64), ds._NumpyOps)
        rel, _, ok = EC.agreement(dumped[name], ref, ref, energies.ENERGY_TOL)
        assert ok, (name, rel)
    assert EC.anneal_beta(0, 0) == 1.0 and EC.anneal_beta(50, 100) == 0.01 + 0.99 * 0.5
    assert EC.learning_rate(1e-3, 5, 10, "constant") == 1e-3 and EC.learning_rate(1e-3, 10, 10, "cosine") == 0.0

    args = energies_tf.parse_args(["--models", "tfflows-planar", "--energies", "U2", "--flows", "2",
                                   "--steps", "6", "--batch-size", "64", "--warmup", "2", "--eval-n", "500",
                                   "--jit", "off"])
    mine = energies_tf.run_one("tfflows-planar", "U2", 2, args)
    assert mine["steps"] == 6 and mine["params"] == 14 and mine["nan_step"] is None and mine["train_error"] is None
    assert mine["eval_n"] == 500 and mine["eval_nonfinite"] == 0
    assert math.isfinite(mine["elbo"]) and mine["elbo_se"] > 0 and mine["train_steps_s"] > 0
    # tfflows' own log q against the autodiff Jacobian of the sample map: float32 rounding only.
    assert mine["log_q_err_max"] < 1e-3 and abs(mine["elbo_own"] - mine["elbo"]) < 1e-4
    # Made-up peers: normflows-planar 0.5 SE better (within the 2 SE allowed) and twice as fast;
    # pyro-householder against a failed tfflows run, and far better than it.
    peer = dict(mine, model="normflows-planar", framework="normflows", elbo=mine["elbo"] + 0.5 * mine["elbo_se"],
                train_steps_s=2 * mine["train_steps_s"])
    failed = dict(model="tfflows-householder", energy="U2", flows=2, error="ValueError: boom")
    other = dict(peer, model="pyro-householder", framework="pyro")
    dargs = energies.parse_args(["--energies", "U2", "--flows", "2", "--out-dir", str(tmp_path)])
    assert dargs.steps == 2000 and dargs.batch_size == 256 and dargs.flows == [2]
    log_z = {"U2": ds.energy_log_z("U2")}
    report = energies.build_report(dargs, {"cpu": "test", "cpu_count": 2}, log_z, [mine, peer, failed, other])
    (r,) = [r for r in report["results"] if r["model"] == "tfflows-planar"]
    assert math.isclose(r["kl"], log_z["U2"] - mine["elbo"]) and r["kl_se"] == mine["elbo_se"]
    kl = {t["tfflows"]: t for t in report["targets"]["kl"]}
    speed = {t["tfflows"]: t for t in report["targets"]["speed"]}
    assert kl["tfflows-planar"]["met"] and math.isclose(kl["tfflows-planar"]["diff"], 0.5 * mine["elbo_se"])
    assert speed["tfflows-planar"]["ratio"] == 0.5 and not speed["tfflows-planar"]["met"]
    assert not kl["tfflows-householder"]["met"] and not speed["tfflows-householder"]["met"]
    (row,) = report["ratios"]
    assert row["peer"] == "normflows-planar" and math.isclose(row["kl_diff_se"], math.sqrt(2) * mine["elbo_se"])
    md = energies.markdown(report)
    assert "| tfflows-planar | 2 | 14 |" in md and "**MISSED**" in md and "**MET**" in md and "FAILED" in md
