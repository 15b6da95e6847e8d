"""Embedding files and exact cosine nearest neighbours as the reference matched them (spec 10.4)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from hpa_tf.atomic import write_atomic
from hpa_tf.errors import EmbeddingFileError


def save_embeddings(path: str | Path, feats: np.ndarray, ids) -> Path:
    """Write `feats` [N, D] float32 and `ids` [N] (unicode, no pickle) to an .npz, atomically."""
    feats = np.asarray(feats, dtype=np.float32)
    ids = np.asarray([str(i) for i in ids])
    if feats.ndim != 2 or len(feats) != len(ids):
        raise EmbeddingFileError(f"feats must be [N, D] with one id per row, got {feats.shape} and "
                                 f"{len(ids)} ids")

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, feats=feats, ids=ids)

    return write_atomic(path, write)


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(feats float32 [N, D], ids str [N]) from an .npz written by save_embeddings (pickle refused)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"embedding file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "feats" not in data or "ids" not in data:
                raise EmbeddingFileError(f"{path}: expected arrays 'feats' and 'ids', found "
                                         f"{sorted(data.files)}")
            feats, ids = data["feats"].astype(np.float32), data["ids"].astype(str)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # truncated or not an .npz
        if isinstance(error, EmbeddingFileError):
            raise
        raise EmbeddingFileError(f"{path} is damaged ({type(error).__name__}: {error}): extract it again "
                                 "(python train_metric.py --extract)") from error
    if feats.ndim != 2 or len(feats) != len(ids):
        raise EmbeddingFileError(f"{path}: feats {feats.shape} do not match {len(ids)} ids")
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if bad.size:  # one such row turns every standardised column into NaN and silently disables matching
        raise EmbeddingFileError(f"{path}: row {bad[0]} (id {ids[bad[0]]}) and {bad.size - 1} more have "
                                 "non-finite values (NaN or inf); extract the embeddings again")
    return feats, ids


def standardize_columns(feats: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column with the set's own statistics (sklearn `scale`): spec 10.4
    standardises queries and references separately. Constant columns become 0."""
    feats = np.asarray(feats, dtype=np.float64)
    std = feats.std(axis=0)
    return ((feats - feats.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def l2_normalize(feats: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so a dot product is the cosine."""
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return (feats / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def matching_space(feats: np.ndarray) -> np.ndarray:
    """A set's embeddings as the reference compares them: column-standardised within the set, then
    L2-normalised (spec 10.4)."""
    return l2_normalize(standardize_columns(feats))


def exact_neighbours(queries: np.ndarray, references: np.ndarray, k: int = 1, chunk: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(indices [Q, k], cosines [Q, k]) of the k most similar reference rows by brute force, best first;
    both inputs already in matching space (unit rows)."""
    k = min(k, len(references))
    indices = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ references.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        indices[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        scores[start:start + chunk] = np.take_along_axis(sims, indices[start:start + chunk], axis=1)
    return indices, scores


def nearest_neighbour_accuracy(query_feats, query_labels, reference_feats, reference_labels) -> float:
    """Share of queries whose most cosine-similar reference (each set standardised on its own) has the
    same label: the original's check of the metric model (spec 10.4 'val' mode, same antibody)."""
    best, _ = exact_neighbours(matching_space(query_feats), matching_space(reference_feats), k=1)
    return float(np.mean(np.asarray(reference_labels)[best[:, 0]] == np.asarray(query_labels)))


def best_cosine_elsewhere(queries: np.ndarray, query_groups, references: np.ndarray, reference_groups,
                          chunk: int = 1024) -> np.ndarray:
    """[Q] best cosine of each query to a reference of another group (-inf when there is none), both
    inputs in matching space: how close an image comes to the references when its own antibody is not
    among them."""
    query_groups, reference_groups = np.asarray(query_groups), np.asarray(reference_groups)
    best = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ references.T
        same = query_groups[start:start + chunk, None] == reference_groups[None, :]
        best[start:start + chunk] = np.where(same, -np.inf, sims).max(axis=1, initial=-np.inf)
    return best
