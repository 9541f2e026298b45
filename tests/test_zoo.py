"""Zoo builders, presets and the sha256 check of shipped weights."""

import json
import os
import shutil

import numpy as np
import pytest

import tfflows
from conftest import to_np
from tfflows.zoo import builders, presets


def test_list_models_covers_every_builder_and_preset():
    rows = tfflows.zoo.list_models()
    names = {r["name"] for r in rows}
    for model in ("glow", "realnvp", "nice"):
        for preset in ("mnist", "cifar10"):
            assert f"{model}-{preset}" in names
    for r in rows:
        assert r["pretrained"] == (r["name"] in builders.read_manifest())


def test_keyword_overrides_change_the_architecture():
    small = tfflows.zoo.glow(preset="mnist", levels=2, steps=2, hidden=16, lu=False)
    big = tfflows.zoo.glow(preset="mnist", levels=2, steps=3, hidden=16, lu=False)
    assert small.count_params() < big.count_params()
    n_couplings = sum(type(l).__name__ == "AffineCoupling" for l in small.flow.flow_layers)
    assert n_couplings == 2 * 2
    plain = [l for l in small.flow.flow_layers if type(l).__name__ == "Invertible1x1Conv"]
    assert plain and not any(l.lu for l in plain)


def test_cifar10_presets_build_on_32x32x3():
    for builder in (tfflows.zoo.glow, tfflows.zoo.realnvp):
        model = builder(preset="cifar10", steps=1, hidden=8)
        x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
        assert to_np(model.log_prob(x)).shape == (2,)


def test_glow_logit_preprocess_is_a_bijection_counted_in_log_prob():
    center = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, preprocess="center")
    logit = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, preprocess="logit", alpha=0.1)
    assert type(center.flow.flow_layers[0]).__name__ == "Rescale"
    first = logit.flow.flow_layers[0]
    assert type(first).__name__ == "LogitTransform" and first.alpha == 0.1
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype("float32")
    logit.initialize(x)
    np.testing.assert_allclose(to_np(logit.decode(logit.encode(x))), x, atol=1e-4)
    # Same weights, other preprocessing: a different density, both finite.
    center.initialize(x)
    center.set_weights(logit.get_weights())
    lp_c, lp_l = to_np(center.log_prob(x)), to_np(logit.log_prob(x))
    assert np.all(np.isfinite(lp_c)) and np.all(np.isfinite(lp_l))
    assert np.max(np.abs(lp_c - lp_l)) > 1.0


def test_shipped_glow_refuses_another_preprocess():
    entry = builders.read_manifest().get("glow-mnist")
    if entry is None:
        pytest.skip("no shipped glow-mnist")
    shipped = entry["architecture"]["preprocess"]
    other = {"center": "logit", "logit": "center"}[shipped]
    with pytest.raises(builders.WeightsError, match=rf"preprocess.*shipped {shipped}, asked {other}"):
        tfflows.zoo.glow(preset="mnist", preprocess=other, pretrained=True)
    if shipped == "logit" and "alpha" not in entry["architecture"]:
        with pytest.raises(builders.WeightsError, match=r"alpha.*shipped default, asked 0.1"):
            tfflows.zoo.glow(preset="mnist", alpha=0.1, pretrained=True)


def test_bad_builder_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown glow preset 'imagenet'"):
        tfflows.zoo.glow(preset="imagenet")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'width'"):
        tfflows.zoo.glow(width=3)
    with pytest.raises(ValueError, match=r"glow with levels=3 needs height and width divisible by 8, got 28x28"):
        tfflows.zoo.glow(preset="mnist", levels=3)
    with pytest.raises(ValueError, match=r"glow preprocess must be one of \('center', 'logit'\)"):
        tfflows.zoo.glow(preset="mnist-tiny", preprocess="tanh")
    with pytest.raises(ValueError, match=r"alpha=0.1 needs preprocess='logit'"):
        tfflows.zoo.glow(preset="mnist-tiny", preprocess="center", alpha=0.1)


@pytest.fixture
def fake_shipped(tmp_path, monkeypatch):
    """A presets table + weights file in a temp folder, as the package ships them."""
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8)
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype("float32")
    model.initialize(x)
    return model, x, _ship_fake(model, tmp_path, monkeypatch)


