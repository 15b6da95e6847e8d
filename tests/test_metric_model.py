"""ArcFace loss (spec 7.5), ArcMarginProduct and the embedding model (spec 6.4) against numpy."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf.losses import arcface_loss
from hpa_tf.models import ArcMarginProduct, build_embedder


def numpy_arcface(labels, cosine, s=30.0, m=0.5):
    """Spec 7.5 written out in float64 numpy."""
    cosine = cosine.astype(np.float64)
    rows = np.arange(len(labels))
    sine = np.sqrt(np.clip(1.0 - cosine**2, 0.0, None))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    phi = np.where(cosine > math.cos(math.pi - m), phi, cosine - m * math.sin(m))
    logits = cosine.copy()
    logits[rows, labels] = phi[rows, labels]

    def cross_entropy(values):
        shifted = values - values.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[rows, labels])

    return 0.5 * (cross_entropy(s * logits) + cross_entropy(cosine))


def _case(kind: str, rng):
    cosine = rng.uniform(-1, 1, (16, 40))
    labels = rng.integers(0, 40, 16)
    rows = np.arange(16)
    if kind == "near_one":
        cosine[rows, labels] = rng.choice([1.0, 0.999999, -1.0, -0.999999], 16)
        cosine[0] = 1.0  # a whole row at the edge
    elif kind == "below_threshold":  # target cosines under cos(pi - m) = -0.8776: the linear branch
        cosine[rows, labels] = rng.uniform(-1.0, -0.88, 16)
    return labels, cosine.astype(np.float32)


@pytest.mark.parametrize("kind", ["random", "near_one", "below_threshold"])
@pytest.mark.parametrize("s, m", [(30.0, 0.5), (64.0, 0.3)])
def test_arcface_matches_numpy(kind, s, m):
    labels, cosine = _case(kind, np.random.default_rng(7))
    got = float(arcface_loss(labels, cosine, s=s, m=m))
    assert got == pytest.approx(numpy_arcface(labels, cosine, s, m), rel=1e-4)


def test_arcface_gradients_are_finite_at_the_edges_and_half_precision_is_upcast():
    labels, cosine = _case("near_one", np.random.default_rng(1))
    variable = tf.Variable(cosine)
    with tf.GradientTape() as tape:
        loss = arcface_loss(labels, variable)
    grad = tape.gradient(loss, variable).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    half = arcface_loss(labels, tf.constant(cosine, tf.float16))
    assert half.dtype == tf.float32
    assert float(half) == pytest.approx(numpy_arcface(labels, cosine.astype(np.float16).astype(np.float32)),
                                        rel=1e-3)


def test_arcface_margin_raises_the_loss_of_the_right_class():
    cosine = np.full((1, 5), 0.1, np.float32)
    cosine[0, 2] = 0.6
    with_margin = float(arcface_loss([2], cosine))
    assert with_margin > float(arcface_loss([2], cosine, m=0.0))


def test_arc_margin_product_is_the_cosine_of_normalised_rows():
    layer = ArcMarginProduct(12)
    features = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    cosine = layer(features).numpy()
    weight = layer.weight.numpy()
    assert weight.shape == (12, 8) and np.abs(weight).max() <= 1 / math.sqrt(8)
    expected = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ \
        (weight / np.linalg.norm(weight, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine, expected, rtol=1e-5, atol=1e-6)
    assert cosine.shape == (5, 12) and np.abs(cosine).max() <= 1 + 1e-6
    np.testing.assert_allclose(layer(features * 7.0).numpy(), cosine, rtol=1e-5, atol=1e-6)  # scale-free


def test_embedder_head_without_normalisation_or_dropout_by_default():
    model = build_embedder("densenet_1_1_1_1", weights=None)
    names = [type(layer).__name__ for layer in model.layers]
    assert names == ["InputLayer", "Functional", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
                     "Concatenate", "BatchNormalization", "Dense", "ReLU", "BatchNormalization", "Dense",
                     "BatchNormalization"]
    assert model.get_layer("embed_fc1").units == 2048 and model.get_layer("embed_fc2").units == 512
    images = np.random.default_rng(0).random((3, 64, 64, 4)).astype(np.float32)
    features = model(images, training=False)
    assert features.shape == (3, 512) and features.dtype == "float32"
    with_dropout = build_embedder("densenet_1_1_1_1", weights=None, dropout=True)
    rates = [layer.rate for layer in with_dropout.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.25, 0.5]


def test_rank_metrics_match_numpy_over_uneven_batches():
    from hpa_tf.metrics import map_at_5, top_k_accuracy
    from hpa_tf.training.split_metrics import RankHits

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(37, 9)).astype(np.float32)
    labels = rng.integers(0, 9, 37)
    labels[:6] = np.argsort(-scores[:6], axis=1)[:, 2]  # some hits at rank 3
    metrics = {kind: RankHits(kind) for kind in ("top1", "top5", "map5")}
    for start in range(0, 37, 10):
        for metric in metrics.values():
            metric.update_state(labels[start:start + 10], scores[start:start + 10])
    assert float(metrics["top1"].result()) == pytest.approx(top_k_accuracy(labels, scores, 1))
    assert float(metrics["top5"].result()) == pytest.approx(top_k_accuracy(labels, scores, 5))
    assert float(metrics["map5"].result()) == pytest.approx(map_at_5(labels, scores), rel=1e-6)
    # numpy definitions against a direct loop
    direct = np.mean([next((1 / (j + 1) for j, c in enumerate(np.argsort(-row)[:5]) if c == y), 0.0)
                      for row, y in zip(scores, labels, strict=True)])
    assert map_at_5(labels, scores) == pytest.approx(direct)
    assert top_k_accuracy(labels, scores, 1) == pytest.approx(np.mean(scores.argmax(1) == labels))
