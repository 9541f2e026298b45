"""Class-conditional flows: a class prior fitted from labelled latents, the
flow as a Bayes classifier, and per-class samples.

A class-conditional flow (`tfflows.zoo.glow(preset="mnist", num_classes=10)`,
openai/glow's y-conditioning, Kingma & Dhariwal 2018, section 5) gives
`log p(x | y)`; with class frequencies `p(y)` Bayes' rule classifies,
`argmax_y log p(x | y) + log p(y)` (the check the conditioning works: a
class prior that ignores `y` scores at chance).

- `fit_class_prior(model, x, labels)`: sets the top prior's per-class mean
  and log-std to the latents' own (the maximum-likelihood Gaussian for the
  flow as it is), a warm start before training the whole model on labels.
- `class_log_probs(model, x)`: `(batch, num_classes)` of `log p(x | y)`.
- `classify(model, x, log_prior=None)`: the Bayes classifier's labels.
- `class_samples(model, per_class, temperature, seed)`: samples and labels,
  `per_class` of each class in class order (a grid's rows).
"""

import numpy as np
from keras import ops

from tfflows.distributions import ConditionalNormal

__all__ = ["fit_class_prior", "class_log_probs", "classify", "class_samples"]


def _classes(model):
    k = getattr(model, "num_classes", None)
    if k is None:
        raise ValueError(f"FlowModel '{model.name}' has no classes (it was built without num_classes); "
                         f"build a class-conditional model, e.g. tfflows.zoo.glow(preset='mnist', "
                         f"num_classes=10).")
    return k


def _batches(n, batch_size):
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def fit_class_prior(model, x, labels, batch_size=256, min_log_std=-5.0):
    """Sets a class-conditional model's top prior (`ConditionalNormal`, one
    dense layer on the one-hot class) to each class's latent mean and
    log-std over `x`, `labels` (every class must occur). The rest of the
    model is left as it is; for a model just made conditional
    (`tfflows.zoo.grow.condition_glow`) the latents are the unconditional
    flow's, so this is the maximum-likelihood class prior for that flow.
    Returns the fitted `(means, log_stds)`, each `(num_classes, *latent_shape)`."""
    k = _classes(model)
    if not isinstance(model.base, ConditionalNormal):
        raise ValueError(f"fit_class_prior sets a ConditionalNormal top prior; FlowModel '{model.name}' has "
                         f"{type(model.base).__name__}.")
    labels = np.asarray(labels)
    x = np.asarray(x)
    if labels.shape != (len(x),):
        raise ValueError(f"fit_class_prior needs one label per example: {len(x)} examples, labels of shape "
                         f"{labels.shape}.")
    missing = sorted(set(range(k)) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(f"fit_class_prior needs examples of every class; none of class(es) {missing}.")
    total = np.zeros((k,) + tuple(model.latent_shape))
    square = np.zeros_like(total)
    count = np.zeros(k)
    model.check_data(x)
    encode = model.make_encode_function()
    for s in _batches(len(x), batch_size):
        z = np.asarray(ops.convert_to_numpy(encode(x[s], labels[s].astype("int32"))), dtype="float64")
        for c in range(k):
            rows = z[labels[s] == c]
            total[c] += rows.sum(0)
            square[c] += np.square(rows).sum(0)
            count[c] += len(rows)
    shape = (k,) + (1,) * len(model.latent_shape)
    mean = total / count.reshape(shape)
    var = np.maximum(square / count.reshape(shape) - np.square(mean), 0.0)
    log_std = np.maximum(0.5 * np.log(np.maximum(var, 1e-30)), min_log_std)
    # The dense layer maps the one-hot class to [mu, log_sigma]; with a zero
    # bias, row c of the kernel is class c's parameters.
    kernel = np.concatenate([mean.reshape(k, -1), log_std.reshape(k, -1)], axis=1)
    dense = model.base.dense
    dense.kernel.assign(kernel.astype("float32"))
    dense.bias.assign(np.zeros(tuple(dense.bias.shape), "float32"))
    return mean, log_std


def class_log_probs(model, x, batch_size=256):
    """`log p(x | y)` in nats for every class: `(batch, num_classes)` numpy."""
    if getattr(model, "dequantizer", None) is not None:
        model.check_continuous_density("apps.class_log_probs")
    k = _classes(model)
    x = np.asarray(model.check_data(np.asarray(x)))
    log_prob = model.make_log_prob_function()
    out = np.zeros((len(x), k))
    for s in _batches(len(x), batch_size):
        for c in range(k):
            labels = np.full(s.stop - s.start, c, dtype="int32")
            out[s, c] = np.asarray(ops.convert_to_numpy(log_prob(x[s], labels)))
    return out


def classify(model, x, log_prior=None, batch_size=256):
    """The Bayes classifier `argmax_y log p(x | y) + log p(y)`: `(batch,)`
    labels. `log_prior` defaults to equal class frequencies."""
    scores = class_log_probs(model, x, batch_size=batch_size)
    if log_prior is not None:
        log_prior = np.asarray(log_prior, dtype="float64")
        if log_prior.shape != (scores.shape[1],):
            raise ValueError(f"classify log_prior needs one value per class ({scores.shape[1]}), got shape "
                             f"{log_prior.shape}.")
        scores = scores + log_prior
    return np.argmax(scores, axis=1)


def class_samples(model, per_class=10, temperature=0.7, seed=0):
    """`(samples, labels)`: `per_class` samples of each class at
    `temperature`, class 0 first (rows of a grid)."""
    k = _classes(model)
    if int(per_class) < 1:
        raise ValueError(f"class_samples per_class must be a positive int. Received: {per_class!r}")
    labels = np.repeat(np.arange(k, dtype="int32"), int(per_class))
    x = model.sample(len(labels), context=labels, temperature=temperature, seed=seed)
    return np.asarray(ops.convert_to_numpy(x)), labels
