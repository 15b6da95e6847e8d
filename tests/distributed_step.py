"""Run by test_training.py in fresh processes (device setup must precede TensorFlow's first use).

`python distributed_step.py mirrored`: one GlobalBatchTrainer step (and validation) on the default
strategy and on MirroredStrategy over 2 logical CPUs; `... worker`: the same step under
MultiWorkerMirroredStrategy (TF_CONFIG from the environment) plus the single-process reference.
Prints one JSON line: {"single": result, "distributed": result}.
"""

import json
import sys

import numpy as np
import tensorflow as tf

MODE = sys.argv[1]
if MODE == "mirrored":
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()  # created first, as TF requires

import keras  # noqa: E402

from hpa_tf.losses import classifier_loss  # noqa: E402
from hpa_tf.training.split_metrics import SplitFocalLoss, SplitMacroF1  # noqa: E402
from hpa_tf.training.trainer import GlobalBatchTrainer  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = RNG.random((8, 16, 16, 4)).astype("float32")
LABELS = (RNG.random((8, 28)) < 0.3).astype("float32")


def tiny_net() -> keras.Model:
    """Conv -> GAP -> Dense without BatchNorm or dropout, so replicas can match a single device exactly."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(28)(x))


def one_step(strategy) -> dict:
    """Weights change after one SGD(lr 1) step on the global batch of 8, with the clip at 0.05 active,
    and validation on 7 images in batches of 4 (an uneven last batch)."""
    with strategy.scope():
        trainer = GlobalBatchTrainer(tiny_net(), classifier_loss, clipnorm=0.05,
                                     eval_metrics=[SplitFocalLoss(), SplitMacroF1()])
        trainer.compile(keras.optimizers.SGD(1.0))
        before = [w.numpy() for w in trainer.net.trainable_variables]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(8).with_options(options)
    valid = tf.data.Dataset.from_tensor_slices((IMAGES[:7], LABELS[:7])).batch(4).with_options(options)
    history = trainer.fit(train, validation_data=valid, epochs=1, verbose=0).history
    after = [w.numpy() for w in trainer.net.trainable_variables]
    delta = np.concatenate([(a - b).ravel() for a, b in zip(after, before, strict=True)])
    return {"loss": history["loss"][0], "val_focal": history["val_focal"][0],
            "val_macro_f1": history["val_macro_f1"][0], "replicas": strategy.num_replicas_in_sync,
            "delta": delta.tolist()}


if __name__ == "__main__":
    distributed = one_step(STRATEGY)
    single = one_step(tf.distribute.get_strategy())
    print(json.dumps({"single": single, "distributed": distributed}))
