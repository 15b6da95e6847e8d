"""TFRecord shards of the resize caches, for clusters and remote storage (`prepare --tfrecords`).

Each record is a tf.train.Example: "id" (bytes, utf-8 Id), "image" (bytes: raw uint8 RGBY pixels of
size x size x 4 in C order) and "size" (int64, the side). A group's folder holds the shards and index.csv
(Id, shard file name, position in the shard), written last as the completion marker.
"""

from __future__ import annotations

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
from hpa_tf.layout import DataLayout, validate_id
from hpa_tf.output import bars_disabled
from hpa_tf.parallel import imap

GROUPS = {"train": ("kaggle", "train"), "test": ("kaggle", "test"), "external": ("external", "train")}
INDEX_COLUMNS = ["Id", "shard", "position"]
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


def read_index(layout: DataLayout, group: str, size: int) -> pd.DataFrame:
    """index.csv of a group: Id, shard (file name in the folder), position (record number in the shard)."""
    index = _index_path(layout, group, size)
    frame = pd.read_csv(index, dtype={"Id": str, "shard": str}, keep_default_na=False)
    if list(frame.columns) != INDEX_COLUMNS:
        raise ValueError(f"{index}: expected columns {INDEX_COLUMNS}, found {list(frame.columns)}")
    return frame


def shard_paths(layout: DataLayout, group: str, size: int) -> list[Path]:
    """The shard files of a finished group, sorted."""
    return sorted(_index_path(layout, group, size).parent.glob(SHARD_GLOB))


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


def _is_complete(folder: Path, ids: list[str]) -> bool:
    """True if index.csv lists exactly these Ids in this order and every listed shard exists."""
    index = folder / "index.csv"
    if not index.is_file():
        return False
    frame = pd.read_csv(index, dtype={"Id": str, "shard": str}, keep_default_na=False)
    if list(frame.columns) != INDEX_COLUMNS or frame["Id"].tolist() != ids:
        return False
    return all((folder / name).is_file() for name in frame["shard"].unique())


def _read_images(read, ids: list[str], workers: int) -> Iterator[np.ndarray]:
    """read(image_id) for each Id, in order; in a process pool for larger jobs."""
    workers = workers if len(ids) >= 64 else 1  # a pool only pays for itself on larger jobs
    return imap(read, ids, workers, chunksize=2, ordered=True)


def write_tfrecords(layout: DataLayout, group: str, refs_or_ids: Iterable, size: int,
                    shard_bytes: int = 256 * 2**20, workers: int = 1, progress: bool = True) -> Path:
    """Write one group's cached images (in the given order) as shards of ~shard_bytes raw pixel bytes.

    Skips the work when index.csv already lists the same Ids in the same order; returns the folder."""
    folder = tfrecord_dir(layout, group, size)
    size, ids = int(size), _ids(group, refs_or_ids)
    if size < 1 or shard_bytes < 1:
        raise ValueError(f"size and shard_bytes must be positive, got {size} and {shard_bytes}")
    if _is_complete(folder, ids):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.csv").unlink(missing_ok=True)  # the folder is incomplete from here on
    for stale in [*folder.glob(SHARD_GLOB), *folder.glob(".shard-*.tmp*")]:
        stale.unlink()
    per_shard = max(1, shard_bytes // (size * size * 4))
    n_shards = max(1, -(-len(ids) // per_shard))
    kind, split = GROUPS[group]
    images = _read_images(partial(read_cached_rgby, layout, kind, split, size=size), ids, workers)
    rows = []
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
            rows += [[image_id, name, position] for position, image_id in enumerate(chunk)]
    write_csv_atomic(pd.DataFrame(rows, columns=INDEX_COLUMNS), folder / "index.csv")
    return folder
