"""hpa_tf.losses against independent numpy references (spec 7.1-7.4)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from hpa_tf import losses
from hpa_tf.losses import classifier_loss, focal_loss, hard_log_loss, lovasz_hinge, symmetric_lovasz

C = 28
BATCHES = (1, 2, 7, 48)


# ----------------------------------------------------------------------------------------------------
# Independent numpy references: plain loops over classes, explicit sorting, float64.


def np_bce(z, y):
    return np.logaddexp(0.0, z) - z * y


def np_focal(y, z, gamma=2.0):
    total = 0.0
    for b in range(y.shape[0]):
        for c in range(y.shape[1]):
            s = 2.0 * y[b, c] - 1.0
            log_weight = -np.logaddexp(0.0, z[b, c] * s)  # log sigmoid(-z s)
            total += np_bce(z[b, c], y[b, c]) * np.exp(gamma * log_weight)
    return total / y.shape[0]


def np_lovasz_class(labels, logits):
    """Lovasz hinge of one class column, written from the sorted form of spec 7.2."""
    errors = [1.0 - logits[i] * (2.0 * labels[i] - 1.0) for i in range(len(labels))]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    gt = [labels[i] for i in order]
    n_pos = sum(gt)
    loss, prev_jaccard, cum_gt, cum_not = 0.0, 0.0, 0.0, 0.0
    for pos, i in enumerate(order):
        cum_gt += gt[pos]
        cum_not += 1.0 - gt[pos]
        jaccard = 1.0 - (n_pos - cum_gt) / (n_pos + cum_not)
        grad = jaccard if pos == 0 else jaccard - prev_jaccard
        prev_jaccard = jaccard
        loss += max(errors[i], 0.0) * grad
    return loss


def np_lovasz(y, z):
    return float(np.mean([np_lovasz_class(y[:, c], z[:, c]) for c in range(y.shape[1])]))


def np_symmetric_lovasz(y, z):
    return 0.5 * (np_lovasz(y, z) + np_lovasz(1.0 - y, -z))


def np_hard_k(n_pos, n_neg):
    neg_at_least = max(2, int(0.5 * n_neg))
    return min(n_neg, n_pos + neg_at_least, int(0.7 * n_neg) + 2)


def np_hard_log(y, z):
    per_class = []
    for c in range(y.shape[1]):
        pos = [i for i in range(y.shape[0]) if y[i, c] > 0]
        neg = [i for i in range(y.shape[0]) if y[i, c] <= 0]
        k = np_hard_k(len(pos), len(neg))
        hard_neg = sorted(neg, key=lambda i: -z[i, c])[:k] if k > 0 else []
        kept = pos + hard_neg
        per_class.append(np.mean([np_bce(z[i, c], y[i, c]) for i in kept]))
    return float(np.mean(per_class))


def np_classifier(y, z):
    return 0.5 * np_focal(y, z) + 0.5 * np_symmetric_lovasz(y, z) + 0.5 * np_hard_log(y, z)


PAIRS = [
    (focal_loss, np_focal),
    (lovasz_hinge, np_lovasz),
    (symmetric_lovasz, np_symmetric_lovasz),
    (hard_log_loss, np_hard_log),
    (classifier_loss, np_classifier),
]
IDS = [tf_fn.__name__ for tf_fn, _ in PAIRS]


def make_batch(batch, seed, scale=3.0):
    """Long-tailed multi-hot labels (class 3 all zero, class 5 all one) and float32 logits."""
    rng = np.random.default_rng(seed)
    rates = 0.6 * 0.8 ** np.arange(C)
    y = (rng.random((batch, C)) < rates).astype(np.float32)
    y[:, 3] = 0.0
    y[:, 5] = 1.0
    z = (rng.normal(size=(batch, C)) * scale).astype(np.float32)
    return y, z


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("tf_fn,np_fn", PAIRS, ids=IDS)
def test_matches_numpy_reference(tf_fn, np_fn, batch):
    for seed in range(3):
        y, z = make_batch(batch, seed=100 * batch + seed)
        got = tf_fn(y, z)
        assert got.dtype == tf.float32 and got.shape == ()
        want = np_fn(y.astype(np.float64), z.astype(np.float64))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def test_reductions_follow_the_spec():
    y, z = make_batch(7, seed=1)
    # Focal: sum over classes, mean over batch (so ~28x a per-element mean).
    weight = np.exp(2.0 * -np.logaddexp(0.0, z * (2 * y - 1)))
    np.testing.assert_allclose(focal_loss(y, z).numpy(), (np_bce(z, y) * weight).sum(1).mean(), rtol=1e-5)
    # Lovasz: per class over the batch, then the plain mean of the 28 class losses.
    per_class = [float(losses.lovasz_hinge(y[:, c : c + 1], z[:, c : c + 1])) for c in range(C)]
    np.testing.assert_allclose(lovasz_hinge(y, z).numpy(), np.mean(per_class), rtol=1e-5)


def test_lovasz_known_values():
    # One class, all labels negative: only the largest error counts (J jumps 0 -> 1 at the first item).
    y = np.zeros((3, 1), np.float32)
    z = np.array([[0.5], [-2.0], [1.5]], np.float32)
    assert lovasz_hinge(y, z).numpy() == pytest.approx(2.5)
    # Perfectly separated with margin: every hinge error is <= 0.
    y = np.array([[1.0], [0.0]], np.float32)
    z = np.array([[5.0], [-5.0]], np.float32)
    assert lovasz_hinge(y, z).numpy() == 0.0


def test_hard_log_worked_example_keeps_25_negatives():
    # Spec 7.3: B=48, 3 positives, 45 negatives -> neg_at_least = 22, k = min(45, 25, 33) = 25.
    assert np_hard_k(3, 45) == 25
    rng = np.random.default_rng(7)
    y = np.zeros((48, C), np.float32)
    y[[4, 20, 33], 0] = 1.0
    z = rng.normal(size=(48, C)).astype(np.float32)
    y_sorted, z_sorted, keep = (t.numpy() for t in losses._hard_mining(tf.constant(y), tf.constant(z)))
    assert keep[0].sum() == 3 + 25
    assert ((keep[0] > 0) & (y_sorted[0] > 0)).sum() == 3
    kept_neg = np.sort(z_sorted[0][(keep[0] > 0) & (y_sorted[0] == 0)])[::-1]
    np.testing.assert_array_equal(kept_neg, np.sort(z[y[:, 0] == 0, 0])[::-1][:25])
    # Every class: kept count = n_pos + k(n_pos, n_neg).
    for c in range(C):
        n_pos = int(y[:, c].sum())
        assert keep[c].sum() == n_pos + np_hard_k(n_pos, 48 - n_pos)


KEPT_CASES = [(0, 1), (1, 0), (0, 48), (48, 0), (1, 1), (5, 3), (10, 10), (2, 100)]


@pytest.mark.parametrize("n_pos,n_neg", KEPT_CASES)
def test_hard_mining_kept_count_matches_formula(n_pos, n_neg):
    y = np.zeros((n_pos + n_neg, C), np.float32)
    y[:n_pos] = 1.0
    z = np.random.default_rng(n_pos * 1000 + n_neg).normal(size=y.shape).astype(np.float32)
    _, _, keep = losses._hard_mining(tf.constant(y), tf.constant(z))
    np.testing.assert_array_equal(keep.numpy().sum(axis=1), n_pos + np_hard_k(n_pos, n_neg))


@pytest.mark.parametrize("tf_fn,np_fn", PAIRS, ids=IDS)
def test_extreme_logits_give_finite_values_and_gradients(tf_fn, np_fn):
    y, _ = make_batch(7, seed=3)
    z = np.where(np.random.default_rng(0).random(y.shape) < 0.5, 100.0, -100.0).astype(np.float32)
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        value = tf_fn(y, zt)
    grad = tape.gradient(value, zt)
    assert np.isfinite(value.numpy())
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    np.testing.assert_allclose(value.numpy(), np_fn(y.astype(np.float64), z.astype(np.float64)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("tf_fn,np_fn", PAIRS, ids=IDS)
def test_low_precision_logits_compute_in_float32(tf_fn, np_fn, dtype):
    y, z = make_batch(48, seed=5)
    z_low = tf.cast(tf.constant(z), dtype)
    with tf.GradientTape() as tape:
        tape.watch(z_low)
        value = tf_fn(y, z_low)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), tf_fn(y, z).numpy(), rtol=1e-2)
    # The upcast happens before any arithmetic: equal to the float32 loss of the rounded logits.
    rounded = tf.cast(z_low, tf.float32).numpy()
    np.testing.assert_allclose(value.numpy(), tf_fn(y, rounded).numpy(), rtol=1e-6)
    grad = tape.gradient(value, z_low)
    assert grad.dtype == dtype and np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))


@pytest.mark.parametrize("tf_fn,np_fn", PAIRS, ids=IDS)
def test_tf_function_matches_eager_for_any_batch(tf_fn, np_fn):
    spec = [tf.TensorSpec([None, C], tf.float32), tf.TensorSpec([None, C], tf.float32)]
    compiled = tf.function(tf_fn, input_signature=spec)
    for batch in BATCHES:
        y, z = make_batch(batch, seed=batch)
        np.testing.assert_allclose(compiled(y, z).numpy(), tf_fn(y, z).numpy(), rtol=1e-6)


@pytest.mark.parametrize("tf_fn,np_fn", PAIRS, ids=IDS)
def test_gradient_matches_finite_differences_of_numpy_reference(tf_fn, np_fn):
    # Lovasz and hard-log are piecewise smooth; with distinct random logits and eps = 1e-6 no kink
    # (sort order, hinge at error 0, top-k set) is crossed, so central differences are exact enough.
    y, z = make_batch(5, seed=11, scale=1.5)
    y64, z64 = y.astype(np.float64), z.astype(np.float64)
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        value = tf_fn(y, zt)
    grad = tape.gradient(value, zt).numpy()
    eps = 1e-6
    numeric = np.zeros_like(z64)
    for idx in np.ndindex(*z.shape):
        plus, minus = z64.copy(), z64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (np_fn(y64, plus) - np_fn(y64, minus)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)
    assert np.abs(numeric).max() > 0


def test_classifier_loss_is_the_half_weighted_sum():
    y, z = make_batch(7, seed=2)
    want = 0.5 * (focal_loss(y, z) + symmetric_lovasz(y, z) + hard_log_loss(y, z))
    np.testing.assert_allclose(classifier_loss(y, z).numpy(), want.numpy(), rtol=1e-6)


def test_symmetric_lovasz_is_the_mean_of_both_directions():
    y, z = make_batch(7, seed=4)
    want = 0.5 * (lovasz_hinge(y, z) + lovasz_hinge(1.0 - y, -z))
    np.testing.assert_allclose(symmetric_lovasz(y, z).numpy(), want.numpy(), rtol=1e-6)
