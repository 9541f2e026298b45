"""Anomaly detection with flows. FastFlow: unsupervised anomaly detection
and localisation with 2-D flows on a frozen backbone's feature maps (Yu et
al. 2021, https://arxiv.org/abs/2111.07677).

For each feature scale `s` of a backbone, a flow `f_s` maps the feature map
`u_s = phi_s(x)`, `(h_s, w_s, c_s)`, to a latent `z_s` of the same shape,
trained on normal images only by maximum likelihood,
`log p(u_s) = log N(z_s; 0, I) + log|det d z_s / d u_s|`.
Each flow step is ActNorm then an affine coupling over channels whose net
(`layers.ConvNet`: conv, ReLU, 1x1 conv, ReLU, conv) has 3x3 outer kernels
in even steps and 1x1 ones in odd steps (the paper's alternation of 3x3
and 1x1 subnets, as in anomalib's `torch_model.py`, whose subnets are two
convolutions), with a bounded (clamped) log-scale `g * tanh(h)`; the
transformed half alternates.

The anomaly map, per position of each scale, is by default anomalib's
`-exp(-0.5 mean_c z^2)` (`map_kind="probability"`: the latent's density
there, without the log-det), or `-log p` itself (`"nll"`):
`0.5 |z|^2 + 0.5 c log(2 pi)` minus that position's log-det
(`FlowLayer.forward_local`: the determinant factors over positions), in
nats per dimension. The default follows measurement:
on one-class MNIST the log-det of ReLU features (exact zeros, on which the
density grows without bound) drowns the latent's signal (docs/apps.md).
Each scale's map is bilinearly upsampled to the image and the maps are
averaged over the scales. An image's score is the map's maximum
(`reduce="max"`, anomalib's choice) or mean. Higher means more anomalous.

    ff = tfflows.apps.fastflow(backbone=None)   # the MNIST CNN shipped with tfflows
    ff.fit(normal_images, epochs=10)            # floats in [0, 1), (N, 28, 28, 1)
    scores = ff.score(images)                   # (N,)
    maps = ff.anomaly_map(images)               # (N, 28, 28)

`backbone` may be any `keras.Model` from images to one feature map or a
list of them, `(batch, h, w, c)` each (e.g. `keras.applications` models
with the user's own weights, cut at the stages to use); it is frozen.
"""

import math
import os

import keras
import numpy as np
from keras import ops

from tfflows import layers as L
from tfflows.models import FlowModel

__all__ = ["FastFlow", "fastflow", "mnist_backbone", "train_mnist_backbone", "synthetic_defects", "reduce_map",
           "BACKBONE_FILE"]

#: The shipped MNIST backbone's weights, in `tfflows/zoo/weights/`, and their sha256.
BACKBONE_FILE = "fastflow-backbone-mnist.weights.h5"
BACKBONE_SHA256 = "0a4c9ed119948ec31267f271fc7719c02b9bb6553d716f38a2c904c874e5c5f4"
MIN_FEATURE_SIZE = 2
#: Anomaly maps: anomalib's `-exp(-0.5 mean_c z^2)`, or `-log p` per position.
MAP_KINDS = ("probability", "nll")


def _backbone_layers():
    kl = keras.layers
    return dict(
        conv1=kl.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        conv2=kl.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        pool1=kl.MaxPooling2D(name="pool1"),
        conv3=kl.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        pool2=kl.MaxPooling2D(name="pool2"),
    )


def _features_model(parts):
    inputs = keras.Input((28, 28, 1), name="image")
    f0 = parts["conv2"](parts["conv1"](inputs))
    f1 = parts["pool1"](f0)
    f2 = parts["pool2"](parts["conv3"](f1))
    return keras.Model(inputs, [f0, f1, f2], name="fastflow_mnist_backbone")


