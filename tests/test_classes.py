"""Class-conditional Glow (issue #46) and RealNVP: integer labels as the
context, the copy of an unconditional model that keeps its density, the class prior
fitted from latents, the Bayes classifier and per-class samples."""

import keras
import numpy as np
import pytest

import tfflows
from tfflows import apps
from tfflows.zoo.grow import condition_glow


def _images(n, seed=0, bright=None):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.3, size=(n, 8, 8, 1))
    if bright is not None:
        x = x + 0.6 * np.asarray(bright, "float64").reshape(-1, 1, 1, 1)
    return x.astype("float32")


def _tiny(num_classes=2, **kw):
    return tfflows.zoo.glow(preset="mnist-tiny", data_shape=(8, 8, 1), num_classes=num_classes, **kw)


def _trained_pair(seed=0, class_couplings=False):
    labels = np.arange(16) % 2
    x = _images(16, seed, bright=labels)
    old = tfflows.zoo.glow(preset="mnist-tiny", data_shape=(8, 8, 1))
    old.initialize(x)
    rng = np.random.default_rng(seed)
    for v in old.trainable_variables:  # a trained-looking model, not the identity
        v.assign(np.asarray(v.numpy()) + rng.normal(0.0, 0.02, size=v.shape).astype("float32"))
    new = _tiny(class_couplings=class_couplings)
    return old, condition_glow(old, new), x, labels


@pytest.mark.parametrize("class_couplings", [False, True])
def test_condition_glow_keeps_the_density_for_every_class(class_couplings):
    old, new, x, labels = _trained_pair(class_couplings=class_couplings)
    expected = np.asarray(old.log_prob(x))
    for y in (labels, 1 - labels, np.zeros_like(labels)):
        np.testing.assert_allclose(np.asarray(new.log_prob(x, context=y)), expected, rtol=1e-5, atol=1e-4)
    # The class reaches the density once the conditioning weights move.
    for v in new.base.trainable_variables:
        v.assign(np.random.default_rng(3).normal(0.0, 0.1, size=v.shape).astype("float32"))
    a = np.asarray(new.log_prob(x, context=labels))
    b = np.asarray(new.log_prob(x, context=1 - labels))
    assert np.abs(a - b).max() > 1e-2


def test_class_labels_are_checked():
    new = _tiny(num_classes=3)
    x = _images(4)
    with pytest.raises(ValueError, match=r"classes 0\.\.2; got labels in \[0, 3\]"):
        new.log_prob(x, context=np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"class labels of shape \(batch,\)"):
        new.log_prob(x, context=np.zeros((4, 2), "int32"))
    with pytest.raises(ValueError, match="labels for 3 examples and 4"):
        new.log_prob(x, context=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="needs class labels"):
        new.sample(2)
    with pytest.raises(ValueError, match="integer class labels"):
        new.log_prob(x, context=np.array([0.0, 1.0, 2.0, 1.0]))
    # fit checks every label before Keras sees them, not only the first batch's.
    labels = np.array([0, 1, 2, 1] * 3 + [5])
    with pytest.raises(ValueError, match=r"got labels in \[0, 5\]"):
        new.fit(_images(13), labels, batch_size=4, epochs=1, verbose=0)
    # A compiled function cannot raise on a traced label: the row turns NaN instead of using no class.
    log_prob = new.make_log_prob_function()
    out = np.asarray(log_prob(x, np.array([0, 1, 7, -1], "int32")))
    assert np.all(np.isfinite(out[:2])) and np.all(np.isnan(out[2:]))
    unconditional = tfflows.zoo.glow(preset="mnist-tiny", data_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="has no classes"):
        unconditional.log_prob(x, context=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="has no classes"):
        apps.classify(unconditional, x)
    with pytest.raises(ValueError, match="class_couplings=True needs num_classes"):
        tfflows.zoo.glow(preset="mnist-tiny", class_couplings=True)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        tfflows.zoo.glow(preset="mnist-tiny", num_classes=1)
    # A float one-hot (or mixed) row is taken as is: label 2 and its one-hot agree.
    one_hot = np.eye(3, dtype="float32")[[2, 2, 2, 2]]
    np.testing.assert_allclose(np.asarray(new.log_prob(x, context=one_hot)),
                               np.asarray(new.log_prob(x, context=np.full(4, 2))), rtol=1e-6)


