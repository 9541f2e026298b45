"""`tfflows.zoo.grow`: a deeper or wider Glow with the same density."""

import numpy as np
import pytest

import tfflows
from conftest import to_np
from tfflows import training
from tfflows.zoo import grow


def _trained_like(steps=2, hidden=8, preprocess="logit", lu=True, seed=0):
    """A small Glow whose every layer is far from its initial value: ActNorm
    from data, random (not zero) last convs, so no coupling is the identity."""
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=steps, hidden=hidden, preprocess=preprocess, lu=lu)
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(16, 28, 28, 1)).astype("float32")
    model.initialize(x)
    for layer in model.flow.flow_layers:
        if type(layer).__name__ == "AffineCoupling":
            weights = layer.net.get_weights()
            weights[-2] = 0.05 * rng.standard_normal(weights[-2].shape).astype("float32")
            weights[-1] = 0.05 * rng.standard_normal(weights[-1].shape).astype("float32")
            layer.net.set_weights(weights)
        if type(layer).__name__ == "ActNorm":
            layer.loc.assign(to_np(layer.loc) + 0.1 * rng.standard_normal(layer.loc.shape).astype("float32"))
    return model, x


@pytest.mark.parametrize("lu,preprocess,k_new", [(True, "logit", 4), (False, "center", 4), (True, "logit", 3)])
def test_deepened_glow_has_more_steps_and_the_same_density(lu, preprocess, k_new):
    old, x = _trained_like(lu=lu, preprocess=preprocess)
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=k_new, hidden=8, preprocess=preprocess, lu=lu)
    grow.deepen_glow(old, new, sample=x[:2])
    n_old = sum(type(l).__name__ == "AffineCoupling" for l in old.flow.flow_layers)
    n_new = sum(type(l).__name__ == "AffineCoupling" for l in new.flow.flow_layers)
    assert n_new == n_old * k_new // 2
    lp_old, lp_new = to_np(old.log_prob(x)), to_np(new.log_prob(x))
    # log p is about -1500 nats here; float32 rounding of the folded 1x1 convs.
    np.testing.assert_allclose(lp_new, lp_old, rtol=1e-5, atol=1e-2)
    # Same latent, too: decoding the old latent with the new model gives x back.
    z = old.encode(x)
    np.testing.assert_allclose(to_np(new.encode(x)), to_np(z), atol=2e-3)
    np.testing.assert_allclose(to_np(new.decode(z)), x, atol=1e-4)
    # Nothing is left for data-dependent init, so fit keeps the grown weights.
    assert not new.needs_initialization
    # The new model is still a valid flow with trainable new steps.
    assert new.count_params() > old.count_params()


def test_deepened_glow_trains_from_the_old_bits_per_dim():
    old, x = _trained_like()
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=4, hidden=8)
    grow.deepen_glow(old, new, sample=x[:2])
    new.compile(optimizer=tfflows.default_optimizer(1e-3, dims=new.dims))
    before = float(np.mean(to_np(new.bits_per_dim(x))))
    new.fit(x, epochs=5, batch_size=16, verbose=0)
    after = float(np.mean(to_np(new.bits_per_dim(x))))
    assert np.isfinite(after) and after < before


def test_inserted_steps_are_spread_evenly():
    assert grow.inserted_before(4, 8) == [0, 1, 2, 3]
    assert grow.inserted_before(32, 48) == list(range(1, 32, 2))
    assert grow.inserted_before(4, 5) == [3]
    for k, k_new in ((1, 2), (5, 7), (32, 40), (32, 64)):
        before = grow.inserted_before(k, k_new)
        assert len(before) == k_new - k == len(set(before)) and all(0 <= j < k for j in before)
    for k_new in (4, 9):
        with pytest.raises(ValueError, match=r"between 5 and 8"):
            grow.inserted_before(4, k_new)


