"""Every shipped weights file: sha256, loads, and gives the model card's bits/dim."""

import numpy as np
import pytest

import tfflows
from tfflows import training
from tfflows.zoo import builders
from tfflows.zoo import data as zdata

MANIFEST = builders.read_manifest()
# Class-conditional weights (glow / realnvp(..., num_classes=K, pretrained=True)) have their own tests below.
CLASSES = sorted(k for k, e in MANIFEST.items() if "num_classes" in e["architecture"])
# VAEs (tfflows.zoo.vae(preset=..., pretrained=True)) are not bits/dim models; their own test is below.
VAES = sorted(k for k, e in MANIFEST.items() if e["model"] == "vae")
SHIPPED = sorted(set(MANIFEST) - set(CLASSES) - set(VAES))


def test_shipped_weights_fit_the_size_budget():
    manifest = builders.read_manifest()
    sizes = {k: e["size_bytes"] for k, e in manifest.items()}
    assert all(s < 15e6 for s in sizes.values()), sizes
    assert sum(sizes.values()) < 40e6, sizes


@pytest.mark.large
@pytest.mark.parametrize("key", [k if not k.startswith("glow") else pytest.param(k, marks=pytest.mark.slow)
                                 for k in SHIPPED])  # the Glow's 4 draws take 45 s; its 1e-6 check below stays
def test_shipped_model_loads_and_matches_its_card(key):
    entry = builders.read_manifest()[key]
    assert builders.sha256_file(builders.verified_weights_path(key)) == entry["sha256"]
    model = tfflows.zoo.builders.BUILDERS[entry["model"]](preset=entry["preset"], pretrained=True,
                                                           **entry.get("build", {}))
    images = zdata.load_arrays("mnist", "test", limit=500)
    bpd, _, _ = training.evaluate_bpd(model, images, draws=4, seed=1234)
    assert abs(bpd - entry["embedded_test500_bpd"]) < 0.03, (bpd, entry["embedded_test500_bpd"])
    # The full-test figure on the card is consistent with the 500-image one.
    assert abs(entry["test_bpd"] - entry["embedded_test500_bpd"]) < 0.2
    samples = np.asarray(model.sample(4, temperature=0.7, seed=0))
    assert np.all(np.isfinite(samples))


@pytest.mark.large
@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_model_gives_its_recorded_bin_centre_bits_per_dim_to_1e6(key):
    """The shipped file, loaded by today's layers, gives the bits/dim that the
    code it was trained with measured on the 500 embedded test images at bin
    centres (recorded in the presets table when the file shipped, or when the
    layers were rewritten): a redesign of the layers must not move it."""
    entry = builders.read_manifest()[key]
    build = tfflows.zoo.builders.BUILDERS[entry["model"]]
    model = build(preset=entry["preset"], pretrained=True, **entry.get("build", {}))
    if entry.get("dequantize") == "variational":
        # Weights with a learned dequantizer: their flow's density, without it (ship.py records that).
        model = builders.copy_flow_weights(model, build(preset=entry["preset"], dequantize="uniform"))
    images = zdata.load_arrays("mnist", "test", limit=500)
    x = (images.astype("float32") + 0.5) / 256.0
    bpd = np.concatenate([np.asarray(model.bits_per_dim(x[i:i + 100])) for i in range(0, 500, 100)])
    assert abs(float(bpd.astype("float64").mean()) - entry["embedded_test500_centres_bpd"]) < 1e-6


def _class_model(entry):
    """The shipped class-conditional model, built as its users do: `num_classes`
    and `pretrained=True` (Glow's `class_couplings` follows the weights)."""
    model = getattr(tfflows.zoo, entry["model"])(preset=entry["preset"],
                                                 num_classes=entry["architecture"]["num_classes"], pretrained=True)
    assert bool(entry["architecture"].get("class_couplings", entry["model"] == "realnvp")) == all(
        layer.context_shape is not None for layer in model.flow.flow_layers if "coupling" in layer.name)
    return model


@pytest.mark.large
@pytest.mark.parametrize("key", CLASSES)
def test_shipped_class_conditional_model_loads_and_knows_the_classes(key):
    """The default suite's quick check: sha256, and 20 embedded test digits
    classified well above chance (the slow test below holds the card)."""
    from tfflows import apps

    entry = MANIFEST[key]
    model = _class_model(entry)
    with np.load(zdata.EMBEDDED) as f:
        x = (f["x_test"][:20, ..., None].astype("float32") + 0.5) / 256.0
        labels = f["y_test"][:20]
    assert float(np.mean(apps.classify(model, x) == labels)) >= 0.3  # chance: 0.1


@pytest.mark.large
@pytest.mark.slow
@pytest.mark.parametrize("key", CLASSES)
def test_shipped_class_conditional_model_gives_its_card_and_tells_the_classes_apart(key):
    """sha256, the bits/dim given the true label at bin centres on the 500
    embedded test images (to 1e-6, as recorded when it shipped), and the
    Bayes classifier well above chance on 50 of them."""
    from tfflows import apps

    entry = MANIFEST[key]
    assert builders.sha256_file(builders.verified_weights_path(key)) == entry["sha256"]
    model = _class_model(entry)
    with np.load(zdata.EMBEDDED) as f:
        images, labels = f["x_test"][:500, ..., None], f["y_test"][:500].astype("int32")
    x = (images.astype("float32") + 0.5) / 256.0
    bpd = np.concatenate([np.asarray(model.bits_per_dim(x[i:i + 100], context=labels[i:i + 100]))
                          for i in range(0, 500, 100)])
    assert abs(float(bpd.astype("float64").mean()) - entry["embedded_test500_centres_bpd"]) < 1e-6
    accuracy = float(np.mean(apps.classify(model, x[:50]) == labels[:50]))
    assert accuracy >= 0.4, accuracy  # chance is 0.1; the card states the 1,000-image figure
    samples, _ = apps.class_samples(model, per_class=1, seed=0)
    assert np.all(np.isfinite(samples))


@pytest.mark.large
@pytest.mark.parametrize("key", VAES)
def test_shipped_vae_gives_its_recorded_neg_elbo(key):
    """sha256, the -ELBO of the 500 embedded test images (binarized with seed
    0, one draw with seed 0) as recorded when the file shipped, a card
    consistent with it, finite samples in [0, 1], and an architecture
    argument that differs from the shipped one refused."""
    from tfflows.vae import binarize

    entry = MANIFEST[key]
    assert builders.sha256_file(builders.verified_weights_path(key)) == entry["sha256"]
    model = tfflows.zoo.vae(preset=entry["preset"], pretrained=True)
    x = binarize(zdata.load_arrays("mnist", "test", limit=500), seed=0)
    neg_elbo = float(np.mean(model.neg_elbo(x, seed=0)))
    assert abs(neg_elbo - entry["embedded_test500_neg_elbo"]) < 1e-3, (neg_elbo, entry["embedded_test500_neg_elbo"])
    assert abs(neg_elbo - entry["test_neg_elbo"]) < 8.0  # the embedded 500 against the 10k on the card
    assert entry["test_nll"] < entry["test_neg_elbo"]
    probs = np.asarray(model.sample(8, seed=0))
    assert probs.shape == (8, 784) and np.all((probs >= 0) & (probs <= 1))
    with pytest.raises(builders.WeightsError, match="latent_dim"):
        tfflows.zoo.vae(preset=entry["preset"], latent_dim=32, pretrained=True)