def _ship_fake(model, tmp_path, monkeypatch, weights_extra=None, edit=None):
    """Writes `model` (glow mnist-tiny, K=1, width 8) as the shipped weights of a
    temp presets table (`weights_extra` beside its sha256, `edit(table)` before
    writing) and points the package at it. Returns the file's path."""
    path = tmp_path / "glow-mnist-tiny.weights.h5"
    model.save_weights(str(path))
    table = builders.read_presets()
    table["glow"]["mnist-tiny"].update(
        architecture=dict(builders.PRESETS["glow"]["mnist-tiny"], data_shape=[28, 28, 1], steps=1, hidden=8),
        weights={"file": path.name, "sha256": builders.sha256_file(str(path)), "size_bytes": path.stat().st_size,
                 **(weights_extra or {})})
    if edit is not None:
        edit(table)
    (tmp_path / "presets.json").write_text(json.dumps(table))
    monkeypatch.setattr(presets, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(presets, "PRESETS_FILE", str(tmp_path / "presets.json"))
    return path


def test_pretrained_loads_verified_weights(fake_shipped):
    model, x, _ = fake_shipped
    loaded = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True)
    np.testing.assert_array_equal(to_np(loaded.log_prob(x)), to_np(model.log_prob(x)))


def test_tampered_weights_are_refused_naming_the_file(fake_shipped):
    _, _, path = fake_shipped
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(builders.WeightsError, match=r"glow-mnist-tiny.weights.h5 failed its sha256 check"):
        tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True)


def test_missing_weights_and_wrong_architecture_are_refused(fake_shipped):
    _, _, path = fake_shipped
    with pytest.raises(builders.WeightsError, match=r"different architecture"):
        tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8, pretrained=True)
    os.remove(path)
    with pytest.raises(builders.WeightsError, match=r"glow-mnist-tiny.weights.h5 .* is missing"):
        tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True)
    with pytest.raises(builders.WeightsError, match=r"No pretrained weights ship for 'nice-cifar10'"):
        tfflows.zoo.nice(preset="cifar10", pretrained=True)


