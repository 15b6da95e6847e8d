"""Run by test_numerics_checks.py in a fresh process (2 logical CPUs must be set up before TensorFlow
initialises): one GlobalBatchTrainer step of a BatchNorm net on the default strategy (one device, the
whole batch) and on MirroredStrategy over 2 logical CPUs (half the batch each), with the BatchNorm
synchronised and not. Prints one JSON line with the batch and, per run, the loss and the BatchNorm's
moving mean and variance after the step.
"""

import json

import numpy as np
import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

import keras  # noqa: E402

from hpa_tf.losses import classifier_loss  # noqa: E402
from hpa_tf.models.classifier import torch_batchnorm  # noqa: E402
from hpa_tf.training.trainer import GlobalBatchTrainer  # noqa: E402

RNG = np.random.default_rng(7)
# Two halves with different per-channel means and spreads: per-replica statistics differ from global ones.
FIRST = RNG.normal([2.0, -1.0, 0.5], [1.0, 0.5, 2.0], (4, 4, 4, 3))
SECOND = RNG.normal([-1.0, 1.5, 0.0], [0.5, 1.5, 1.0], (4, 4, 4, 3))
IMAGES = np.concatenate([FIRST, SECOND]).astype("float32")  # replica 0 gets rows 0-3, replica 1 rows 4-7
LABELS = (RNG.random((8, 28)) < 0.3).astype("float32")


def bn_net(sync: bool) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4, 4, 3))
    x = torch_batchnorm("bn", sync_bn=sync)(inputs)  # the library's BatchNorm (momentum 0.9, eps 1e-5)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(28)(x))


def one_step(strategy, sync: bool) -> dict:
    with strategy.scope():
        trainer = GlobalBatchTrainer(bn_net(sync), classifier_loss, clipnorm=1.0)
        trainer.compile(keras.optimizers.SGD(0.1))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(8).with_options(options)
    history = trainer.fit(data, epochs=1, verbose=0).history
    bn = trainer.net.get_layer("bn")
    return {"replicas": strategy.num_replicas_in_sync, "synchronized": bn.synchronized,
            "momentum": bn.momentum, "loss": history["loss"][0],
            "moving_mean": np.asarray(bn.moving_mean).tolist(),
            "moving_variance": np.asarray(bn.moving_variance).tolist()}


if __name__ == "__main__":
    results = {"single": one_step(tf.distribute.get_strategy(), sync=False),
               "sync": one_step(MIRRORED, sync=True),
               "local": one_step(MIRRORED, sync=False),
               "images": IMAGES.tolist()}
    print(json.dumps(results))
