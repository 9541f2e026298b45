"""Channel mixing: invertible 1x1 convolution (plain and LU), permutations."""

import numpy as np
from keras import ops

from tfflows.layers.base import FlowLayer, constant_log_det, event_size, register, zeros_log_det


def _rng(seed):
    """numpy Generator for `seed`; with `seed=None`, one drawn from numpy's
    global state, which `keras.utils.set_random_seed` seeds (so an unseeded
    layer is reproducible under it, as Keras initializers are)."""
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    return np.random.default_rng(seed)


def _random_rotation(c, seed):
    """A random orthogonal `(c, c)` matrix (QR of a Gaussian), numpy."""
    rng = _rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    return (q * np.sign(np.diag(r))).astype("float32")


def lu_decompose(w):
    """`w = p @ l @ u` with partial pivoting; numpy, for small matrices.

    Returns `(p, l, u)`: `p` a permutation matrix, `l` unit lower triangular,
    `u` upper triangular.
    """
    a = np.array(w, dtype="float64")
    n = a.shape[0]
    perm = np.arange(n)
    l = np.eye(n)
    for k in range(n):
        pivot = k + int(np.argmax(np.abs(a[k:, k])))
        if pivot != k:
            a[[k, pivot]] = a[[pivot, k]]
            l[[k, pivot], :k] = l[[pivot, k], :k]
            perm[[k, pivot]] = perm[[pivot, k]]
        for i in range(k + 1, n):
            l[i, k] = a[i, k] / a[k, k]
            a[i, k:] -= l[i, k] * a[k, k:]
    p = np.eye(n)[perm].T
    return p, l, np.triu(a)


def _const(value):
    """A Keras initializer that returns `value` (numpy) in the variable's dtype."""
    def init(shape, dtype=None):
        return np.asarray(value, dtype=dtype or "float32")
    return init


def _matmul_channels(x, w):
    """`y[..., i] = sum_j w[i, j] x[..., j]` for any leading shape."""
    shape = ops.shape(x)
    flat = ops.reshape(x, (-1, x.shape[-1]))
    return ops.reshape(ops.matmul(flat, ops.transpose(w)), shape)


def _positions(x):
    """Positions per example that share one channel mixing: `prod(shape[1:-1])`."""
    return event_size(x.shape[:-1])