def mnist_backbone(pretrained=True, weights_dir=None):
    """The small CNN shipped for FastFlow on MNIST-sized images
    `(28, 28, 1)` in `[0, 1)`: conv3x3(32)-conv3x3(32) gives the
    `(28, 28, 32)` map, a maxpool the `(14, 14, 32)` one, conv3x3(64)-maxpool
    the `(7, 7, 64)` one (three scales, finest first). The
    shipped weights are those of an MNIST digit classifier built on it
    (`train_mnist_backbone`; it saw all ten classes with their labels, see
    docs/apps.md), checked by sha256 before use. `pretrained=False` gives
    the same network with random (seeded by Keras) weights."""
    model = _features_model(_backbone_layers())
    if pretrained:
        from tfflows.zoo.presets import WEIGHTS_DIR, WeightsError, sha256_file

        path = os.path.join(weights_dir or WEIGHTS_DIR, BACKBONE_FILE)
        if not os.path.exists(path):
            raise WeightsError(f"FastFlow backbone weights {path} are missing; reinstall tfflows.")
        digest = sha256_file(path)
        if digest != BACKBONE_SHA256:
            raise WeightsError(f"FastFlow backbone weights {path} failed their sha256 check (expected "
                               f"{BACKBONE_SHA256}, got {digest}): the file is corrupted or was modified; "
                               f"refusing to load it. Reinstall tfflows.")
        model.load_weights(path)
    model.trainable = False
    return model


def train_mnist_backbone(images, labels, epochs=2, batch_size=128, seed=0, verbose=0):
    """Trains the backbone of `mnist_backbone` as a digit classifier
    (the last map flattened into a 10-way softmax) on
    `images` `(N, 28, 28, 1)` in `[0, 1)` and `labels`; returns
    `(features_model, classifier)`. How the shipped weights were made
    (`benchmarks/fastflow_mnist.py --train-backbone`)."""
    keras.utils.set_random_seed(seed)
    parts = _backbone_layers()
    features = _features_model(parts)
    inputs = keras.Input((28, 28, 1))
    f2 = features(inputs)[-1]
    h = keras.layers.Flatten()(f2)
    out = keras.layers.Dense(10, activation="softmax")(h)
    classifier = keras.Model(inputs, out)
    classifier.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    classifier.fit(np.asarray(images, "float32"), np.asarray(labels), epochs=epochs, batch_size=batch_size,
                   verbose=verbose)
    features.trainable = False
    return features, classifier


