"""How many samples look like digits: a small MNIST classifier and the
share of samples it recognises with confidence.

A sample counts as *recognisable* when the classifier's top-class
probability is at least `threshold` (0.9 by default). It is a coarse,
reproducible stand-in for "does this look like a digit?", used for the main
job's samples and the zoo's models (README, model cards); it is not a
sample-quality metric from the literature (FID/IS need a reference network
this package cannot download).

>>> import numpy as np
>>> fraction_recognisable(np.array([[0.95, 0.05], [0.6, 0.4]]))
0.5
"""

import keras
import numpy as np


def train_digit_classifier(images, labels, epochs=3, batch_size=128, seed=0, verbose=0):
    """A small CNN on 28x28x1 digits: conv 32 -> pool -> conv 64 -> pool ->
    dense 128 -> softmax 10, trained with Adam.

    Args:
        images: uint8 `(N, 28, 28)` or `(N, 28, 28, 1)`, or floats in [0, 1].
        labels: integer classes `(N,)`.

    Returns:
        The trained `keras.Model` (probabilities out).
    """
    x = _as_unit(images)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digit_classifier")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, np.asarray(labels, dtype="int32"), epochs=epochs, batch_size=batch_size, verbose=verbose)
    return model


def _as_unit(images):
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype == np.uint8:
        x = x.astype("float32") / 255.0
    x = np.clip(np.asarray(x, dtype="float32"), 0.0, 1.0)
    if x.shape[1:] != (28, 28, 1):
        raise ValueError(f"the digit classifier takes 28x28x1 images, got shape {x.shape}.")
    return x


def classifier_accuracy(classifier, images, labels):
    """Top-1 accuracy of `classifier` on `images` (uint8 or [0, 1])."""
    probs = np.asarray(classifier.predict(_as_unit(images), verbose=0))
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def fraction_recognisable(probabilities, threshold=0.9):
    """The share of rows of `probabilities` `(N, classes)` whose top class
    has probability at least `threshold`."""
    p = np.asarray(probabilities)
    if p.ndim != 2 or not len(p):
        raise ValueError(f"fraction_recognisable takes (N, classes) probabilities, got shape {p.shape}.")
    return float(np.mean(p.max(axis=1) >= threshold))


def recognisable(classifier, samples, threshold=0.9):
    """`(fraction, counts per class)` of `samples` (floats, clipped to [0, 1])
    that `classifier` recognises with confidence `>= threshold`."""
    report = recognisable_report(classifier, samples, threshold)
    return report["recognisable"], report["counts"]


def recognisable_report(classifier, samples, threshold=0.9, labels=None):
    """`recognisable`'s figures as a dict (`recognisable`, `counts`), from one
    pass of `classifier`; with `labels` (the class each sample was drawn
    for, from a class-conditional model) also `recognised_as_asked`, the
    share of the recognised samples whose top class is their label."""
    probs = np.asarray(classifier.predict(_as_unit(samples), verbose=0))
    confident = probs.max(axis=1) >= threshold
    top = np.argmax(probs, axis=1)
    out = {"recognisable": fraction_recognisable(probs, threshold),
           "counts": np.bincount(top[confident], minlength=probs.shape[1]).tolist()}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(probs),):
            raise ValueError(f"recognisable_report needs one label per sample: {len(probs)} samples, labels of "
                             f"shape {labels.shape}.")
        out["recognised_as_asked"] = float(np.mean(top[confident] == labels[confident])) if confident.any() else 0.0
    return out
