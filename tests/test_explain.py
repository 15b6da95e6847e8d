"""Grad-CAM (hpa_tf.curation.explain): the maps against a computation by hand on a classifier of the
package, and a hand-built model whose logits read one region of the image only."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf import viz
from hpa_tf.curation.explain import feature_model, grad_cam
from hpa_tf.models.classifier import build_classifier

HEAD = ["head_bn1", "head_dropout1", "head_fc1", "head_relu", "head_bn2", "head_dropout2", "logits"]


def test_grad_cam_equals_the_gradient_weighted_feature_map_computed_by_hand():
    """Per class: the gradient of its logit with respect to the backbone's last feature map (a
    GradientTape over the classifier's layers called one by one), averaged per channel, weighting the
    map's channels, summed, then ReLU."""
    keras.utils.set_random_seed(1)
    model = build_classifier("densenet_2_2_2_2", weights=None)
    images = tf.constant(np.random.default_rng(0).random((1, 128, 128, 4)), tf.float32)
    classes = [0, 5, 11, 25, 27]
    maps = grad_cam(feature_model(model), images, classes)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for n, c in enumerate(classes):
        with tf.GradientTape() as tape:
            features = backbone(model.get_layer("rgby_norm")(images), training=False)
            tape.watch(features)
            x = tf.concat([tf.reduce_mean(features, axis=(1, 2)), tf.reduce_max(features, axis=(1, 2))], -1)
            for name in HEAD:
                x = model.get_layer(name)(x, training=False)
            logit = x[0, c]
        np.testing.assert_allclose(x, model(images, training=False), rtol=1e-5, atol=1e-6)  # the classifier
        weights = tape.gradient(logit, features)[0].numpy().mean(axis=(0, 1))
        expected = np.maximum((features[0].numpy() * weights).sum(axis=-1), 0.0)
        assert maps[n].shape == expected.shape == (4, 4)
        np.testing.assert_allclose(maps[n], expected, rtol=0, atol=1e-5)
    assert (maps > 0).any() and not np.allclose(maps[0], maps[1])


def region_model(rows: slice, cols: slice) -> keras.Model:
    """A model with the classifier's interface (images -> logits; the last feature map read by a layer
    named pool_avg) whose logits depend on the pixels in rows x cols of a 32 px image only: the rest of the
    image is zeroed, a 3x3 stride-2 convolution without bias (ReLU) makes the 16x16 map, positive weights
    read its mean."""
    keras.utils.set_random_seed(2)
    mask = np.zeros((1, 32, 32, 1), np.float32)
    mask[:, rows, cols] = 1.0
    images = keras.Input((32, 32, 4))
    kept = keras.layers.Lambda(lambda x: x * mask)(images)
    features = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, activation="relu")(kept)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool_avg")(features)
    logits = keras.layers.Dense(28, kernel_initializer=keras.initializers.RandomUniform(0.1, 1.0))(pooled)
    return keras.Model(images, logits)


@pytest.mark.parametrize("rows, cols", [(slice(0, 12), slice(16, 32)), (slice(20, 32), slice(2, 10))])
def test_a_model_that_reads_one_region_gets_its_map_there(rows, cols):
    """The map, upsampled to the image as the overlay draws it, has its mass in the region grown by 4 px
    (a feature reads 2 px beyond its stride-2 cell; bilinear upsampling spreads a cell over its
    neighbour's 2 px), most of it in the region itself; neither transposed nor flipped."""
    model = region_model(rows, cols)
    images = tf.constant(np.random.default_rng(3).random((1, 32, 32, 4)), tf.float32)
    heat = viz.upsample(grad_cam(feature_model(model), images, [4])[0], (32, 32))
    assert heat.shape == (32, 32) and heat.sum() > 0
    grown = np.zeros((32, 32), bool)
    grown[max(rows.start - 4, 0):rows.stop + 4, max(cols.start - 4, 0):cols.stop + 4] = True
    assert heat[grown].sum() / heat.sum() > 0.99
    inside = np.zeros((32, 32), bool)
    inside[rows, cols] = True
    assert heat[inside].sum() / heat.sum() > 0.5  # most of it in the region itself
