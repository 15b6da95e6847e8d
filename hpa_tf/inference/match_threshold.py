"""`--match-threshold auto` (ours): the cosine above which the neighbour step replaces a test image's labels,
chosen for the embedding and classifier at hand: the threshold at which replacing is expected to make the
most label sets right, from the antibody val split of HPAv18 and the classifier's out-of-fold labels (the
reference chose 0.65 by eye from the val sweep, spec 10.4, for its own embedding)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpa_tf.config import InferenceConfig
from hpa_tf.embeddings import best_elsewhere, load_embeddings, matching_space
from hpa_tf.errors import InferenceError
from hpa_tf.inference.neighbours import cached_index, match, threshold_sweep
from hpa_tf.inference.runs import TrainedRuns, require_embedder, resolve
from hpa_tf.inference.validation import label_set_accuracy
from hpa_tf.labels import parse_target
from hpa_tf.layout import DataLayout, RunLayout, read_table
from hpa_tf.training.embedder import ensure_embeddings

log = logging.getLogger(__name__)
GRID = np.round(np.arange(0.0, 1.0, 0.01), 2)  # the reference's 0.01 steps (it printed 0.60-0.79)
ANTIBODY_SPLITS = {"ext": "external_antibody_split.csv", "train": "external_trainset_antibody_split.csv",
                   "val": "external_validset_antibody_split.csv"}
NO_SHARE = 0.5  # the share of test antibodies among HPAv18's when the val curves cannot tell


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
                f"{r['accuracy']:.3f}, impostors {r['impostors']}, impostors_correct "
                f"{r['impostors_correct']}, "
                f"impostor_rate {r['impostor_rate']:.4f})")


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
    correct, accuracy, recall, f1 per threshold) plus `impostors` / `impostor_rate` / `impostors_correct`:
    the val images whose best HPAv18 image of another antibody lies above the threshold, and those of them
    whose label set it shares. Every val antibody has train images, so val alone never shows a test image
    whose antibody has none; its own antibody removed, it does."""
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
    other, elsewhere = best_elsewhere(matching_space(ext_feats[val_rows]), val["antibody_code"].to_numpy(),
                                      matching_space(ext_feats), codes)
    ext_targets = pd.Series("", index=range(len(ext_feats)), dtype=object)
    ext_targets.iloc[ext_rows] = ext["Target"].to_numpy()
    other_target = np.array([o >= 0 and parse_target(ext_targets.iloc[o]) == parse_target(t)
                             for o, t in zip(other, val["Target"], strict=True)], dtype=bool)
    return pd.DataFrame(threshold_sweep(cosine[:, 0], same_antibody, same_target, thresholds, elsewhere,
                                        other_target))


def matching_embeddings(config: InferenceConfig, embedder: RunLayout, layout: DataLayout, ids: list[str]
                        ) -> dict:
    """The metric run's test and HPAv18 embeddings (extracted first where missing or stale) and the
    HPAv18 labels, checked before the long part: ids in sample_submission order, equal dimensions, every
    HPAv18 id labelled, every value finite."""
    ensure_embeddings(embedder.root, ["test", "ext"], progress=config.progress, data_dir=layout.root)
    test_feats, test_ids = load_embeddings(embedder.embeddings("test"))
    ext_feats, ext_ids = load_embeddings(embedder.embeddings("ext"))
    if test_ids.tolist() != list(ids):
        raise InferenceError(f"{embedder.embeddings('test')}: its ids are not the test Ids of "
                             "sample_submission in order; extract them again (train_metric.py --extract)")
    if test_feats.shape[1] != ext_feats.shape[1]:
        raise InferenceError(f"embedding dimensions differ: test {test_feats.shape[1]}, "
                             f"ext {ext_feats.shape[1]}")
    corrected = layout.read_meta("external_antibody_correct_meta.csv").set_index("Id")
    missing = [i for i in ext_ids if i not in corrected.index]
    if missing:
        raise InferenceError(f"{embedder.embeddings('ext').name} has {len(missing)} ids without labels, "
                             f"e.g. {missing[0]}")
    return {"test": test_feats, "ext": ext_feats, "ext_ids": ext_ids,
            "ext_meta": corrected.loc[ext_ids, ["antibody", "Target"]].reset_index()}


def nearest_references(config: InferenceConfig, embedder: RunLayout, embeddings: dict
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosines) [N, --neighbour-k] of each test image's nearest HPAv18 images, best first, through
    the metric run's saved index (built first where missing, stale or damaged)."""
    index = cached_index(embedder.embeddings("ext"), embeddings["ext"], embedder.index)
    return match(embeddings["test"], embeddings["ext"], k=config.neighbour_k, index=index)


