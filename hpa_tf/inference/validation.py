"""The validation ensemble of spec 9.2-9.3: every trained fold predicts its own validation split with the
test-time TTA, the folds' out-of-fold (OOF) predictions are concatenated, and the OOF set is scored with
the 0.5 threshold and the ratio thresholds, each with and without the top-1 rule (spec 10.1-10.2, 11)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.atomic import write_csv_atomic
from hpa_tf.config import TTA_SEEDS, ClassifierConfig, InferenceConfig
from hpa_tf.data import pipeline
from hpa_tf.errors import HpaTfError
from hpa_tf.inference.postprocess import apply_thresholds, fit_thresholds, ratios
from hpa_tf.inference.predict import (
    InferenceError,
    check_images,
    read_probabilities,
    tta_probabilities,
    write_probabilities,
)
from hpa_tf.inference.runs import resolve
from hpa_tf.labels import LABEL_NAMES, NUM_CLASSES
from hpa_tf.layout import RunLayout, ValidationFiles, read_table, run_dataset
from hpa_tf.metrics import f1_per_class
from hpa_tf.models.loading import load_classifier
from hpa_tf.training.classifier import split_frames

RULES = ("0.5", "0.5 + top-1", "thresholds", "thresholds + top-1")
log = logging.getLogger(__name__)
MACRO_ROWS = {"macro_f1": "macro", "macro_f1_kaggle": "macro_kaggle"}  # summary column -> CSV row name


def f1_column(rule: str) -> str:
    """The per-class table's column holding the F1 of `rule`."""
    return f"f1 {rule}"


# ------------------------------------------------------------------------------------------ predictions

def fold_config(folder: str | Path, data_dir: str | Path | None = None) -> ClassifierConfig:
    """A fold folder's configuration, after checking that it and its checkpoint exist (fail before the
    long part); `data_dir` stands in for the dataset of a fold that names none (imported)."""
    run = RunLayout(folder)
    config = run.read_config(ClassifierConfig)
    run.checkpoint(ClassifierConfig)
    if config.data_dir is None and data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))
    return config


def check_folds(folders: list[Path], configs: list[ClassifierConfig]) -> None:
    """InferenceError unless the folds are distinct folds of one split of one dataset (OOF rows would
    otherwise overlap or come from different images)."""
    if not folders:
        raise InferenceError("no trained fold to validate: train one first "
                             f"({ClassifierConfig.command} --fold K)")
    first, base = folders[0], configs[0]
    root = run_dataset(base).root.resolve()
    seen: dict[int, Path] = {}
    for folder, config in zip(folders, configs, strict=True):
        if run_dataset(config).root.resolve() != root or config.split != base.split:
            raise InferenceError(f"{first} was trained on split {base.split} of {base.data_dir} but "
                                 f"{folder} on split {config.split} of {config.data_dir}: "
                                 "out-of-fold predictions need the folds of one split of one dataset")
        if config.fold in seen:
            raise InferenceError(f"{seen[config.fold]} and {folder} are both fold {config.fold} of split "
                                 f"{base.split}: give each fold once")
        seen[config.fold] = folder


def validation_jobs(folds, data_dir: str | Path | None = None) -> list[tuple]:
    """(folder, config, validation frame) of each fold folder, after checking that they are distinct folds
    of one split and that no image is in two validation splits."""
    folders = [Path(f) for f in folds]
    configs = [fold_config(f, data_dir) for f in folders]
    check_folds(folders, configs)
    jobs, owner = [], {}
    for folder, config in zip(folders, configs, strict=True):
        _, valid = split_frames(run_dataset(config), config.split, config.fold)
        for image_id in valid["Id"]:
            if image_id in owner:
                raise InferenceError(f"validation image {image_id} is in the validation splits of both "
                                     f"{owner[image_id]} and {folder}: prepare the splits again")
            owner[image_id] = folder
        jobs.append((folder, config, valid))
    return jobs


def out_of_fold_frame(jobs: list[tuple]) -> pd.DataFrame:
    """Id, Target, External, fold of the folds' validation images, in out_of_fold's row order."""
    return pd.concat([valid[["Id", "Target", "External"]].assign(fold=config.fold)
                      for _, config, valid in jobs], ignore_index=True)