def _ship_module():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "ship.py")
    spec = importlib.util.spec_from_file_location("tfflows_zoo_ship", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ship_refuses_a_run_the_preset_could_not_load():
    ship = _ship_module()
    steps = builders.PRESETS["glow"]["mnist"]["steps"]
    ok = {"model": "glow", "preset": "mnist", "overrides": {"steps": steps}}
    ship.check_shippable(ok, "glow-mnist")  # an override equal to the preset is fine
    with pytest.raises(SystemExit, match=r"changes the 'mnist' preset.*steps.*preset %d, run %d" % (steps, steps + 1)):
        ship.check_shippable(dict(ok, overrides={"steps": steps + 1}), "glow-mnist")
    with pytest.raises(SystemExit, match=r"learned_prior.*preset builder default, run False"):
        ship.check_shippable(dict(ok, overrides={"learned_prior": False}), "glow-mnist")
    with pytest.raises(SystemExit, match=r"--key 'realnvp-mnist' does not match.*'glow-mnist'"):
        ship.check_shippable(ok, "realnvp-mnist")


def test_ship_keeps_the_uniform_noise_weights_a_dequantizer_replaces(fake_shipped, tmp_path, monkeypatch):
    """ship.keep_uniform: the shipped uniform-noise file becomes `<key>-uniform`
    (renamed, same sha256, its metrics kept), loadable with dequantize='uniform'."""
    _, _, path = fake_shipped
    ship = _ship_module()
    monkeypatch.setattr(builders, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(builders, "PRESETS_FILE", str(tmp_path / "presets.json"))
    before = builders.read_manifest()["glow-mnist-tiny"]
    ship.keep_uniform("glow-mnist-tiny")
    assert not path.exists() and (tmp_path / "glow-mnist-tiny-uniform.weights.h5").exists()
    entry = builders.read_manifest()["glow-mnist-tiny-uniform"]
    assert entry["sha256"] == before["sha256"] and entry["build"] == {"dequantize": "uniform"}
    assert builders.sha256_file(builders.verified_weights_path("glow-mnist-tiny-uniform")) == before["sha256"]
    # Shipping uniform-noise weights again drops the uniform entry and its file.
    monkeypatch.setattr(ship, "history_path", lambda key: str(tmp_path / key / "history.json"))
    ship.write_record("glow-mnist-tiny", dict(before, file="glow-mnist-tiny.weights.h5", stages=[]))
    assert "glow-mnist-tiny-uniform" not in builders.read_manifest()
    assert not (tmp_path / "glow-mnist-tiny-uniform.weights.h5").exists()


def test_model_card_progress_projects_from_the_last_stage():
    ship = _ship_module()
    stage = lambda h, b: {"cpu_hours": h, "test_bpd": b}  # noqa: E731
    e = {"model": "glow", "test_bpd": 1.19, "stages": [stage(3.0, 1.30), stage(2.0, 1.21), stage(1.0, 1.19)]}
    text = ship.progress_text(e)
    assert "| 2 | 2.0 | 5.00 | 1.2100 | +0.0900 | 1 | 0.0450 |" in text
    assert "| 3 | 1.0 | 6.00 | 1.1900 | +0.0200 | 2 | 0.0200 |" in text
    # at 0.02 per CPU-hour: (1.19 - 1.15) / 0.02 = 2 and (1.19 - 1.05) / 0.02 = 7
    assert "target 1.15 needs at least 2 more CPU-hours" in text
    assert "published 1.05 needs at least 7 more CPU-hours" in text
    e["test_bpd"], e["stages"][-1]["test_bpd"] = 1.14, 1.14
    assert "target 1.15 is met" in ship.progress_text(e)
    e["stages"][-1]["test_bpd"] = None  # stages shipped before per-stage figures: no table
    assert ship.progress_text(e) == ""


def test_model_card_projects_a_cooldown_stage_together_with_the_stage_it_anneals():
    ship = _ship_module()
    stage = lambda h, b, **k: dict(cpu_hours=h, test_bpd=b, **k)  # noqa: E731
    e = {"model": "glow", "test_bpd": 1.17,
         "stages": [stage(3.0, 1.30), stage(3.0, 1.18), stage(1.0, 1.17, cooldown=True)]}
    text = ship.progress_text(e)
    assert "| 3 | 1.0 | 7.00 | 1.1700 | +0.0100 | 2 | 0.0100 |" in text  # the table still shows each stage
    # stages 2 and 3 together, from stage 1's figure: (1.30 - 1.17) / (3.0 + 1.0) = 0.0325 per CPU-hour
    assert "stages 2 and 3 together" in text and "(0.0325 bits/dim per CPU-hour; stage 3 is a cooldown" in text
    assert "target 1.15 needs at least 1 more CPU-hours" in text  # 0.02 / 0.0325 = 0.6
    e["stages"][-1].pop("cooldown")
    assert "At the last stage's rate (0.0100 bits/dim per CPU-hour)" in ship.progress_text(e)


def test_model_card_counts_a_resumed_trunk_stage_over_the_trunk_stage_it_continues():
    ship = _ship_module()
    stage = lambda h, b, s, **k: dict(cpu_hours=h, test_bpd=b, steps=s, **k)  # noqa: E731
    stages = [stage(4.0, 1.178, 12000),                                  # 1: a trunk from step 0
              stage(3.5, 1.179, 8449, run_step=8449),                   # 2: a fresh trunk
              stage(0.9, 1.174, 2292, cooldown=True),                   # 3: its cooldown branch
              stage(2.9, 1.173, 6700, run_step=15149),                  # 4: trunk 2 resumed
              stage(0.9, 1.1726, 2636, run_step=2636, cooldown=True)]   # 5: its cooldown branch
    assert [ship.base_stage(stages, i) for i in range(1, 5)] == [0, 1, 1, 3]
    text = ship.progress_text({"model": "glow", "test_bpd": 1.1726, "stages": stages})
    assert "| 4 | 2.9 | 11.30 | 1.1730 | +0.0060 | 2 | 0.0021 |" in text  # 1.179 - 1.173, not 1.174 - 1.173
    assert "| 5 | 0.9 | 12.20 | 1.1726 | +0.0004 | 4 | 0.0004 |" in text
    # the projection still runs shipped figure to shipped figure: (1.174 - 1.1726) / (2.9 + 0.9)
    assert "(0.0004 bits/dim per CPU-hour; stage 5 is a cooldown of stage 4's weights, and the pair is " \
           "counted from stage 3's figure)" in text


def test_curve_plot_shows_live_weights_beside_the_ema(tmp_path):
    ship = _ship_module()
    curve = [dict(minutes=0.0, step=0, test_bpd=6.8), dict(minutes=5.0, step=100, test_bpd=8.3),
             dict(minutes=10.0, step=200, test_bpd=1.5)]
    labels = ship.plot_curve(curve, str(tmp_path / "plain.png"), "t")
    assert "tfflows" in labels and not any("live" in lab for lab in labels)
    # A run with --ema records the live weights too: the EMA lags them early on.
    curve = [curve[0]] + [dict(c, test_bpd_live=1.6) for c in curve[1:]]
    labels = ship.plot_curve(curve, str(tmp_path / "ema.png"), "t")
    assert {"tfflows (EMA weights)", "tfflows (live weights)"} <= set(labels)
    assert os.path.getsize(tmp_path / "ema.png") > 0


def test_draw_outliers_name_the_images_one_noise_draw_scores_far_worse():
    ship = _ship_module()
    rng = np.random.default_rng(0)
    by_draw = 1.15 + 0.01 * rng.standard_normal((4, 1000))
    assert ship.draw_outliers(by_draw) == []
    by_draw[2, 17] += 40.0  # one image blows up under the third draw only
    by_draw[2, 900] += 3.0
    (line,) = ship.draw_outliers(by_draw)
    assert line.startswith("draw 2: 2 image(s)")
    assert line.index("17: 41.") < line.index("900: 4.")  # worst first
    assert "adding 0.0430" in line  # (40 + 3) / 1000 images, to the draw's mean


def test_evaluate_bpd_summarises_the_per_image_per_draw_scores():
    from tfflows import training

    by_draw = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 5.5]])
    mean, se, per_draw = training.summarize_bpd(by_draw)
    assert mean == pytest.approx(7.75 / 3) and per_draw == pytest.approx([2.0, 3.166667])
    assert se == pytest.approx(np.std([1.25, 2.25, 4.25], ddof=1) / np.sqrt(3))


