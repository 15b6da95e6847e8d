"""BatchNormalization of NHWC feature maps through TensorFlow's fused kernel.

Keras 3 normalises with separate moments and arithmetic ops; the fused kernel does it in one op, which
matters on CPU for DenseNet's 120 BatchNorm layers (see benchmarks/train_step.py). The running variance
is updated with the unbiased batch variance, as PyTorch (and so the reference) does.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="hpa_tf")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization (same weights and config) using the fused kernel for 4-D inputs
    normalised over the last axis; other cases (masks, renorm, synchronised) fall back to Keras."""

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4 or self.axis % 4 != 3 or self.renorm \
                or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        return tf.cast(outputs, self.compute_dtype)
