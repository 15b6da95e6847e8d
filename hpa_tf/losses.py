"""Losses of the reference solution: the classifier's (spec 7.1-7.4) and ArcFace (spec 7.5).

Every classifier loss takes a float multi-hot ``y_true`` [B, C] and ``logits`` [B, C] (C = 28); ArcFace
takes int labels [B] and cosines [B, classes]. All compute in float32 whatever the input dtype (float16 /
bfloat16 under mixed precision) and return a scalar float32 tensor with the reduction of the spec.
Written in ``keras.ops`` only, so they run under any Keras backend (TensorFlow inside ``tf.function`` and
distribution strategies, JAX under ``jax.jit``); per-class work is vectorised over classes (no Python
loop), so the functions trace once for any batch size.
"""

from __future__ import annotations

import math

from keras import ops

__all__ = ["focal_per_sample", "focal_loss", "lovasz_hinge", "symmetric_lovasz", "hard_log_loss",
           "classifier_loss", "arcface_loss"]


def _as_float32(y_true, logits):
    """Both inputs as float32 tensors (logits of any float dtype are upcast first)."""
    return tuple(ops.cast(ops.convert_to_tensor(t), "float32") for t in (y_true, logits))


def _bce_with_logits(y, z):
    """Element-wise BCE with logits in the stable max-trick form: max(z, 0) - z*y + log(1 + exp(-|z|)),
    written as TensorFlow's sigmoid_cross_entropy_with_logits is (same values and gradients)."""
    positive = z >= 0.0
    zeros = ops.zeros_like(z)
    return ops.where(positive, z, zeros) - z * y + ops.log1p(ops.exp(ops.where(positive, -z, z)))


def _sort_descending(values, *others):
    """``values`` [C, B] and each of ``others`` reordered along axis 1 by descending ``values``; ties keep
    their batch order (a stable ascending sort of -values, as on every backend)."""
    order = ops.argsort(-values, axis=1)
    return tuple(ops.take_along_axis(t, order, axis=1) for t in (values, *others))


def focal_per_sample(y_true, logits, gamma=2.0):
    """Focal loss of each sample, summed over classes: float32 [B] (spec 7.1 before the batch mean)."""
    y, z = _as_float32(y_true, logits)
    bce = _bce_with_logits(y, z)
    # (1 - p_t)^gamma computed in log space, stable for large |z|.
    weight = ops.exp(ops.cast(gamma, "float32") * ops.log_sigmoid(-z * (2.0 * y - 1.0)))
    return ops.sum(bce * weight, axis=-1)


def focal_loss(y_true, logits, gamma=2.0):
    """Focal loss (spec 7.1): BCE * sigmoid(-z(2y-1))^gamma, summed over classes, mean over the batch."""
    return ops.mean(focal_per_sample(y_true, logits, gamma))


def _lovasz_per_class(y, z):
    """Lovasz hinge loss of every class over the batch: float32 [C] (spec 7.2)."""
    yt = ops.transpose(y)  # [C, B]
    zt = ops.transpose(z)
    errors = 1.0 - zt * (2.0 * yt - 1.0)
    errors_sorted, gt_sorted = _sort_descending(errors, yt)
    total_pos = ops.sum(gt_sorted, axis=1, keepdims=True)
    intersection = total_pos - ops.cumsum(gt_sorted, axis=1)
    union = total_pos + ops.cumsum(1.0 - gt_sorted, axis=1)  # >= 1 at every position
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return ops.sum(ops.relu(errors_sorted) * grad, axis=1)


def lovasz_hinge(y_true, logits):
    """Lovasz hinge (spec 7.2), computed per class over the batch dimension, mean over classes."""
    y, z = _as_float32(y_true, logits)
    return ops.mean(_lovasz_per_class(y, z))


def symmetric_lovasz(y_true, logits):
    """0.5 * (Lovasz(y, z) + Lovasz(1 - y, -z)) (spec 7.2)."""
    y, z = _as_float32(y_true, logits)
    return 0.5 * (lovasz_hinge(y, z) + lovasz_hinge(1.0 - y, -z))


