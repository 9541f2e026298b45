"""The command line: the main job end to end, resume, evaluate, sample."""

import json
import os

import numpy as np
import pytest

from tfflows import cli, training

# A constant learning rate (the cosine default is sized to the run's --epochs,
# and these tests stop and extend runs by changing --epochs).
TINY = ["--preset", "mnist-tiny", "--steps", "1", "--hidden", "8", "--batch-size", "32",
        "--train-images", "256", "--eval-images", "64", "--verbose", "0",
        "--warmup-steps", "0", "--lr", "3e-3", "--decay", "none"]


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_main_job_writes_samples_weights_metrics_and_savedmodel(tmp_path):
    out = str(tmp_path / "run")
    metrics = cli.main(["train", "--out", out, "--epochs", "2", *TINY]) or json.load(open(os.path.join(out, "metrics.json")))
    for name in ("samples.png", "model.weights.h5", "metrics.json", "config.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["step"] == 2 * (256 // 32)
    assert np.isfinite(metrics["test_bpd"]) and metrics["test_bpd_stderr"] > 0
    assert metrics["curve"][0]["step"] == 0
    assert metrics["test_bpd"] < metrics["curve"][0]["test_bpd"]  # training helped
    w, h = _png_size(os.path.join(out, "samples.png"))
    from tfflows.images import label

    margin = max(label(f"T={t:g}", 28).shape[1] for t in (0.5, 0.7, 1.0)) + 2  # the rows' labels
    assert (w, h) == (margin + 10 * 30 + 2, 3 * 30 + 2)  # 10 samples x 3 temperatures, 28px + 2px padding
    assert os.path.exists(os.path.join(out, "savedmodel", "1", "saved_model.pb"))


def test_bfloat16_training_exports_a_float32_savedmodel(tmp_path):
    import tensorflow as tf

    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "1", "--dtype", "mixed_bfloat16", *TINY])
    loaded = tf.saved_model.load(os.path.join(out, "savedmodel", "1"))
    graph = loaded.signatures["log_prob_float"].graph.as_graph_def()
    dtypes = {a.type for n in graph.node for a in n.attr.values() if a.HasField("type")}
    for f in graph.library.function:
        dtypes |= {a.type for n in f.node_def for a in n.attr.values() if a.HasField("type")}
    assert tf.bfloat16.as_datatype_enum not in dtypes  # served in float32
    model, _ = cli.load_model_from_args(cli.build_parser().parse_args(["evaluate", "--run", out]))
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    got = loaded.signatures["log_prob_float"](images=tf.constant(x))["log_prob"].numpy()
    np.testing.assert_allclose(got, np.asarray(model.log_prob(x)), rtol=1e-5)


@pytest.mark.parametrize("ema", [[], ["--ema", "0.9"]], ids=["no-ema", "ema"])
def test_resume_reaches_the_same_step_count_as_an_uninterrupted_run(tmp_path, ema):
    # With --ema the checkpoint must hold the live weights (Keras' fit writes the
    # average into the model when it returns) and the optimizer's average.
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = [*TINY, "--no-export", "--eval-minutes", "1000", *ema]
    cli.main(["train", "--out", a, "--epochs", "3", *common])
    cli.main(["train", "--out", b, "--epochs", "1", *common])
    first = training.latest_checkpoint(os.path.join(b, "checkpoints"))
    assert json.load(open(os.path.join(first, "state.json")))["step"] == 8
    cli.main(["train", "--out", b, "--resume", b, "--epochs", "3", *common])
    sa = json.load(open(os.path.join(a, "metrics.json")))
    sb = json.load(open(os.path.join(b, "metrics.json")))
    assert sa["step"] == sb["step"] == 24
    # Same data stream, optimizer state and seeds: the resumed run lands on the same weights.
    import h5py

    def weights(path):
        out = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda n, o: out.append(np.asarray(o)) if isinstance(o, h5py.Dataset) else None)
        return out

    for wa, wb in zip(weights(os.path.join(a, "model.weights.h5")), weights(os.path.join(b, "model.weights.h5"))):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)


