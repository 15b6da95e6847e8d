"""The annotated pool: every HPAv18 image (embeddings_ext.npz, labels and antibody from
meta/external_meta.csv) plus, when extracted, the Kaggle train images (embeddings_kaggle.npz, labels from
meta/train_meta.csv; the antibody of the HPAv18 image a pHash match found, spec 2), put in matching space
as one set (spec 10.4: column-standardised, unit rows); and the query images looked up in it."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.config import InferenceConfig
from hpa_tf.embeddings import exact_neighbours, load_embeddings, matching_space
from hpa_tf.errors import InferenceError
from hpa_tf.inference.runs import TrainedRuns, require_embedder, resolve
from hpa_tf.labels import parse_target
from hpa_tf.layout import DataLayout, RunLayout
from hpa_tf.training.embedder import ensure_embeddings

log = logging.getLogger(__name__)
EXTRACT_HINT = "python train_metric.py --extract test kaggle ext"
POOL_SETS = ["test", "kaggle", "ext"]  # the embeddings a gallery, the noise report or the page reads


@dataclass
class AnnotatedPool:
    """The annotated images: `frame` (Id, set "ext" | "kaggle", Target, antibody: "" when unknown) and
    their embeddings in matching space, row for row."""

    frame: pd.DataFrame
    space: np.ndarray

    def position(self, image_id: str) -> int | None:
        rows = np.flatnonzero(self.frame["Id"].to_numpy() == image_id)
        return int(rows[0]) if len(rows) else None

    def split(self, row: int) -> str:
        """Where a pool image's files are: "external" (HPAv18 JPEGs) or "train" (Kaggle train PNGs)."""
        return "external" if self.frame["set"].iat[row] == "ext" else "train"


def _meta(layout: DataLayout, name: str, columns: list[str]) -> pd.DataFrame:
    return layout.read_meta(name)[columns].drop_duplicates("Id").set_index("Id")


def annotated_pool(metric_run: str | Path, layout: DataLayout) -> AnnotatedPool:
    """The pool of a metric run's extracted annotated sets (ext required, kaggle used when present)."""
    run = RunLayout(metric_run)
    ext = _meta(layout, "external_meta.csv", ["Id", "Target", "antibody"])
    kaggle = _meta(layout, "train_meta.csv", ["Id", "Target"])
    matches = layout.read_meta("train_match_external.csv")
    matched = dict(zip(matches["Train"], ext["antibody"].reindex(matches["Extra"]).fillna(""), strict=True))
    kaggle["antibody"] = [matched.get(i, "") for i in kaggle.index]
    frames, feats = [], []
    for name, meta in (("ext", ext), ("kaggle", kaggle)):
        path = run.embeddings(name)
        if name == "kaggle" and not path.is_file():
            log.warning(f"note: {path} not found, the pool is HPAv18 only (add the Kaggle train images "
                        "with `python train_metric.py --extract kaggle`)")
            continue
        if not path.is_file():
            raise InferenceError(f"{path} not found: run `{EXTRACT_HINT}` first")
        set_feats, ids = load_embeddings(path)
        unknown = [i for i in ids if i not in meta.index]
        if unknown:
            raise InferenceError(f"{path} has {len(unknown)} ids without labels in the metadata, "
                                 f"e.g. {unknown[0]}")
        frames.append(meta.loc[ids].reset_index().assign(set=name))
        feats.append(set_feats)
    frame = pd.concat(frames, ignore_index=True)[["Id", "set", "Target", "antibody"]]
    return AnnotatedPool(frame, matching_space(np.concatenate(feats)))


def open_pool(config: InferenceConfig, what: str) -> tuple[TrainedRuns, RunLayout, AnnotatedPool]:
    """(runs, metric run, annotated pool) of a curation command (`what`, e.g. "--gallery"): the metric
    run's test, kaggle and ext embeddings are extracted first where missing or stale."""
    runs = resolve(config)
    embedder = require_embedder(runs, what)
    ensure_embeddings(embedder.root, POOL_SETS, progress=config.progress, data_dir=runs.data.root)
    return runs, embedder, annotated_pool(embedder.root, runs.data)


@dataclass
class Query:
    """An image to show: its vector in matching space, where its files are and its known labels."""

    image_id: str
    vector: np.ndarray
    kaggle_split: str  # "train" | "test"; "external" for HPAv18
    true: list[int] | None
    pool_row: int | None  # its own row in the pool (left out of its neighbours)

    def reference_labels(self, predicted: list[int] | None) -> list[int]:
        """The labels its neighbours' are compared with: the known ones, else the prediction (or none)."""
        return self.true if self.true is not None else list(predicted or [])


def cached_test_space(path: Path) -> tuple[dict[str, int], np.ndarray]:
    """({Id: its first row}, the test set in matching space) of an embeddings_test.npz, read and
    standardised once per version of the file (its inode, size and time): at Kaggle's 11,702 test images
    that takes 0.1-0.5 s on 2 cores, which every request of a test image's page, views and maps paid."""
    stat = path.stat()
    return _read_test_space(str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=2)
def _read_test_space(path: str, version: tuple) -> tuple[dict[str, int], np.ndarray]:
    feats, ids = load_embeddings(path)
    rows: dict[str, int] = {}
    for row, image_id in enumerate(ids.tolist()):
        rows.setdefault(image_id, row)
    return rows, matching_space(feats)


def find_query(pool: AnnotatedPool, metric_run: str | Path, layout: DataLayout, image_id: str) -> Query:
    """The query of `image_id`: a pool image, or a test image (embeddings_test.npz, the test set
    standardised on its own, spec 10.4) with its true labels where test_truth.csv exists (synthetic)."""
    row = pool.position(image_id)
    if row is not None:
        return Query(image_id, pool.space[row], pool.split(row), parse_target(pool.frame["Target"].iat[row]),
                     row)
    path = RunLayout(metric_run).embeddings("test")
    if path.is_file():
        rows, space = cached_test_space(path)
        if image_id in rows:
            truth = None
            if layout.test_truth_csv.is_file():
                known = pd.read_csv(layout.test_truth_csv, dtype=str, keep_default_na=False)
                known = known.set_index("Id")["Target"]
                truth = parse_target(known[image_id]) if image_id in known.index else None
            return Query(image_id, space[rows[image_id]].copy(), "test", truth, None)
    sets = ", ".join(sorted(pool.frame["set"].unique()))
    raise InferenceError(f"{image_id} is in none of the embedding files of {metric_run} (annotated: "
                         f"{sets}; test: {'yes' if path.is_file() else 'not extracted'}): run "
                         f"`{EXTRACT_HINT}`")


def nearest_annotated(pool: AnnotatedPool, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, cosines) of the k most similar annotated images, best first, the query itself left out."""
    rows, cosines = exact_neighbours(query.vector[None, :], pool.space, k + 1)
    keep = rows[0] != query.pool_row
    return rows[0][keep][:k], cosines[0][keep][:k]
