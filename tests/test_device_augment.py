"""On-device augmentation: the batched crop, resize and dihedral transform against the CPU path's
per-image ops (same draws, same pixels), under XLA, from the training pipeline, and in a training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from hpa_tf.config import classifier_config
from hpa_tf.data import device_augment, pipeline
from hpa_tf.errors import DataError
from hpa_tf.layout import DataLayout
from hpa_tf.training.classifier import build_trainer, split_frames


def _plans(img_size: int, crop_size: int, n: int) -> np.ndarray:
    """n plans [row, col, side, k] drawn as the CPU path draws windows, every dihedral index, and one
    whole-image plan."""
    plans = [[*pipeline.crop_window(tf.constant([i, 11], tf.int64), img_size, crop_size).numpy(), i % 8]
             for i in range(n - 1)]
    return np.array(plans + [[0, 0, img_size, 5]], np.int32)


def _cpu(images: np.ndarray, plans: np.ndarray, crop_size: int) -> np.ndarray:
    return np.stack([pipeline.dihedral(pipeline.crop_and_resize(tf.constant(image), tf.constant(plan[:3]),
                                                                crop_size), int(plan[3])).numpy()
                     for image, plan in zip(images, plans, strict=True)])


@pytest.mark.parametrize("img_size, crop_size", [(96, 64), (64, 64), (40, 64)])  # down, same, up
def test_apply_plans_equals_the_cpu_path_image_by_image(img_size, crop_size):
    images = np.random.default_rng(0).integers(0, 256, (17, img_size, img_size, 4), dtype=np.uint8)
    plans = _plans(img_size, crop_size, 17)
    batch = {pipeline.IMAGES: tf.constant(images), pipeline.PLANS: tf.constant(plans)}
    got = device_augment.apply_plans(batch, img_size, crop_size).numpy()
    want = _cpu(images, plans, crop_size)
    assert got.shape == (17, crop_size, crop_size, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    whole = pipeline.whole_image(tf.constant(images[-1]), crop_size).numpy()
    np.testing.assert_allclose(got[-1], pipeline.dihedral(tf.constant(whole), 5).numpy(), atol=1e-6)
    if img_size > crop_size:  # the training case, also under XLA
        compiled = tf.function(lambda x: device_augment.apply_plans(x, img_size, crop_size), jit_compile=True)
        np.testing.assert_allclose(compiled(batch).numpy(), want, atol=1e-5)


def test_apply_plans_refuses_images_of_another_size_naming_it():
    images = tf.zeros((2, 48, 48, 4), tf.uint8)
    plans = tf.constant(_plans(64, 32, 2))
    with pytest.raises(DataError, match="expects batches of 64x64 cache images .* got 48x48"):
        device_augment.apply_plans({pipeline.IMAGES: images, pipeline.PLANS: plans}, 64, 32)
    unknown = tf.function(lambda x: device_augment.apply_plans(x, 64, 32), input_signature=[{
        pipeline.IMAGES: tf.TensorSpec([None, None, None, 4], tf.uint8),
        pipeline.PLANS: tf.TensorSpec([None, 4], tf.int32)}])
    with pytest.raises(tf.errors.InvalidArgumentError, match="expects batches of 64x64 cache images"):
        unknown({pipeline.IMAGES: images, pipeline.PLANS: plans})


def _datasets(root, on_device: bool, crop_size: int = 32):
    layout = DataLayout(root)
    train, valid = split_frames(layout, "random_ext_folds5", 0)
    source = pipeline.Source(layout, 64, "train")
    return (pipeline.train_dataset(source, train, crop_size, 8, seed=4, on_device=on_device),
            pipeline.valid_dataset(source, valid, crop_size, 8, on_device=on_device))


def test_the_on_device_pipeline_carries_the_cpu_paths_draws(prepared):
    """Same seed: the uint8 batches and their plans, augmented in the step, are the CPU path's batches."""
    root, _ = prepared
    cpu_train, cpu_valid = _datasets(root, on_device=False)
    device_train, device_valid = _datasets(root, on_device=True)
    pairs = [*zip(cpu_train.take(3), device_train.take(3), strict=True),
             *zip(cpu_valid.take(1), device_valid.take(1), strict=True)]
    for (cpu, labels), (inputs, device_labels) in pairs:
        assert inputs[pipeline.IMAGES].dtype == tf.uint8
        assert inputs[pipeline.IMAGES].shape[1:] == (64, 64, 4)
        np.testing.assert_array_equal(labels.numpy(), device_labels.numpy())
        np.testing.assert_allclose(device_augment.apply_plans(inputs, 64, 32).numpy(), cpu.numpy(), atol=1e-6)


def test_a_training_step_on_device_equals_the_cpu_paths_step(prepared, tmp_path):
    """build_trainer with --device-augment: one fit step from the same weights gives the same loss and
    the same weights as the CPU path."""
    root, _ = prepared
    results = []
    for on_device in (False, True):
        config = classifier_config("demo", data_dir=str(root), out_dir=str(tmp_path), img_size=64,
                                   crop_size=32, batch_size=8, backbone="densenet_1_1_1_1",
                                   device_augment=on_device)
        keras.utils.set_random_seed(0)
        trainer = build_trainer(config, DataLayout(root))
        start = trainer.net.get_weights()
        train, valid = _datasets(root, on_device)
        history = trainer.fit(train.take(2), validation_data=valid.take(1), epochs=1, verbose=0)
        results.append((history.history, start, trainer.net.get_weights()))
    (cpu, cpu_start, cpu_weights), (device, device_start, device_weights) = results
    for key in ("loss", "val_loss", "val_focal"):
        assert device[key][0] == pytest.approx(cpu[key][0], rel=1e-4), key
    flat = [np.concatenate([w.ravel() for w in weights])
            for weights in (cpu_start, device_start, cpu_weights, device_weights)]
    np.testing.assert_array_equal(flat[0], flat[1])
    lr = float(trainer.optimizer.learning_rate)
    assert np.mean(flat[2] != flat[0]) > 0.5  # the steps moved most weights
    # The inputs are the same to the bit (test above); the two step graphs round differently. Adam divides
    # each gradient by its own running size, so where a gradient is near its rounding, the step's few
    # ulps become a visible part of the learning rate: compare the steps on the learning rate's scale. Most
    # elements agree to a thousandth of it, nearly all to 5% of it, a sign flip costs at most 2 of it.
    gap = np.abs(flat[2] - flat[3]) / lr
    assert np.median(gap) < 1e-3
    assert np.mean(gap > 0.05) < 1e-3
    assert gap.max() <= 2