def test_deepen_glow_rejects_models_it_cannot_map():
    old, x = _trained_like()
    wrong_depth = tfflows.zoo.glow(preset="mnist-tiny", steps=5, hidden=8)
    with pytest.raises(ValueError, match=r"needs a new model with 2 levels of 3 to 4 steps"):
        grow.deepen_glow(old, wrong_depth, sample=x[:2])
    same_depth = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8)
    with pytest.raises(ValueError, match=r"needs a new model with 2 levels of 3 to 4 steps"):
        grow.deepen_glow(old, same_depth, sample=x[:2])
    wrong_width = tfflows.zoo.glow(preset="mnist-tiny", steps=4, hidden=16)
    with pytest.raises(ValueError, match=r"same coupling width"):
        grow.deepen_glow(old, wrong_width, sample=x[:2])
    fresh = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8)
    with pytest.raises(ValueError, match=r"never initialised"):
        grow.deepen_glow(fresh, tfflows.zoo.glow(preset="mnist-tiny", steps=4, hidden=8), sample=x[:2])
    with pytest.raises(ValueError, match=r"has no Glow steps"):
        grow.deepen_glow(tfflows.zoo.realnvp(preset="mnist-tiny"), wrong_depth, sample=x[:2])


def test_grow_command_writes_weights_that_tfflows_train_can_start_from(tmp_path, capsys):
    src, x = _trained_like(steps=4, hidden=32)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)
    out = str(tmp_path / "grown.weights.h5")
    grow.main(["--preset", "mnist-tiny", "--from", src_path, "--out", out, "--limit", "50"])
    printed = capsys.readouterr().out
    assert "K=4" in printed and "K=8" in printed
    diff = float(printed.split("largest per-image difference ")[1].split()[0])
    assert diff < 1e-3
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=8)
    new.log_prob(x[:2])
    new.load_weights(out)
    np.testing.assert_allclose(to_np(new.log_prob(x)), to_np(src.log_prob(x)), rtol=1e-5, atol=1e-2)


def test_grow_command_deepens_to_a_given_depth(tmp_path, capsys):
    src, x = _trained_like(steps=4, hidden=32)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)
    out = str(tmp_path / "grown.weights.h5")
    grow.main(["--preset", "mnist-tiny", "--from", src_path, "--deepen", "6", "--out", out, "--limit", "50"])
    assert "K=6" in capsys.readouterr().out
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=6)
    new.log_prob(x[:2])
    new.load_weights(out)
    np.testing.assert_allclose(to_np(new.log_prob(x)), to_np(src.log_prob(x)), rtol=1e-5, atol=1e-2)
    for bad in ("4", "9"):
        with pytest.raises(SystemExit, match=r"--deepen %s must be more than the source's K=4 and at most 8" % bad):
            grow.main(["--preset", "mnist-tiny", "--from", src_path, "--deepen", bad, "--out", out])
    with pytest.raises(SystemExit, match=r"not both"):
        grow.main(["--preset", "mnist-tiny", "--from", src_path, "--deepen", "6", "--widen", "64", "--out", out])


@pytest.mark.parametrize("lu,preprocess", [(True, "logit"), (False, "center")])
def test_widened_glow_has_wider_nets_and_the_same_density(lu, preprocess):
    old, x = _trained_like(lu=lu, preprocess=preprocess)
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=20, preprocess=preprocess, lu=lu)
    grow.widen_glow(old, new, sample=x[:2])
    couplings = [l for l in new.flow.flow_layers if type(l).__name__ == "AffineCoupling"]
    assert couplings and all(c.hidden == 20 for c in couplings)
    assert new.count_params() > old.count_params()
    np.testing.assert_allclose(to_np(new.log_prob(x)), to_np(old.log_prob(x)), rtol=1e-6, atol=1e-3)
    z = old.encode(x)
    np.testing.assert_allclose(to_np(new.encode(x)), to_np(z), atol=1e-4)
    assert not new.needs_initialization


def test_widened_glow_trains_its_new_units():
    old, x = _trained_like()
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=16)
    grow.widen_glow(old, new, sample=x[:2])
    coupling = next(l for l in new.flow.flow_layers if type(l).__name__ == "AffineCoupling")
    assert not np.any(to_np(coupling.net.conv3.kernel)[..., 8:, :])  # new units unread at the start
    new.compile(optimizer=tfflows.default_optimizer(1e-3, dims=new.dims))
    before = float(np.mean(to_np(new.bits_per_dim(x))))
    new.fit(x, epochs=5, batch_size=16, verbose=0)
    after = float(np.mean(to_np(new.bits_per_dim(x))))
    assert np.isfinite(after) and after < before
    assert np.any(to_np(coupling.net.conv3.kernel)[..., 8:, :]), "the new units never reached the output"


