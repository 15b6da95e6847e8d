"""hpa-tf: the 1st-place HPA 2018 solution (bestfitting) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
