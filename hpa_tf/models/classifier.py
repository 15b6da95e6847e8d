"""The classifier of spec 6.2: per-channel normalisation, a 4-channel backbone, and the concat-pool
dropout head (avg then max pool -> BN -> Dropout -> Dense -> ReLU -> BN -> Dropout -> Dense logits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras

from hpa_tf.errors import DataError
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models.backbones import TORCH_BN_EPSILON, TORCH_BN_MOMENTUM, backbone
from hpa_tf.models.torchvision_nets import TORCHVISION

# Spec 4: the reference's RGBY statistics (Kaggle train + test 512 PNGs), used when no stats.json is given.
REFERENCE_MEAN = (0.074598, 0.050630, 0.050891, 0.076287)
REFERENCE_STD = (0.122813, 0.085745, 0.129882, 0.119411)


def load_stats(path: str | Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per R, G, B, Y from prepare's meta/stats.json, or the spec's constants for None."""
    if path is None:
        return REFERENCE_MEAN, REFERENCE_STD
    stats = json.loads(Path(path).read_text())
    mean, std = tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])
    if len(mean) != 4 or len(std) != 4 or min(std) <= 0:
        raise DataError(f"{path}: expected 4 means and 4 positive stds (R, G, B, Y), got {stats}")
    return mean, std


def torch_dense(units: int, fan_in: int, name: str, **kwargs) -> keras.layers.Dense:
    """Dense with PyTorch's Linear init: weights and bias U(+-1/sqrt(fan_in)) (spec 6.2)."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(units, name=name,
                              kernel_initializer=keras.initializers.RandomUniform(-limit, limit),
                              bias_initializer=keras.initializers.RandomUniform(-limit, limit), **kwargs)


def torch_batchnorm(name: str, sync_bn: bool = False) -> keras.layers.BatchNormalization:
    """BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1 = Keras 0.9)."""
    return keras.layers.BatchNormalization(epsilon=TORCH_BN_EPSILON, momentum=TORCH_BN_MOMENTUM,
                                           synchronized=sync_bn, name=name)


def concat_pool(features, name: str = "pool"):
    """[avg pool, max pool] of a feature map, avg first (spec 6.2, 6.4)."""
    avg = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")(features)
    top = keras.layers.GlobalMaxPooling2D(name=f"{name}_max")(features)
    return keras.layers.Concatenate(name=f"{name}_concat")([avg, top])


def build_classifier(backbone_name: str = "densenet121", weights: str | None = TORCHVISION,
                     large: bool = False, mean=REFERENCE_MEAN, std=REFERENCE_STD, dropout: float = 0.5,
                     hidden: int | None = None, num_classes: int = NUM_CLASSES, sync_bn: bool = False,
                     name: str = "classifier") -> keras.Model:
    """images [N, H, W, 4] float in [0, 1] -> logits [N, num_classes] float32 (sigmoid applied outside).

    `hidden` defaults to half the pooled width (1024 for DenseNet121, as the reference)."""
    net = backbone(backbone_name, weights=weights, channels=4, large=large, sync_bn=sync_bn)
    images = keras.Input((None, None, 4), name="images")
    x = keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="rgby_norm")(images)
    pooled = concat_pool(net(x))
    width = pooled.shape[-1]
    hidden = hidden or width // 2
    x = torch_batchnorm("head_bn1", sync_bn)(pooled)
    x = keras.layers.Dropout(dropout, name="head_dropout1")(x)
    x = torch_dense(hidden, width, "head_fc1")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = torch_batchnorm("head_bn2", sync_bn)(x)
    x = keras.layers.Dropout(dropout, name="head_dropout2")(x)
    logits = torch_dense(num_classes, hidden, "logits", dtype="float32")(x)
    return keras.Model(images, logits, name=name)