def out_of_fold(folds, seeds=TTA_SEEDS, views=None, combine: str = "max", batch_size: int = 4,
                data_dir: str | Path | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame with Id, Target, External, fold; float32 probabilities [N, 28] in its row order): each fold
    folder's TTA predictions of its own validation split, concatenated in the order given (spec 9.3)."""
    jobs = validation_jobs(folds, data_dir)
    sources = []
    for folder, config, valid in jobs:  # every image checked before the long part
        sources.append(pipeline.Source(run_dataset(config), config.img_size, "train", config.tfrecords))
        check_images(sources[-1], valid, f"validation image {{}} of {folder}")
    probs = []
    for (folder, config, valid), source in zip(jobs, sources, strict=True):
        model, _ = load_classifier(folder)
        probs.append(tta_probabilities(model, source, valid, config.crop_size, seeds=tuple(seeds),
                                       combine=combine, batch_size=batch_size, views=views))
        log.info(f"{folder}: TTA probabilities of {len(valid)} validation images")
    return out_of_fold_frame(jobs), np.concatenate(probs).astype(np.float32)


def kaggle_rows(frame: pd.DataFrame) -> np.ndarray:
    """Boolean [N]: rows that are Kaggle train images (External false), the rows the original scored."""
    return ~frame["External"].astype(str).str.lower().eq("true").to_numpy()


# -------------------------------------------------------------------------------------------- scoring