def test_sigterm_stops_after_the_batch_with_checkpoint_and_outputs_and_the_run_resumes(tmp_path, monkeypatch):
    import signal

    out = str(tmp_path / "run")
    common = [*TINY, "--no-export", "--eval-minutes", "1000"]
    before = signal.getsignal(signal.SIGTERM)
    batch_end = training.TrainState.on_train_batch_end

    def kill_at_third_batch(self, batch, logs=None):
        if self.state["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from outside
        return batch_end(self, batch, logs)

    monkeypatch.setattr(training.TrainState, "on_train_batch_end", kill_at_third_batch)
    cli.main(["train", "--out", out, "--epochs", "3", *common])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["step"] == 3  # stopped after the batch the signal arrived in, not killed
    ckpt = training.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert json.load(open(os.path.join(ckpt, "state.json")))["step"] == 3
    assert os.path.getsize(os.path.join(out, "model.weights.h5")) > 0
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored after training
    monkeypatch.undo()
    cli.main(["train", "--out", out, "--resume", out, "--epochs", "3", *common])
    assert json.load(open(os.path.join(out, "metrics.json")))["step"] == 3 * (256 // 32)


def test_resume_keeps_the_checkpoints_dtype_and_refuses_a_different_one(tmp_path, monkeypatch, capsys):
    from tfflows import distribute

    out = str(tmp_path / "run")
    common = [*TINY, "--no-export", "--eval-minutes", "1000"]
    cli.main(["train", "--out", out, "--epochs", "1", "--dtype", "float32", *common])
    # On a CPU with bfloat16 matmuls, "auto" means mixed_bfloat16 for a new run...
    monkeypatch.setattr(distribute.strategy, "cpu_bf16_flags", lambda *a, **k: ["avx512_bf16"])
    assert distribute.resolve_dtype("auto")[0] == "mixed_bfloat16"
    with pytest.raises(SystemExit, match=r"differ from it: --dtype mixed_bfloat16 \(checkpoint: float32\)"):
        cli.main(["train", "--out", out, "--resume", out, "--epochs", "2", "--dtype", "mixed_bfloat16", *common])
    capsys.readouterr()
    # ...but a resumed run continues in the checkpoint's float32.
    cli.main(["train", "--out", out, "--resume", out, "--epochs", "2", *common])
    assert "dtype=float32 (from the checkpoint)" in capsys.readouterr().out
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "float32"
    assert json.load(open(os.path.join(out, "metrics.json")))["step"] == 2 * (256 // 32)


def test_resume_without_the_options_continues_the_checkpoints_data_batch_and_schedule(tmp_path, capsys):
    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "1", *TINY, "--batch-size", "16", "--lr", "1e-3", "--ema", "0.9",
              "--no-export", "--eval-minutes", "1000"])
    # A bare resume (as in the README) must not fall back to the defaults: batch 64, lr 1e-3 without warm-up...
    with pytest.raises(SystemExit, match=r"--batch-size 32 \(checkpoint: 16\); --lr 0.01 \(checkpoint: 0.001\)"):
        cli.main(["train", "--out", out, "--resume", out, "--epochs", "2", "--lr", "1e-2", "--batch-size", "32"])
    capsys.readouterr()
    cli.main(["train", "--out", out, "--resume", out, "--epochs", "2", "--verbose", "0", "--eval-images", "64",
              "--no-export"])
    assert ("continues the checkpoint's preset=mnist-tiny, batch_size=16, lr=0.001, warmup_steps=0, decay=none, "
            "ema=0.9") in capsys.readouterr().out
    config = json.load(open(os.path.join(out, "config.json")))
    assert (config["batch_size"], config["train_images"], config["ema"], config["warmup_steps"]) == (16, 256, 0.9, 0)
    assert json.load(open(os.path.join(out, "metrics.json")))["step"] == 2 * (256 // 16)


def test_train_with_bfloat16_nets_records_the_policy_and_restores_the_global_one(tmp_path):
    import keras

    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "2", "--dtype", "mixed_bfloat16", "--no-export", *TINY])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "mixed_bfloat16"
    assert np.isfinite(metrics["test_bpd"]) and metrics["test_bpd"] < metrics["curve"][0]["test_bpd"]
    assert keras.config.dtype_policy().name == "float32"  # the caller's policy is back
    # The weights evaluate the same in float32 (same images, same noise draws).
    res = cli.cmd_evaluate(cli.build_parser().parse_args(
        ["evaluate", "--run", out, "--data", "mnist", "--limit", "64", "--draws", "2", "--json"]))
    assert abs(res["bpd"] - metrics["test_bpd"]) < 0.02, (res["bpd"], metrics["test_bpd"])


def test_checkpoint_is_atomic_a_crash_while_saving_keeps_the_previous_one(tmp_path, monkeypatch):
    import tfflows

    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=4)
    model.compile()
    d = str(tmp_path / "ck")
    training.save_checkpoint(model, d, dict(step=5))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", boom)
    with pytest.raises(OSError):
        training.save_checkpoint(model, d, dict(step=9))
    path = training.latest_checkpoint(d)
    assert path.endswith("ckpt-000000005")
    _, state = training.load_checkpoint(path)
    assert state["step"] == 5


def test_evaluate_and_sample_commands(tmp_path, capsys):
    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "1", *TINY, "--no-export"])
    capsys.readouterr()
    cli.main(["evaluate", "--run", out, "--limit", "50", "--draws", "3", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 50 and len(result["per_draw"]) == 3
    assert result["stderr"] > 0 and len(set(result["per_draw"])) >= 2  # the noise draws differ
    png = str(tmp_path / "s.png")
    cli.main(["sample", "--run", out, "--n", "4", "--temperatures", "0,1", "--out", png])
    from tfflows.images import label

    margin = max(label(f"T={t:g}", 28).shape[1] for t in (0, 1)) + 2  # the rows' labels
    assert _png_size(png) == (margin + 4 * 30 + 2, 2 * 30 + 2)


@pytest.mark.slow
def test_export_command_writes_a_new_version_each_time(tmp_path, capsys):
    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "1", *TINY, "--no-export"])
    serving = str(tmp_path / "serving")
    cli.main(["export", "--run", out, "--out", serving])
    cli.main(["export", "--run", out, "--out", serving])
    assert sorted(os.listdir(serving)) == ["1", "2"]
    assert "serving_default(images: uint8[None, 28, 28, 1])" in capsys.readouterr().out


