"""The metric-learning model of spec 6.4: a 4-channel ResNet50 (no input normalisation), a 512-d
embedding head, and ArcMarginProduct (cosines to L2-normalised class weights)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from hpa_tf.models.backbones import backbone
from hpa_tf.models.classifier import concat_pool, torch_batchnorm, torch_dense


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


def build_embedder(backbone_name: str = "resnet50", weights: str | None = "imagenet",
                   embedding_dim: int = 512, hidden: int = 2048, dropout: bool = False, sync_bn: bool = False,
                   name: str = "embedder") -> keras.Model:
    """images [N, H, W, 4] in [0, 1] -> the 512-d feature (float32): concat pool -> BN -> Dense 2048 ->
    ReLU -> BN -> Dense 512 -> BN. The original's two dropouts (p .25, .5) were no-ops in torch 0.4.1
    (spec 6.4), so they are off unless `dropout=True`."""
    net = backbone(backbone_name, weights=weights, channels=4, sync_bn=sync_bn)
    images = keras.Input((None, None, 4), name="images")
    pooled = concat_pool(net(images))
    x = torch_batchnorm("embed_bn1", sync_bn)(pooled)
    if dropout:
        x = keras.layers.Dropout(0.25, name="embed_dropout1")(x)
    x = torch_dense(hidden, pooled.shape[-1], "embed_fc1")(x)
    x = keras.layers.ReLU(name="embed_relu")(x)
    x = torch_batchnorm("embed_bn2", sync_bn)(x)
    if dropout:
        x = keras.layers.Dropout(0.5, name="embed_dropout2")(x)
    x = torch_dense(embedding_dim, hidden, "embed_fc2")(x)
    features = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, synchronized=sync_bn,
                                               dtype="float32", name="embedding")(x)
    return keras.Model(images, features, name=name)
