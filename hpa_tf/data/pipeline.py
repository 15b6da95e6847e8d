"""tf.data input pipelines (spec section 5): training crops with D4 augmentation, validation, TTA views,
the metric-learning variant, and per-replica datasets for `tf.distribute`.

Every op is a TensorFlow op (no py_function), parallel with AUTOTUNE and prefetched. Randomness is
stateless and seeded: the same seed gives the same batches (with deterministic=True), epochs differ.
Images come from the resize caches written by `prepare` (or its TFRecord shards); they are float32 NHWC
in [0, 1], channels R, G, B, Y.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow as tf

from hpa_tf.data.io import ImageReadError, read_gray
from hpa_tf.data.resize import cache_paths
from hpa_tf.errors import DataError
from hpa_tf.labels import targets_to_matrix
from hpa_tf.layout import DataLayout

AUTOTUNE = tf.data.AUTOTUNE
# The 8 dihedral transforms in the reference's order (spec 5.2, 5.3) as (flipud, fliplr, transpose),
# applied in that order: flipud reverses rows (H), fliplr columns (W), transpose swaps H and W.
DIHEDRAL = {
    "default": (False, False, False),
    "flipud": (True, False, False),
    "fliplr": (False, True, False),
    "transpose": (False, False, True),
    "flipud_lr": (True, True, False),
    "flipud_transpose": (True, False, True),
    "fliplr_transpose": (False, True, True),
    "flipud_lr_transpose": (True, True, True),
}
DIHEDRAL_FLAGS = tf.constant(list(DIHEDRAL.values()), dtype=tf.bool)  # [8, 3]
IMAGES, PLANS = "images", "plans"  # the inputs of an on-device batch (device_augment.apply_plans)


@dataclass(frozen=True)
class Source:
    """Where a split's images are read: the resize caches of `img_size` (Kaggle rows from the
    `kaggle_split` folder, HPAv18 rows from the external cache) or their TFRecord shards."""

    layout: DataLayout
    img_size: int
    kaggle_split: str = "train"
    tfrecords: bool = False


# ----------------------------------------------------------------------------------------------- reading

def _is_external(frame: pd.DataFrame) -> np.ndarray:
    if "External" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame["External"].astype(str).str.lower().eq("true").to_numpy()


def cache_files(source: Source, frame: pd.DataFrame) -> np.ndarray:
    """[N, 4] cache file paths (R, G, B, Y) of a split's rows, as the reference picks them (spec 1.5)."""
    rows = [[str(p) for p in cache_paths(source.layout, "external" if external else "kaggle",
                                         source.kaggle_split, image_id, source.img_size).values()]
            for image_id, external in zip(frame["Id"], _is_external(frame), strict=True)]
    return np.array(rows, dtype=object).reshape(-1, 4)


def read_image(paths: tf.Tensor, size: int) -> tf.Tensor:
    """Read and stack the 4 grayscale channel files (PNG or JPEG): uint8 [size, size, 4]."""
    planes = []
    for c in range(4):
        plane = _decode_gray(paths[c])
        right_size = tf.reduce_all(tf.equal(tf.shape(plane)[:2], [size, size]))
        check = tf.debugging.Assert(right_size, [f"cache image is not {size}x{size}:", paths[c]])
        with tf.control_dependencies([check]):
            planes.append(tf.identity(plane))
    return tf.ensure_shape(tf.concat(planes, axis=-1), [size, size, 4])


def _decode_gray(path: tf.Tensor) -> tf.Tensor:
    """One 8-bit grayscale PNG or JPEG; JPEGs with the accurate integer IDCT, as PIL decodes them."""
    data = tf.io.read_file(path)
    return tf.cond(tf.strings.regex_full_match(path, r".*\.jpe?g"),
                   lambda: tf.io.decode_jpeg(data, channels=1, dct_method="INTEGER_ACCURATE"),
                   lambda: tf.io.decode_png(data, channels=1))


