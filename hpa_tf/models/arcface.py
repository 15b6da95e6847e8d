"""ArcFace's margin layer of spec 6.4: cosines between L2-normalised features and L2-normalised class
weights (the additive angular margin itself is applied in losses.arcface_loss)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class ArcMarginProduct(keras.layers.Layer):
    """features [B, D] -> cosine [B, num_classes] between the L2-normalised features and the
    L2-normalised rows of a [num_classes, D] weight initialised U(+-1/sqrt(D)) (spec 6.4); float32."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        limit = 1.0 / math.sqrt(int(input_shape[-1]))
        self.weight = self.add_weight(shape=(self.num_classes, int(input_shape[-1])), name="weight",
                                      initializer=keras.initializers.RandomUniform(-limit, limit),
                                      dtype="float32")

    def call(self, features):
        features = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1, epsilon=1e-12)
        weight = tf.math.l2_normalize(tf.convert_to_tensor(self.weight), axis=-1, epsilon=1e-12)
        return tf.matmul(features, weight, transpose_b=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
