"""Issue 48, "nothing lost, nothing silent": run folders, NaN samples, test
splits, weights integrity, CLI errors, data arguments, resume and export leftovers.

Every test uses tiny models (a few training steps at most) and is named
after the invariant it checks.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfflows import cli, images, training, weights_file
from tfflows.zoo import data

TINY = ["--preset", "mnist-tiny", "--steps", "1", "--hidden", "8", "--batch-size", "32",
        "--train-images", "64", "--eval-images", "64", "--verbose", "0", "--warmup-steps", "0",
        "--lr", "3e-3", "--no-export", "--eval-minutes", "1000", "--dtype", "float32"]
# A small NICE on 28x28 MNIST (the CLI's default data), for the loaders.
NICE_ARCH = dict(couplings=1, hidden=8, depth=1)
NICE_ARGS = ["--model", "nice", "--preset", "mnist-tiny", "--arch", "couplings=1", "--hidden", "8",
             "--arch", "depth=1"]


def _without(argv, *flags):
    """`argv` without each `--flag VALUE` pair named in `flags`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


def _main(argv):
    """`cli.main(argv)`'s exit status, whether returned or raised."""
    try:
        return cli.main(argv)
    except SystemExit as err:
        return err.code


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"tfflows {command}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _nice(**kwargs):
    import tfflows

    return tfflows.zoo.nice(preset="mnist-tiny", **{**NICE_ARCH, **kwargs})


def _perturbed(model, seed=0):
    rng = np.random.default_rng(seed)
    model.log_prob(rng.uniform(size=(2,) + tuple(model.data_shape)).astype("float32"))
    for v in model.trainable_variables:
        v.assign(np.asarray(v.numpy()) + 0.05 * rng.standard_normal(v.shape).astype("float32"))
    return model


