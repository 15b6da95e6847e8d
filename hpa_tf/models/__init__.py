"""Models: 4-channel backbones and the classifier of the reference solution."""

from hpa_tf.models.backbones import backbone
from hpa_tf.models.classifier import build_classifier

__all__ = ["backbone", "build_classifier"]
