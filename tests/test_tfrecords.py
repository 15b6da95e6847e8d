"""TFRecord shards of the resize caches (`prepare --tfrecords`) on the tiny synthetic dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from hpa_tf.data import prepare
from hpa_tf.data.resize import read_cached_rgby
from hpa_tf.data.synthetic import generate
from hpa_tf.data.tfrecords import (
    GROUPS,
    parse_example,
    read_index,
    shard_paths,
    tfrecord_dir,
    write_tfrecords,
)
from hpa_tf.errors import DataError
from hpa_tf.layout import DataLayout

SIZE = 64  # the tiny preset's image size: prepare's default cache size for it
SMALL_SHARD = 100_000  # 6 images of 64 x 64 x 4 bytes per shard


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny dataset prepared with TFRecords."""
    path = generate(tmp_path_factory.mktemp("tfrecords") / "tiny", "tiny", 3, progress=False)
    prepare.prepare(path, workers=1, progress=False, tfrecords=True)
    return Path(path)


def _copy(root: Path, target: Path) -> DataLayout:
    """A copy of the prepared dataset without its TFRecords."""
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("tfrecords"))
    return DataLayout(target)


def _group_ids(root: Path, group: str) -> list[str]:
    meta = pd.read_csv(DataLayout(root).meta_dir / f"{group}_meta.csv", dtype={"Id": str})
    return meta["Id"].tolist()


def _records(paths: list[Path]) -> list[tuple[str, np.ndarray]]:
    """(Id, image) of every record of the shards, in order."""
    dataset = tf.data.TFRecordDataset([str(p) for p in paths]).map(lambda s: parse_example(s, SIZE))
    return [(i.numpy().decode(), x.numpy()) for i, x in dataset]


def _shard_records(path: Path) -> list[str]:
    return [i for i, _ in _records([path])]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _check_index(layout: DataLayout, group: str, ids: list[str]) -> pd.DataFrame:
    """index.csv lists ids in order, and each (shard, position) is where the record really is."""
    index = read_index(layout, group, SIZE)
    assert index["Id"].tolist() == ids
    paths = shard_paths(layout, group, SIZE)
    assert sorted(index["shard"].unique()) == [p.name for p in paths]
    found = [(i, p.name, k) for p in paths for k, i in enumerate(_shard_records(p))]
    assert found == list(index.itertuples(index=False, name=None))
    return index


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_image_once_in_order_and_equal_to_its_cache(root, group):
    layout, ids = DataLayout(root), _group_ids(root, group)
    assert len(ids) > 0
    records = _records(shard_paths(layout, group, SIZE))
    assert [i for i, _ in records] == ids == read_index(layout, group, SIZE)["Id"].tolist()
    kind, split = GROUPS[group]
    for image_id, image in records:
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 4)
        np.testing.assert_array_equal(image, read_cached_rgby(layout, kind, split, image_id, SIZE))


@pytest.mark.parametrize("group", list(GROUPS))
def test_index_agrees_with_shard_contents(root, group):
    layout = DataLayout(root)
    index = _check_index(layout, group, _group_ids(root, group))
    assert list(index.columns) == ["Id", "shard", "position"]
    assert [p.name for p in shard_paths(layout, group, SIZE)] == ["shard-00000-of-00001.tfrecord"]


def test_parse_example_static_shape_and_size_check(root):
    path = shard_paths(DataLayout(root), "test", SIZE)[0]
    serialized = next(iter(tf.data.TFRecordDataset(str(path))))
    image_id, image = parse_example(serialized)
    assert image_id.dtype == tf.string and image.shape == (SIZE, SIZE, 4)
    spec = tf.data.TFRecordDataset(str(path)).map(lambda s: parse_example(s, SIZE)).element_spec
    assert spec[1].shape == (SIZE, SIZE, 4) and spec[1].dtype == tf.uint8
    with pytest.raises(tf.errors.InvalidArgumentError):
        parse_example(serialized, SIZE * 2)