@register
class Invertible1x1Conv(FlowLayer):
    """Glow's invertible 1x1 convolution: a learned channel mixing.

    Forward: `y = W x` at every position; log-det `H * W * log|det W|`.
    Inverse: `x = W^-1 y`; log-det the negative.

    With `lu=True` (default), `W = P L (U + diag(sign_s * exp(log_s)))` with
    `P` fixed, `L` unit lower triangular and `U` strictly upper triangular:
    log-det `H * W * sum(log_s)` costs O(C), and the inverse uses two
    triangular solves. With `lu=False`, `W` is a free matrix and the log-det
    uses `slogdet` (O(C^3)). Both start from a random rotation.

    Args:
        lu: use the LU parametrisation. Defaults to `True`.
        seed: seed of the initial rotation. Defaults to `None`: drawn from
            numpy's global state, so `keras.utils.set_random_seed` makes it
            reproducible.

    Input shape: `(batch, ..., C)`; output shape the same.

    References: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039

    >>> import numpy as np
    >>> layer = Invertible1x1Conv(seed=0)
    >>> x = np.random.randn(2, 3, 3, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(layer.inverse(y)[0], x, atol=1e-5))
    True
    """

    input_ranks = (2, 3, 4, 5)
    local_log_det = True

    def __init__(self, lu=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.lu = bool(lu)
        self.seed = seed

    def build(self, input_shape):
        self._check_rank(input_shape)
        c = input_shape[-1]
        w0 = _random_rotation(c, self.seed)
        if not self.lu:
            self.kernel = self.add_weight(shape=(c, c), initializer=_const(w0), name="kernel")
            return
        p, l, u = lu_decompose(w0)
        s = np.diag(u)
        self.permutation = self.add_weight(shape=(c, c), initializer=_const(p), trainable=False, name="permutation")
        self.sign_s = self.add_weight(shape=(c,), initializer=_const(np.sign(s)), trainable=False, name="sign_s")
        self.lower = self.add_weight(shape=(c, c), initializer=_const(np.tril(l, -1)), name="lower")
        self.upper = self.add_weight(shape=(c, c), initializer=_const(np.triu(u, 1)), name="upper")
        self.log_s = self.add_weight(shape=(c,), initializer=_const(np.log(np.abs(s))), name="log_s")
        self._l_mask = ops.convert_to_tensor(np.tril(np.ones((c, c)), -1), dtype=self.variable_dtype)
        self._eye = ops.convert_to_tensor(np.eye(c), dtype=self.variable_dtype)

    def _lu_factors(self):
        l = self.lower * self._l_mask + self._eye
        u = self.upper * ops.transpose(self._l_mask) + ops.diag(self.sign_s * ops.exp(self.log_s))
        return l, u

    def weight(self):
        """The `(C, C)` mixing matrix `W`."""
        if not self.lu:
            return self.kernel
        l, u = self._lu_factors()
        return ops.matmul(self.permutation, ops.matmul(l, u))

    def inverse_weight(self):
        """`W^-1`, via triangular solves for the LU form."""
        if not self.lu:
            return ops.inv(self.kernel)
        l, u = self._lu_factors()
        l_inv_pt = ops.solve_triangular(l, ops.transpose(self.permutation), lower=True)
        return ops.solve_triangular(u, l_inv_pt, lower=False)

    def _log_abs_det(self):
        if self.lu:
            return ops.sum(self.log_s)
        return ops.slogdet(self.kernel)[1]

    def _forward(self, x, context=None, training=False):
        ld = _positions(x) * self._log_abs_det()
        return _matmul_channels(x, self.weight()), constant_log_det(x, ld)

    def _inverse(self, y, context=None, training=False):
        ld = -_positions(y) * self._log_abs_det()
        return _matmul_channels(y, self.inverse_weight()), constant_log_det(y, ld)

    def get_config(self):
        config = super().get_config()
        config.update(lu=self.lu, seed=self.seed)
        return config


@register
class Permute(FlowLayer):
    """A fixed permutation of the last axis (channels or features).

    Forward: `y[..., i] = x[..., perm[i]]`; log-det 0. Inverse: the inverse
    permutation. With `permutation=None` a random one is drawn at build from
    `seed` and saved with the weights (a non-trainable variable), so a
    reloaded layer uses the same permutation.

    Args:
        permutation: list of channel indices, or `None` for a random shuffle.
        seed: seed for the random shuffle. Defaults to `None`: drawn from
            numpy's global state (seeded by `keras.utils.set_random_seed`).

    >>> import numpy as np
    >>> layer = Permute([2, 0, 1])
    >>> np.asarray(layer.forward(np.array([[10., 20., 30.]], "float32"))[0]).tolist()
    [[30.0, 10.0, 20.0]]
    """

    input_ranks = (2, 3, 4, 5)

    def __init__(self, permutation=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if permutation is not None:
            permutation = [int(i) for i in permutation]
            if sorted(permutation) != list(range(len(permutation))):
                raise ValueError(
                    f"Permute needs a permutation of 0..{len(permutation) - 1}. "
                    f"Received: permutation={permutation}"
                )
        self.permutation = permutation
        self.seed = seed

    def build(self, input_shape):
        self._check_rank(input_shape)
        c = input_shape[-1]
        if self.permutation is not None and len(self.permutation) != c:
            raise ValueError(
                f"Permute '{self.name}' has a permutation of {len(self.permutation)} "
                f"channels but the input has {c} (shape {tuple(input_shape)})."
            )
        perm = (np.array(self.permutation) if self.permutation is not None
                else _rng(self.seed).permutation(c))
        self.perm = self.add_weight(
            shape=(c,), dtype="int32", trainable=False, name="perm",
            initializer=_const(np.asarray(perm, "int32")),
        )

    def _forward(self, x, context=None, training=False):
        return ops.take(x, self.perm, axis=-1), zeros_log_det(x)

    def _inverse(self, y, context=None, training=False):
        return ops.take(y, ops.argsort(self.perm), axis=-1), zeros_log_det(y)

    def get_config(self):
        config = super().get_config()
        config.update(permutation=self.permutation, seed=self.seed)
        return config


@register
class Reverse(FlowLayer):
    """Reverses the last axis (RealNVP/Glow's channel reversal); log-det 0.

    >>> import numpy as np
    >>> np.asarray(Reverse().forward(np.array([[1., 2., 3.]], "float32"))[0]).tolist()
    [[3.0, 2.0, 1.0]]
    """

    input_ranks = (2, 3, 4, 5)

    def build(self, input_shape):
        self._check_rank(input_shape)

    def _forward(self, x, context=None, training=False):
        return ops.flip(x, axis=-1), zeros_log_det(x)

    def _inverse(self, y, context=None, training=False):
        return ops.flip(y, axis=-1), zeros_log_det(y)


@register
class LULinear(Invertible1x1Conv):
    """A learned invertible linear map of vectors in LU form, with a bias.

    Forward: `y = W x + b`, `W = P L (U + diag(sign_s * exp(log_s)))` (`P`
    fixed, `L` unit lower triangular, `U` strictly upper triangular);
    log-det `sum(log_s) -> (batch,)`. Inverse: `x = W^-1 (y - b)` by two
    triangular solves; log-det the negative. The LU form of `Invertible1x1Conv`
    on vectors (one "position"), starting from a random rotation.

    Args:
        use_bias: learn the bias `b` (zero-initialised). Defaults to `True`.
        seed: seed of the initial rotation (see `Invertible1x1Conv`).

    Input shape: `(batch, D)`; output shape the same.

    References: Kingma & Dhariwal, Glow, https://arxiv.org/abs/1807.03039;
    Durkan et al., Neural Spline Flows, https://arxiv.org/abs/1906.04032

    >>> import numpy as np
    >>> layer = LULinear(seed=0)
    >>> x = np.random.randn(2, 3).astype("float32")
    >>> bool(np.allclose(layer.inverse(layer.forward(x)[0])[0], x, atol=1e-5))
    True
    """

    input_ranks = (2,)
    local_log_det = False  # vectors only

    def __init__(self, use_bias=True, seed=None, **kwargs):
        kwargs.pop("lu", None)
        super().__init__(lu=True, seed=seed, **kwargs)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        super().build(input_shape)
        if self.use_bias:
            self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def _forward(self, x, context=None, training=False):
        y, ld = super()._forward(x)
        return (y + ops.cast(self.bias, y.dtype) if self.use_bias else y), ld

    def _inverse(self, y, context=None, training=False):
        if self.use_bias:
            y = y - ops.cast(self.bias, y.dtype)
        return super()._inverse(y)

    def get_config(self):
        config = super().get_config()
        config.pop("lu", None)
        config["use_bias"] = self.use_bias
        return config


def householder_product(vectors):
    """`Q = H_1 H_2 ... H_K` for the rows `v_k` of `vectors` `(K, D)`, with
    `H_k = I - 2 v_k v_k^T / |v_k|^2` (a reflection; `Q` is orthogonal)."""
    d = vectors.shape[-1]
    q = ops.eye(d, dtype=vectors.dtype)
    for k in range(vectors.shape[0]):
        v = vectors[k]
        v = v / ops.sqrt(ops.sum(ops.square(v)))
        q = q - 2.0 * ops.matmul(ops.matmul(q, v[:, None]), v[None, :])
    return q


def _householder_vectors(layer, k, d):
    rng = _rng(layer.seed)
    init = rng.standard_normal((k, d))
    return layer.add_weight(shape=(k, d), initializer=_const(init), name="vectors")


@register
class Householder(FlowLayer):
    """An orthogonal map of vectors: a product of `n_reflections` Householder
    reflections; volume preserving.

    Forward: `y = Q x`, `Q = H_1 ... H_K`, `H_k = I - 2 v_k v_k^T / |v_k|^2`;
    log-det `0 -> (batch,)`. Inverse: `x = Q^T y`.

    Args:
        n_reflections: `K`, at least 1. Defaults to 2.
        seed: seed of the random initial vectors (see `Invertible1x1Conv`).

    Input shape: `(batch, D)`; output shape the same.

    References: Tomczak & Welling, Improving Variational Auto-Encoders using
    Householder Flow, https://arxiv.org/abs/1611.09630

    >>> import numpy as np
    >>> layer = Householder(3, seed=0)
    >>> x = np.random.randn(2, 4).astype("float32")
    >>> y, ld = layer.forward(x)
    >>> bool(np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), atol=1e-5))
    True
    """

    input_ranks = (2,)

    def __init__(self, n_reflections=2, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(n_reflections, bool) or int(n_reflections) < 1:
            raise ValueError(f"Householder needs n_reflections >= 1. Received: n_reflections={n_reflections}")
        self.n_reflections = int(n_reflections)
        self.seed = seed

    def build(self, input_shape):
        self._check_rank(input_shape)
        self.vectors = _householder_vectors(self, self.n_reflections, input_shape[-1])

    def orthogonal(self):
        """The `(D, D)` orthogonal matrix `Q`."""
        return householder_product(self.vectors)

    def _forward(self, x, context=None, training=False):
        return _matmul_channels(x, ops.cast(self.orthogonal(), x.dtype)), zeros_log_det(x)

    def _inverse(self, y, context=None, training=False):
        return _matmul_channels(y, ops.transpose(ops.cast(self.orthogonal(), y.dtype))), zeros_log_det(y)

    def get_config(self):
        config = super().get_config()
        config.update(n_reflections=self.n_reflections, seed=self.seed)
        return config


@register
class QRLinear(FlowLayer):
    """A learned invertible linear map of vectors in QR form, with a bias.

    Forward: `y = Q R x + b`, `Q` a product of `n_reflections` Householder
    reflections, `R` upper triangular with diagonal `exp(log_diag)`;
    log-det `sum(log_diag) -> (batch,)`. Inverse: `x = R^-1 Q^T (y - b)`
    (a triangular solve); log-det the negative.

    Args:
        n_reflections: reflections in `Q`. Defaults to `None`: `D` (any
            orthogonal matrix of determinant +-1 is reachable).
        use_bias: learn a bias (zero-initialised). Defaults to `True`.
        seed: seed of the random initial reflections.

    Input shape: `(batch, D)`; output shape the same.

    References: Hoogeboom et al., Emerging Convolutions,
    https://arxiv.org/abs/1901.11137 (QR 1x1 convolutions); Durkan et al.,
    Neural Spline Flows, https://arxiv.org/abs/1906.04032

    >>> import numpy as np
    >>> layer = QRLinear(seed=0)
    >>> x = np.random.randn(2, 3).astype("float32")
    >>> bool(np.allclose(layer.inverse(layer.forward(x)[0])[0], x, atol=1e-5))
    True
    """

    input_ranks = (2,)

    def __init__(self, n_reflections=None, use_bias=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        if n_reflections is not None and (isinstance(n_reflections, bool) or int(n_reflections) < 1):
            raise ValueError(f"QRLinear needs n_reflections >= 1 or None. Received: n_reflections={n_reflections}")
        self.n_reflections = None if n_reflections is None else int(n_reflections)
        self.use_bias = bool(use_bias)
        self.seed = seed

    def build(self, input_shape):
        self._check_rank(input_shape)
        d = input_shape[-1]
        self.vectors = _householder_vectors(self, self.n_reflections or d, d)
        self.upper = self.add_weight(shape=(d, d), initializer="zeros", name="upper")
        self.log_diag = self.add_weight(shape=(d,), initializer="zeros", name="log_diag")
        if self.use_bias:
            self.bias = self.add_weight(shape=(d,), initializer="zeros", name="bias")
        self._strict_upper = ops.convert_to_tensor(np.triu(np.ones((d, d)), 1), dtype=self.variable_dtype)

    def triangular(self):
        """The `(D, D)` upper triangular `R`."""
        return self.upper * self._strict_upper + ops.diag(ops.exp(self.log_diag))

    def _log_det(self, x):
        return constant_log_det(x, ops.sum(self.log_diag))

    def _forward(self, x, context=None, training=False):
        w = ops.matmul(householder_product(self.vectors), self.triangular())
        y = _matmul_channels(x, ops.cast(w, x.dtype))
        if self.use_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return y, self._log_det(x)

    def _inverse(self, y, context=None, training=False):
        if self.use_bias:
            y = y - ops.cast(self.bias, y.dtype)
        qty = ops.matmul(ops.transpose(householder_product(self.vectors)), ops.transpose(ops.cast(y, self.variable_dtype)))
        x = ops.transpose(ops.solve_triangular(self.triangular(), qty, lower=False))
        return ops.cast(x, y.dtype), -self._log_det(y)

    def get_config(self):
        config = super().get_config()
        config.update(n_reflections=self.n_reflections, use_bias=self.use_bias, seed=self.seed)
        return config