def test_a_resumed_trunk_counts_only_what_it_trained_after_the_shipped_stage():
    ship = _ship_module()
    # stage 6: a trunk run stopped at step 8449 (recorded before run_step existed); stage 7 a cooldown of it
    stages = [dict(steps=500, minutes=9.0), dict(steps=8449, minutes=103.7), dict(steps=2292, minutes=28.0, cooldown=True)]
    assert ship.resume_point(stages) == (8449, 103.7)
    stages.append(dict(steps=6000, minutes=80.0, run_step=14449, run_minutes=183.7))
    assert ship.resume_point(stages + [dict(steps=10, minutes=1.0, cooldown=True)]) == (14449, 183.7)
    with pytest.raises(ValueError, match="no shipped trunk stage"):
        ship.resume_point([dict(steps=1, minutes=1.0, cooldown=True)])
    # the resumed run's metrics carry its whole history from step 0
    metrics = dict(step=16449, train_minutes=213.7, curve=[
        dict(step=0, minutes=0.0, test_bpd=1.20), dict(step=8307, minutes=101.4, test_bpd=1.153),
        dict(step=9117, minutes=114.2, test_bpd=1.152), dict(step=16449, minutes=213.7, test_bpd=1.150)])
    steps, minutes, curve = ship.stage_span(metrics, 14449, 183.7)
    assert steps == 2000 and minutes == pytest.approx(30.0)
    assert [(c["step"], round(c["minutes"], 6)) for c in curve] == [(2000, 30.0)]
    steps, minutes, curve = ship.stage_span(metrics)  # a run from step 0 is all new
    assert steps == 16449 and len(curve) == 4 and curve[0]["step"] == 0