def antibody_share(sweep: pd.DataFrame, queries: int, test_cosines: np.ndarray) -> float:
    """The estimated share of test images whose antibody has HPAv18 images, from no truth: the test set's
    share above each threshold fitted (least squares) as a mix of the val images' share with their antibody
    among the references (`selected`) and without it (`impostors`); NO_SHARE where those never differ."""
    with_own, without = sweep["selected"] / queries, sweep["impostors"] / queries
    test = np.array([(np.asarray(test_cosines) > t).mean() for t in sweep["threshold"]])
    apart = (with_own - without).to_numpy()
    if not (apart ** 2).sum():
        return NO_SHARE
    return float(np.clip(((test - without.to_numpy()) * apart).sum() / (apart ** 2).sum(), 0.0, 1.0))


def expected_gain(sweep: pd.DataFrame, queries: int, share: float, accuracy: float) -> np.ndarray:
    """Per threshold, label sets made right minus made wrong per test image when replacing: a replacement
    is right as often as on val (its own antibody present for `share` of the images, absent otherwise),
    and the labels it replaces were right for `accuracy` of the images (the classifier's out-of-fold)."""
    present = sweep["correct"] - accuracy * sweep["selected"]
    absent = sweep["impostors_correct"] - accuracy * sweep["impostors"]
    return ((share * present + (1 - share) * absent) / queries).to_numpy(dtype=np.float64)


def choose(sweep: pd.DataFrame, queries: int, share: float, accuracy: float,
           impostor_rate: float | None = None) -> Choice:
    """The threshold of the largest expected gain (the lowest of equals), none (inf) when no threshold is
    expected to gain; `impostor_rate` keeps only thresholds at which at most that share of val images
    match another antibody."""
    if impostor_rate is not None and not 0 < impostor_rate < 1:
        raise InferenceError(f"the impostor rate must lie between 0 and 1, got {impostor_rate}")
    if int(sweep["selected"].max()) == 0:
        return Choice(math.inf, None, "no antibody-val image finds an antibody-train image above any "
                                      "threshold of the sweep")
    gain = pd.Series(expected_gain(sweep, queries, share, accuracy), index=sweep.index)
    if impostor_rate is not None:
        gain = gain[sweep["impostor_rate"] <= impostor_rate]
    context = (f"{share:.0%} of test images estimated to have their antibody among HPAv18's, the "
               f"classifier's out-of-fold label sets right for {accuracy:.1%}")
    if gain.empty or gain.max() <= 0:
        capped = f" at impostor_rate <= {impostor_rate:g}" if impostor_rate is not None else ""
        return Choice(math.inf, None, f"no threshold{capped} is expected to make more label sets right "
                                      f"than wrong: {context}")
    best = gain.idxmax()  # the first of equal maxima: the lowest threshold
    row = sweep.loc[[best]].to_dict("records")[0]  # column types kept (counts stay ints)
    return Choice(float(row["threshold"]), row,
                  f"the largest expected gain, {gain[best]:+.3f} right label sets per test image, with "
                  f"{context}")


def auto_threshold(config: InferenceConfig, runs: TrainedRuns, ext_feats: np.ndarray, ext_ids,
                   test_cosines: np.ndarray) -> tuple[Choice, pd.DataFrame]:
    """(the choice, the sweep with its `gain` column) for the metric run's HPAv18 embeddings and the test
    images' best cosines to them, weighed against the folds' out-of-fold label accuracy."""
    sweep = val_sweep(ext_feats, ext_ids, runs.data)
    queries = len(runs.data.read_split(ANTIBODY_SPLITS["val"]))
    share = antibody_share(sweep, queries, test_cosines)
    accuracy = label_set_accuracy(config, [fold.root for fold in runs.folds])
    sweep["gain"] = expected_gain(sweep, queries, share, accuracy)
    return choose(sweep, queries, share, accuracy, config.impostor_rate), sweep


def changes(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep's rows where a count changes from the row before (the first row included): the table
    `infer.py --sweep` prints."""
    counts = sweep[["selected", "matched", "correct", "impostors", "impostors_correct"]]
    return sweep[(counts != counts.shift()).any(axis=1)]


def run_sweep(config: InferenceConfig) -> Choice:
    """`infer.py --sweep`: val_sweep of the metric run's HPAv18 embeddings (extracted first where missing or
    older than its checkpoint, the test set's too); logs the rows where counts change with their expected
    gain and returns the threshold auto takes."""
    runs = resolve(config, need_folds=True)
    embedder = require_embedder(runs, "--sweep")
    ids = read_table(runs.data.sample_submission_csv, ["Id"])["Id"].tolist()
    embeddings = matching_embeddings(config, embedder, runs.data, ids)
    _, cosines = nearest_references(config, embedder, embeddings)  # as the submission searches them
    choice, sweep = auto_threshold(config, runs, embeddings["ext"], embeddings["ext_ids"], cosines[:, 0])
    log.info(changes(sweep).round(4).to_string(index=False))
    log.info(choice.describe())
    return choice