def test_widen_glow_rejects_models_it_cannot_map():
    old, x = _trained_like()
    with pytest.raises(ValueError, match=r"narrow from 8 to 4"):
        grow.widen_glow(old, tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=4), sample=x[:2])
    with pytest.raises(ValueError, match=r"same levels and steps"):
        grow.widen_glow(old, tfflows.zoo.glow(preset="mnist-tiny", steps=3, hidden=16), sample=x[:2])
    with pytest.raises(ValueError, match=r"differ beyond width"):
        grow.widen_glow(old, tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=16, lu=False,
                                              preprocess="center", learned_prior=False), sample=x[:2])


def test_grow_command_widens(tmp_path, capsys):
    src, x = _trained_like(steps=2, hidden=8)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)
    out = str(tmp_path / "wide.weights.h5")
    with pytest.raises(SystemExit, match=r"--widen 8 must exceed the source width 8"):
        grow.main(["--preset", "mnist-tiny", "--steps", "2", "--hidden", "8", "--from", src_path,
                   "--widen", "8", "--out", out])
    grow.main(["--preset", "mnist-tiny", "--steps", "2", "--hidden", "8", "--from", src_path,
               "--widen", "12", "--out", out, "--limit", "50"])
    printed = capsys.readouterr().out
    assert "K=2 hidden=8" in printed and "K=2 hidden=12" in printed and "--hidden 12" in printed
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=12)
    new.log_prob(x[:2])
    new.load_weights(out)
    np.testing.assert_allclose(to_np(new.log_prob(x)), to_np(src.log_prob(x)), rtol=1e-6, atol=1e-3)


def test_glow_takes_one_coupling_width_per_level():
    model = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=[12, 8])
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    model.log_prob(x)
    widths = {l.name: l.hidden for l in model.flow.flow_layers if type(l).__name__ == "AffineCoupling"}
    assert widths == {"coupling0_0": 12, "coupling0_1": 12, "coupling1_0": 8, "coupling1_1": 8}
    uniform = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8)
    uniform.log_prob(x)
    assert model.count_params() > uniform.count_params()
    with pytest.raises(ValueError, match=r"gives 3 widths for levels=2"):
        tfflows.zoo.glow(preset="mnist-tiny", hidden=[8, 8, 8])
    for bad in ([8, 0], [8, 2.5], [8, True], "8"):
        with pytest.raises(ValueError, match=r"hidden must be a positive int or a list of them"):
            tfflows.zoo.glow(preset="mnist-tiny", hidden=bad)


def test_widening_one_level_keeps_the_density_and_the_other_level():
    old, x = _trained_like()
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=[20, 8])
    grow.widen_glow(old, new, sample=x[:2])
    np.testing.assert_allclose(to_np(new.log_prob(x)), to_np(old.log_prob(x)), rtol=1e-6, atol=1e-3)
    old_layers = {l.name: l for l in old.flow.flow_layers}
    for layer in new.flow.flow_layers:
        if layer.name.startswith("coupling1_"):  # the narrow level is copied as is
            for a, b in zip(layer.get_weights(), old_layers[layer.name].get_weights()):
                np.testing.assert_array_equal(a, b)
        elif layer.name.startswith("coupling0_"):
            assert layer.hidden == 20


def test_grow_command_widens_one_level(tmp_path, capsys):
    src, x = _trained_like(steps=2, hidden=8)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)
    out = str(tmp_path / "wide.weights.h5")
    base = ["--preset", "mnist-tiny", "--steps", "2", "--hidden", "8", "--from", src_path, "--out", out]
    for bad, why in (("8,8", r"must exceed the source width 8"), ("12,4", r"narrow none"),
                     ("12,8,8", r"gives 3 widths for levels=2")):
        with pytest.raises(SystemExit, match=why):
            grow.main(base + ["--widen", bad])
    with pytest.raises(SystemExit):  # argparse: not a width
        grow.main(base + ["--widen", "12,x"])
    grow.main(base + ["--widen", "12,8", "--limit", "50"])
    printed = capsys.readouterr().out
    assert "hidden=12,8" in printed and "--arch 'hidden=(12,8)'" in printed
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=[12, 8])
    new.log_prob(x[:2])
    new.load_weights(out)
    np.testing.assert_allclose(to_np(new.log_prob(x)), to_np(src.log_prob(x)), rtol=1e-6, atol=1e-3)


