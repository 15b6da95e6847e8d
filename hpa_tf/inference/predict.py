"""Classifier predictions (spec 9): dihedral views x seeds per image combined by max (or mean), the fold
mean, and the mean over groups of test<->test duplicates (spec 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from hpa_tf.data import pipeline
from hpa_tf.data.layout import DataLayout
from hpa_tf.models.classifier import build_classifier, load_stats

COMBINE = {"max": np.max, "mean": np.mean}


def load_run_model(folder: str | Path, weights: str = "best.weights.h5"):
    """(classifier with the run's checkpoint, the run's config dict) of a train_classifier.py fold folder."""
    folder = Path(folder)
    checkpoint, config_path = folder / weights, folder / "config.json"
    for path in (config_path, checkpoint):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: train this fold first (python train_classifier.py)")
    config = json.loads(config_path.read_text())
    stats = DataLayout(config["data_dir"]).meta_dir / "stats.json"
    mean, std = load_stats(stats if stats.is_file() else None)
    model = build_classifier(config["backbone"], weights=None, large=config["large"], mean=mean, std=std)
    model.load_weights(checkpoint)
    return model, config


def tta_probabilities(model, source: pipeline.Source, frame: pd.DataFrame, crop_size: int,
                      seeds=(0, 1, 2, 3), combine: str = "max", batch_size: int = 4,
                      views: list[str] | None = None) -> np.ndarray:
    """[N, 28] probabilities: sigmoid of every view (the dihedral transforms named in `views`, default all
    8, x seeds: spec 5.3-5.4), combined per image by element-wise `combine` (spec 9.2); the views of
    `batch_size` images go through one forward pass."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {sorted(COMBINE)}, got {combine!r}")
    names = list(pipeline.DIHEDRAL)
    views = list(views or names)
    unknown = [v for v in views if v not in names]
    if unknown:
        raise ValueError(f"unknown TTA views {unknown}; choose from {names}")
    chosen = tf.constant([8 * s + names.index(v) for s in range(len(seeds)) for v in views])
    views_per_image = len(chosen)

    @tf.function
    def forward(all_views):
        flat = tf.reshape(tf.gather(all_views, chosen, axis=1), [-1, crop_size, crop_size, 4])
        probs = tf.sigmoid(tf.cast(model(flat, training=False), tf.float32))
        return tf.reshape(probs, [-1, views_per_image, probs.shape[-1]])

    out = np.zeros((len(frame), 28), np.float32)
    for all_views, index in pipeline.tta_dataset(source, frame, crop_size, batch_size, tuple(seeds)):
        out[index.numpy()] = COMBINE[combine](forward(all_views).numpy(), axis=1)
    return out


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
