"""TFRecord shards of the resize caches, for clusters and remote storage (`prepare --tfrecords`).

Each record is a tf.train.Example: "id" (bytes, utf-8 Id), "image" (bytes: raw uint8 RGBY pixels of
size x size x 4 in C order) and "size" (int64, the side). A group's folder holds the shards, shards.csv
(each shard's byte count and CRC-32) and index.csv (Id, shard file name, position in the shard), written
last as the completion marker. A shard whose size differs from shards.csv is damaged: readers refuse it and
prepare writes the group again (with --verify also on a CRC-32 that differs).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Iterator
from contextlib import closing
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from hpa_tf.atomic import write_atomic, write_csv_atomic
from hpa_tf.data.resize import read_cached_rgby
from hpa_tf.errors import DataError
from hpa_tf.layout import DataLayout, read_table, validate_id
from hpa_tf.output import bars_disabled
from hpa_tf.parallel import imap

log = logging.getLogger(__name__)
GROUPS = {"train": ("kaggle", "train"), "test": ("kaggle", "test"), "external": ("external", "train")}
INDEX_COLUMNS = ["Id", "shard", "position"]
SHARDS = "shards.csv"
SHARD_COLUMNS = ["shard", "bytes", "crc32"]
SHARD_GLOB = "shard-?????-of-?????.tfrecord"
FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "size": tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized, size: int | None = None):
    """One serialized record -> (Id string tensor, uint8 image [size, size, 4]); `size` makes it static."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    side = tf.cast(parsed["size"], tf.int32)
    image = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), tf.stack([side, side, 4]))
    if size is not None:  # static shape, checked when the record is parsed
        image = tf.ensure_shape(image, [int(size), int(size), 4])
    return parsed["id"], image


def serialize_example(image_id: str, rgby: np.ndarray) -> bytes:
    """A uint8 (size, size, 4) image -> the bytes of one record (deterministic serialization)."""
    size = rgby.shape[0]
    if rgby.dtype != np.uint8 or rgby.shape != (size, size, 4):
        raise ValueError(f"{image_id}: expected a uint8 (size, size, 4) image, got {rgby.dtype} {rgby.shape}")
    example = tf.train.Example(features=tf.train.Features(feature={
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode("utf-8")])),
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[rgby.tobytes()])),
        "size": tf.train.Feature(int64_list=tf.train.Int64List(value=[size])),
    }))
    return example.SerializeToString(deterministic=True)  # fixed order of the feature map; C order bytes


# ---------------------------------------------------------------------------------------------- layout

def tfrecord_dir(layout: DataLayout, group: str, size: int) -> Path:
    """Folder of one group's shards: root/tfrecords/{group}_{size}."""
    if group not in GROUPS:
        raise ValueError(f"unknown TFRecord group {group!r}; expected one of {list(GROUPS)}")
    return layout.tfrecord_dir(group, size)


def shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}.tfrecord"


def _index_path(layout: DataLayout, group: str, size: int) -> Path:
    index = tfrecord_dir(layout, group, size) / "index.csv"
    if not index.is_file():
        raise DataError(f"no finished TFRecords at {index.parent} (missing {index}); run "
                                f"`python -m hpa_tf.data.prepare --tfrecords` first")
    return index


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """index.csv or shards.csv of a group, or DataError naming it when it is damaged."""
    remedy = ": run `python -m hpa_tf.data.prepare --tfrecords` to write it again"
    frame = read_table(path, columns, dtype={"Id": str, "shard": str, "crc32": str}, remedy=remedy,
                       written=True)
    if list(frame.columns) != columns:
        raise DataError(f"{path} is damaged (columns {list(frame.columns)}, not {columns}){remedy}")
    return frame


def read_index(layout: DataLayout, group: str, size: int) -> pd.DataFrame:
    """index.csv of a group: Id, shard (file name in the folder), position (record number in the shard)."""
    return _read_csv(_index_path(layout, group, size), INDEX_COLUMNS)


def shard_paths(layout: DataLayout, group: str, size: int) -> list[Path]:
    """The shard files of a finished group, sorted; DataError naming a shard that is missing or of another
    size than shards.csv recorded, and the command that writes the group again."""
    index = read_index(layout, group, size)
    folder = tfrecord_dir(layout, group, size)
    problem = _damage(folder, index, verify=False)
    if problem:
        raise DataError(f"the TFRecords in {folder} are damaged ({problem}): run `python -m "
                        f"hpa_tf.data.prepare --data-dir {layout.root} --tfrecords` to write them again")
    return sorted(folder / name for name in index["shard"].unique())