def _tiny_glow_with_busy_nets(hidden=64):
    """A mnist-tiny Glow whose coupling nets all matter (their last convs start at zero)."""
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=hidden)
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype("float32")
    model.initialize(x)
    rng = np.random.default_rng(1)
    for v in model.weights:
        if "coupling" in v.path and "kernel" in v.path:
            shape = tuple(v.shape)
            v.assign(rng.normal(scale=0.5 / np.sqrt(np.prod(shape[:-1])), size=shape).astype("float32"))
    return model, x


def test_float16_net_kernels_store_only_the_coupling_kernels_and_load_back(tmp_path, monkeypatch):
    from tfflows import training

    model, x = _tiny_glow_with_busy_nets()
    f32, f16 = str(tmp_path / "a.weights.h5"), str(tmp_path / "glow-mnist-tiny.weights.h5")
    training.save_inference_weights(model, f32)
    training.save_inference_weights(model, f16, net_kernels_float16=True)
    n16, n = training.float16_entries(f16)
    assert training.float16_entries(f32) == (0, n) and n == model.count_params()
    # mnist-tiny at hidden 64: both nets' 1x1 convs (64*64) and the second level's last 3x3 conv
    # (3*3*64*8) have >= 4096 entries; the first convs, the first level's last conv (3*3*64*4),
    # biases and the flow's own parameters stay float32.
    big = [v for v in model.weights if "coupling" in v.path and "kernel" in v.path and np.prod(v.shape) >= 4096]
    assert n16 == sum(int(np.prod(v.shape)) for v in big) > 0
    assert os.path.getsize(f16) < os.path.getsize(f32) - 1.5 * n16
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]

    loaded = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=64)
    loaded.initialize(x)
    loaded.load_weights(f16)
    rounded = 0
    for a, b in zip(model.weights, loaded.weights):
        assert str(b.dtype) == "float32" and a.path == b.path
        a, b = to_np(a), to_np(b)
        if a.size >= 4096 and not np.array_equal(a, b):
            np.testing.assert_array_equal(b, a.astype("float16").astype("float32"))
            rounded += a.size
        else:
            np.testing.assert_array_equal(b, a)
    assert rounded == n16
    bpd32, bpd16 = to_np(model.bits_per_dim(x)), to_np(loaded.bits_per_dim(x))
    assert not np.array_equal(bpd32, bpd16)  # the rounding reached the model ...
    np.testing.assert_allclose(bpd16, bpd32, atol=2e-3)  # ... and moved bits/dim by little

    # The shipped-weights path loads it too, after the sha256 check.
    table = builders.read_presets()
    table["glow"]["mnist-tiny"]["weights"] = {"file": os.path.basename(f16), "sha256": builders.sha256_file(f16),
                                              "size_bytes": os.path.getsize(f16)}
    table["glow"]["mnist-tiny"]["architecture"] = {}  # no architecture check here
    (tmp_path / "presets.json").write_text(json.dumps(table))
    monkeypatch.setattr(presets, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(presets, "PRESETS_FILE", str(tmp_path / "presets.json"))
    shipped = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=64, pretrained=True)
    np.testing.assert_array_equal(to_np(shipped.bits_per_dim(x)), bpd16)


@pytest.mark.parametrize("bad, message", [(1e5, r"magnitude 1e\+05, beyond float16's 65504"),
                                          (np.nan, r"holds NaN or Inf")])
def test_float16_net_kernels_refuse_what_float16_cannot_hold(tmp_path, bad, message):
    from tfflows import training

    model, _ = _tiny_glow_with_busy_nets()
    kernel = next(v for v in model.weights if "coupling" in v.path and "kernel" in v.path
                  and np.prod(v.shape) >= 4096)
    value = to_np(kernel).copy()
    value.flat[3] = bad
    kernel.assign(value)
    dst = tmp_path / "kept.weights.h5"
    dst.write_bytes(b"an earlier file")
    with pytest.raises(ValueError, match=message):
        training.save_inference_weights(model, str(dst), net_kernels_float16=True)
    assert dst.read_bytes() == b"an earlier file"  # nothing already saved is lost
    assert sorted(os.listdir(tmp_path)) == ["kept.weights.h5"]


