"""Augmentation on the accelerator (spec 5.1-5.2, batched): with `on_device`, the input pipeline only reads
uint8 cache images and draws each image's plan (crop window row, col, side and dihedral index: the same
stateless draws as the CPU path); `apply_plans` cuts, resizes and transforms the whole batch inside the
training step, so the CPU reads and batches bytes."""

from __future__ import annotations

import tensorflow as tf

from hpa_tf.data.pipeline import DIHEDRAL_FLAGS, IMAGES, PLANS
from hpa_tf.errors import DataError


def check_size(images: tf.Tensor, img_size: int) -> tf.Tensor:
    """`images` unchanged, or an error naming the expected and the received size: the plans' windows are
    drawn for `img_size` cache images."""
    expected = f"on-device augmentation expects batches of {img_size}x{img_size} cache images (the run's " \
               "--img-size)"
    static = images.shape[1:3]
    if static.is_fully_defined() and tuple(static) != (img_size, img_size):
        raise DataError(f"{expected}, got {static[0]}x{static[1]}")
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(images)[1:3], tf.constant([img_size, img_size]), message=expected)]):
        return tf.identity(images)


def _taps(start: tf.Tensor, side: tf.Tensor, crop_size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(lower, upper, lerp) [B, crop] per image: tf.image.resize's half-pixel bilinear source taps for a
    window of `side` pixels from `start` resized to `crop_size` (the kernel's own float32 formula)."""
    scale = tf.cast(side, tf.float32) / float(crop_size)
    position = (tf.range(crop_size, dtype=tf.float32)[None, :] + 0.5) * scale[:, None] - 0.5
    last = (side - 1)[:, None]
    lower = tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, last)
    upper = tf.clip_by_value(tf.cast(tf.math.ceil(position), tf.int32), 0, last)
    return start[:, None] + lower, start[:, None] + upper, position - tf.floor(position)


def crop_and_resize_batch(images: tf.Tensor, windows: tf.Tensor, crop_size: int) -> tf.Tensor:
    """float32 [B, crop, crop, C] in [0, 1]: each image's window [row, col, side] resized bilinearly to
    crop_size, as pipeline.crop_and_resize does one image at a time (gathers only: XLA-friendly)."""
    windows = tf.cast(windows, tf.int32)
    y0, y1, wy = _taps(windows[:, 0], windows[:, 2], crop_size)
    x0, x1, wx = _taps(windows[:, 1], windows[:, 2], crop_size)
    top = tf.gather(images, y0, axis=1, batch_dims=1)  # [B, crop, W, C]
    bottom = tf.gather(images, y1, axis=1, batch_dims=1)

    def columns(rows: tf.Tensor) -> tf.Tensor:
        left = tf.cast(tf.gather(rows, x0, axis=2, batch_dims=1), tf.float32)
        right = tf.cast(tf.gather(rows, x1, axis=2, batch_dims=1), tf.float32)
        return left + (right - left) * wx[:, None, :, None]

    upper_row, lower_row = columns(top), columns(bottom)
    resized = upper_row + (lower_row - upper_row) * wy[:, :, None, None]
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def dihedral_batch(images: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """Each square image of the batch under its own dihedral transform k (pipeline.DIHEDRAL order)."""
    flags = tf.gather(DIHEDRAL_FLAGS, tf.cast(k, tf.int32))[:, :, None, None, None]  # [B, 3, 1, 1, 1]
    images = tf.where(flags[:, 0], tf.reverse(images, [1]), images)
    images = tf.where(flags[:, 1], tf.reverse(images, [2]), images)
    return tf.where(flags[:, 2], tf.transpose(images, [0, 2, 1, 3]), images)


def apply_plans(inputs: dict, img_size: int, crop_size: int) -> tf.Tensor:
    """The model's input batch from an on-device batch {IMAGES: uint8 [B, S, S, 4], PLANS: int32 [B, 4]}."""
    images = check_size(inputs[IMAGES], img_size)
    plans = inputs[PLANS]
    return dihedral_batch(crop_and_resize_batch(images, plans[:, :3], crop_size), plans[:, 3])
