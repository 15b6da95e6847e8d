"""Classifier predictions (spec 9): dihedral views x seeds per image combined by max (or mean), the fold
mean, and the mean over groups of test<->test duplicates (spec 2); the probability side files that
`--submission` and `--validate` write and the curators' pages read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from hpa_tf.atomic import save_npy_atomic, write_csv_atomic
from hpa_tf.config import TTA_SEEDS
from hpa_tf.data import pipeline
from hpa_tf.errors import InferenceError
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.layout import ProbabilityFiles, read_table

COMBINE = {"max": tf.reduce_max, "mean": tf.reduce_mean}
COMBINE_NUMPY = {"max": np.max, "mean": np.mean}


def check_images(source: pipeline.Source, frame: pd.DataFrame, what: str) -> None:
    """InferenceError naming the first Id of `frame` (`what`: e.g. "test image {} of sample_submission")
    whose resize-cache images are missing, before any prediction starts."""
    if source.tfrecords:
        return
    for image_id, paths in zip(frame["Id"], pipeline.cache_files(source, frame), strict=True):
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise InferenceError(f"{what.format(image_id)} has no image file {missing[0]}: run "
                                 f"`python -m hpa_tf.data.prepare --data-dir {source.layout.root}`")


def view_indices(seeds, views: list[str] | None = None) -> list[int]:
    """Positions, in tta_views' seed-major order of 8 views per seed, of the dihedral views named in
    `views` (default all 8) for every seed; ValueError naming an unknown view."""
    names = list(pipeline.DIHEDRAL)
    views = list(views or names)
    unknown = [v for v in views if v not in names]
    if unknown:
        raise InferenceError(f"unknown TTA views {unknown}; choose from {names}")
    return [8 * s + names.index(v) for s in range(len(seeds)) for v in views]


def check_combine(combine: str) -> None:
    """ValueError unless `combine` names a TTA combination (max, mean)."""
    if combine not in COMBINE:
        raise InferenceError(f"combine must be one of {sorted(COMBINE)}, got {combine!r}")


def combined_probabilities(model, views: tf.Tensor, combine: str = "max") -> tf.Tensor:
    """[N, 28] probabilities from views [N, V, crop, crop, 4]: the sigmoid of every view in one forward
    pass, combined per image by element-wise `combine` (spec 9.2)."""
    check_combine(combine)
    shape = tf.shape(views)
    flat = tf.reshape(views, tf.concat([[-1], shape[2:]], axis=0))
    probs = tf.sigmoid(tf.cast(model(flat, training=False), tf.float32))
    return COMBINE[combine](tf.reshape(probs, [shape[0], shape[1], probs.shape[-1]]), axis=1)


def seed_probabilities(model, source: pipeline.Source, frame: pd.DataFrame, crop_size: int,
                       seeds=TTA_SEEDS, combine: str = "max", batch_size: int = 4,
                       views: list[str] | None = None) -> np.ndarray:
    """[S, N, 28]: per seed (spec 5.4) the chosen dihedral views of each image combined by `combine`; the
    views of `batch_size` images go through one forward pass per seed (the memory of one pass does not grow
    with the number of seeds). Out of memory: InferenceError saying to lower --batch-size."""
    check_combine(combine)
    chosen = view_indices(seeds, views)
    per_seed = len(chosen) // len(seeds)
    forward = tf.function(lambda seed_views: combined_probabilities(model, seed_views, combine))
    out = np.zeros((len(seeds), len(frame), 28), np.float32)
    done = 0  # rows so far, in frame order: a read error lies at or after them
    try:
        for all_views, index in pipeline.tta_dataset(source, frame, crop_size, batch_size, tuple(seeds)):
            for s in range(len(seeds)):
                seed_views = tf.gather(all_views, chosen[s * per_seed:(s + 1) * per_seed], axis=1)
                out[s, index.numpy()] = forward(seed_views).numpy()
            done += len(index)
    except pipeline.READ_ERRORS as error:
        raise pipeline.unreadable_image(source, frame, error, done) from None
    except tf.errors.ResourceExhaustedError:
        raise InferenceError(f"out of memory predicting {batch_size} image(s) x {per_seed} views of "
                             f"{crop_size} px in one pass: lower --batch-size") from None
    return out


def tta_probabilities(model, source: pipeline.Source, frame: pd.DataFrame, crop_size: int,
                      seeds=TTA_SEEDS, combine: str = "max", batch_size: int = 4,
                      views: list[str] | None = None) -> np.ndarray:
    """[N, 28] probabilities: sigmoid of every view (the dihedral transforms named in `views`, default all
    8, x seeds: spec 5.3-5.4), combined per image by element-wise `combine` (spec 9.2); the max (mean) of
    the per-seed maxima (means) over equally many views each is the max (mean) over all views."""
    per_seed = seed_probabilities(model, source, frame, crop_size, seeds, combine, batch_size, views)
    return COMBINE_NUMPY[combine](per_seed, axis=0)


def duplicate_groups(ids: list[str], pairs: pd.DataFrame) -> np.ndarray:
    """Group number per id: connected components of the test<->test duplicate pairs (Test1, Test2)."""
    position = {image_id: i for i, image_id in enumerate(ids)}
    parent = list(range(len(ids)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(pairs["Test1"], pairs["Test2"], strict=True):
        if a in position and b in position:
            parent[root(position[a])] = root(position[b])
    return np.array([root(i) for i in range(len(ids))])


def group_mean(probs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Every row replaced by the mean of its duplicate group (the reference averaged pairs in turn)."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((counts.size, probs.shape[1]))
    np.add.at(sums, inverse, probs)
    return (sums / counts[:, None])[inverse].astype(probs.dtype)


def write_probabilities(files: ProbabilityFiles, ids: pd.DataFrame, probs: np.ndarray,
                        thresholds: np.ndarray) -> None:
    """The probability side files, each atomically: probabilities [N, 28] (a row per row of `ids`, whose
    first column is Id), the Ids, and the 28 thresholds fitted on them."""
    save_npy_atomic(probs, files.probabilities)
    write_csv_atomic(ids, files.prob_ids)
    save_npy_atomic(thresholds, files.thresholds)


def read_probabilities(files: ProbabilityFiles) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(Ids, probabilities [N, 28], thresholds [28]) of write_probabilities' files; InferenceError naming
    the file when one is damaged or they do not agree."""
    try:
        probs = np.load(files.probabilities, allow_pickle=False)
        thresholds = np.load(files.thresholds, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # missing, cut short, not .npy, pickled
        raise InferenceError(f"{files.probabilities} or {files.thresholds} is damaged "
                             f"({type(error).__name__}: {error})") from None
    ids = read_table(files.prob_ids, ["Id"], written=True)["Id"].tolist()
    if probs.shape != (len(ids), NUM_CLASSES) or thresholds.shape != (NUM_CLASSES,) or \
            not np.isfinite(probs).all():
        raise InferenceError(f"{files.probabilities}: probabilities {probs.shape} and thresholds "
                             f"{thresholds.shape} do not fit the {len(ids)} Ids of {files.prob_ids}")
    return ids, probs, thresholds