def test_ship_live_weights_are_the_last_checkpoints_not_the_ema(tmp_path):
    from test_cli import TINY
    from tfflows import cli, training

    run = str(tmp_path / "run")
    cli.main(["train", "--out", run, "--epochs", "1", *TINY, "--ema", "0.9", "--no-export"])
    with open(os.path.join(run, "metrics.json")) as f:
        step = json.load(f)["step"]
    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    ship = _ship_module()
    model = builders.build(cfg["model"], cfg["preset"], cfg.get("overrides", {}))
    model.load_weights(os.path.join(run, "model.weights.h5"))
    ema = [to_np(w) for w in model.get_weights()]
    ckpt = ship.load_live_weights(model, run, step)
    live, _ = training.load_checkpoint(ckpt)
    got = [to_np(w) for w in model.get_weights()]
    want = [to_np(w) for w in live.get_weights()]
    assert len(got) == len(want) == len(ema)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert any(not np.allclose(g, e) for g, e in zip(got, ema)), "the live weights equal the EMA's"
    with pytest.raises(ValueError, match=r"is at step %d, not at the run's end \(step %d\)" % (step, step + 1)):
        ship.load_live_weights(model, run, step + 1)
    with pytest.raises(ValueError, match=r"has no checkpoint"):
        ship.load_live_weights(model, str(tmp_path), step)


def test_spline_glow_inverts_and_counts_its_log_det():
    model = tfflows.zoo.glow(preset="mnist-tiny", coupling="spline", bins=4, hidden=8)
    kinds = {type(l).__name__ for l in model.flow.flow_layers}
    assert "SplineCoupling" in kinds and "AffineCoupling" not in kinds
    x = np.random.default_rng(0).uniform(0, 1, (3,) + model.data_shape).astype("float32")
    model.initialize(x)
    for v in model.trainable_variables:  # non-identity splines
        v.assign(v + 0.05 * np.random.default_rng(1).standard_normal(tuple(v.shape)).astype("float32"))
    z = model.encode(x)
    np.testing.assert_allclose(to_np(model.decode(z)), x, atol=2e-4)
    assert np.all(np.isfinite(to_np(model.bits_per_dim(x))))
    with pytest.raises(ValueError, match="coupling"):
        tfflows.zoo.glow(preset="mnist-tiny", coupling="additive")
    with pytest.raises(ValueError, match="coupling='spline'"):
        tfflows.zoo.glow(preset="mnist-tiny", bins=4)


def test_glow_with_variational_dequantization_takes_pixels_and_trains():
    import keras

    keras.utils.set_random_seed(0)
    model = tfflows.zoo.glow(preset="mnist-tiny", hidden=8, dequantize="variational")
    assert model.dequantizer is not None
    x = np.random.default_rng(0).integers(0, 256, (64,) + model.data_shape).astype("uint8")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, batch_size=16, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    with pytest.raises(ValueError, match="integer pixel values"):
        model.bits_per_dim(x.astype("float32") / 256.0)
    with pytest.raises(ValueError, match="dequantize"):
        tfflows.zoo.glow(preset="mnist-tiny", dequantize="gaussian")


def bare_log_prob(model, y):
    """log p(y) of `model`'s flow and prior alone, without its dequantizer."""
    z, log_det = model.flow.forward(y)
    return model.base.log_prob(z) + log_det