def _flow(shape, steps, hidden_ratio, name):
    _, _, c = shape
    hidden = max(1, int(round(hidden_ratio * c)))
    out = 2 * (c - c // 2)  # shift and raw scale of the transformed half (the larger one when c is odd)
    layers = []
    for k in range(steps):
        kernel = 3 if k % 2 == 0 else 1
        layers += [
            L.ActNorm(name=f"{name}_actnorm{k}"),
            L.AffineCoupling(mask="channel", reverse=bool(k % 2), scale="exp",
                             net=L.ConvNet(hidden, out if k % 2 == 0 else 2 * (c // 2),
                                           kernel_sizes=(kernel, 1, kernel), name=f"{name}_net{k}"),
                             name=f"{name}_coupling{k}"),
        ]
    return L.FlowSequence(layers, name=name)


def _start(rng, lo, hi, size, extent):
    """A square's first row (or column): near the strokes' span [lo, hi], inside the image."""
    first = max(0, min(lo - 2, extent - size))
    last = max(first + 1, min(extent - size + 1, hi - size + 3))
    return int(rng.integers(first, last))


def _defect_region(rng, r0, r1, c0, c1, yy, xx):
    h, w = yy.shape
    if rng.random() < 0.5:
        s = int(rng.integers(4, 8))
        r, c = _start(rng, r0, r1, s, h), _start(rng, c0, c1, s, w)
        return (yy >= r) & (yy < r + s) & (xx >= c) & (xx < c + s)
    length = rng.uniform(8, 16)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(r0, r1 + 1), rng.uniform(c0, c1 + 1)
    dy, dx = np.sin(angle), np.cos(angle)
    along = (yy - cy) * dy + (xx - cx) * dx
    across = np.abs((yy - cy) * dx - (xx - cx) * dy)
    return (np.abs(along) <= length / 2) & (across <= 1.0)


def synthetic_defects(images, seed=0):
    """Synthetic defects with ground truth, for testing localisation on
    digit-like images `(N, H, W, 1)` in [0, 1): each image gets one white
    defect near its strokes (the bounding box of pixels above 0.3): a
    filled square of side 4-7 or a scratch, a 2-pixel-wide line 8-16
    pixels long at a random angle, redrawn until it changes at least 4
    pixels. Returns `(defective, masks)`, the masks `(N, H, W)` bool where
    a pixel changed by more than 0.1 (a defect over white strokes changes
    nothing there and is not in the mask)."""
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"synthetic_defects takes grey images (N, H, W, 1); got shape {images.shape}.")
    rng = np.random.default_rng(seed)
    out = images.copy()
    n, h, w, _ = images.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        rows, cols = np.nonzero(images[i, ..., 0] > 0.3)
        r0, r1 = (rows.min(), rows.max()) if len(rows) else (4, 23)
        c0, c1 = (cols.min(), cols.max()) if len(cols) else (4, 23)
        for _ in range(100):  # redraw a defect that would change fewer than 4 pixels
            region = _defect_region(rng, r0, r1, c0, c1, yy, xx)
            if np.count_nonzero(region & (images[i, ..., 0] < 0.8)) >= 4:
                break
        out[i, region, 0] = np.maximum(out[i, region, 0], 0.9 + 0.0999 * rng.random(int(region.sum())))
    masks = np.abs(out - images)[..., 0] > 0.1
    return out, masks



class FastFlow:
    """FastFlow on a frozen backbone: one 2-D flow per feature map.

    Args:
        backbone: a `keras.Model` from images to one feature map or a list
            of them, each `(batch, h, w, c)` with `h, w >= 2` and `c >= 2`.
        steps: flow steps per scale (ActNorm + coupling). Defaults to 8,
            the paper's for ResNet backbones.
        hidden_ratio: coupling-net width as a multiple of the channels.
            Defaults to 1.0 (the paper's for ResNet-18).
        map_kind: the default anomaly map: `"probability"` (anomalib's
            `-exp(-0.5 mean_c z^2)` per position, the default) or `"nll"`
            (`-log p` per position, nats per dimension). See `scale_maps`.

    The coupling nets' initial weights follow Keras' global seed at
    construction (`keras.utils.set_random_seed` before building, for
    reproducible runs); `fit(seed=...)` seeds the batches and noise.

    Raises:
        ValueError: a backbone without a fixed image input shape, or with a
            feature map that is not `(batch, h, w, c)`, smaller than 2x2,
            or with fewer than 2 channels.
    """

    def __init__(self, backbone, steps=8, hidden_ratio=1.0, map_kind="probability"):
        if not isinstance(backbone, keras.Model):
            raise TypeError(f"FastFlow backbone must be a keras.Model, got {type(backbone).__name__}.")
        if int(steps) < 1:
            raise ValueError(f"FastFlow steps must be a positive int. Received: steps={steps!r}")
        if not hidden_ratio > 0:
            raise ValueError(f"FastFlow hidden_ratio must be positive. Received: hidden_ratio={hidden_ratio!r}")
        shape = tuple(backbone.inputs[0].shape[1:]) if backbone.inputs else None
        if not shape or any(d is None for d in shape) or len(shape) != 3:
            raise ValueError(f"FastFlow needs a backbone with a fixed image input (H, W, C); "
                             f"{backbone.name} takes {shape}.")
        self.backbone = backbone
        self.backbone.trainable = False
        self.image_shape = shape
        outputs = backbone.outputs if isinstance(backbone.outputs, (list, tuple)) else [backbone.outputs]
        self.feature_shapes = []
        for i, out in enumerate(outputs):
            fshape = tuple(out.shape[1:])
            if len(fshape) != 3:
                raise ValueError(f"FastFlow needs feature maps (batch, h, w, c); backbone output {i} of "
                                 f"{backbone.name} has shape {(None,) + fshape}.")
            h, w, c = fshape
            if h < MIN_FEATURE_SIZE or w < MIN_FEATURE_SIZE:
                raise ValueError(f"FastFlow: backbone output {i} of {backbone.name} is {h}x{w}, too small for "
                                 f"an anomaly map (at least {MIN_FEATURE_SIZE}x{MIN_FEATURE_SIZE}); cut the "
                                 f"backbone at an earlier layer or feed larger images.")
            if c < 2:
                raise ValueError(f"FastFlow: backbone output {i} of {backbone.name} has {c} channel; the "
                                 f"couplings need at least 2.")
            self.feature_shapes.append(fshape)
        self.map_kind = None
        self.map_kind = self._check_kind(map_kind)
        self.steps = int(steps)
        self.hidden_ratio = float(hidden_ratio)
        self.flows = [FlowModel(_flow(s, self.steps, self.hidden_ratio, f"scale{i}"), data_shape=s, n_bits=None,
                                name=f"fastflow_scale{i}") for i, s in enumerate(self.feature_shapes)]
        self._nll_fn = None
        self.history = []

    # -- inputs -----------------------------------------------------------------
    def check_images(self, images, what="images"):
        """Float images `(N, *image_shape)` as float32 numpy, or a clear error."""
        x = np.asarray(images)
        if x.dtype.kind != "f":
            raise TypeError(f"FastFlow takes float {what} in [0, 1) (uint8 / 256), got dtype {x.dtype}.")
        if x.ndim == len(self.image_shape) + 1 and x.shape[0] == 0:
            raise ValueError(f"FastFlow got an empty batch of {what}.")
        if x.shape[1:] != self.image_shape:
            raise ValueError(f"FastFlow's backbone takes {what} of shape (N, {', '.join(map(str, self.image_shape))}); "
                             f"got {x.shape}. Resize the images to the backbone's input size.")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"FastFlow got NaN or infinite values in its {what}.")
        return x.astype("float32")

    def features(self, images, batch_size=256):
        """The backbone's feature maps of `images`: a list of numpy arrays."""
        x = self.check_images(images)
        parts = [[] for _ in self.feature_shapes]
        for i in range(0, len(x), batch_size):
            out = self.backbone(x[i:i + batch_size], training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            for p, o in zip(parts, out):
                p.append(np.asarray(ops.convert_to_numpy(o), dtype="float32"))
        return [np.concatenate(p) for p in parts]

    # -- training -----------------------------------------------------------------
    def fit(self, images, epochs=10, batch_size=32, learning_rate=1e-3, noise=0.0, verbose=0, seed=0):
        """Trains every scale's flow by maximum likelihood on the features of
        `images` (normal examples only) with Adam; the backbone stays frozen.

        `noise`: Gaussian noise added to the training features, fresh each
        epoch, with a standard deviation of `noise` times the feature map's
        own (ReLU features hold exact zeros, on which a flow's density can
        grow without bound; noise bounds it, as dequantization does for
        pixels). Defaults to 0 (off, as in the paper): on one-class MNIST
        0.05 and 0.3 lowered the AUROC (docs/apps.md). Returns `self`; `self.history` holds each
        scale's per-epoch mean negative log-likelihood (nats per map)."""
        from tfflows.optimizers import Adam

        if not noise >= 0:
            raise ValueError(f"FastFlow fit noise must be >= 0. Received: noise={noise!r}")
        feats = self.features(images)
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        self.history = []
        for flow, f in zip(self.flows, feats):
            flow.compile(optimizer=Adam(learning_rate=learning_rate))
            sigma = float(noise) * float(f.std())
            losses = []
            for _ in range(int(epochs)):
                x = f + sigma * rng.standard_normal(f.shape, dtype=np.float32) if sigma > 0 else f
                hist = flow.fit(x, epochs=1, batch_size=batch_size, shuffle=True, verbose=verbose)
                losses.append(float(hist.history["loss"][-1]))
                if not np.isfinite(losses[-1]):
                    raise FloatingPointError(f"FastFlow: training {flow.name} diverged (loss {losses[-1]}); "
                                             f"try a smaller learning_rate or a larger noise.")
            self.history.append(losses)
        self._nll_fn = None  # weights changed
        return self

    # -- scores -----------------------------------------------------------------------
    def _local_maps(self, flow, f):
        # Per position: -log p in nats per dimension, and the latent's mean square.
        z, log_det_map = flow.flow.forward_local(f)
        c = f.shape[-1]
        square = ops.sum(ops.square(z), axis=-1)
        nll = (0.5 * square + 0.5 * c * math.log(2 * math.pi) - log_det_map) / c
        return ops.stack([nll, square / c], axis=-1)

    def _compiled_maps(self):
        if self._nll_fn is None:
            from tfflows.apps._grad import compiled

            self._nll_fn = [compiled(lambda f, flow=flow: self._local_maps(flow, f)) for flow in self.flows]
        return self._nll_fn

    def _check_kind(self, kind):
        kind = self.map_kind if kind is None else kind
        if kind not in MAP_KINDS:
            raise ValueError(f"FastFlow map kind must be one of {MAP_KINDS}. Received: {kind!r}")
        return kind

    def scale_maps(self, images, kind=None, batch_size=256):
        """Each scale's map at the feature map's own resolution: a list of
        `(N, h, w)` numpy arrays, higher meaning more anomalous. `kind`
        (default: the model's `map_kind`): `"probability"`,
        `-exp(-0.5 mean_c z^2)` (anomalib's), or `"nll"`, `-log p` per
        position in nats per dimension (the log-det included)."""
        kind = self._check_kind(kind)
        if any(flow.needs_initialization for flow in self.flows):
            raise ValueError("FastFlow has not been trained: call fit(normal_images) first.")
        feats = self.features(images, batch_size)
        out = []
        for fn, f in zip(self._compiled_maps(), feats):
            both = np.concatenate([_padded(fn, f[i:i + batch_size], batch_size) for i in range(0, len(f), batch_size)])
            out.append(both[..., 0] if kind == "nll" else -np.exp(-0.5 * both[..., 1]))
        return out

    def combine(self, maps, scales=None):
        """The scale maps (from `scale_maps`), bilinearly upsampled to the
        image and averaged over `scales` (indices; default all): `(N, H, W)`."""
        scales = range(len(maps)) if scales is None else scales
        h, w = self.image_shape[:2]
        up = []
        for i in scales:
            if not 0 <= int(i) < len(maps):
                raise ValueError(f"FastFlow has scales 0..{len(maps) - 1}; got scale {i}.")
            m = ops.image.resize(np.asarray(maps[i], "float32")[..., None], (h, w), interpolation="bilinear")
            up.append(np.asarray(ops.convert_to_numpy(m))[..., 0])
        if not up:
            raise ValueError("FastFlow combine needs at least one scale.")
        return np.mean(up, axis=0)

    def anomaly_map(self, images, kind=None, scales=None, batch_size=256):
        """`(N, H, W)`: each scale's map (see `scale_maps`) bilinearly
        upsampled to the image, averaged over `scales` (default all).
        Higher means more anomalous."""
        return self.combine(self.scale_maps(images, kind, batch_size), scales)

    def score(self, images, reduce="max", kind=None, scales=None, batch_size=256):
        """One anomaly score per image, from its map: its maximum
        (`reduce="max"`, anomalib's) or mean (`"mean"`); higher means more
        anomalous."""
        return reduce_map(self.anomaly_map(images, kind, scales, batch_size), reduce)


def _padded(fn, batch, size):
    """`fn(batch)` with a short last batch padded to `size` (one trace per scale)."""
    n = len(batch)
    if n >= size:
        return fn(batch)
    pad = np.concatenate([batch, np.repeat(batch[-1:], size - n, axis=0)])
    return fn(pad)[:n]


def reduce_map(maps, reduce="max"):
    """Image scores from anomaly maps `(N, H, W)`: per-image max or mean."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"FastFlow score reduce must be 'max' or 'mean'. Received: reduce={reduce!r}")
    flat = np.asarray(maps).reshape(len(maps), -1)
    return flat.max(axis=1) if reduce == "max" else flat.mean(axis=1)


def fastflow(backbone=None, steps=8, hidden_ratio=1.0, map_kind="probability"):
    """A `FastFlow` on `backbone`, or on the MNIST CNN shipped with tfflows
    (`mnist_backbone()`, images `(28, 28, 1)`) when `backbone` is None."""
    return FastFlow(mnist_backbone() if backbone is None else backbone, steps=steps, hidden_ratio=hidden_ratio,
                    map_kind=map_kind)
