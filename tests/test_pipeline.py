"""tf.data pipelines: shapes, crop windows, D4 frequencies, TTA views, determinism, sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from hpa_tf.data import pipeline, prepare
from hpa_tf.data.resize import read_cached_rgby
from hpa_tf.layout import COLORS, DataLayout

SIZE = 64  # tiny preset cache size


def numpy_dihedral(image: np.ndarray, name: str) -> np.ndarray:
    """Independent numpy version of the reference's TTA transforms (spec 5.3) on HWC arrays."""
    steps = {"default": [], "flipud": ["ud"], "fliplr": ["lr"], "transpose": ["t"], "flipud_lr": ["ud", "lr"],
             "flipud_transpose": ["ud", "t"], "fliplr_transpose": ["lr", "t"],
             "flipud_lr_transpose": ["ud", "lr", "t"]}[name]
    for step in steps:
        image = {"ud": lambda x: x[::-1], "lr": lambda x: x[:, ::-1],
                 "t": lambda x: x.transpose(1, 0, 2)}[step](image)
    return image


@pytest.fixture(scope="module")
def asymmetric(tmp_path_factory):
    """A dataset of 6 Kaggle images of 16 px with all-distinct pixel values (each D4 transform is
    recognisable), written as resize caches; returns (Source, frame, images)."""
    root = tmp_path_factory.mktemp("asym")
    layout = DataLayout(root)
    rng = np.random.default_rng(0)
    images, ids = [], [f"img{i}" for i in range(6)]
    for image_id in ids:
        image = rng.permutation(256).reshape(16, 16).astype(np.uint8)
        rgby = np.stack([image, 255 - image, image[::-1], image.T], axis=-1)
        for c, color in enumerate(COLORS):
            path = layout.kaggle_cache("train", image_id, color, 16)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgby[..., c]).save(path)
        images.append(rgby)
    frame = pd.DataFrame({"Id": ids, "Target": ["0", "1 2", "3", "27", "5", "0 25"], "External": False})
    return pipeline.Source(layout, 16), frame, np.stack(images)


def _which_transform(output: np.ndarray, images: np.ndarray) -> tuple[int, str]:
    """(image index, transform name) whose numpy transform equals the output exactly."""
    matches = [(i, name) for i, image in enumerate(images) for name in pipeline.DIHEDRAL
               if np.array_equal(numpy_dihedral(image / 255.0, name).astype(np.float32), output)]
    assert len(matches) == 1, matches
    return matches[0]


def test_dihedral_matches_the_numpy_transforms(asymmetric):
    _, _, images = asymmetric
    image = tf.constant(images[0])
    for k, name in enumerate(pipeline.DIHEDRAL):
        np.testing.assert_array_equal(pipeline.dihedral(image, k).numpy(), numpy_dihedral(images[0], name))
    batch = tf.constant(images[:2])  # BHWC works too
    np.testing.assert_array_equal(pipeline.dihedral(batch, 6).numpy()[1],
                                  numpy_dihedral(images[1], "fliplr_transpose"))


def test_train_transforms_are_uniform_over_the_8(asymmetric):
    source, frame, images = asymmetric
    ds = pipeline.train_dataset(source, frame, crop_size=16, batch_size=3, seed=5)
    counts, seen = Counter(), Counter()
    for _ in range(60):  # 60 epochs x 6 images
        for batch, labels in ds:
            for output, label in zip(batch.numpy(), labels.numpy(), strict=True):
                index, name = _which_transform(output, images)
                counts[name] += 1
                seen[index] += 1
                np.testing.assert_array_equal(label, pipeline.frame_labels(frame)[index])
    total = sum(counts.values())
    assert total == 360 and set(seen.values()) == {60}  # each image once per epoch
    for name in pipeline.DIHEDRAL:
        assert abs(counts[name] / total - 1 / 8) < 0.05, counts