# What reading a frame's images raises when a file is damaged (unreadable_image names it).
READ_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError)


def unreadable_image(source: Source, frame: pd.DataFrame, error: tf.errors.OpError, start: int = 0
                     ) -> DataError:
    """The project error for a TF read failure of a frame's images: the first cache file from row `start`
    on that does not decode as an 8-bit grayscale image (TF's own message names no file), the wrong-size
    file read_image's assertion names, or a TFRecord shard whose record checksums fail; `error` itself when
    none explains it (then it is a bug)."""
    if "cache image is not" in error.message:
        return DataError(error.message.split("\n")[0])
    if isinstance(error, tf.errors.DataLossError) and source.tfrecords:
        detail = re.search(r"corrupted record at \d+", error.message)
        return DataError(f"a TFRecord shard in {source.layout.root / 'tfrecords'} is damaged "
                         f"({detail[0] if detail else 'DataLossError'}): run `python -m hpa_tf.data.prepare "
                         f"--data-dir {source.layout.root} --tfrecords --verify` to write it again")
    if not source.tfrecords:
        for row in cache_files(source, frame.iloc[start:]):
            for path in row:
                try:
                    read_gray(path)
                except ImageReadError as bad:
                    return DataError(f"{bad}: run `python -m hpa_tf.data.prepare --data-dir "
                                     f"{source.layout.root}` to redo it")
    raise error


def frame_labels(frame: pd.DataFrame) -> np.ndarray:
    """[N, 28] float32 multi-hot labels from the Target column (zeros for an unlabelled split)."""
    if "Target" not in frame.columns:
        return np.zeros((len(frame), 28), np.float32)
    return targets_to_matrix(frame["Target"].fillna("").astype(str))


