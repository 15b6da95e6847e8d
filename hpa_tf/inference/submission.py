"""The submission (spec 12: `Id,Predicted`, sample_submission order, ascending labels) and the whole
inference run of spec 9-10: TTA + fold ensemble, duplicate means, ratio thresholds with the top-1 rule,
leak replacement, then nearest-HPAv18 label replacement by the metric embedding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.atomic import remove_temporaries, save_npy_atomic, write_csv_atomic, write_json_atomic
from hpa_tf.data import pipeline
from hpa_tf.data.layout import DataLayout
from hpa_tf.embeddings import load_embeddings
from hpa_tf.inference.neighbors import cached_index, match, replace_labels, threshold_sweep
from hpa_tf.inference.postprocess import apply_thresholds, fit_thresholds, leak_replace, ratios
from hpa_tf.inference.predict import (
    COMBINE_NUMPY,
    InferenceError,
    check_images,
    duplicate_groups,
    group_mean,
    load_run_model,
    seed_probabilities,
)
from hpa_tf.labels import LABEL_NAMES, format_target, multihot_to_target, parse_target, targets_to_matrix
from hpa_tf.metrics import macro_f1
from hpa_tf.training.metric import ensure_embeddings


@dataclass
class InferenceOptions:
    """What `python infer.py --submission` does; see its --help."""

    folds: list[str]  # run fold folders with best.weights.h5
    output: Path = Path("submission.csv")
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    views: list[str] | None = None  # dihedral TTA views (default all 8)
    combine: str = "max"
    ratio_source: str = "train"
    leak: bool = True
    metric_run: Path | None = None  # folder with embeddings_test.npz and embeddings_ext.npz
    match_threshold: float = 0.65
    batch_size: int = 4
    progress: bool = True  # progress bars of an embedding extraction


def write_submission(path: str | Path, ids: list[str], targets: list[str]) -> Path:
    """`Id,Predicted` with ascending space-separated labels, atomically."""
    normalised = [format_target(parse_target(t)) for t in targets]
    write_csv_atomic(pd.DataFrame({"Id": ids, "Predicted": normalised}), path)
    return Path(path)


def class_counts(steps: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """Predicted images per class after each step (rows: classes; columns: steps)."""
    return pd.DataFrame({name: targets_to_matrix(targets).sum(0).astype(int) for name, targets in steps},
                        index=LABEL_NAMES)


def ensemble_probabilities(options: InferenceOptions, layout: DataLayout, test: pd.DataFrame
                           ) -> tuple[list[np.ndarray], np.ndarray]:
    """(the TTA probabilities of every fold run; the fold mean of the seed-0 views alone: what the
    exported SavedModel computes)."""
    fold_probs, fold_whole = [], []
    for folder in options.folds:
        model, config = load_run_model(folder)
        source = pipeline.Source(layout, config["img_size"], "test", config["tfrecords"])
        check_images(source, test, "test image {} of sample_submission")
        per_seed = seed_probabilities(model, source, test, config["crop_size"], options.seeds,
                                      options.combine, options.batch_size, options.views)
        fold_probs.append(COMBINE_NUMPY[options.combine](per_seed, axis=0))
        fold_whole.append(per_seed[list(options.seeds).index(0)] if 0 in options.seeds else
                          seed_probabilities(model, source, test, config["crop_size"], (0,), options.combine,
                                             options.batch_size, options.views)[0])
        print(f"{folder}: TTA probabilities of {len(test)} test images", flush=True)
    return fold_probs, np.mean(fold_whole, axis=0)


def matching_embeddings(options: InferenceOptions, layout: DataLayout, ids: list[str]) -> dict:
    """The metric run's test and HPAv18 embeddings (extracted first where missing or stale) and the
    HPAv18 labels, checked before the long part: ids in sample_submission order, equal dimensions, every
    HPAv18 id labelled, every value finite."""
    ensure_embeddings(options.metric_run, ["test", "ext"], progress=options.progress)
    test_feats, test_ids = load_embeddings(options.metric_run / "embeddings_test.npz")
    ext_feats, ext_ids = load_embeddings(options.metric_run / "embeddings_ext.npz")
    if test_ids.tolist() != list(ids):
        raise InferenceError(f"{options.metric_run / 'embeddings_test.npz'}: its ids are not the test Ids "
                             "of sample_submission in order; extract them again (train_metric.py --extract)")
    if test_feats.shape[1] != ext_feats.shape[1]:
        raise InferenceError(f"embedding dimensions differ: test {test_feats.shape[1]}, "
                             f"ext {ext_feats.shape[1]}")
    corrected = pd.read_csv(layout.meta_dir / "external_antibody_correct_meta.csv", dtype=str,
                            keep_default_na=False).set_index("Id")["Target"]
    missing = [i for i in ext_ids if i not in corrected.index]
    if missing:
        raise InferenceError(f"embeddings_ext.npz has {len(missing)} ids without labels, e.g. {missing[0]}")
    return {"test": test_feats, "ext": ext_feats, "ext_targets": corrected.loc[ext_ids].tolist()}


def neighbour_targets(options: InferenceOptions, embeddings: dict, targets: list[str]):
    """Spec 10.5: targets replaced from the nearest HPAv18 image (cosine > threshold)."""
    test_feats, ext_feats = embeddings["test"], embeddings["ext"]
    index, reused = cached_index(options.metric_run / "embeddings_ext.npz", ext_feats,
                                 options.metric_run / "index_ext")
    print(f"neighbour index of {len(ext_feats)} HPAv18 images {'reused from' if reused else 'saved to'} "
          f"{options.metric_run / 'index_ext'}", flush=True)
    best, cosine = match(test_feats, ext_feats, k=1, index=index)
    return replace_labels(targets, best[:, 0], cosine[:, 0], embeddings["ext_targets"],
                          options.match_threshold)


def serving_path(output: str | Path) -> Path:
    """OUTPUT.serving.json: what the exported classifier computes (thresholds, TTA combination, views)."""
    return Path(output).with_suffix(".serving.json")


def serving_record(output: str | Path) -> dict:
    """The serving record of the last --submission to `output`, else 0.5 thresholds, max, all 8 views."""
    path = serving_path(output)
    if path.is_file():
        return json.loads(path.read_text())
    return {"thresholds": [0.5] * 28, "combine": "max", "views": None, "fitted": False}


def make_submission(options: InferenceOptions, data_dir: str | Path) -> dict:
    """Run every step, write the submission, OUTPUT.steps.csv (the labels after each step) and
    OUTPUT.serving.json, and return {step name: targets}, plus macro-F1 per step where the truth is known
    (the synthetic test_truth.csv)."""
    layout = DataLayout(data_dir)
    test = pd.read_csv(layout.sample_submission_csv, dtype=str, keep_default_na=False)[["Id"]]
    ids = test["Id"].tolist()
    embeddings = None  # before the long part: fails early, or extracts what is missing
    if options.metric_run is not None:
        embeddings = matching_embeddings(options, layout, ids)
    fold_probs, whole = ensemble_probabilities(options, layout, test)
    groups = duplicate_groups(ids, pd.read_csv(layout.meta_dir / "test_match_test.csv", dtype=str))
    probs, whole = group_mean(np.mean(fold_probs, axis=0), groups), group_mean(whole, groups)
    train_labels = targets_to_matrix(pd.read_csv(layout.meta_dir / "train_meta.csv", dtype=str,
                                                 keep_default_na=False)["Target"])
    target_ratios = ratios(options.ratio_source, train_labels)
    steps = [("cnn@0.5", multihot_targets(apply_thresholds(probs, np.full(28, 0.5))))]
    thresholds = fit_thresholds(probs, target_ratios)
    served = fit_thresholds(whole, target_ratios)  # what the exported model's labels use
    steps.append(("thresholds", multihot_targets(apply_thresholds(probs, thresholds))))
    if options.leak:
        leak = pd.read_csv(layout.meta_dir / "test_leak_meta.csv", dtype=str, keep_default_na=False)
        steps.append(("leak", leak_replace(ids, steps[-1][1], leak)[0]))
    if options.metric_run is not None:
        steps.append(("neighbours", neighbour_targets(options, embeddings, steps[-1][1])[0]))
    # Every output at the end, each atomically: a failed step above leaves the previous run's files.
    output = Path(options.output)
    remove_temporaries(output.parent, output.stem)  # of a run killed while writing
    for folder, fold in zip(options.folds, fold_probs, strict=True):
        save_npy_atomic(fold, output.with_suffix(f".{Path(folder).name}.prob.npy"))
    save_npy_atomic(probs, output.with_suffix(".prob.npy"))  # rows: the Ids of sample_submission
    write_csv_atomic(test, output.with_suffix(".prob_ids.csv"))
    save_npy_atomic(thresholds, output.with_suffix(".thresholds.npy"))
    write_json_atomic({"thresholds": served.tolist(), "combine": options.combine, "views": options.views,
                       "ratios": options.ratio_source, "fitted": True}, serving_path(output))
    labels_per_step = {name: [format_target(parse_target(t)) for t in targets] for name, targets in steps}
    write_csv_atomic(pd.DataFrame({"Id": ids, **labels_per_step}), output.with_suffix(".steps.csv"))
    write_submission(output, ids, steps[-1][1])  # last: its presence means the others are this run's
    scores = {}
    if layout.test_truth_csv.is_file():
        truth = pd.read_csv(layout.test_truth_csv, dtype=str, keep_default_na=False).set_index("Id")
        truth_matrix = targets_to_matrix(truth.loc[ids, "Target"])
        scores = {name: macro_f1(truth_matrix, targets_to_matrix(targets)) for name, targets in steps}
    return {"steps": steps, "scores": scores, "thresholds": thresholds}


def multihot_targets(labels: np.ndarray) -> list[str]:
    """Target strings of binary [N, 28] rows."""
    return [multihot_to_target(row) for row in labels]


def validation_sweep(metric_run: Path, data_dir: str | Path) -> pd.DataFrame:
    """Spec 10.4 'val' mode: each antibody-val image matched to its nearest antibody-train image, and per
    threshold the images selected, matched (same antibody), correct (same label set), accuracy, recall
    and F1: the table to choose --match-threshold from. Needs embeddings_val / embeddings_train."""
    split_dir = DataLayout(data_dir).split_dir
    sets = {}
    for name, split in (("val", "external_validset_antibody_split.csv"),
                        ("train", "external_trainset_antibody_split.csv")):
        feats, ids = load_embeddings(Path(metric_run) / f"embeddings_{name}.npz")
        frame = pd.read_csv(split_dir / split, dtype=str, keep_default_na=False).set_index("Id")
        missing = [i for i in ids if i not in frame.index]
        if missing:
            raise InferenceError(f"embeddings_{name}.npz holds ids not in {split}, e.g. {missing[0]}")
        sets[name] = (feats, frame.loc[ids])
    (val_feats, val), (train_feats, train) = sets["val"], sets["train"]
    best, cosine = match(val_feats, train_feats, k=1)
    nearest = train.iloc[best[:, 0]]
    same_antibody = val["antibody_code"].to_numpy() == nearest["antibody_code"].to_numpy()
    same_target = np.array([parse_target(a) == parse_target(b)
                            for a, b in zip(val["Target"], nearest["Target"], strict=True)])
    return pd.DataFrame(threshold_sweep(cosine[:, 0], same_antibody, same_target))