def test_crop_windows_follow_spec_5_1():
    seeds = tf.data.Dataset.range(2000).map(lambda s: tf.stack([s, tf.constant(11, tf.int64)]))
    windows = next(iter(seeds.map(lambda seed: pipeline.crop_window(seed, 768, 512)).batch(2000))).numpy()
    row, col, sides = windows.T
    assert (512 <= sides).all() and (sides < 768).all()
    assert (0 <= row).all() and (row < 768 - sides).all() and (0 <= col).all() and (col < 768 - sides).all()
    rows = row / (768 - sides)
    assert min(sides) < 520 and max(sides) > 760  # the whole range is used
    assert abs(np.mean(sides) - (512 + 767) / 2) < 8  # uniform: mean in the middle
    assert abs(np.mean(rows) - 0.5) < 0.03
    assert tuple(pipeline.crop_window(tf.constant([1, 2], tf.int64), 64, 64).numpy()) == (0, 0, 64)


def test_train_batches_shapes_and_range(prepared):
    root, _ = prepared
    layout = DataLayout(root)
    frame = pd.read_csv(layout.split_dir / "random_ext_folds5" / "random_train_cv0.csv")
    ds = pipeline.train_dataset(pipeline.Source(layout, SIZE), frame, crop_size=48, batch_size=16)
    batches = list(ds)
    assert len(batches) == len(frame) // 16  # drop_remainder, no repeat
    images, labels = batches[0]
    assert images.shape == (16, 48, 48, 4) and images.dtype == tf.float32
    assert labels.shape == (16, 28) and labels.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert float(tf.reduce_max(images)) > 0.2


