"""Losses of the reference solution: the classifier's (spec 7.1-7.4) and ArcFace (spec 7.5).

Every classifier loss takes a float multi-hot ``y_true`` [B, C] and ``logits`` [B, C] (C = 28); ArcFace
takes int labels [B] and cosines [B, classes]. All compute in float32 whatever the input dtype (float16 /
bfloat16 under mixed precision) and return a scalar float32 tensor with the reduction of the spec.
Per-class work is vectorised over classes (no Python loop), so the functions trace once inside
``tf.function`` for any batch size.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["focal_per_sample", "focal_loss", "lovasz_hinge", "symmetric_lovasz", "hard_log_loss",
           "classifier_loss", "arcface_loss"]


def _as_float32(y_true, logits):
    """Both inputs as float32 tensors (logits of any float dtype are upcast first)."""
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    y_true = tf.cast(tf.convert_to_tensor(y_true), tf.float32)
    return y_true, logits


def _bce_with_logits(y, z):
    """Element-wise BCE with logits in the stable max-trick form: max(z, 0) - z*y + log(1 + exp(-|z|))."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)


def focal_per_sample(y_true, logits, gamma=2.0):
    """Focal loss of each sample, summed over classes: float32 [B] (spec 7.1 before the batch mean)."""
    y, z = _as_float32(y_true, logits)
    bce = _bce_with_logits(y, z)
    # (1 - p_t)^gamma computed in log space, stable for large |z|.
    weight = tf.exp(tf.cast(gamma, tf.float32) * tf.math.log_sigmoid(-z * (2.0 * y - 1.0)))
    return tf.reduce_sum(bce * weight, axis=-1)


def focal_loss(y_true, logits, gamma=2.0):
    """Focal loss (spec 7.1): BCE * sigmoid(-z(2y-1))^gamma, summed over classes, mean over the batch."""
    return tf.reduce_mean(focal_per_sample(y_true, logits, gamma))


def _lovasz_per_class(y, z):
    """Lovasz hinge loss of every class over the batch: float32 [C] (spec 7.2)."""
    yt = tf.transpose(y)  # [C, B]
    zt = tf.transpose(z)
    errors = 1.0 - zt * (2.0 * yt - 1.0)
    order = tf.argsort(errors, axis=1, direction="DESCENDING", stable=True)
    errors_sorted = tf.gather(errors, order, batch_dims=1)
    gt_sorted = tf.gather(yt, order, batch_dims=1)  # no gradient flows through labels
    total_pos = tf.reduce_sum(gt_sorted, axis=1, keepdims=True)
    intersection = total_pos - tf.cumsum(gt_sorted, axis=1)
    union = total_pos + tf.cumsum(1.0 - gt_sorted, axis=1)  # >= 1 at every position
    jaccard = 1.0 - intersection / union
    grad = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return tf.reduce_sum(tf.nn.relu(errors_sorted) * grad, axis=1)


def lovasz_hinge(y_true, logits):
    """Lovasz hinge (spec 7.2), computed per class over the batch dimension, mean over classes."""
    y, z = _as_float32(y_true, logits)
    return tf.reduce_mean(_lovasz_per_class(y, z))


def symmetric_lovasz(y_true, logits):
    """0.5 * (Lovasz(y, z) + Lovasz(1 - y, -z)) (spec 7.2)."""
    y, z = _as_float32(y_true, logits)
    return 0.5 * (lovasz_hinge(y, z) + lovasz_hinge(1.0 - y, -z))


def _hard_mining(y, z):
    """Sorted view of the hard-negative selection of spec 7.3.

    Returns (y_sorted, z_sorted, keep) as float32 [C, B]: each class column sorted by logit (descending),
    with ``keep`` = 1 for every positive and for the k negatives with the highest logits, where
    neg_at_least = max(2, int(0.5 n_neg)), k = min(n_neg, n_pos + neg_at_least, int(0.7 n_neg) + 2).
    """
    yt = tf.transpose(y)
    zt = tf.transpose(z)
    is_pos = yt > 0.0
    n_pos = tf.reduce_sum(tf.cast(is_pos, tf.int32), axis=1, keepdims=True)
    n_neg = tf.reduce_sum(tf.cast(~is_pos, tf.int32), axis=1, keepdims=True)
    # int(0.5 n) and int(0.7 n) evaluated in float64, exactly as Python floats do.
    n_neg64 = tf.cast(n_neg, tf.float64)
    half = tf.cast(tf.floor(0.5 * n_neg64), tf.int32)
    seventy = tf.cast(tf.floor(0.7 * n_neg64), tf.int32)
    neg_at_least = tf.maximum(2, half)
    k = tf.minimum(tf.minimum(n_neg, n_pos + neg_at_least), seventy + 2)
    order = tf.argsort(zt, axis=1, direction="DESCENDING", stable=True)
    z_sorted = tf.gather(zt, order, batch_dims=1)
    y_sorted = tf.gather(yt, order, batch_dims=1)
    neg_sorted = tf.gather(~is_pos, order, batch_dims=1)
    neg_rank = tf.cumsum(tf.cast(neg_sorted, tf.int32), axis=1)  # 1-based rank among negatives
    keep = tf.logical_or(~neg_sorted, neg_rank <= k)
    return y_sorted, z_sorted, tf.cast(keep, tf.float32)


def hard_log_loss(y_true, logits):
    """BCE with hard negative mining per class (spec 7.3), mean over classes."""
    y, z = _as_float32(y_true, logits)
    y_sorted, z_sorted, keep = _hard_mining(y, z)
    bce = _bce_with_logits(y_sorted, z_sorted)
    per_class = tf.math.divide_no_nan(tf.reduce_sum(bce * keep, axis=1), tf.reduce_sum(keep, axis=1))
    return tf.reduce_mean(per_class)


def classifier_loss(y_true, logits):
    """0.5 focal + 0.5 symmetric Lovasz + 0.5 hard log loss (spec 7.4)."""
    y, z = _as_float32(y_true, logits)
    return 0.5 * focal_loss(y, z) + 0.5 * symmetric_lovasz(y, z) + 0.5 * hard_log_loss(y, z)


def arcface_loss(labels, cosine, s=30.0, m=0.5):
    """ArcFace loss of spec 7.5 (easy_margin off): the target column's cosine becomes cos(theta + m)
    where cos > cos(pi - m), else cos - m sin(m); cross-entropy of s x those logits, averaged 1:1 with the
    cross-entropy of the raw unscaled cosines. sin is sqrt(1 - cos^2) kept finite (and differentiable)
    at |cos| -> 1."""
    cosine = tf.cast(tf.convert_to_tensor(cosine), tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    sine = tf.sqrt(tf.maximum(1.0 - tf.square(cosine), 1e-12))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    phi = tf.where(cosine > math.cos(math.pi - m), phi, cosine - m * math.sin(m))
    target = tf.one_hot(labels, tf.shape(cosine)[-1], dtype=tf.float32)
    margin_logits = s * (target * phi + (1.0 - target) * cosine)
    scaled = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=margin_logits)
    plain = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=cosine)
    return 0.5 * (tf.reduce_mean(scaled) + tf.reduce_mean(plain))