def _images(source: Source, frame: pd.DataFrame, targets: np.ndarray,
            input_context: tf.distribute.InputContext | None = None,
            shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(uint8 image, target, row index) for every row of a frame, sharded per input pipeline, and
    shuffled (anew each epoch) when a seed is given: file lists before decoding, so memory stays small."""
    if source.tfrecords:
        return _tfrecord_images(source, frame, targets, input_context, shuffle_seed)
    index = np.arange(len(frame), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((cache_files(source, frame).astype(str), targets, index))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(frame), seed=shuffle_seed, reshuffle_each_iteration=True)
    size = source.img_size
    return ds.map(lambda paths, y, i: (read_image(paths, size), y, i), num_parallel_calls=AUTOTUNE)


def _tfrecord_images(source: Source, frame: pd.DataFrame, targets: np.ndarray,
                     input_context: tf.distribute.InputContext | None,
                     shuffle_seed: int | None) -> tf.data.Dataset:
    """Like _images, from the TFRecord shards: records whose Id is in the frame, in shard order (or
    shuffled: shard order, then a bounded buffer of decoded images)."""
    from hpa_tf.data import tfrecords  # the shards are optional; only this path needs the module

    external = _is_external(frame)
    groups = (["external"] if external.any() else []) + ([source.kaggle_split] if (~external).any() else [])
    files = [str(p) for g in groups for p in tfrecords.shard_paths(source.layout, g, source.img_size)]
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(frame["Id"].astype(str).to_numpy(),
                                            np.arange(len(frame), dtype=np.int64)), default_value=-1)
    ds = tf.data.Dataset.from_tensor_slices(files)
    sharded_files = input_context is not None and input_context.num_input_pipelines > 1
    if sharded_files and len(files) >= input_context.num_input_pipelines:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4), num_parallel_calls=AUTOTUNE)
    if sharded_files and len(files) < input_context.num_input_pipelines:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    targets = tf.constant(targets)
    size = source.img_size

    def decode(record):
        image_id, image = tfrecords.parse_example(record, size=size)
        return image, table.lookup(image_id)

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE).filter(lambda image, i: i >= 0)
    if shuffle_seed is not None:
        buffer = max(1, min(len(frame), 512 * 768**2 // size**2))  # ~1.2 GB of uint8 images
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.map(lambda image, i: (image, tf.gather(targets, i), i))


# ------------------------------------------------------------------------------------------ transforms

def dihedral(image: tf.Tensor, k: tf.Tensor | int) -> tf.Tensor:
    """The k-th of the 8 dihedral transforms (DIHEDRAL order) of an HWC (or BHWC) square image."""
    flags = tf.gather(DIHEDRAL_FLAGS, k)
    h, w = (0, 1) if image.shape.rank == 3 else (1, 2)
    image = tf.cond(flags[0], lambda: tf.reverse(image, [h]), lambda: image)
    image = tf.cond(flags[1], lambda: tf.reverse(image, [w]), lambda: image)
    perm = [1, 0, 2] if image.shape.rank == 3 else [0, 2, 1, 3]
    return tf.cond(flags[2], lambda: tf.transpose(image, perm), lambda: image)


def crop_window(seed: tf.Tensor, img_size: int, crop_size: int) -> tf.Tensor:
    """Spec 5.1 random-scale crop window [row, col, side] from a stateless seed: side uniform in
    [crop_size, img_size), offsets uniform in [0, img_size - side)."""
    u = tf.random.stateless_uniform([3], seed=seed, dtype=tf.float32)
    if img_size <= crop_size:
        side = tf.constant(img_size, tf.int32)
    else:
        side = tf.cast(crop_size + u[0] * (img_size - crop_size), tf.int32)
    room = tf.cast(img_size - side, tf.float32)
    row, col = (tf.cast(u[1] * room, tf.int32), tf.cast(u[2] * room, tf.int32))
    return tf.stack([row, col, side])


def crop_and_resize(image: tf.Tensor, window: tf.Tensor, crop_size: int) -> tf.Tensor:
    """Cut the window out of a uint8 HWC image and resize it (bilinear) to crop_size: float32 in [0, 1]."""
    row, col, side = window[0], window[1], window[2]
    patch = image[row:row + side, col:col + side, :]
    return _to_unit(tf.image.resize(tf.cast(patch, tf.float32), [crop_size, crop_size], "bilinear"))


def whole_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """The whole uint8 image resized (bilinear) to size: float32 in [0, 1] (validation, TTA seed 0)."""
    if image.shape[0] == size and image.shape[1] == size:
        return _to_unit(tf.cast(image, tf.float32))
    return _to_unit(tf.image.resize(tf.cast(image, tf.float32), [size, size], "bilinear"))


def _to_unit(image: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def _augment_seed(seed: tf.Tensor, salt: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, salt)


# -------------------------------------------------------------------------------------------- datasets

def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def _per_replica(batch_size: int, input_context: tf.distribute.InputContext | None) -> int:
    return input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size


def train_dataset(source: Source, frame: pd.DataFrame, crop_size: int, batch_size: int, seed: int = 0,
                  deterministic: bool = True, input_context: tf.distribute.InputContext | None = None,
                  on_device: bool = False) -> tf.data.Dataset:
    """Classifier training (spec 5.1, 5.2): shuffled, random-scale crop resized to crop_size, one of
    the 8 dihedral transforms uniformly; batches (images [B, crop, crop, 4], labels [B, 28]) with
    drop_remainder. batch_size is global; under a strategy each replica gets its share. `on_device`:
    batches ({IMAGES: uint8 cache images, PLANS: [row, col, side, k]}, labels), the same draws,
    for device_augment.apply_plans inside the training step."""
    img_size = source.img_size
    images = _images(source, frame, frame_labels(frame), input_context, shuffle_seed=seed)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augment(example, pair):
        image, label, _ = example
        window = crop_window(_augment_seed(pair, 0), img_size, crop_size)
        k = tf.random.stateless_uniform([], _augment_seed(pair, 1), 0, 8, dtype=tf.int32)
        if on_device:
            return {IMAGES: image, PLANS: tf.concat([window, k[None]], axis=0)}, label
        return dihedral(crop_and_resize(image, window, crop_size), k), label

    ds = tf.data.Dataset.zip((images, seeds)).map(augment, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(_per_replica(batch_size, input_context), drop_remainder=True)
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def valid_dataset(source: Source, frame: pd.DataFrame, crop_size: int, batch_size: int,
                  input_context: tf.distribute.InputContext | None = None,
                  on_device: bool = False) -> tf.data.Dataset:
    """Validation (spec 5.1): the whole image resized to crop_size, no augmentation, every row once, in
    frame order for files (shard order for TFRecords); batches (images, labels). `on_device`: the whole
    image as the plan's window, resized in the step (see train_dataset)."""
    images = _images(source, frame, frame_labels(frame), input_context)
    whole = tf.constant([0, 0, source.img_size, 0], tf.int32)
    if on_device:
        ds = images.map(lambda image, label, _: ({IMAGES: image, PLANS: whole}, label))
    else:
        ds = images.map(lambda image, label, _: (whole_image(image, crop_size), label),
                        num_parallel_calls=AUTOTUNE)
    return ds.batch(_per_replica(batch_size, input_context)).prefetch(AUTOTUNE).with_options(_options(True))


def tta_views(image: tf.Tensor, image_id: tf.Tensor, img_size: int, crop_size: int,
              seeds: tuple[int, ...]) -> tf.Tensor:
    """[8 * len(seeds), crop, crop, 4]: for each seed (seed 0 = whole image, s >= 1 = a random-scale
    crop drawn from (s, Id), so seeds really differ: spec 5.4) the 8 dihedral transforms, seed-major."""
    id_hash = tf.strings.to_hash_bucket_fast(image_id, 2**31 - 1)
    views = []
    for s in seeds:
        if s == 0:
            base = whole_image(image, crop_size)
        else:
            window = crop_window(tf.stack([tf.constant(s, tf.int64), id_hash]), img_size, crop_size)
            base = crop_and_resize(image, window, crop_size)
        views += [dihedral(base, k) for k in range(len(DIHEDRAL))]
    return tf.stack(views)


def tta_dataset(source: Source, frame: pd.DataFrame, crop_size: int, batch_size: int,
                seeds: tuple[int, ...] = (0, 1, 2, 3)) -> tf.data.Dataset:
    """Test-time views: batches (views [B, 8 * S, crop, crop, 4], row index [B]), frame order."""
    ids = frame["Id"].astype(str).to_numpy()
    images = _images(source, frame, frame_labels(frame))
    img_size = source.img_size

    def views(image, label, i):
        return tta_views(image, tf.gather(ids, i), img_size, crop_size, tuple(seeds)), i

    ds = images.map(views, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE).with_options(_options(True))


def metric_dataset(source: Source, frame: pd.DataFrame, batch_size: int, training: bool, seed: int = 0,
                   deterministic: bool = True,
                   input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Metric learning (spec 5.5): the whole image at img_size, D4 augmentation when training, no crop;
    batches (images, antibody_code int32)."""
    codes = frame["antibody_code"].astype(int).to_numpy().astype(np.int32)
    images = _images(source, frame, codes, input_context, shuffle_seed=seed if training else None)
    size = source.img_size
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def prepare(example, pair):
        image, code, _ = example
        image = whole_image(image, size)
        if training:
            image = dihedral(image, tf.random.stateless_uniform([], pair, 0, 8, dtype=tf.int32))
        return image, code

    ds = tf.data.Dataset.zip((images, seeds)).map(prepare, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(_per_replica(batch_size, input_context), drop_remainder=training)
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def dataset_fn(builder: Callable[..., tf.data.Dataset], *args, **kwargs
               ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A per-replica dataset function for `strategy.distribute_datasets_from_function`: the builder
    (train_dataset, valid_dataset, metric_dataset) gets the InputContext, shards by input pipeline and
    batches at the per-replica size."""
    return lambda input_context: builder(*args, input_context=input_context, **kwargs)
