"""ArcFace's margin layer of spec 6.4: cosines between L2-normalised features and L2-normalised class
weights (the additive angular margin itself is applied in losses.arcface_loss)."""

from __future__ import annotations

import math

import keras
from keras import ops


def l2_normalize(x, epsilon: float = 1e-12):
    """Rows of `x` over their L2 norm (floored at sqrt(epsilon)), as tf.math.l2_normalize computes it."""
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), epsilon))


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
                                      dtype="float32", autocast=False)

    def call(self, features):
        features = l2_normalize(ops.cast(features, "float32"))
        weight = l2_normalize(ops.cast(self.weight, "float32"))
        return ops.matmul(features, ops.transpose(weight))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