def test_fitted_class_prior_raises_the_likelihood_and_classifies():
    old, new, x, labels = _trained_pair()
    before = np.asarray(new.log_prob(x, context=labels)).mean()
    mean, log_std = apps.fit_class_prior(new, x, labels)
    assert mean.shape == (2,) + new.latent_shape and log_std.shape == mean.shape
    after = np.asarray(new.log_prob(x, context=labels)).mean()
    # The per-class Gaussian MLE beats N(0, I) (one member of its family) on the data it was fitted to.
    assert after > before + 1.0
    test_labels = np.arange(40) % 2
    x_test = _images(40, seed=9, bright=test_labels)
    assert (apps.classify(new, x_test) == test_labels).mean() >= 0.95
    scores = apps.class_log_probs(new, x_test)
    assert scores.shape == (40, 2) and np.all(np.isfinite(scores))
    # A prior that favours class 0 by a huge margin overrides the likelihood.
    assert np.all(apps.classify(new, x_test, log_prior=[0.0, -1e6]) == 0)
    with pytest.raises(ValueError, match="every class"):
        apps.fit_class_prior(new, x[labels == 0], labels[labels == 0])
    with pytest.raises(ValueError, match="one value per class"):
        apps.classify(new, x_test, log_prior=[0.0])


def test_class_conditional_glow_trains_on_labels_and_reloads_identically(tmp_path):
    _, new, x, labels = _trained_pair()
    new.compile(optimizer=tfflows.optimizers.Adam(learning_rate=3e-3))
    history = new.fit(x, labels, batch_size=8, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    path = str(tmp_path / "classes.keras")
    new.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.num_classes == 2
    np.testing.assert_allclose(np.asarray(loaded.log_prob(x, context=labels)),
                               np.asarray(new.log_prob(x, context=labels)), rtol=1e-6)


def test_class_samples_come_in_class_order_and_follow_the_class():
    _, new, x, labels = _trained_pair()
    apps.fit_class_prior(new, x, labels)
    samples, sample_labels = apps.class_samples(new, per_class=6, temperature=0.5, seed=1)
    assert samples.shape == (12, 8, 8, 1) and list(sample_labels) == [0] * 6 + [1] * 6
    assert np.all(np.isfinite(samples))
    # Class 1 images are the bright ones: so are its samples.
    assert samples[6:].mean() > samples[:6].mean() + 0.3
    again, _ = apps.class_samples(new, per_class=6, temperature=0.5, seed=1)
    np.testing.assert_array_equal(samples, again)
    with pytest.raises(ValueError, match="per_class"):
        apps.class_samples(new, per_class=0)


def test_class_conditional_realnvp_starts_as_the_unconditional_one_and_learns_the_class(tmp_path):
    """`realnvp(num_classes=K)`: every coupling net and the prior read the
    class. Copied from a trained RealNVP (`condition_glow`), it keeps its
    density for every class; once the couplings' class weights move, the
    class changes the density and the samples; it saves and reloads
    identically, and a vector RealNVP or unshipped weights are refused."""
    labels = np.arange(16) % 2
    x = _images(16, 0, bright=labels)
    old = tfflows.zoo.realnvp(preset="mnist-tiny", data_shape=(8, 8, 1))
    old.initialize(x)
    rng = np.random.default_rng(0)
    for v in old.trainable_variables:
        v.assign(np.asarray(v.numpy()) + rng.normal(0.0, 0.02, size=v.shape).astype("float32"))
    new = condition_glow(old, tfflows.zoo.realnvp(preset="mnist-tiny", data_shape=(8, 8, 1), num_classes=2))
    expected = np.asarray(old.log_prob(x))
    for y in (labels, 1 - labels):
        np.testing.assert_allclose(np.asarray(new.log_prob(x, context=y)), expected, rtol=1e-5, atol=1e-4)
    # The couplings alone (the prior left at N(0, I)) carry the class once their class rows move.
    couplings = [layer for layer in new.flow.flow_layers if "coupling" in layer.name]
    assert couplings and all(layer.context_shape == (2,) for layer in couplings)
    for layer in couplings:
        for v in layer.trainable_variables:
            if len(v.shape) == 4:  # conv kernels: the class's input channels are zero so far
                v.assign(np.asarray(v.numpy()) + rng.normal(0.0, 0.05, size=v.shape).astype("float32"))
    a = np.asarray(new.log_prob(x, context=labels))
    b = np.asarray(new.log_prob(x, context=1 - labels))
    assert np.abs(a - b).max() > 1e-2
    s0 = np.asarray(new.sample(4, context=np.zeros(4, "int32"), temperature=0.7, seed=1))
    s1 = np.asarray(new.sample(4, context=np.ones(4, "int32"), temperature=0.7, seed=1))
    assert np.all(np.isfinite(s0)) and np.abs(s0 - s1).max() > 1e-3
    path = str(tmp_path / "realnvp_classes.keras")
    new.save(path)
    back = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(back.log_prob(x, context=labels)), a)
    with pytest.raises(ValueError, match="num_classes is for images"):
        tfflows.zoo.realnvp(data_shape=(4,), num_classes=2)
    with pytest.raises(tfflows.zoo.WeightsError, match="No class-conditional realnvp 'mnist-tiny' weights ship"):
        tfflows.zoo.realnvp(preset="mnist-tiny", num_classes=10, pretrained=True)