def rule_labels(probs: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Binary [N, 28] labels of every rule: p > 0.5 or p > fitted threshold, each without and with the
    top-1 rule."""
    half = np.full(NUM_CLASSES, 0.5)
    return {"0.5": (probs > 0.5).astype(np.int8),
            "0.5 + top-1": apply_thresholds(probs, half),
            "thresholds": (probs > thresholds[None, :]).astype(np.int8),
            "thresholds + top-1": apply_thresholds(probs, thresholds)}


def validation_report(truth, probs, ratios, kaggle_mask=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary: rule, macro_f1 over all rows, macro_f1_kaggle over the kaggle_mask rows (NaN without any);
    per_class: class, positives, f1 of each rule, threshold): thresholds fitted on these probabilities to
    `ratios` (spec 10.1), F1 with sklearn's zero for empty classes (spec 11)."""
    truth = np.asarray(truth).astype(np.int8)
    probs = np.asarray(probs, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if truth.shape != probs.shape or truth.ndim != 2 or truth.shape[1] != NUM_CLASSES:
        raise InferenceError(f"truth and probabilities must both be [N, {NUM_CLASSES}], got {truth.shape} "
                             f"and {probs.shape}")
    if ratios.shape != (NUM_CLASSES,):
        raise InferenceError(f"expected {NUM_CLASSES} label ratios, got {ratios.shape[0]}")
    mask = None if kaggle_mask is None else np.asarray(kaggle_mask, dtype=bool).reshape(-1)
    if mask is not None and mask.shape != (len(truth),):
        raise InferenceError(f"kaggle_mask has {mask.shape[0]} entries for {len(truth)} rows")
    thresholds = fit_thresholds(probs, ratios)
    labels = rule_labels(probs, thresholds)
    per_class = pd.DataFrame({"class": LABEL_NAMES, "positives": truth.sum(axis=0).astype(int)})
    summary = []
    for rule, predicted in labels.items():
        per_class[f1_column(rule)] = f1_per_class(truth, predicted)
        kaggle = np.nan
        if mask is not None and mask.any():
            kaggle = f1_per_class(truth[mask], predicted[mask]).mean()
        summary.append({"rule": rule, "macro_f1": per_class[f1_column(rule)].mean(),
                        "macro_f1_kaggle": kaggle})
    per_class["threshold"] = thresholds
    return pd.DataFrame(summary), per_class


# ------------------------------------------------------------------------------------------------ file

def write_validation(summary: pd.DataFrame, per_class: pd.DataFrame, path: str | Path) -> Path:
    """One CSV, written atomically: columns class, positives, threshold, then `f1 <rule>` for each rule
    ("f1 0.5", "f1 0.5 + top-1", "f1 thresholds", "f1 thresholds + top-1"). Rows: the 28 classes by name
    in index order, then "macro" (macro-F1 over all rows) and "macro_kaggle" (over the Kaggle train rows;
    empty when not scored), with positives and threshold empty.
    Read it back with `pd.read_csv(path, index_col="class")`: `.loc["macro"]`, `.iloc[:28]`."""
    table = per_class[["class", "positives", "threshold"] + [f1_column(r) for r in RULES]].copy()
    scores = summary.set_index("rule")
    macro = []
    for column, name in MACRO_ROWS.items():
        row = {"class": name, "positives": np.nan, "threshold": np.nan}
        row.update({f1_column(rule): scores.loc[rule, column] for rule in RULES})
        macro.append(row)
    table = pd.concat([table, pd.DataFrame(macro)], ignore_index=True)
    table["positives"] = table["positives"].astype("Int64")
    write_csv_atomic(table, path)
    return Path(path)


def read_validation(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per_class) of a write_validation CSV, as validation_report returned them."""
    table = pd.read_csv(path)
    per_class = table.iloc[:NUM_CLASSES].reset_index(drop=True)
    per_class = per_class[["class", "positives"] + [f1_column(r) for r in RULES] + ["threshold"]]
    per_class = per_class.astype({"positives": int})
    macro = table.iloc[NUM_CLASSES:].set_index("class")
    summary = pd.DataFrame({"rule": list(RULES),
                            **{column: [macro.loc[name, f1_column(r)] for r in RULES]
                               for column, name in MACRO_ROWS.items()}})
    return summary, per_class


def validate(config: InferenceConfig, folds) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The folds' OOF predictions (the TTA of `config`) scored (ratios from --ratios and the dataset's
    train_meta.csv, spec 10.1) and written to --validation-csv, the probabilities with their Ids, folds and
    fitted thresholds beside it (layout.ValidationFiles, for the curators' pages and the auto match
    threshold); returns (summary, per_class)."""
    frame, probs = out_of_fold(folds, config.tta_seeds, config.views, config.combine, config.batch_size,
                               config.data_dir)
    layout = run_dataset(fold_config(folds[0], config.data_dir))
    target = ratios(config.ratio_source, pipeline.frame_labels(layout.read_meta("train_meta.csv")))
    summary, per_class = validation_report(pipeline.frame_labels(frame), probs, target, kaggle_rows(frame))
    write_probabilities(ValidationFiles(config.validation_table), frame[["Id", "fold"]], probs,
                        per_class["threshold"].to_numpy())
    write_validation(summary, per_class, config.validation_table)
    return summary, per_class


def run_validation(config: InferenceConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`infer.py --validate`: validate the trained folds of `config` and log both tables."""
    runs = resolve(config, need_folds=True)
    summary, per_class = validate(config, [fold.root for fold in runs.folds])
    log.info(per_class.round(4).to_string(index=False))
    log.info(summary.round(4).to_string(index=False))
    log.info(f"validation table written to {config.validation_table}")
    return summary, per_class


def saved_out_of_fold_problem(files: ValidationFiles, folds, frame: pd.DataFrame) -> str | None:
    """Why the saved out-of-fold probabilities cannot stand for `folds` (whose validation rows are
    `frame`): missing, damaged, other images or folds, or older than a fold's checkpoint; None when usable."""
    if not files.probabilities.is_file():
        return f"{files.probabilities} does not exist"
    newest = max(RunLayout(f).checkpoint(ClassifierConfig).stat().st_mtime_ns for f in folds)
    if files.probabilities.stat().st_mtime_ns < newest:
        return f"{files.probabilities} is older than a fold's checkpoint"
    try:
        ids, _, _ = read_probabilities(files)
        saved = read_table(files.prob_ids, ["Id", "fold"], written=True)
    except HpaTfError as error:
        return str(error)
    folds_saved, folds_now = saved["fold"].astype(str).tolist(), frame["fold"].astype(str).tolist()
    if ids != frame["Id"].tolist() or folds_saved != folds_now:
        return f"{files.prob_ids} lists other images or folds than these folds' validation splits"
    return None


def label_set_accuracy(config: InferenceConfig, folds) -> float:
    """The share of the folds' out-of-fold images whose whole label set the classifier gets right (ratio
    thresholds + top-1, spec 10.1-10.2): read from --validation-csv's probability files when they are
    these folds' and newer than their checkpoints, else `--validate` is run first (and writes them)."""
    frame = out_of_fold_frame(validation_jobs(folds, config.data_dir))
    files = ValidationFiles(config.validation_table)
    problem = saved_out_of_fold_problem(files, folds, frame)
    if problem is not None:
        log.info(f"the classifier's out-of-fold labels are computed first, as --validate does ({problem})")
        validate(config, folds)
    _, probs, thresholds = read_probabilities(files)
    right = (apply_thresholds(probs, thresholds) == pipeline.frame_labels(frame)).all(axis=1)
    return float(right.mean())