def test_glow_logit_preprocess_is_recorded_and_rebuilt_from_the_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "1", *TINY, "--no-export", "--preprocess", "logit"])
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["overrides"]["preprocess"] == "logit"
    model, _ = cli.load_model_from_args(cli.build_parser().parse_args(["evaluate", "--run", out]))
    assert type(model.flow.flow_layers[0]).__name__ == "LogitTransform"
    capsys.readouterr()
    cli.main(["evaluate", "--run", out, "--limit", "20", "--json"])
    assert np.isfinite(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpd"])
    assert cli.main(["train", "--model", "realnvp", "--out", str(tmp_path / "r"), *TINY,
                     "--preprocess", "logit"]) == 2
    assert "--preprocess applies to --model glow, not realnvp" in capsys.readouterr().err


def test_per_level_glow_widths_train_from_grown_weights_and_rebuild_from_the_run(tmp_path, capsys):
    import tfflows
    from tfflows.zoo import grow

    src = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8)
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    src.initialize(x)
    src_path, wide = str(tmp_path / "src.weights.h5"), str(tmp_path / "wide.weights.h5")
    training.save_inference_weights(src, src_path)
    grow.main(["--preset", "mnist-tiny", "--steps", "1", "--hidden", "8", "--from", src_path,
               "--widen", "12,8", "--out", wide, "--limit", "20"])
    out = str(tmp_path / "run")
    args = [a for a in TINY if a not in ("--hidden", "8")]
    cli.main(["train", "--out", out, "--epochs", "1", *args, "--arch", "hidden=(12,8)",
              "--init-from", wide, "--no-export"])
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["overrides"]["hidden"] == [12, 8]
    model, _ = cli.load_model_from_args(cli.build_parser().parse_args(["evaluate", "--run", out]))
    widths = [l.hidden for l in model.flow.flow_layers if type(l).__name__ == "AffineCoupling"]
    assert widths == [12, 8]
    assert np.isfinite(json.load(open(os.path.join(out, "metrics.json")))["test_bpd"])
    capsys.readouterr()
    # The unwidened file does not fit (12, 8): one error line, status 2.
    assert cli.main(["train", "--out", str(tmp_path / "bad"), "--epochs", "1", *args, "--arch", "hidden=(12,8)",
                     "--init-from", src_path, "--no-export"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match=r"no checkpoint in"):
        cli.main(["train", "--out", str(tmp_path), "--resume", str(tmp_path), *TINY])


def test_ema_weights_hold_the_moving_average_and_restore_the_live_weights():
    import keras

    import tfflows

    keras.utils.set_random_seed(0)
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=4)
    model.compile(optimizer=tfflows.default_optimizer(3e-3, dims=model.dims, ema_momentum=0.5))
    x = np.random.default_rng(0).random((16, 28, 28, 1)).astype("float32")
    model.initialize(x)
    with training.ema_weights(model) as averaged:
        assert not averaged  # no step taken yet: nothing to average
    expected = None
    for _ in range(3):
        model.train_on_batch(x)
        live = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        # Keras' EMA: the first step copies the weights, then avg = m * avg + (1 - m) * w.
        expected = live if expected is None else [0.5 * e + 0.5 * w for e, w in zip(expected, live)]
    with training.ema_weights(model) as averaged:
        assert averaged
        inside = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    for got, want in zip(inside, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(after, live):
        np.testing.assert_array_equal(got, want)
    assert any(not np.allclose(a, b) for a, b in zip(inside, live))


def test_train_with_ema_records_both_curves_and_writes_the_average(tmp_path):
    out = str(tmp_path / "run")
    cli.main(["train", "--out", out, "--epochs", "1", *TINY, "--no-export", "--ema", "0.9",
              "--eval-minutes", "0"])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    later = [c for c in metrics["curve"] if c["step"] > 0]
    assert later and all("test_bpd_live" in c for c in later)
    assert any(c["test_bpd"] != c["test_bpd_live"] for c in later)
    # The written weights are the average: they give the last EMA evaluation's number.
    model, _ = cli.load_model_from_args(cli.build_parser().parse_args(["evaluate", "--run", out]))
    bpd = training.evaluate_bpd(model, training_test_images(), draws=1, n_bits=8)[0]
    assert abs(bpd - later[-1]["test_bpd"]) < 1e-3


def training_test_images():
    from tfflows.zoo import data as zdata

    return zdata.load_arrays("mnist", "test", limit=64)