def _tree(folder):
    """`{relative path: bytes}` of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


# -- 1. run folders ---------------------------------------------------------------------------------
def test_train_refuses_an_out_folder_that_holds_another_run(tmp_path, capsys):
    run = str(tmp_path / "A")
    assert _main(["train", "--out", run, "--epochs", "1", *TINY]) == 0
    before = _tree(run)
    capsys.readouterr()
    # Another model into the same folder: refused, nothing touched.
    assert _main(["train", "--model", "nice", "--out", run, "--epochs", "1", *TINY]) == 2
    line = _one_error_line(capsys, "train")
    assert run in line and f"--resume {run}" in line and "--overwrite" in line
    assert _tree(run) == before
    # --overwrite replaces it: the old run's checkpoints go, LATEST and pruning see only the new run.
    assert _main(["train", "--model", "nice", "--out", run, "--epochs", "1", "--overwrite", *TINY]) == 0
    assert "--overwrite: removed the previous run's" in capsys.readouterr().out
    ckpts = os.path.join(run, "checkpoints")
    for name in sorted(os.listdir(ckpts)):
        if name.startswith("ckpt-"):
            assert training.read_state(os.path.join(ckpts, name))["config"]["model"] == "nice", name
    assert json.load(open(os.path.join(run, "config.json")))["model"] == "nice"
    # Resuming the folder is allowed, and --overwrite with --resume of the same folder is refused.
    assert _main(["train", "--model", "nice", "--out", run, "--resume", run, "--epochs", "2", *TINY]) == 0
    assert _main(["train", "--out", run, "--resume", run, "--overwrite", "--epochs", "1", *TINY]) == 2
    assert "--overwrite would delete the run" in _one_error_line(capsys, "train")


def test_resume_without_out_writes_the_outputs_into_the_resumed_run(tmp_path, monkeypatch):
    # --out defaults to the --resume folder: the resumed run's weights, config and
    # metrics land beside its checkpoints, not in a tfflows_out/ of the current directory.
    monkeypatch.chdir(tmp_path)
    run = str(tmp_path / "run")
    assert _main(["train", "--out", run, "--epochs", "1", *TINY]) == 0
    steps_before = json.load(open(os.path.join(run, "metrics.json")))["step"]
    assert _main(["train", "--resume", run, "--epochs", "2", *TINY]) == 0
    assert not os.path.exists(tmp_path / "tfflows_out")
    assert json.load(open(os.path.join(run, "metrics.json")))["step"] > steps_before


# -- 2. non-finite images are never returned silently -------------------------------------------
def test_exported_sample_and_decode_fail_instead_of_returning_nan(tmp_path):
    import tensorflow as tf

    from tfflows import export

    model = _perturbed(_nice(data_shape=(8, 8, 1)))
    loaded = tf.saved_model.load(export.save(model, str(tmp_path / "served")))
    sample, decode = loaded.signatures["sample"], loaded.signatures["decode"]
    seeds = tf.constant([1, 2], tf.int64)
    ok = sample(temperature=tf.constant([1.0, 0.5]), seed=seeds)["images"].numpy()
    assert np.all(np.isfinite(ok)) and ok.min() >= 0.0 and ok.max() <= 1.0  # finite outputs still clipped
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"temperature must be finite and >= 0"):
            sample(temperature=tf.constant([1.0, bad]), seed=seeds)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"sample: the inverse overflowed at this "
                                                             r"temperature.*lower the temperature"):
        sample(temperature=tf.constant([3e38, 3e38]), seed=seeds)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"decode: the latent holds NaN or Inf"):
        decode(latent=tf.constant(np.full((1, 64), np.nan, "float32")))


def test_to_uint8_refuses_nan_instead_of_drawing_black_pixels():
    np.testing.assert_array_equal(images.to_uint8(np.array([[0.0, 0.5, 0.999, 1.0]])), [[0, 128, 255, 255]])
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) in image\(s\) \[1\]"):
        images.to_uint8(np.array([[0.1, 0.2], [np.nan, 0.3]]))


def test_sample_command_refuses_non_finite_samples_in_one_line(tmp_path, capsys):
    weights = str(tmp_path / "nice.weights.h5")
    training.save_inference_weights(_perturbed(_nice()), weights)
    png = str(tmp_path / "s.png")
    assert _main(["sample", *NICE_ARGS, "--weights", weights, "--n", "2", "--temperatures", "3e38",
                  "--out", png]) == 2
    assert "temperature" in _one_error_line(capsys, "sample")
    assert not os.path.exists(png)


# -- 3. a test split never falls back to training images ------------------------------------------
def test_npz_without_a_test_split_is_not_read_as_training_images(tmp_path, capsys):
    u8 = data.load_arrays("mnist", "train", limit=96)
    for key in ("x", "images", "arr_0"):
        path = str(tmp_path / f"{key}.npz")
        np.savez(path, **{key: u8})
        with pytest.raises(data.DataError, match=rf"has no test split: it holds \['{key}'\], looked for "
                                                 rf"x_test or test"):
            data._from_npz(path, "test")
        with pytest.raises(data.DataError, match=r"has no test split"):
            data.load_arrays(path, "test")
        np.testing.assert_array_equal(data.load_arrays(path, "train"), u8)  # train still reads it
    # `tfflows train` on it: no test bits/dim measured on training images, and it says so.
    out = str(tmp_path / "run")
    capsys.readouterr()
    assert _main(["train", "--data", str(tmp_path / "x.npz"), "--out", out, "--epochs", "1", *TINY]) == 0
    log = capsys.readouterr().out
    assert "[tfflows] no test split: " in log
    assert not [line for line in log.splitlines() if line.startswith("[tfflows] test bits/dim")]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert "test_bpd" not in metrics and metrics["curve"] == [] and metrics["test_source"] is None
    assert "no test split" in metrics["test_skipped"]


def test_holdout_test_images_are_named_and_not_trained_on(tmp_path, capsys):
    u8 = data.load_arrays("mnist", "train", limit=96)
    path = str(tmp_path / "x.npz")
    np.savez(path, x=u8)
    out = str(tmp_path / "run")
    args = _without(TINY, "--train-images", "--eval-images") + ["--eval-images", "32"]
    assert _main(["train", "--data", path, "--test-data", "holdout", "--out", out, "--epochs", "1", *args]) == 0
    log = capsys.readouterr().out
    assert "train images=64" in log  # 96 - 32 held out
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["test_source"] == f"held-out last 32 of the 96 {path} train images (not trained on)"
    assert metrics["test_images"] == 32 and np.isfinite(metrics["test_bpd"])


# -- 5. weights integrity ----------------------------------------------------------------------------
def _kernel_offset(path):
    """File offset of the largest dataset (a coupling net kernel) in a `.weights.h5` file."""
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: found.append((o.size, n, o.id.get_offset()))
                     if isinstance(o, h5py.Dataset) and o.id.get_offset() is not None else None)
    return max(found)[2]


def test_a_corrupted_or_truncated_weights_file_is_refused_by_every_loader(tmp_path, capsys):
    model = _perturbed(_nice())
    good = str(tmp_path / "good.weights.h5")
    training.save_inference_weights(model, good)
    assert weights_file.verify(good) is True
    twin = _nice()
    twin.load_weights(good)  # Keras still loads a signed file
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)

    raw = open(good, "rb").read()
    flipped, truncated = str(tmp_path / "flipped.weights.h5"), str(tmp_path / "truncated.weights.h5")
    offset = _kernel_offset(good) + 10
    with open(flipped, "wb") as f:
        f.write(raw[:offset] + bytes([raw[offset] ^ 0x10]) + raw[offset + 1:])
    with open(truncated, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(weights_file.WeightsFileError, match=r"flipped.weights.h5 failed its checksum: the file "
                                                            r"is corrupted"):
        weights_file.verify(flipped)
    with pytest.raises(weights_file.WeightsFileError, match=r"truncated.weights.h5 is not a readable "
                                                            r"\.weights\.h5 file"):
        weights_file.verify(truncated)
    with pytest.raises(weights_file.WeightsFileError, match=r"missing.weights.h5 not found"):
        weights_file.verify(str(tmp_path / "missing.weights.h5"))

    # Every CLI loader: --weights, --run, --init-from.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(dict(model="nice", preset="mnist-tiny",
                                                     overrides=dict(NICE_ARCH))))
    capsys.readouterr()
    for bad, why in ((flipped, "failed its checksum"), (truncated, "is not a readable")):
        assert _main(["evaluate", *NICE_ARGS, "--weights", bad, "--limit", "8"]) == 2
        assert bad in (line := _one_error_line(capsys, "evaluate")) and why in line
        with open(bad, "rb") as src, open(run / "model.weights.h5", "wb") as dst:
            dst.write(src.read())
        assert _main(["evaluate", "--run", str(run), "--limit", "8"]) == 2
        assert why in _one_error_line(capsys, "evaluate")
        assert _main(["train", *NICE_ARGS, "--init-from", bad, "--out", str(tmp_path / "t"),
                      *_without(TINY, "--steps", "--hidden")]) == 2
        assert why in _one_error_line(capsys, "train")


def test_weights_file_module_imports_no_tensorflow_keras_or_tfflows():
    # tfflows.models imports it: it must stand on the standard library, numpy and h5py alone.
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('wf', {weights_file.__file__!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'jax', 'tfflows'}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_float16_weights_files_are_signed_too(tmp_path):
    import tfflows

    model = _perturbed(tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=64, levels=1))
    f16 = str(tmp_path / "f16.weights.h5")
    training.save_inference_weights(model, f16, net_kernels_float16=True)
    assert training.float16_entries(f16)[0] > 0
    assert weights_file.verify(f16) is True


# -- 6. the CLI: one line and exit status 2 for user errors -------------------------------------------
def _weights_for_cli(tmp_path):
    path = str(tmp_path / "nice.weights.h5")
    training.save_inference_weights(_perturbed(_nice()), path)
    return path


def _nice_cli(tmp_path):
    return [*NICE_ARGS, "--weights", _weights_for_cli(tmp_path)]


def _case_truncated_weights(tmp_path):
    path = _weights_for_cli(tmp_path)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:1000])
    return ["evaluate", *NICE_ARGS, "--weights", path], "is not a readable .weights.h5 file"


def _case_unwritable_export(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    return (["export", *NICE_ARGS, "--weights", _weights_for_cli(tmp_path), "--out", str(tmp_path / "file" / "m")],
            "is not a directory")


def _case_missing_export_parent(tmp_path):
    return (["export", *NICE_ARGS, "--weights", _weights_for_cli(tmp_path), "--out", "/proc/no-such-dir/m"],
            "No such file or directory")


def _case_text_file_as_data(tmp_path):
    (tmp_path / "notes.txt").write_text("these are not images\n")
    return ["evaluate", *_nice_cli(tmp_path), "--data", str(tmp_path / "notes.txt")], "not a readable .npz"


def _case_bad_zip_as_data(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    return ["evaluate", *_nice_cli(tmp_path), "--data", str(tmp_path / "bad.npz")], "not a readable .npz"


def _case_pickled_object_npz(tmp_path):
    np.savez(tmp_path / "obj.npz", x_test=np.array([{"a": 1}], dtype=object))
    return (["evaluate", *_nice_cli(tmp_path), "--data", str(tmp_path / "obj.npz")],
            "cannot be read without pickle")


def _case_data_error(tmp_path):
    np.savez(tmp_path / "neg.npz", x_test=np.full((2, 28, 28), -3, np.int16))
    return (["evaluate", *_nice_cli(tmp_path), "--data", str(tmp_path / "neg.npz")],
            r"integer images must lie in [0, 255]")


def _case_weights_error(tmp_path):
    return ["evaluate", "--model", "nice", "--preset", "mnist-tiny", "--pretrained"], "No pretrained weights ship"


def _case_missing_weights(tmp_path):
    return ["sample", *NICE_ARGS, "--weights", str(tmp_path / "nope.weights.h5")], "nope.weights.h5 not found"


def _case_missing_run(tmp_path):
    return ["evaluate", "--run", str(tmp_path / "no-run")], "No such file or directory"


def _case_bad_option(tmp_path):
    return ["evaluate", "--model", "nice", "--pretrained", "--arch", "wings=2"], "unexpected keyword argument 'wings'"


def _case_bad_arch_syntax(tmp_path):
    return ["sample", "--pretrained", "--arch", "hidden"], "--arch takes KEY=VALUE"


def _case_bad_limit(tmp_path):
    return (["evaluate", *NICE_ARGS, "--weights", _weights_for_cli(tmp_path), "--limit", "-2"],
            "limit must be a positive int")


def _case_refusal(tmp_path):
    return ["sample", *NICE_ARGS], "give --run DIR, --weights FILE, --pretrained"


USER_ERROR_CASES = {f.__name__[len("_case_"):]: f for f in (
    _case_truncated_weights, _case_unwritable_export, _case_missing_export_parent, _case_text_file_as_data,
    _case_bad_zip_as_data, _case_pickled_object_npz, _case_data_error, _case_weights_error,
    _case_missing_weights, _case_missing_run, _case_bad_option, _case_bad_arch_syntax, _case_bad_limit,
    _case_refusal)}


@pytest.mark.parametrize("case", list(USER_ERROR_CASES))
def test_cli_reports_a_user_error_in_one_line_with_status_2(tmp_path, capsys, case):
    argv, message = USER_ERROR_CASES[case](tmp_path)
    capsys.readouterr()
    assert _main(argv) == 2
    line = _one_error_line(capsys, argv[0])
    assert message in line, line


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    def broken(args):
        raise RuntimeError("a tfflows bug")

    monkeypatch.setattr(cli, "cmd_list", broken)
    with pytest.raises(RuntimeError, match="a tfflows bug"):
        cli.main(["list"])


def test_cli_exits_with_status_2_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfflows.cli", "sample", "--model", "nice",
                           "--weights", str(tmp_path / "nope.weights.h5")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2
    assert "tfflows sample: error: weights file" in proc.stderr and "Traceback" not in proc.stderr


# -- 8. smaller problems ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(limit=-2), r"limit must be a positive int .* Received: limit=-2"),
    (dict(limit=0), r"Received: limit=0"),
    (dict(limit=1.5), r"Received: limit=1.5"),
    (dict(limit=True), r"Received: limit=True"),
    (dict(skip=-1), r"skip must be a non-negative int .* Received: skip=-1"),
], ids=["limit-negative", "limit-zero", "limit-float", "limit-bool", "skip-negative"])
def test_load_refuses_a_non_positive_limit_or_a_negative_skip(kwargs, match):
    u8 = np.zeros((10, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match=match):
        data.load(u8, **kwargs)
    if "limit" in kwargs:
        with pytest.raises(ValueError, match=match):
            data.load_arrays(u8, **kwargs)
    assert data.load_arrays(u8, limit=np.int64(3)).shape[0] == 3


def test_resume_keeps_the_checkpoints_eval_images(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = _without(TINY, "--eval-images")
    assert _main(["train", "--out", out, "--epochs", "1", *args, "--eval-images", "32"]) == 0
    with pytest.raises(SystemExit, match=r"--eval-images 48 \(checkpoint: 32\)"):
        cli.main(["train", "--out", out, "--resume", out, "--epochs", "2", *args, "--eval-images", "48"])
    capsys.readouterr()
    assert _main(["train", "--out", out, "--resume", out, "--epochs", "2", *args]) == 0  # --eval-images left out
    assert "eval_images=32" in capsys.readouterr().out
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["test_images"] == 32
    assert json.load(open(os.path.join(out, "config.json")))["eval_images"] == 32


def test_a_folder_mixing_grayscale_and_rgb_names_the_channel_counts(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    images.write_png(str(folder / "a_gray.png"), np.zeros((4, 4, 1), np.uint8))
    images.write_png(str(folder / "b_rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(data.DataError, match=r"different channel counts: 1 \(grayscale, e.g. .*a_gray.png\), "
                                             r"3 \(RGB, e.g. .*b_rgb.png\)\. Convert them") as info:
        data.load(str(folder))
    assert "image_size" not in str(info.value)  # resizing cannot fix channels
    images.write_png(str(folder / "b_rgb.png"), np.zeros((5, 4, 1), np.uint8))
    with pytest.raises(data.DataError, match=r"different shapes .* pass image_size"):
        data.load(str(folder))


def test_train_writes_weights_config_and_metrics_before_the_export(tmp_path, monkeypatch):
    from tfflows import export

    out = str(tmp_path / "run")
    seen = {}
    real_save = export.save

    def killed_during_export(model, base_path, **kwargs):
        seen.update({n: os.path.exists(os.path.join(out, n))
                     for n in ("model.weights.h5", "config.json", "metrics.json", "samples.png")})
        seen["metrics"] = json.load(open(os.path.join(out, "metrics.json")))
        return real_save(model, base_path, **kwargs)

    monkeypatch.setattr(export, "save", killed_during_export)
    args = [a for a in TINY if a != "--no-export"]
    assert _main(["train", "--out", out, "--epochs", "1", *args]) == 0
    assert all(seen[n] for n in ("model.weights.h5", "config.json", "metrics.json", "samples.png")), seen
    assert np.isfinite(seen["metrics"]["test_bpd"]) and "savedmodel" not in seen["metrics"]
    final = json.load(open(os.path.join(out, "metrics.json")))
    assert final["savedmodel"] == os.path.join(out, "savedmodel", "1")


def test_export_removes_temporary_folders_of_killed_exports_only(tmp_path):
    from tfflows import export

    base = tmp_path / "served"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = export._host_tag()
    stale = base / f".tmp-export-1-{host}-pid{dead.pid}-abc123"
    live = base / f".tmp-export-1-{host}-pid{os.getppid()}-def456"
    other_host = base / f".tmp-export-1-elsewhere-pid{dead.pid}-ghi789"
    for d in (stale, live, other_host):
        (d / "variables").mkdir(parents=True)
    assert export.list_versions(str(base)) == []
    path = export.save(_perturbed(_nice(data_shape=(8, 8, 1))), str(base))
    assert path == str(base / "1")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert sorted(os.listdir(base)) == sorted(["1", live.name, other_host.name])
