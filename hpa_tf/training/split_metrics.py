"""Keras metrics that are exact over a whole validation split (spec 8.1), also under a distribution
strategy: they accumulate sums and counts (summed across replicas), never averages of batch values."""

from __future__ import annotations

import keras
import tensorflow as tf

from hpa_tf.labels import NUM_CLASSES
from hpa_tf.losses import focal_per_sample


def _column_count(mask):
    """Number of True entries in each column of a boolean [B, C] tensor, as float32 [C]."""
    return tf.reduce_sum(tf.cast(mask, tf.float32), axis=0)


class SplitFocalLoss(keras.metrics.Metric):
    """Focal loss of the concatenated logits of every image seen: sum of per-image focal / images."""

    def __init__(self, name="focal", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable((), "zeros", name="total")
        self.count = self.add_variable((), "zeros", name="count")

    def update_state(self, y_true, logits, sample_weight=None):
        per_sample = focal_per_sample(y_true, logits)
        self.total.assign_add(tf.reduce_sum(per_sample))
        self.count.assign_add(tf.cast(tf.shape(per_sample)[0], tf.float32))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)


class SplitMacroF1(keras.metrics.Metric):
    """Macro F1 at probability 0.5 (logit 0) from per-class TP / FP / FN counts, no top-1 rule (spec 8.1);
    a class with no true and no predicted positive scores 0, as sklearn."""

    def __init__(self, num_classes=NUM_CLASSES, name="macro_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.tp = self.add_variable((num_classes,), "zeros", name="tp")
        self.fp = self.add_variable((num_classes,), "zeros", name="fp")
        self.fn = self.add_variable((num_classes,), "zeros", name="fn")

    def update_state(self, y_true, logits, sample_weight=None):
        truth = tf.cast(y_true, tf.float32) > 0.5
        predicted = tf.cast(logits, tf.float32) > 0.0
        self.tp.assign_add(_column_count(truth & predicted))
        self.fp.assign_add(_column_count(~truth & predicted))
        self.fn.assign_add(_column_count(truth & ~predicted))

    def result(self):
        return tf.reduce_mean(tf.math.divide_no_nan(2 * self.tp, 2 * self.tp + self.fp + self.fn))


class ElementAccuracy(keras.metrics.Metric):
    """Share of the N x 28 entries where (p > 0.5) equals the label (the reference's valid 'acc')."""

    def __init__(self, name="acc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hits = self.add_variable((), "zeros", name="hits")
        self.count = self.add_variable((), "zeros", name="count")

    def update_state(self, y_true, logits, sample_weight=None):
        hits = tf.equal(tf.cast(y_true, tf.float32) > 0.5, tf.cast(logits, tf.float32) > 0.0)
        self.hits.assign_add(tf.reduce_sum(tf.cast(hits, tf.float32)))
        self.count.assign_add(tf.cast(tf.size(hits), tf.float32))

    def result(self):
        return tf.math.divide_no_nan(self.hits, self.count)


class RankHits(keras.metrics.Metric):
    """Retrieval figures over a whole split from int labels [B] and class scores [B, C] (the softmax of
    the unscaled cosines ranks as the cosines do, spec 8.2): `top1`, `top5` or `map5` = sum_k hit@k / k."""

    _WEIGHTS = {"top1": (1.0, 0, 0, 0, 0), "top5": (1.0, 1, 1, 1, 1),
                "map5": (1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5)}

    def __init__(self, kind: str = "map5", name=None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.weights_of_rank = tf.constant(self._WEIGHTS[kind], tf.float32)
        self.total = self.add_variable((), "zeros", name="total")
        self.count = self.add_variable((), "zeros", name="count")

    def update_state(self, labels, scores, sample_weight=None):
        scores = tf.cast(scores, tf.float32)
        k = tf.minimum(5, tf.shape(scores)[-1])
        top = tf.math.top_k(scores, k=k).indices
        hits = tf.cast(tf.equal(top, tf.cast(tf.reshape(labels, [-1, 1]), top.dtype)), tf.float32)
        self.total.assign_add(tf.reduce_sum(hits * self.weights_of_rank[:k]))
        self.count.assign_add(tf.cast(tf.shape(scores)[0], tf.float32))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}