def test_small_shards_are_all_readable_with_a_consistent_index(root, tmp_path):
    layout, ids = _copy(root, tmp_path / "data"), _group_ids(root, "train")
    folder = write_tfrecords(layout, "train", ids, SIZE, shard_bytes=SMALL_SHARD, progress=False)
    assert folder == tfrecord_dir(layout, "train", SIZE) == tmp_path / "data" / "tfrecords" / f"train_{SIZE}"
    paths = shard_paths(layout, "train", SIZE)
    n = -(-len(ids) // (SMALL_SHARD // (SIZE * SIZE * 4)))
    assert n > 2 and [p.name for p in paths] == [f"shard-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    _check_index(layout, "train", ids)
    assert [i for i, _ in _records(paths)] == ids


def test_rerun_rewrites_nothing(root):
    layout = DataLayout(root)
    before = {g: _mtimes(tfrecord_dir(layout, g, SIZE)) for g in GROUPS}
    prepare.prepare(root, workers=1, progress=False, tfrecords=True)
    write_tfrecords(layout, "train", _group_ids(root, "train"), SIZE, progress=False)
    assert {g: _mtimes(tfrecord_dir(layout, g, SIZE)) for g in GROUPS} == before


def test_same_inputs_give_identical_bytes(root, tmp_path):
    """Two writes in different folders, one of them with a process pool, give byte-identical files."""
    ids = _group_ids(root, "train")
    folders = [write_tfrecords(_copy(root, tmp_path / name), "train", ids, SIZE, shard_bytes=SMALL_SHARD,
                               workers=workers, progress=False) for name, workers in (("a", 1), ("b", 2))]
    files = [sorted(p.name for p in folder.iterdir()) for folder in folders]
    assert files[0] == files[1] and len(files[0]) > 2
    for name in files[0]:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    default = tfrecord_dir(DataLayout(root), "train", SIZE)  # same records as the one-shard file
    one_shard = write_tfrecords(_copy(root, tmp_path / "c"), "train", ids, SIZE, progress=False)
    for name in ["index.csv", "shards.csv", "shard-00000-of-00001.tfrecord"]:
        assert (one_shard / name).read_bytes() == (default / name).read_bytes()


def test_changed_ids_rewrite_the_group_without_stale_shards(root, tmp_path):
    layout, ids = _copy(root, tmp_path / "data"), _group_ids(root, "external")
    folder = write_tfrecords(layout, "external", ids, SIZE, shard_bytes=SMALL_SHARD, progress=False)
    assert len(shard_paths(layout, "external", SIZE)) > 2
    write_tfrecords(layout, "external", ids[::-1], SIZE, shard_bytes=SMALL_SHARD, progress=False)
    _check_index(layout, "external", ids[::-1])  # same Ids in another order are rewritten
    changed = ids[:50]  # fewer Ids: one shard instead of many
    write_tfrecords(layout, "external", changed, SIZE, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["index.csv", "shard-00000-of-00001.tfrecord",
                                                        "shards.csv"]
    _check_index(layout, "external", changed)
    refs = [prepare.ImageRef("external", "train", i) for i in ids]  # ImageRefs work too
    write_tfrecords(layout, "external", refs, SIZE, progress=False)
    _check_index(layout, "external", ids)


def test_bad_input_is_refused(root):
    layout = DataLayout(root)
    with pytest.raises(ValueError, match="does not belong"):
        write_tfrecords(layout, "test", [prepare.ImageRef("kaggle", "train", "x1")], SIZE, progress=False)
    with pytest.raises(ValueError, match="duplicate Id 'x1'"):
        write_tfrecords(layout, "test", ["x1", "x1"], SIZE, progress=False)
    with pytest.raises(ValueError, match="unknown TFRecord group"):
        tfrecord_dir(layout, "valid", SIZE)


def test_missing_tfrecords_name_the_path_and_the_flag(root, tmp_path):
    for layout, size in ((DataLayout(tmp_path), SIZE), (DataLayout(root), SIZE * 2)):
        for reader in (read_index, shard_paths):
            with pytest.raises(DataError, match="--tfrecords") as error:
                reader(layout, "train", size)
            assert str(tfrecord_dir(layout, "train", size)) in str(error.value)
