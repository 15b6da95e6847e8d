"""The metric-learning model of spec 6.4: a 4-channel ResNet50 (no input normalisation), a 512-d
embedding head, and the training network that puts ArcMarginProduct on it."""

from __future__ import annotations

import keras

from hpa_tf.config import EmbedderConfig
from hpa_tf.layout import DataLayout
from hpa_tf.models.arcface import ArcMarginProduct
from hpa_tf.models.backbones import backbone
from hpa_tf.models.classifier import concat_pool, torch_batchnorm, torch_dense
from hpa_tf.models.torchvision_nets import TORCHVISION

ANTIBODY_SPLIT = "external_antibody_split.csv"  # every HPAv18 image with its antibody code (spec 3.3)


def build_embedder(backbone_name: str = "resnet50", weights: str | None = TORCHVISION,
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


def number_of_classes(layout: DataLayout) -> int:
    """Antibody classes: one more than the largest code of the split of all HPAv18 images."""
    return int(layout.read_split(ANTIBODY_SPLIT)["antibody_code"].max()) + 1


def build_arcface_network(config: EmbedderConfig, classes: int, weights: str | None = None) -> keras.Model:
    """images -> cosines to the antibody classes: the embedder (layer 'embedder', backbone `weights`) then
    ArcMarginProduct, as train_metric.py trains it."""
    embedder = build_embedder(config.backbone, weights=weights, embedding_dim=config.embedding_dim,
                              dropout=config.dropout, sync_bn=config.sync_bn)
    images = keras.Input((None, None, 4), name="images")
    cosine = ArcMarginProduct(classes, name="arc_margin")(embedder(images))
    return keras.Model(images, cosine, name="metric_net")
