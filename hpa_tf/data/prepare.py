"""Data preparation (spec sections 1-4) as one resumable command.

    python -m hpa_tf.data.prepare --data-dir DIR [--sizes 768 1536] [--workers N]

Writes, under DIR: resize caches per size, meta CSVs, pHash matches (train<->HPAv18, test<->test,
test<->HPAv18 and our own test leak list), the 5-fold and antibody splits, the optional label correction
and per-channel statistics. A rerun skips finished work (checked against a manifest of the cache files:
their sizes and CRC-32s), redoes anything missing or damaged, removes the hidden temp files a killed run
left, and rewrites no file whose content is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf.atomic import remove_temporaries, write_csv_atomic, write_json_atomic
from hpa_tf.data.dedup import HASH_SIZE, match_hashes, phash_planes
from hpa_tf.data.io import read_rgby
from hpa_tf.data.resize import (
    cache_is_complete,
    cache_paths,
    cache_source,
    channel_stats,
    resize_rgby,
    write_cache,
)
from hpa_tf.errors import DataError
from hpa_tf.labels import LABEL_NAMES, format_target, parse_target, targets_to_matrix
from hpa_tf.layout import COLORS, DataLayout, read_table, validate_id
from hpa_tf.output import bars_disabled, prog, run_or_exit, setup_logging
from hpa_tf.parallel import imap

log = logging.getLogger("hpa_tf.data.prepare")  # not __name__, "__main__" under `python -m`

REAL_DATA_SIZES = (768, 1536)  # what the i768 and i1536 training profiles read (spec 1.2)
FOLD_SEED = 100  # random_state of every split in the reference (spec 3)
_FEATURES = ["hash_r", "hash_g", "hash_b"] + [f"{s}_{c}" for s in ("mean", "std") for c in "rgby"]


class PrepareError(DataError):
    """Bad input data: the message names the file or CSV row."""


@dataclass(frozen=True)
class ImageRef:
    """One image to prepare: kind 'kaggle' (split train/test) or 'external' (HPAv18)."""

    kind: str
    split: str
    image_id: str

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.split}/{self.image_id}"


# --------------------------------------------------------------------------------------------- raw input

def read_raw_csv(path: Path, columns: list[str], unique: bool = True) -> pd.DataFrame:
    """Read a raw Kaggle/HPAv18 CSV as strings, checking columns, Ids (safe; unique unless `unique` is
    False, as in a corrections file where a later decision on an image follows an earlier one) and
    Targets."""
    if not path.is_file():
        raise PrepareError(f"missing input file: {path}")
    try:
        frame = read_table(path, columns)
    except DataError as error:  # not a table, or a column missing
        raise PrepareError(str(error)) from None
    for row, image_id in enumerate(frame["Id"], start=2):  # CSV line numbers (header is line 1)
        try:
            validate_id(image_id)
        except ValueError as error:
            raise PrepareError(f"{path}, line {row}: {error}") from None
    duplicated = frame["Id"][frame["Id"].duplicated()]
    if unique and len(duplicated):
        row = int(duplicated.index[0]) + 2
        raise PrepareError(f"{path}, line {row}: duplicate Id {duplicated.iloc[0]!r}")
    if "Target" in columns:
        for row, target in enumerate(frame["Target"], start=2):
            try:
                if not parse_target(target):  # it would train as "no label", which no HPA image has
                    raise PrepareError(f"empty Target for Id {frame['Id'].iloc[row - 2]!r}")
            except ValueError as error:
                raise PrepareError(f"{path}, line {row}: {error}") from None
    return frame[columns]


def build_meta(raw: pd.DataFrame, external: bool) -> pd.DataFrame:
    """Spec 1.4: sorted unique Target, 28 one-hot columns named by LABEL_NAMES, External, and for
    HPAv18 the antibody (Id before the first '_') and its code over antibody strings (sklearn's LabelEncoder
    codes: the index in the sorted unique strings)."""
    meta = pd.DataFrame({"Id": raw["Id"].to_numpy()})
    meta["Target"] = [format_target(parse_target(t)) for t in raw["Target"]]
    onehot = targets_to_matrix(meta["Target"]).astype(int)
    meta = pd.concat([meta, pd.DataFrame(onehot, columns=LABEL_NAMES)], axis=1)
    meta["External"] = external
    if external:
        antibody = meta["Id"].str.split("_").str[0]
        if not antibody.str.fullmatch(r"\d+").all():
            bad = meta["Id"][~antibody.str.fullmatch(r"\d+")].iloc[0]
            raise PrepareError(f"HPAv18 Id {bad!r} does not start with a numeric antibody id")
        meta["antibody"] = antibody.astype(int)
        meta["antibody_code"] = np.unique(antibody.to_numpy(), return_inverse=True)[1]
    return meta


# ------------------------------------------------------------------------------------ per-image work

def _image_task(args: tuple) -> tuple[str, dict[int, list[str]], list | None]:
    """Worker: make the resize caches of one image for the sizes in `todo` ({size: redo}: True rewrites
    them, False only those that do not decode) and, if asked, its pHashes and channel stats.
    Returns (key, {size: fingerprints of the 4 cache files}, features or None)."""
    root, ref, todo, want_features = args
    layout = DataLayout(root)
    sources: dict[str, np.ndarray] = {}  # each source image is read once, whatever the number of sizes

    def read(source: str) -> np.ndarray:
        if source not in sources:
            sources[source] = read_rgby(layout, ref.image_id, source, ref.split)
        return sources[source]

    cached = {}
    for size, redo in todo.items():
        if redo or not cache_is_complete(layout, ref.kind, ref.split, ref.image_id, size):
            rgby = read(cache_source(layout, ref.kind, ref.split, ref.image_id))
            written = write_cache(layout, ref.kind, ref.split, ref.image_id, size, rgby)
        else:  # kept: fingerprint the files as they are
            paths = cache_paths(layout, ref.kind, ref.split, ref.image_id, size).values()
            written = [p.read_bytes() for p in paths]
        cached[size] = [_fingerprint(data) for data in written]
    features = None
    if want_features:  # spec 2 and 4: from the Kaggle PNGs (not the TIFFs) and the HPAv18 JPEGs
        rgby = read("png" if ref.kind == "kaggle" else "external")
        if ref.kind == "external" and max(rgby.shape[:2]) > HASH_SIZE:  # as the original's 512 px cache
            rgby = resize_rgby(rgby, HASH_SIZE)
        features = [f"{h:016x}" for h in phash_planes(rgby)]
        if ref.kind == "kaggle":  # spec 4 averages Kaggle train + test only
            features += [float(v) for v in np.concatenate(channel_stats(rgby))]
        else:
            features += [np.nan] * 8
    return ref.key, cached, features


_FINGERPRINT = r"\d+:[0-9a-f]{8}"  # a manifest value: byte count and CRC-32 of a cache file
_HASH, _FLOAT = r"[0-9a-f]{16}", r"-?\d+(\.\d+)?(e[-+]\d+)?"  # image_features.csv values
_STAT = f"({_FLOAT})?"  # empty for HPAv18 images, whose statistics spec 4 does not use
_POOL_MIN_IMAGES = 64  # without --workers, fewer images than this run in one process (a pool costs seconds)


def _fingerprint(data: bytes) -> str:
    """A cache file's byte count and CRC-32, as the manifest stores it: '12345:89abcdef'."""
    return f"{len(data)}:{zlib.crc32(data):08x}"