def test_same_seed_same_batches_and_epochs_differ(prepared):
    root, _ = prepared
    layout = DataLayout(root)
    frame = pd.read_csv(layout.split_dir / "random_ext_folds5" / "random_train_cv1.csv")
    source = pipeline.Source(layout, SIZE)

    def first_batches(seed):
        ds = pipeline.train_dataset(source, frame, crop_size=40, batch_size=8, seed=seed)
        return [b[0].numpy() for _, b in zip(range(3), ds, strict=False)], ds

    a, ds = first_batches(7)
    b, _ = first_batches(7)
    c, _ = first_batches(8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    second_epoch = next(iter(ds))[0].numpy()  # ds was already iterated once
    assert not np.array_equal(a[0], second_epoch)


def test_valid_is_the_whole_image_in_frame_order(prepared):
    root, _ = prepared
    layout = DataLayout(root)
    frame = pd.read_csv(layout.split_dir / "random_ext_folds5" / "random_valid_cv2.csv")
    outputs = np.concatenate([x.numpy() for x, _ in pipeline.valid_dataset(
        pipeline.Source(layout, SIZE), frame, crop_size=SIZE, batch_size=7)])
    assert outputs.shape == (len(frame), SIZE, SIZE, 4)
    for i in (0, len(frame) // 2, len(frame) - 1):
        kind = "external" if frame["External"][i] else "kaggle"
        expected = read_cached_rgby(layout, kind, "train", frame["Id"][i], SIZE) / 255.0
        np.testing.assert_allclose(outputs[i], expected, atol=1e-6)
    resized = next(iter(pipeline.valid_dataset(pipeline.Source(layout, SIZE), frame, 32, 4)))[0]
    assert resized.shape == (4, 32, 32, 4)


def test_tta_views_are_the_numpy_transforms_and_seeds_differ(prepared):
    root, _ = prepared
    layout = DataLayout(root)
    frame = pd.read_csv(layout.meta_dir / "test_meta.csv")
    source = pipeline.Source(layout, SIZE, kaggle_split="test")
    views, index = next(iter(pipeline.tta_dataset(source, frame, 48, batch_size=3, seeds=(0, 1, 2))))
    assert views.shape == (3, 24, 48, 48, 4) and index.numpy().tolist() == [0, 1, 2]
    image = read_cached_rgby(layout, "kaggle", "test", frame["Id"][1], SIZE)
    whole = tf.image.resize(image.astype(np.float32), [48, 48]).numpy() / 255.0
    v = views.numpy()[1]
    for seed in range(3):
        base = whole if seed == 0 else v[8 * seed]
        for k, name in enumerate(pipeline.DIHEDRAL):
            np.testing.assert_allclose(v[8 * seed + k], numpy_dihedral(base, name), atol=1e-6)
    assert not np.allclose(v[8], v[16])  # seed 1 and seed 2 crop different windows
    again = next(iter(pipeline.tta_dataset(source, frame, crop_size=48, batch_size=3, seeds=(0, 1, 2))))[0]
    np.testing.assert_array_equal(again.numpy(), views.numpy())  # drawn from (seed, Id): reproducible
    other = next(iter(pipeline.tta_dataset(source, frame.iloc[[1, 0]], 48, 2, seeds=(0, 1, 2))))[0]
    np.testing.assert_array_equal(other.numpy()[0], v)  # the same Id gets the same crops at any position


def test_metric_dataset_gives_antibody_codes(prepared):
    root, _ = prepared
    layout = DataLayout(root)
    frame = pd.read_csv(layout.split_dir / "external_tr_validset_antibody_split.csv")
    source = pipeline.Source(layout, SIZE)
    images, codes = next(iter(pipeline.metric_dataset(source, frame, 5, training=False)))
    assert images.shape == (5, SIZE, SIZE, 4) and codes.dtype == tf.int32
    assert codes.numpy().tolist() == frame["antibody_code"][:5].tolist()
    train = pipeline.metric_dataset(pipeline.Source(layout, SIZE), frame, 4, training=True, seed=1)
    assert sum(int(c.shape[0]) for _, c in train) == len(frame) // 4 * 4


def test_wrong_size_cache_image_is_an_error(asymmetric, tmp_path):
    source, frame, _ = asymmetric
    small = pipeline.Source(source.layout, 16)
    bad = source.layout.kaggle_cache("train", "img3", "blue", 16)
    original = bad.read_bytes()
    try:
        Image.fromarray(np.zeros((12, 16), np.uint8)).save(bad)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"not 16x16.*{bad.name}"):
            list(pipeline.valid_dataset(small, frame, 16, 6))
    finally:
        bad.write_bytes(original)


def test_two_replicas_each_get_half_of_the_global_batch(prepared):
    """MirroredStrategy over 2 logical CPUs (in a fresh process: logical devices must be set first)."""
    root, _ = prepared
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from hpa_tf.data import pipeline, prepare
        from hpa_tf.layout import DataLayout
        layout = DataLayout({str(root)!r})
        frame = pd.read_csv(layout.split_dir / "random_ext_folds5" / "random_train_cv0.csv")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        fn = pipeline.dataset_fn(pipeline.train_dataset, pipeline.Source(layout, 64), frame, 32, 8, seed=2)
        ds = strategy.distribute_datasets_from_function(fn)
        steps = 0
        for images, labels in ds:
            parts = strategy.experimental_local_results(images)
            assert len(parts) == 2 and all(p.shape == (4, 32, 32, 4) for p in parts), [p.shape for p in parts]
            flat = np.concatenate([p.numpy().reshape(4, -1) for p in parts])
            assert len({{row.tobytes() for row in flat}}) == 8
            steps += 1
        print("steps", steps)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(DataLayout(root).split_dir / "random_ext_folds5" / "random_train_cv0.csv")
    assert f"steps {len(frame) // 8}" in done.stdout


def test_tfrecord_shards_give_the_same_examples_as_the_files(prepared):
    root, _ = prepared
    layout = DataLayout(root)
    prepare.prepare(root, workers=1, progress=False, tfrecords=True)
    frame = pd.read_csv(layout.split_dir / "random_ext_folds5" / "random_valid_cv3.csv")

    def examples(tfrecords):
        source = pipeline.Source(layout, SIZE, tfrecords=tfrecords)
        pairs = [(x.tobytes(), y.tobytes()) for xs, ys in pipeline.valid_dataset(source, frame, SIZE, 8)
                 for x, y in zip(xs.numpy(), ys.numpy(), strict=True)]
        return sorted(pairs)

    from_files, from_shards = examples(False), examples(True)
    assert len(from_files) == len(frame) and from_files == from_shards
    train = pipeline.train_dataset(pipeline.Source(layout, SIZE, tfrecords=True), frame, 48, 4, seed=1)
    assert sum(int(x.shape[0]) for x, _ in train) == len(frame) // 4 * 4

