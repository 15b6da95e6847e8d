"""Models: 4-channel backbones, the classifier and the metric-learning embedder of the reference."""

from hpa_tf.models.backbones import backbone
from hpa_tf.models.classifier import build_classifier
from hpa_tf.models.metric import ArcMarginProduct, build_embedder

__all__ = ["ArcMarginProduct", "backbone", "build_classifier", "build_embedder"]