def source_signature(layout: DataLayout, ref: ImageRef) -> str:
    """Sizes and modification times of an image's source files: when they change, the image is redone."""
    if ref.kind == "external":
        paths = [layout.external_jpg(ref.image_id, c) for c in COLORS]
    else:
        paths = [layout.kaggle_png(ref.split, ref.image_id, c) for c in COLORS]
        paths += [layout.kaggle_tif(ref.split, ref.image_id, c) for c in COLORS]
    parts = []
    for path in paths:
        try:
            stat = path.stat()
            parts.append(f"{stat.st_size}.{stat.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _read_saved(path: Path, patterns: dict[str, str]) -> pd.DataFrame | None:
    """A bookkeeping CSV of an earlier run with the columns and value patterns of `patterns`, or None when
    absent; a damaged one is None too, with one log line naming it, so that the work it recorded is
    checked or redone."""
    if not path.is_file():
        return None
    try:
        frame = read_table(path, list(patterns), written=True)
        for column, pattern in patterns.items():
            bad = ~frame[column].str.fullmatch(pattern)
            if bad.any():
                raise DataError(f"{path} is damaged (a malformed {column} on line "
                                f"{int(bad.to_numpy().argmax()) + 2})")
    except DataError as error:
        log.warning(f"{error}: not used, the work it recorded is checked or redone")
        return None
    return frame


def _load_manifest(layout: DataLayout, size: int) -> dict[str, list[str]]:
    """{image key: fingerprints of its 4 cache files} of an earlier run; {} when there is none (or it is
    damaged), so that every cache is checked by decoding it."""
    frame = _read_saved(layout.cache_manifest(size), {"key": ".+", **dict.fromkeys(COLORS, _FINGERPRINT)})
    if frame is None:
        return {}
    return dict(zip(frame["key"], frame[list(COLORS)].to_numpy().tolist(), strict=True))


def _cache_is_recorded(layout: DataLayout, ref: ImageRef, size: int, recorded: list[str],
                       verify: bool = False) -> bool:
    """The four cache files have the byte sizes the manifest recorded (a stat each: fast at any scale)
    and, with `verify`, their CRC-32s too, so that a file damaged in place at the same size is redone
    (this reads every cache file)."""
    paths = cache_paths(layout, ref.kind, ref.split, ref.image_id, size).values()
    for path, fingerprint in zip(paths, recorded, strict=True):
        try:
            if path.stat().st_size != int(fingerprint.split(":")[0]):
                return False
            if verify and _fingerprint(path.read_bytes()) != fingerprint:
                return False
        except FileNotFoundError:
            return False
    return True


def _output_folders(layout: DataLayout, sizes: list[int]) -> list[Path]:
    """Every folder prepare writes files into: the resize caches of each size, meta/ and split/."""
    folders = [layout.meta_dir, layout.split_dir]
    if layout.split_dir.is_dir():
        folders += [p for p in layout.split_dir.iterdir() if p.is_dir()]
    for size in sizes:
        folders += [layout.kaggle_cache(split, "x", "red", size).parent for split in ("train", "test")]
        folders.append(layout.external_cache("x", "red", size).parent)
    return folders


def _saved_features(path: Path) -> tuple[dict[str, list], dict[str, str]]:
    """({image key: features}, {image key: source signature}) of an earlier run's image_features.csv; a
    Kaggle image without its statistics is left out (redone)."""
    saved = _read_saved(path, {"key": ".+", "source": _HASH,
                               **{f: _HASH if f.startswith("hash") else _STAT for f in _FEATURES}})
    if saved is None:
        return {}, {}
    saved[_FEATURES[3:]] = saved[_FEATURES[3:]].replace("", "nan").astype(float)
    whole = saved["key"].str.startswith("external/") | saved[_FEATURES[3:]].notna().all(axis=1)
    saved = saved[whole]
    return (dict(zip(saved["key"], saved[_FEATURES].to_numpy().tolist(), strict=True)),
            dict(zip(saved["key"], saved["source"], strict=True)))


def _processes(workers: int | None, images: int) -> int:
    """How many processes prepare `images` images: an explicit `workers` (no more than there are images),
    else every core from _POOL_MIN_IMAGES images up and one process below."""
    if workers is None:
        workers = (os.cpu_count() or 1) if images >= _POOL_MIN_IMAGES else 1
    return max(1, min(workers, images))


def process_images(layout: DataLayout, refs: list[ImageRef], sizes: list[int], workers: int | None,
                   progress: bool, verify: bool = False) -> dict[str, list]:
    """Resize caches for every size and pHash/stat features for every image, skipping finished work, in
    `workers` processes (None: see _processes).

    Returns {image key: features}; the features and cache manifests are saved under meta/."""
    feature_path = layout.meta_dir / "image_features.csv"
    features, sources = _saved_features(feature_path)
    manifests = {size: _load_manifest(layout, size) for size in sizes}
    tasks = []
    for ref in refs:
        signature = source_signature(layout, ref)
        if sources.get(ref.key) != signature:  # new image, or its source files changed: redo everything
            features.pop(ref.key, None)
            sources[ref.key] = signature
            tasks.append((str(layout.root), ref, dict.fromkeys(sizes, True), True))
            continue
        todo = {}
        for size in sizes:
            recorded = manifests[size].get(ref.key)
            if recorded is None:  # not recorded (a killed run, an older manifest): keep it if it decodes
                todo[size] = False
            elif not _cache_is_recorded(layout, ref, size, recorded, verify):  # changed since written
                todo[size] = True
        if todo or ref.key not in features:
            tasks.append((str(layout.root), ref, todo, ref.key not in features))
    processes = _processes(workers, len(tasks))
    if tasks:
        log.info(f"{len(tasks)} images to prepare in {processes} process{'es' if processes > 1 else ''}")
    chunk = max(1, min(16, len(tasks) // (4 * processes)))  # small enough to keep every process busy
    try:
        with tqdm(total=len(tasks), desc="caches, pHashes, stats", unit="img",
                  disable=bars_disabled(progress) or not tasks) as bar:
            for key, cached, feats in imap(_image_task, tasks, processes, chunksize=chunk):
                for size, fingerprints in cached.items():
                    manifests[size][key] = fingerprints
                if feats is not None:
                    features[key] = feats
                bar.update()
    finally:  # record finished work even when a bad image stops the run
        wanted = {ref.key for ref in refs}
        for size in sizes:
            rows = [[k, *v] for k, v in sorted(manifests[size].items()) if k in wanted]
            write_csv_atomic(pd.DataFrame(rows, columns=["key", *COLORS]), layout.cache_manifest(size))
        rows = [[k, sources[k], *v] for k, v in sorted(features.items()) if k in wanted]
        write_csv_atomic(pd.DataFrame(rows, columns=["key", "source", *_FEATURES]), feature_path)
    return {k: v for k, v in features.items() if k in wanted}


# ----------------------------------------------------------------------------------- tables and splits

def _hashes(features: dict[str, list], refs: list[ImageRef]) -> np.ndarray:
    return np.array([[int(h, 16) for h in features[r.key][:3]] for r in refs], dtype=np.uint64).reshape(-1, 3)


def _matches(features, query: list[ImageRef], reference: list[ImageRef], names: tuple[str, str],
             same_set: bool = False) -> pd.DataFrame:
    """pHash matches (spec 2: <= 12 on R, G and B) as a table with the reference's column names."""
    pairs = match_hashes(_hashes(features, query), _hashes(features, reference), exclude_self=same_set)
    return pd.DataFrame({
        names[0]: [query[i].image_id for i in pairs["query"]],
        names[1]: [reference[j].image_id for j in pairs["reference"]],
        "SimR": pairs["dist_r"], "SimG": pairs["dist_g"], "SimB": pairs["dist_b"],
    })


def test_leak_meta(test_match_external: pd.DataFrame, external_meta: pd.DataFrame) -> pd.DataFrame:
    """Spec s11 from our own test<->HPAv18 matches: each matched test Id takes its closest HPAv18 image's
    Target, antibody and antibody_code (closest = smallest summed distance, then Id order)."""
    closest = (test_match_external.assign(total=lambda d: d["SimR"] + d["SimG"] + d["SimB"])
               .sort_values(["Test", "total", "Extra"]).drop_duplicates("Test"))
    joined = closest.merge(external_meta[["Id", "Target", "antibody", "antibody_code"]],
                           left_on="Extra", right_on="Id", how="left", suffixes=("", "_ext"))
    return pd.DataFrame({"Id": joined["Test"].to_numpy(), "External": False, "Target": joined["Target"],
                         "antibody": joined["antibody"], "antibody_code": joined["antibody_code"]})


def channel_statistics(features: dict[str, list], refs: list[ImageRef]) -> dict:
    """Spec 4: per channel (R, G, B, Y), the average of per-image means and of per-image stds."""
    values = np.array([features[r.key][3:] for r in refs], dtype=np.float64)
    return {"channels": "RGBY", "images": len(refs), "source": "Kaggle train + test source PNGs",
            "mean": [round(float(v), 6) for v in values[:, :4].mean(axis=0)],
            "std": [round(float(v), 6) for v in values[:, 4:].mean(axis=0)]}


def _write_folds(folder: Path, folds) -> None:
    for k, (train, valid) in enumerate(folds):
        write_csv_atomic(train, folder / f"random_train_cv{k}.csv")
        write_csv_atomic(valid, folder / f"random_valid_cv{k}.csv")


def write_splits(layout: DataLayout, train_meta, external_meta, test_ids,
                 train_match_external) -> pd.DataFrame:
    """Spec 3.1-3.3: 5 folds (plain and noleak/clean), the antibody split and its 'tr' variant.

    Returns the whole antibody split (train and valid rows), the input of the label correction."""
    from hpa_tf.data import splits  # imported here: sklearn takes a second, which the pool's workers skip

    out = layout.split_dir
    write_csv_atomic(train_meta[["Id", "Target"]], out / f"train_{len(train_meta)}.csv")
    write_csv_atomic(pd.DataFrame({"Id": test_ids}), out / f"test_{len(test_ids)}.csv")
    folds = splits.random_ext_folds(train_meta, external_meta, n_splits=5, seed=FOLD_SEED)
    _write_folds(out / "random_ext_folds5", folds)
    clean = splits.noleak_clean_folds(folds, train_match_external, train_meta, external_meta)
    _write_folds(out / "random_ext_noleak_clean_folds5", clean)
    antibody_train, antibody_valid = splits.antibody_split(external_meta, seed=FOLD_SEED)
    antibody_all = pd.concat([antibody_train, antibody_valid]).sort_values("Id")
    write_csv_atomic(antibody_all, out / "external_antibody_split.csv")
    write_csv_atomic(antibody_train, out / "external_trainset_antibody_split.csv")
    write_csv_atomic(antibody_valid, out / "external_validset_antibody_split.csv")
    tr_train, tr_valid = splits.antibody_split_tr(antibody_train, antibody_valid, train_match_external,
                                                  seed=FOLD_SEED)
    write_csv_atomic(tr_train, out / "external_tr_trainset_antibody_split.csv")
    write_csv_atomic(tr_valid, out / "external_tr_validset_antibody_split.csv")
    return antibody_all


# ---------------------------------------------------------------------------------------------- driver

def default_sizes(layout: DataLayout) -> list[int]:
    """768 and 1536 for real data; the synthetic dataset's own image size for the demo."""
    info = layout.raw_dir / "synthetic_info.json"
    if info.is_file():
        return [int(json.loads(info.read_text())["image_size"])]
    return list(REAL_DATA_SIZES)


def label_corrections(layout: DataLayout, corrections: str | Path | None = None) -> pd.DataFrame | None:
    """Id, Target of raw/train_extra.csv and of a curators' corrections CSV (its Id and Target columns);
    a curator's last decision on an image wins over earlier ones and over train_extra's row of that image
    (train_extra's Ids written with '/' are matched as the '_' Ids they stand for); None when there is
    neither. Conflicting rows within train_extra stay an error (splits.correct_external_labels)."""
    extra = None
    if layout.train_extra_csv.is_file():  # its Ids hold '/', so it is not read as a raw Id table
        extra = pd.read_csv(layout.train_extra_csv, dtype=str, keep_default_na=False)[["Id", "Target"]]
        extra["Id"] = extra["Id"].str.replace("/", "_", regex=False)
    if corrections is None:
        return extra
    decided = read_raw_csv(Path(corrections), ["Id", "Target"], unique=False)
    decided = decided.drop_duplicates("Id", keep="last")
    if extra is None:
        return decided
    return pd.concat([extra[~extra["Id"].isin(decided["Id"])], decided], ignore_index=True)


def prepare(data_dir: str | Path, sizes: list[int] | None = None, workers: int | None = None,
            progress: bool = True, tfrecords: bool = False, verify: bool = False,
            corrections: str | Path | None = None) -> dict:
    """Run every preparation step on data_dir; returns a summary (counts of images and matches).

    With tfrecords, also writes TFRecord shards of the caches of every group and size; with verify, a
    rerun checks every cache file's CRC-32 against the manifest, not only its size; `corrections` (a
    curators' corrections CSV) adds its decisions to the label correction of spec 3.4."""
    layout = DataLayout(data_dir)
    sizes = sorted(set(sizes or default_sizes(layout)))
    if any(s < 1 for s in sizes):
        raise PrepareError(f"--sizes must be positive, got {sizes}")
    if workers is not None and workers < 1:
        raise PrepareError(f"--workers must be at least 1, got {workers}")
    remove_temporaries(_output_folders(layout, sizes))  # left by a run killed mid-write
    train_raw = read_raw_csv(layout.train_csv, ["Id", "Target"])
    test_raw = read_raw_csv(layout.sample_submission_csv, ["Id"])
    external_raw = read_raw_csv(layout.external_csv, ["Id", "Target"])
    train_meta, external_meta = build_meta(train_raw, False), build_meta(external_raw, True)
    test_meta = pd.DataFrame({"Id": test_raw["Id"], "External": False})
    for name, frame in (("train", train_meta), ("external", external_meta), ("test", test_meta)):
        write_csv_atomic(frame, layout.meta_dir / f"{name}_meta.csv")

    refs = {"train": [ImageRef("kaggle", "train", i) for i in train_meta["Id"]],
            "test": [ImageRef("kaggle", "test", i) for i in test_meta["Id"]],
            "external": [ImageRef("external", "train", i) for i in external_meta["Id"]]}
    log.info(f"{len(refs['train'])} train, {len(refs['test'])} test, {len(refs['external'])} HPAv18 images; "
        f"resize caches at {sizes}")
    # the splits' sklearn takes about a second to import: this process imports it while its workers work
    threading.Thread(target=importlib.import_module, args=("hpa_tf.data.splits",)).start()
    features = process_images(layout, refs["train"] + refs["test"] + refs["external"], sizes, workers,
                              progress, verify)

    train_ext = _matches(features, refs["train"], refs["external"], ("Train", "Extra"))
    test_test = _matches(features, refs["test"], refs["test"], ("Test1", "Test2"), same_set=True)
    test_ext = _matches(features, refs["test"], refs["external"], ("Test", "Extra"))
    write_csv_atomic(train_ext, layout.meta_dir / "train_match_external.csv")
    write_csv_atomic(test_test, layout.meta_dir / "test_match_test.csv")
    write_csv_atomic(test_ext, layout.meta_dir / "test_match_external.csv")
    write_csv_atomic(test_leak_meta(test_ext, external_meta), layout.meta_dir / "test_leak_meta.csv")

    antibody_all = write_splits(layout, train_meta, external_meta, test_meta["Id"].tolist(), train_ext)
    corrected = antibody_all
    extra = label_corrections(layout, corrections)
    if extra is not None:
        from hpa_tf.data.splits import correct_external_labels

        corrected = correct_external_labels(antibody_all, extra)
        sources = [Path(p).name for p in (layout.train_extra_csv, corrections) if p and Path(p).is_file()]
        log.info(f"label correction from {' + '.join(sources)} (spec 3.4)")
    write_csv_atomic(corrected, layout.meta_dir / "external_antibody_correct_meta.csv")

    if tfrecords:  # imported here: TensorFlow is loaded only when asked for
        from hpa_tf.data.tfrecords import shard_paths, write_tfrecords

        shard_workers = workers or os.cpu_count() or 1
        for size in sizes:
            for group, group_refs in refs.items():
                folder = write_tfrecords(layout, group, group_refs, size, workers=shard_workers,
                                         progress=progress, verify=verify)
                shards = shard_paths(layout, group, size)
                megabytes = sum(p.stat().st_size for p in shards) / 2**20
                log.info(f"TFRecords {group} {size}: {len(group_refs)} records, {len(shards)} shards, "
                    f"{megabytes:.1f} MB in {folder}")

    stats = channel_statistics(features, refs["train"] + refs["test"])
    write_json_atomic(stats, layout.stats_json)
    summary = {"train": len(refs["train"]), "test": len(refs["test"]), "external": len(refs["external"]),
               "train_match_external": len(train_ext), "test_match_test": len(test_test),
               "test_match_external": len(test_ext), "sizes": sizes}
    log.info("matches: {train_match_external} train<->HPAv18, {test_match_test} test<->test (both orders), "
        "{test_match_external} test<->HPAv18".format(**summary))
    log.info(f"channel mean {stats['mean']} std {stats['std']} (R, G, B, Y)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("-m hpa_tf.data.prepare"),
        description="Prepare Kaggle HPA 2018 + HPAv18 data: resize caches, meta, pHash duplicates and "
                    "leaks, folds, antibody split, channel statistics. Resumable and idempotent.")
    parser.add_argument("--data-dir", help="dataset root (raw/, train/, test/, external/); default: the "
                                           "embedded synthetic demo dataset")
    parser.add_argument("--sizes", type=int, nargs="+", help="resize cache sizes (default: 768 1536 for "
                                                             "real data, the image size for synthetic)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: all cores, or one below 64 images to prepare)")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bars")
    parser.add_argument("--verify", action="store_true",
                        help="a rerun also checks each cache file's CRC-32 against the manifest (reads every "
                             "cache file; without it, sizes only), so files damaged in place are redone")
    parser.add_argument("--corrections", default=None, metavar="CSV",
                        help="a curators' corrections file (python infer.py --serve: Id, Target, previous, "
                             "who, when): its last decision per image is applied like raw/train_extra.csv "
                             "(HPAv18 images, spec 3.4)")
    parser.add_argument("--tfrecords", action="store_true",
                        help="also write TFRecord shards of the resize caches, for clusters and remote "
                             "storage")
    args = parser.parse_args(argv)
    setup_logging(args.quiet)

    def action():
        if args.data_dir is None:
            from hpa_tf.data.synthetic import ensure_dataset

            args.data_dir = ensure_dataset("demo", progress=not args.quiet)
        start = time.perf_counter()
        prepare(args.data_dir, args.sizes, args.workers, progress=not args.quiet, tfrecords=args.tfrecords,
                verify=args.verify, corrections=args.corrections)
        log.info(f"prepared {args.data_dir} in {time.perf_counter() - start:.1f} s")

    # PrepareError, ImageReadError, the split functions' DataError, OS errors: one `error:` line
    return run_or_exit(action)


if __name__ == "__main__":
    sys.exit(main())
