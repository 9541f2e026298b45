"""What a new user meets first (issue 49): quiet, fast and helpful commands,
labelled sample grids, readable logs and a complete learning curve."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfflows import cli, images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "mnist-tiny", "--steps", "1", "--hidden", "8", "--batch-size", "32",
        "--train-images", "256", "--eval-images", "64", "--warmup-steps", "0", "--lr", "3e-3", "--no-export"]


def _run(args, **kwargs):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: unset
    return subprocess.run([sys.executable, "-m", "tfflows.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, **kwargs)


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["train", "--help"]], ids=["help", "list", "train-help"])
def test_help_and_list_import_neither_tensorflow_nor_keras(argv):
    code = ("import sys, tfflows.cli\n"
            "try:\n    tfflows.cli.main(%r)\nexcept SystemExit:\n    pass\n"
            "print('LOADED', 'tensorflow' in sys.modules, 'keras' in sys.modules)" % (argv,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED False False" in proc.stdout


def test_list_shows_the_builder_call_cli_flags_and_measured_metric():
    proc = _run(["list"])
    assert proc.returncode == 0
    out = proc.stdout
    assert "tfflows.zoo.glow(preset='mnist', pretrained=True)" in out
    assert "--model glow --preset mnist --pretrained" in out
    line = next(l for l in out.splitlines() if l.startswith("tfflows.zoo.glow(preset='mnist'"))
    assert "shipped:" in line and "bits/dim" in line
    assert "no weights ship" in next(l for l in out.splitlines() if "mnist-tiny" in l)
    assert "tfflows.zoo.maf(" in out and "tfflows.zoo.sylvester(" in out
    # Uniform-noise weights shipped beside a learned dequantizer's are listed with their own call.
    from tfflows.zoo.presets import read_manifest

    for e in read_manifest().values():
        if e.get("build") == {"dequantize": "uniform"}:
            line = next(l for l in out.splitlines()
                        if f"{e['model']}(preset={e['preset']!r}, pretrained=True, dequantize='uniform')" in l)
            assert f"{e['test_bpd']:.4f}" in line and "--arch dequantize=uniform" in line


def test_every_listed_python_builder_call_builds():
    import tfflows  # noqa: F401  (the calls name tfflows.zoo)

    for call, _ in cli.VECTOR_BUILDERS + cli.VI_BUILDERS:
        model = eval(call, {"tfflows": tfflows, "dim": 4})  # the listed call, as a user would type it
        assert model is not None, call


def test_every_option_says_what_it_does_and_its_default():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse has no public walk
    missing = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            text = action.help or ""
            if not text or not ("default" in text or "required" in text):
                missing.append(f"{name} {action.option_strings}")
    assert not missing, f"options without help or a stated default: {missing}"


def test_a_cli_command_prints_no_tensorflow_start_up_lines():
    proc = _run(["sample", "--model", "nice", "--pretrained", "--n", "2", "--temperatures", "0.5",
                 "--out", os.path.join(REPO, ".pytest_sample.png")])
    try:
        assert proc.returncode == 0, proc.stderr
        noisy = [l for l in proc.stderr.splitlines() if cli.TF_NOISE.match(l)]
        assert not noisy, noisy
    finally:
        if os.path.exists(os.path.join(REPO, ".pytest_sample.png")):
            os.remove(os.path.join(REPO, ".pytest_sample.png"))
    # ... while a real error still gets through, as one line.
    proc = _run(["sample", "--model", "nice", "--pretrained", "--temperatures", "nan"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "tfflows sample: error: sample needs finite, non-negative temperatures (0 gives the mode). "
        "Received: temperature=nan"]


def test_sample_grid_rows_are_labelled_with_their_temperature():
    rows = [np.full((3, 8, 8, 1), 128, np.uint8) for _ in range(2)]
    plain = images.grid(rows)
    labelled = images.grid(rows, labels=["T=0.5", "T=1"])
    assert labelled.shape[1] > plain.shape[1]
    margin = labelled[:, : labelled.shape[1] - plain.shape[1] + 2]
    assert (margin == 0).any(), "no label pixels in the left margin"
    # The two labels differ, so the two rows' margins differ.
    h = 8
    assert not np.array_equal(margin[2:2 + h], margin[2 + h + 2:2 + 2 * h + 2])
    with pytest.raises(ValueError, match="no glyph"):
        images.label("T=0.5K", 8)


def test_train_log_off_a_terminal_has_no_ansi_codes_and_the_curve_ends_at_the_last_step(tmp_path):
    out = str(tmp_path / "run")
    proc = _run(["train", "--out", out, "--epochs", "1", *TINY])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\x1b[" not in proc.stdout and "\r" not in proc.stdout
    assert "tracing and compiling the train step" in proc.stdout
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["curve"][-1]["step"] == metrics["step"]
    assert metrics["curve"][-1]["test_bpd"] == metrics["test_bpd"]
