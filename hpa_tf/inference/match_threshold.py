"""`--match-threshold auto` (ours): the cosine above which the neighbour step replaces a test image's labels,
chosen for the embedding at hand on the antibody val split of HPAv18 (the reference chose 0.65 by eye
from the same val sweep, spec 10.4, for its own embedding)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpa_tf.config import InferenceConfig
from hpa_tf.embeddings import best_cosine_elsewhere, load_embeddings, matching_space
from hpa_tf.errors import InferenceError
from hpa_tf.inference.neighbours import match, threshold_sweep
from hpa_tf.inference.runs import require_embedder, resolve
from hpa_tf.labels import parse_target
from hpa_tf.layout import DataLayout
from hpa_tf.training.embedder import ensure_embeddings

log = logging.getLogger(__name__)
IMPOSTOR_RATE = InferenceConfig.impostor_rate  # the share of val images allowed to match another antibody
GRID = np.round(np.arange(0.0, 1.0, 0.01), 2)  # the reference's 0.01 steps (it printed 0.60-0.79)
ANTIBODY_SPLITS = {"ext": "external_antibody_split.csv", "train": "external_trainset_antibody_split.csv",
                   "val": "external_validset_antibody_split.csv"}


@dataclass
class Choice:
    """The chosen threshold (inf: no replacement), the sweep row it came from (None without one) and why."""

    threshold: float
    row: dict | None
    reason: str

    def describe(self) -> str:
        """One line for the log: the threshold and its sweep row, or why nothing is replaced."""
        if self.row is None:
            return f"match threshold auto: no replacement ({self.reason})"
        r = self.row
        return (f"match threshold auto: {self.threshold:.2f} ({self.reason}; antibody-val sweep row: "
                f"selected {r['selected']}, matched {r['matched']}, correct {r['correct']}, accuracy "
                f"{r['accuracy']:.3f}, impostors {r['impostors']}, impostor_rate {r['impostor_rate']:.4f})")


def split_rows(layout: DataLayout, name: str, position: dict[str, int]) -> tuple[pd.DataFrame, np.ndarray]:
    """(split frame `name` of ANTIBODY_SPLITS, its rows in embeddings_ext.npz, whose row of each Id is
    `position`): the antibody splits are subsets of all HPAv18 images, so their one-pass embeddings are
    those rows (no second extraction)."""
    frame = layout.read_split(ANTIBODY_SPLITS[name])
    missing = [i for i in frame["Id"] if i not in position]
    if missing:
        raise InferenceError(f"{layout.split_dir / ANTIBODY_SPLITS[name]} lists {len(missing)} images "
                             f"without a row in embeddings_ext.npz, e.g. {missing[0]}: extract it again "
                             "(python train_metric.py --extract ext)")
    return frame, np.array([position[i] for i in frame["Id"]], dtype=np.int64)


def val_sweep(ext_feats: np.ndarray, ext_ids, layout: DataLayout, thresholds=GRID) -> pd.DataFrame:
    """Spec 10.4 'val' mode (each antibody-val image against the antibody-train images: selected, matched,
    correct, accuracy, recall, f1 per threshold) plus `impostors` / `impostor_rate`: the val images whose
    best HPAv18 image of another antibody lies above the threshold. Every val antibody has train images,
    so val alone never shows a test image whose antibody has none; its own antibody removed, it does."""
    position = {image_id: row for row, image_id in enumerate(ext_ids)}
    (ext, ext_rows), (val, val_rows), (train, train_rows) = (split_rows(layout, name, position)
                                                             for name in ("ext", "val", "train"))
    if val.empty or train.empty:
        raise InferenceError(f"the antibody split of {layout.root} has {len(val)} val and {len(train)} train "
                             "images: the sweep needs both")
    best, cosine = match(ext_feats[val_rows], ext_feats[train_rows], k=1)
    nearest = train.iloc[best[:, 0]]
    same_antibody = val["antibody_code"].to_numpy() == nearest["antibody_code"].to_numpy()
    same_target = np.array([parse_target(a) == parse_target(b)
                            for a, b in zip(val["Target"], nearest["Target"], strict=True)])
    codes = np.full(len(ext_feats), -1, dtype=np.int64)  # the antibody of every row of embeddings_ext.npz
    codes[ext_rows] = ext["antibody_code"].to_numpy()
    elsewhere = best_cosine_elsewhere(matching_space(ext_feats[val_rows]), val["antibody_code"].to_numpy(),
                                      matching_space(ext_feats), codes)
    return pd.DataFrame(threshold_sweep(cosine[:, 0], same_antibody, same_target, thresholds, elsewhere))


def choose(sweep: pd.DataFrame, impostor_rate: float = IMPOSTOR_RATE) -> Choice:
    """The lowest threshold of the sweep that selects at least one val image while at most `impostor_rate`
    of them find an image of another antibody above it; none (inf) when no threshold does."""
    if not 0 < impostor_rate < 1:
        raise InferenceError(f"the impostor rate must lie between 0 and 1, got {impostor_rate}")
    if int(sweep["selected"].max()) == 0:
        return Choice(math.inf, None, "no antibody-val image finds an antibody-train image above any "
                                      "threshold of the sweep")
    fit = sweep[(sweep["impostor_rate"] <= impostor_rate) & (sweep["selected"] > 0)]
    if fit.empty:
        return Choice(math.inf, None, f"at every threshold that selects a val image more than "
                                      f"{impostor_rate:.2%} of them match another antibody above it")
    row = fit.head(1).to_dict("records")[0]  # column types kept (counts stay ints)
    return Choice(float(row["threshold"]), row, f"the lowest with impostor_rate <= {impostor_rate:g}")


def changes(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep's rows where a count changes from the row before (the first row included): the table
    `infer.py --sweep` prints."""
    counts = sweep[["selected", "matched", "correct", "impostors"]]
    return sweep[(counts != counts.shift()).any(axis=1)]


def run_sweep(config: InferenceConfig) -> Choice:
    """`infer.py --sweep`: val_sweep of the metric run's embeddings_ext.npz (extracted first where missing
    or older than its checkpoint); logs the rows where counts change and returns the threshold auto takes."""
    runs = resolve(config)
    (path,) = ensure_embeddings(require_embedder(runs, "--sweep").root, ["ext"], progress=config.progress,
                                data_dir=runs.data.root)
    feats, ids = load_embeddings(path)
    sweep = val_sweep(feats, ids, runs.data)
    choice = choose(sweep, config.impostor_rate)
    log.info(changes(sweep).round(4).to_string(index=False))
    log.info(choice.describe())
    return choice