def test_pretrained_weights_with_a_dequantizer_load_with_it_or_the_uniform_noise_weights(tmp_path, monkeypatch):
    """Shipped weights whose architecture records `dequantize: variational`:
    `pretrained=True` builds the model with its dequantizer (integer pixels
    in, the bound out); `dequantize="uniform"` loads the uniform-noise
    weights shipped beside them (the continuous density the apps and export
    take), and is refused where none ship."""
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, dequantize="variational")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype("uint8")
    model.initialize(pixels)
    def class_entry(table):
        # A class-conditional entry under it has weights of its own, and no dequantizer unless they say so.
        row = table["glow"]["mnist-tiny"]
        row["classes"] = {"classes10": dict(architecture={"num_classes": 10},
                                            weights={k: v for k, v in row["weights"].items() if k != "dequantize"})}

    _ship_fake(model, tmp_path, monkeypatch, {"dequantize": "variational"}, class_entry)
    assert builders.shipped_dequantize("glow-mnist-tiny") == "variational"
    assert builders.shipped_dequantize("glow-mnist-tiny-classes10") == "uniform"

    loaded = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True)
    assert loaded.dequantizer is not None
    np.testing.assert_allclose(loaded.dequantized_bound(pixels, draws=4, seed=0),
                               model.dequantized_bound(pixels, draws=4, seed=0), rtol=1e-6)
    # Its flow alone, copied by hand: the same flow and prior, no dequantizer.
    flow_only = builders.copy_flow_weights(loaded, tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8))
    y = (pixels.astype("float32") + 0.5) / 256.0
    np.testing.assert_allclose(to_np(flow_only.log_prob(y)), to_np(bare_log_prob(model, y)), rtol=1e-6)
    with pytest.raises(builders.WeightsError, match="No uniform-noise weights ship"):
        tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True, dequantize="uniform")

    # Uniform-noise weights beside them: another Glow of the same flow, without a dequantizer.
    other = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, dequantize="uniform")
    other.initialize(y)
    path = tmp_path / "glow-mnist-tiny-uniform.weights.h5"
    other.save_weights(str(path))
    table = builders.read_presets()
    table["glow"]["mnist-tiny"]["uniform"] = dict(weights={"file": path.name, "sha256": builders.sha256_file(str(path)),
                                                           "size_bytes": path.stat().st_size})
    (tmp_path / "presets.json").write_text(json.dumps(table))
    assert builders.read_manifest()["glow-mnist-tiny-uniform"]["build"] == {"dequantize": "uniform"}
    uniform = tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True, dequantize="uniform")
    assert uniform.dequantizer is None
    np.testing.assert_array_equal(to_np(uniform.log_prob(y)), to_np(other.log_prob(y)))
    assert np.max(np.abs(to_np(uniform.log_prob(y)) - to_np(bare_log_prob(model, y)))) > 1e-3
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(builders.WeightsError, match="glow-mnist-tiny-uniform.weights.h5 failed its sha256"):
        tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8, pretrained=True, dequantize="uniform")
    with pytest.raises(builders.WeightsError, match="different architecture"):
        tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8, pretrained=True)


def test_pretrained_class_conditional_glow_follows_the_shipped_class_couplings(tmp_path, monkeypatch):
    """`glow(num_classes=K, pretrained=True)` builds the class-conditional
    Glow the shipped weights were trained as: with class couplings where the
    shipped entry is `classes10-couplings`; asking for the other kind is
    refused, naming what ships."""
    kw = dict(preset="mnist-tiny", steps=1, hidden=8, num_classes=10)
    model = tfflows.zoo.glow(class_couplings=True, **kw)
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype("float32")
    y = np.arange(8) % 10
    model.initialize(x, context=y)
    path = tmp_path / "glow-mnist-tiny-classes10-couplings.weights.h5"
    model.save_weights(str(path))

    def class_entry(table):
        table["glow"]["mnist-tiny"]["classes"] = {"classes10-couplings": dict(
            architecture={"num_classes": 10, "class_couplings": True},
            weights={"file": path.name, "sha256": builders.sha256_file(str(path)),
                     "size_bytes": path.stat().st_size})}

    _ship_fake(tfflows.zoo.glow(preset="mnist-tiny", steps=1, hidden=8), tmp_path, monkeypatch, edit=class_entry)
    loaded = tfflows.zoo.glow(pretrained=True, **kw)
    np.testing.assert_allclose(to_np(loaded.log_prob(x, context=y)), to_np(model.log_prob(x, context=y)), rtol=1e-6)
    plain = tfflows.zoo.glow(**kw)  # without pretrained: the prior alone reads the class
    plain.log_prob(x, context=y)
    assert plain.count_params() < loaded.count_params() == model.count_params()
    with pytest.raises(builders.WeightsError, match=r"class_couplings=False; shipped: \['glow-mnist-tiny-classes10-couplings'\]"):
        tfflows.zoo.glow(pretrained=True, class_couplings=False, **kw)
    with pytest.raises(builders.WeightsError, match=r"No shipped glow 'mnist-tiny' weights have a variational"):
        tfflows.zoo.glow(pretrained=True, dequantize="variational", **kw)