def test_grow_command_is_seeded_the_same_command_writes_the_same_file(tmp_path):
    import h5py

    src, _ = _trained_like(steps=2, hidden=8)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)

    def grown(name, *extra):
        out = str(tmp_path / name)
        grow.main(["--preset", "mnist-tiny", "--steps", "2", "--hidden", "8", "--from", src_path, "--out", out,
                   "--widen", "12", "--limit", "20", *extra])
        arrays = []
        with h5py.File(out, "r") as f:
            f.visititems(lambda n, o: arrays.append(np.asarray(o)) if isinstance(o, h5py.Dataset) else None)
        return arrays

    a, b, c = grown("a.weights.h5"), grown("b.weights.h5"), grown("c.weights.h5", "--seed", "1")
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, w) for u, w in zip(a, c))  # the new units' init follows the seed


def test_add_dequantizer_keeps_the_flow_and_starts_near_the_uniform_bound():
    old, x = _trained_like()
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8, dequantize="variational")
    pixels = np.floor(x * 256).astype("uint8")
    grow.add_dequantizer(old, new, sample=pixels[:2])
    z, log_det = new.flow.forward(x)
    np.testing.assert_allclose(to_np(new.base.log_prob(z) + log_det), to_np(old.log_prob(x)), rtol=1e-6, atol=1e-3)
    uniform = old.dequantized_bound(pixels, draws=64, seed=0)
    learned = new.dequantized_bound(pixels, draws=64, seed=0)
    # KL(q || U) = 0.0100 nats per dimension at init: 0.0144 bits/dim more, up to how p varies in a bin.
    assert abs(learned.mean() - uniform.mean() - 0.0144) < 0.006, (learned.mean(), uniform.mean())
    with pytest.raises(ValueError, match="without a dequantizer into one with"):
        grow.add_dequantizer(new, old)


def test_grow_command_adds_a_dequantizer(tmp_path, capsys):
    src, x = _trained_like(steps=2, hidden=8)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)
    out = str(tmp_path / "vd.weights.h5")
    grow.main(["--preset", "mnist-tiny", "--steps", "2", "--hidden", "8", "--from", src_path,
               "--dequantize", "variational", "--out", out, "--limit", "20"])
    assert "largest difference" in capsys.readouterr().out
    new = tfflows.zoo.glow(preset="mnist-tiny", steps=2, hidden=8, dequantize="variational")
    new.log_prob(np.zeros((2, 28, 28, 1), "uint8"))
    new.load_weights(out)
    z, log_det = new.flow.forward(x)
    np.testing.assert_allclose(to_np(new.base.log_prob(z) + log_det), to_np(src.log_prob(x)), rtol=1e-6, atol=1e-3)
    with pytest.raises(SystemExit, match="--dequantize alone"):
        grow.main(["--preset", "mnist-tiny", "--from", src_path, "--dequantize", "variational", "--deepen", "3",
                   "--out", out])


@pytest.mark.parametrize("name", ["realnvp", "nice"])
def test_grow_command_adds_a_dequantizer_to_realnvp_and_nice(name, tmp_path, capsys):
    """`--model realnvp|nice --dequantize variational`: the same flow and prior
    with a fresh dequantizer (uint8 in, a finite bound out, near the
    uniform-noise one); deepening them is refused."""
    build = tfflows.zoo.builders.BUILDERS[name]
    src = build(preset="mnist-tiny")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1)).astype("uint8")
    x = (pixels.astype("float32") + 0.5) / 256.0
    src.initialize(x)
    src_path = str(tmp_path / "src.weights.h5")
    training.save_inference_weights(src, src_path)
    out = str(tmp_path / "vd.weights.h5")
    grow.main(["--model", name, "--preset", "mnist-tiny", "--from", src_path, "--dequantize", "variational",
               "--out", out, "--limit", "20"])
    printed = capsys.readouterr().out
    assert "largest difference" in printed and f"--model {name} " in printed
    new = build(preset="mnist-tiny", dequantize="variational")
    assert new.dequantizer is not None
    new.log_prob(pixels[:2])
    new.load_weights(out)
    z, log_det = new.flow.forward(x)
    np.testing.assert_allclose(to_np(new.base.log_prob(z) + log_det), to_np(src.log_prob(x)), rtol=1e-6, atol=1e-3)
    uniform = src.dequantized_bound(pixels, draws=16, seed=0)
    learned = new.dequantized_bound(pixels, draws=16, seed=0)
    assert np.all(np.isfinite(learned)) and abs(learned.mean() - uniform.mean()) < 0.05
    with pytest.raises(SystemExit, match="takes --dequantize variational only"):
        grow.main(["--model", name, "--preset", "mnist-tiny", "--from", src_path, "--deepen", "3", "--out", out])
