"""Models: 4-channel backbones, the classifier and the metric-learning embedder of the reference, and
trained runs rebuilt from their folders."""

from hpa_tf.models.arcface import ArcMarginProduct
from hpa_tf.models.backbones import backbone
from hpa_tf.models.classifier import build_classifier
from hpa_tf.models.embedder import build_embedder

__all__ = ["ArcMarginProduct", "backbone", "build_classifier", "build_embedder"]