def _python_int_07(n):
    """int(0.7 * n) as Python computes it in float64, for int32 tensors n in [0, 3e8), in int32 arithmetic
    (JAX has no float64 by default): 7n // 10, less one where 7n/10 is a whole number k that float64
    rounds down. float64(0.7) = 0.7 - 0.2 * 2^-52, so that happens iff 7q/8 < k <= q, q the power of two
    >= k (at n = 90: 0.7 * 90 = 62.99999999999999)."""
    k = (7 * n) // 10
    q = k - 1  # smear the highest bit of k - 1 down: q + 1 = the power of two >= k
    for shift in (1, 2, 4, 8, 16):
        q = ops.bitwise_or(q, ops.right_shift(q, shift))
    q = q + 1
    rounded_down = ops.logical_and(ops.logical_and((7 * n) % 10 == 0, k > 0), k > q - q // 8)
    return k - ops.cast(rounded_down, "int32")


def _hard_mining(y, z):
    """Sorted view of the hard-negative selection of spec 7.3.

    Returns (y_sorted, z_sorted, keep) as float32 [C, B]: each class column sorted by logit (descending),
    with ``keep`` = 1 for every positive and for the k negatives with the highest logits, where
    neg_at_least = max(2, int(0.5 n_neg)), k = min(n_neg, n_pos + neg_at_least, int(0.7 n_neg) + 2).
    """
    yt = ops.transpose(y)
    zt = ops.transpose(z)
    is_pos = ops.cast(yt > 0.0, "int32")
    n_pos = ops.sum(is_pos, axis=1, keepdims=True)
    n_neg = ops.sum(1 - is_pos, axis=1, keepdims=True)
    neg_at_least = ops.maximum(2, n_neg // 2)
    k = ops.minimum(ops.minimum(n_neg, n_pos + neg_at_least), _python_int_07(n_neg) + 2)
    z_sorted, y_sorted, neg_sorted = _sort_descending(zt, yt, 1 - is_pos)
    neg_rank = ops.cumsum(neg_sorted, axis=1)  # 1-based rank among negatives
    keep = ops.logical_or(neg_sorted == 0, neg_rank <= k)
    return y_sorted, z_sorted, ops.cast(keep, "float32")


def hard_log_loss(y_true, logits):
    """BCE with hard negative mining per class (spec 7.3), mean over classes."""
    y, z = _as_float32(y_true, logits)
    y_sorted, z_sorted, keep = _hard_mining(y, z)
    bce = _bce_with_logits(y_sorted, z_sorted)
    # A non-empty batch keeps >= 1 element per class; an empty one gives 0 / 1 = 0.
    per_class = ops.sum(bce * keep, axis=1) / ops.maximum(ops.sum(keep, axis=1), 1.0)
    return ops.mean(per_class)


def classifier_loss(y_true, logits):
    """0.5 focal + 0.5 symmetric Lovasz + 0.5 hard log loss (spec 7.4)."""
    y, z = _as_float32(y_true, logits)
    return 0.5 * focal_loss(y, z) + 0.5 * symmetric_lovasz(y, z) + 0.5 * hard_log_loss(y, z)


def arcface_loss(labels, cosine, s=30.0, m=0.5):
    """ArcFace loss of spec 7.5 (easy_margin off): the target column's cosine becomes cos(theta + m)
    where cos > cos(pi - m), else cos - m sin(m); cross-entropy of s x those logits, averaged 1:1 with the
    cross-entropy of the raw unscaled cosines. sin is sqrt(1 - cos^2) kept finite (and differentiable)
    at |cos| -> 1."""
    cosine = ops.cast(ops.convert_to_tensor(cosine), "float32")
    labels = ops.cast(ops.reshape(labels, [-1]), "int32")
    sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), 1e-12))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    phi = ops.where(cosine > math.cos(math.pi - m), phi, cosine - m * math.sin(m))
    target = ops.one_hot(labels, ops.shape(cosine)[-1], dtype="float32")
    margin_logits = s * (target * phi + (1.0 - target) * cosine)
    scaled = ops.sparse_categorical_crossentropy(labels, margin_logits, from_logits=True)
    plain = ops.sparse_categorical_crossentropy(labels, cosine, from_logits=True)
    return 0.5 * (ops.mean(scaled) + ops.mean(plain))