def _damage(folder: Path, index: pd.DataFrame, verify: bool) -> str | None:
    """What is wrong with the shards of a group's `index`: shards.csv damaged or not listing them, a shard
    missing or of another size than it recorded (with `verify`, another CRC-32); None when nothing is."""
    try:
        shards = _read_csv(folder / SHARDS, SHARD_COLUMNS)
    except FileNotFoundError:
        return f"{SHARDS} is missing"
    except DataError:
        return f"{SHARDS} is damaged"
    if sorted(shards["shard"]) != sorted(index["shard"].unique()):
        return f"{SHARDS} does not list the shards of index.csv"
    for name, size, crc in shards.itertuples(index=False):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was written"
        if verify and _crc32(path) != crc:
            return f"{name} is not the file that was written (its CRC-32 differs)"
    return None


def _crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


# ---------------------------------------------------------------------------------------------- writer

def _ids(group: str, refs_or_ids: Iterable) -> list[str]:
    """Image Ids from Ids or ImageRefs (whose kind/split must match the group); unique and file-safe."""
    ids, seen = [], set()
    for item in refs_or_ids:
        if hasattr(item, "image_id"):
            if (item.kind, item.split) != GROUPS[group]:
                raise ValueError(f"image {item.key} does not belong to TFRecord group {group!r}")
            item = item.image_id
        if validate_id(item) in seen:
            raise ValueError(f"duplicate Id {item!r} in TFRecord group {group!r}")
        seen.add(item)
        ids.append(item)
    return ids


def _rewrite_reason(folder: Path, ids: list[str], verify: bool) -> str | None:
    """None when `folder` is a finished group of these Ids in this order with its shards as written; else
    why it is written again: "" when it is absent or of other Ids, otherwise what is damaged."""
    if not (folder / "index.csv").is_file():  # shards without it: a write was interrupted, or it was lost
        return "index.csv is missing" if any(folder.glob(SHARD_GLOB)) else ""
    try:
        index = _read_csv(folder / "index.csv", INDEX_COLUMNS)
    except DataError:
        return "index.csv is damaged"
    return "" if index["Id"].tolist() != ids else _damage(folder, index, verify)


def _read_images(read, ids: list[str], workers: int) -> Iterator[np.ndarray]:
    """read(image_id) for each Id, in order; in a process pool for larger jobs."""
    workers = workers if len(ids) >= 64 else 1  # a pool only pays for itself on larger jobs
    return imap(read, ids, workers, chunksize=2, ordered=True)


def write_tfrecords(layout: DataLayout, group: str, refs_or_ids: Iterable, size: int,
                    shard_bytes: int = 256 * 2**20, workers: int = 1, progress: bool = True,
                    verify: bool = False) -> Path:
    """Write one group's cached images (in the given order) as shards of ~shard_bytes raw pixel bytes.

    Skips the work when index.csv already lists the same Ids in the same order and every shard has the size
    (with `verify`, also the CRC-32) shards.csv recorded; a damaged group is written again, with one log
    line saying what was wrong. Returns the folder."""
    folder = tfrecord_dir(layout, group, size)
    size, ids = int(size), _ids(group, refs_or_ids)
    if size < 1 or shard_bytes < 1:
        raise ValueError(f"size and shard_bytes must be positive, got {size} and {shard_bytes}")
    reason = _rewrite_reason(folder, ids, verify)
    if reason is None:
        return folder
    if reason:
        log.warning(f"writing the TFRecords in {folder} again: {reason}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.csv").unlink(missing_ok=True)  # the folder is incomplete from here on
    for stale in [*folder.glob(SHARD_GLOB), *folder.glob(".shard-*.tmp*")]:
        stale.unlink()
    per_shard = max(1, shard_bytes // (size * size * 4))
    n_shards = max(1, -(-len(ids) // per_shard))
    kind, split = GROUPS[group]
    images = _read_images(partial(read_cached_rgby, layout, kind, split, size=size), ids, workers)
    rows, shards = [], []
    with tqdm(total=len(ids), desc=f"TFRecords {group} {size}", unit="img",
              disable=bars_disabled(progress)) as bar, closing(images):
        for i in range(n_shards):
            name, chunk = shard_name(i, n_shards), ids[i * per_shard:(i + 1) * per_shard]

            def write(temp: Path, chunk=chunk) -> None:
                with tf.io.TFRecordWriter(str(temp)) as writer:
                    for image_id in chunk:
                        writer.write(serialize_example(image_id, next(images)))
                        bar.update()

            write_atomic(folder / name, write)
            shards.append([name, (folder / name).stat().st_size, _crc32(folder / name)])
            rows += [[image_id, name, position] for position, image_id in enumerate(chunk)]
    write_csv_atomic(pd.DataFrame(shards, columns=SHARD_COLUMNS), folder / SHARDS)
    write_csv_atomic(pd.DataFrame(rows, columns=INDEX_COLUMNS), folder / "index.csv")
    return folder
