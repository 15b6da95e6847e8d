"""The submission (spec 12: `Id,Predicted`, sample_submission order, ascending labels) and the whole
inference run of spec 9-10: TTA + fold ensemble, duplicate means, ratio thresholds with the top-1 rule,
leak replacement, then nearest-HPAv18 label replacement by the metric embedding."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.atomic import remove_temporaries, save_npy_atomic, write_csv_atomic, write_json_atomic
from hpa_tf.config import AUTO, InferenceConfig
from hpa_tf.data import pipeline
from hpa_tf.inference.match_threshold import auto_threshold, matching_embeddings, nearest_references
from hpa_tf.inference.neighbours import evidence_table, replace_labels
from hpa_tf.inference.postprocess import apply_thresholds, fit_thresholds, leak_replace, ratios
from hpa_tf.inference.predict import (
    COMBINE_NUMPY,
    InferenceError,
    check_images,
    duplicate_groups,
    group_mean,
    seed_probabilities,
    write_probabilities,
)
from hpa_tf.inference.runs import TrainedRuns, resolve
from hpa_tf.labels import LABEL_NAMES, format_target, multihot_to_target, parse_target, targets_to_matrix
from hpa_tf.layout import DataLayout, RunLayout, SubmissionFiles, read_table
from hpa_tf.metrics import macro_f1
from hpa_tf.models.loading import load_classifier

log = logging.getLogger(__name__)


def write_submission(path: str | Path, ids: list[str], targets: list[str]) -> Path:
    """`Id,Predicted` with ascending space-separated labels, atomically."""
    normalised = [format_target(parse_target(t)) for t in targets]
    write_csv_atomic(pd.DataFrame({"Id": ids, "Predicted": normalised}), path)
    return Path(path)


def class_counts(steps: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """Predicted images per class after each step (rows: classes; columns: steps)."""
    return pd.DataFrame({name: targets_to_matrix(targets).sum(0).astype(int) for name, targets in steps},
                        index=LABEL_NAMES)


def ensemble_probabilities(config: InferenceConfig, folds: list[RunLayout], layout: DataLayout,
                           test: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray]:
    """(the TTA probabilities of every fold run; the fold mean of the seed-0 views alone: what the
    exported SavedModel computes)."""
    seeds, fold_probs, fold_whole = config.tta_seeds, [], []
    for fold in folds:
        model, run = load_classifier(fold.root)
        source = pipeline.Source(layout, run.img_size, "test", run.tfrecords)
        check_images(source, test, "test image {} of sample_submission")
        per_seed = seed_probabilities(model, source, test, run.crop_size, seeds, config.combine,
                                      config.batch_size, config.views)
        fold_probs.append(COMBINE_NUMPY[config.combine](per_seed, axis=0))
        fold_whole.append(per_seed[list(seeds).index(0)] if 0 in seeds else
                          seed_probabilities(model, source, test, run.crop_size, (0,), config.combine,
                                             config.batch_size, config.views)[0])
        log.info(f"{fold.root}: TTA probabilities of {len(test)} test images")
    return fold_probs, np.mean(fold_whole, axis=0)


def match_threshold(config: InferenceConfig, runs: TrainedRuns, embeddings: dict, test_cosines: np.ndarray
                    ) -> float:
    """The neighbour step's cosine threshold: --match-threshold as given, or (auto) chosen from the antibody
    val sweep of these embeddings and the classifier's out-of-fold labels, logged with its sweep row."""
    if config.match_threshold != AUTO:
        return float(config.match_threshold)
    choice, _ = auto_threshold(config, runs, embeddings["ext"], embeddings["ext_ids"], test_cosines)
    log.info(choice.describe())
    return choice.threshold


def neighbour_step(ids: list[str], before: list[str], embeddings: dict, nearest: tuple, threshold: float
                   ) -> tuple[list[str], pd.DataFrame]:
    """Spec 10.5: label sets replaced from the nearest HPAv18 image (`nearest`: nearest_references) where
    its cosine is above `threshold`; returns (targets, the evidence table of OUTPUT.neighbours.csv)."""
    indices, cosines = nearest
    references = embeddings["ext_meta"]
    after, replaced = replace_labels(before, indices[:, 0], cosines[:, 0], references["Target"].tolist(),
                                     threshold)
    log.info(f"neighbours: {int(replaced.sum())} of {len(ids)} label sets replaced (best cosine > "
             f"{threshold:.2f})")
    return after, evidence_table(ids, before, after, replaced, indices, cosines, references, threshold)


def serving_record(output: str | Path) -> dict:
    """The serving record of the last --submission to `output`, else 0.5 thresholds, max, all 8 views
    (logged as a warning); InferenceError when it is damaged."""
    path = SubmissionFiles(output).serving
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not {"thresholds", "combine", "views"} <= record.keys():
                raise ValueError("not a serving record")
            return record
        except ValueError as error:  # also JSONDecodeError, UnicodeDecodeError
            raise InferenceError(f"{path} is damaged ({type(error).__name__}: {error}): run `python infer.py "
                                 f"--submission --output {output}` to write it again") from None
    log.warning(f"note: no {path} (python infer.py --submission): labels at 0.5, 8-view max")
    return {"thresholds": [0.5] * 28, "combine": "max", "views": None, "fitted": False}


def make_submission(config: InferenceConfig, runs: TrainedRuns) -> dict:
    """Run every step, write the submission, OUTPUT.steps.csv (the labels after each step),
    OUTPUT.neighbours.csv (the neighbour step's evidence) and OUTPUT.serving.json; return the steps
    [(name, targets)], macro-F1 per step where the truth is known (the synthetic test_truth.csv), the
    thresholds, the match threshold and the evidence table (None without a metric run)."""
    layout, embedder = runs.data, runs.embedder
    test = read_table(layout.sample_submission_csv, ["Id"])[["Id"]]
    ids = test["Id"].tolist()
    embeddings = nearest = threshold = None  # before the long part: fails early, or extracts what is missing
    if embedder is not None:
        embeddings = matching_embeddings(config, embedder, layout, ids)
        nearest = nearest_references(config, embedder, embeddings)
    fold_probs, whole = ensemble_probabilities(config, runs.folds, layout, test)
    groups = duplicate_groups(ids, layout.read_meta("test_match_test.csv"))
    probs, whole = group_mean(np.mean(fold_probs, axis=0), groups), group_mean(whole, groups)
    train_labels = targets_to_matrix(layout.read_meta("train_meta.csv")["Target"])
    target_ratios = ratios(config.ratio_source, train_labels)
    steps = [("cnn@0.5", multihot_targets(apply_thresholds(probs, np.full(28, 0.5))))]
    thresholds = fit_thresholds(probs, target_ratios)
    served = fit_thresholds(whole, target_ratios)  # what the exported model's labels use
    steps.append(("thresholds", multihot_targets(apply_thresholds(probs, thresholds))))
    if config.leak:
        steps.append(("leak", leak_replace(ids, steps[-1][1], layout.read_meta("test_leak_meta.csv"))[0]))
    evidence = None
    if embedder is not None:
        threshold = match_threshold(config, runs, embeddings, nearest[1][:, 0])
        targets, evidence = neighbour_step(ids, steps[-1][1], embeddings, nearest, threshold)
        steps.append(("neighbours", targets))
    # Every output at the end, each atomically: a failed step above leaves the previous run's files.
    files = SubmissionFiles(config.output)
    remove_temporaries(files.output.parent, files.output.stem)  # of a run killed while writing
    for fold, fold_prob in zip(runs.folds, fold_probs, strict=True):
        save_npy_atomic(fold_prob, files.fold_probabilities(fold.root))
    write_probabilities(files, test, probs, thresholds)  # rows: the Ids of sample_submission
    write_json_atomic({"thresholds": served.tolist(), "combine": config.combine, "views": config.views,
                       "ratios": config.ratio_source, "fitted": True}, files.serving)
    labels_per_step = {name: [format_target(parse_target(t)) for t in targets] for name, targets in steps}
    write_csv_atomic(pd.DataFrame({"Id": ids, **labels_per_step}), files.steps)
    if evidence is not None:
        write_csv_atomic(evidence, files.neighbours)
    else:  # no neighbour step: an earlier run's evidence would not describe this submission
        files.neighbours.unlink(missing_ok=True)
    write_submission(files.output, ids, steps[-1][1])  # last: its presence means the others are this run's
    scores = {}
    if layout.test_truth_csv.is_file():
        truth = pd.read_csv(layout.test_truth_csv, dtype=str, keep_default_na=False).set_index("Id")
        truth_matrix = targets_to_matrix(truth.loc[ids, "Target"])
        scores = {name: macro_f1(truth_matrix, targets_to_matrix(targets)) for name, targets in steps}
    return {"steps": steps, "scores": scores, "thresholds": thresholds, "match_threshold": threshold,
            "neighbours": evidence}


def gallery_command(config: InferenceConfig, image_id: str) -> str:
    """The command that draws `image_id`'s gallery with this run's data, runs and metric run."""
    given = {"data_dir": config.data_dir, "runs": config.runs, "metric_run": config.metric_run}
    default = InferenceConfig()
    flags = [f"--{name.replace('_', '-')} {value}" for name, value in given.items()
             if value is not None and value != getattr(default, name)]
    return " ".join(["python infer.py --gallery", image_id, *flags])


def run_submission(config: InferenceConfig) -> dict:
    """`infer.py --submission`: make the submission and log the per-class counts after each step, the
    macro-F1 after each step (synthetic data), the files written and a replaced image's gallery command."""
    runs = resolve(config, need_folds=True)
    result = make_submission(config, runs)
    log.info(class_counts(result["steps"]).to_string())
    for name, score in result["scores"].items():
        log.info(f"macro-F1 after {name}: {score:.4f}")
    log.info(f"submission written to {config.output}")
    if result["neighbours"] is not None:
        replaced = result["neighbours"].query("replaced")["Id"].tolist()
        evidence = SubmissionFiles(config.output).neighbours
        example = f"; a replaced image's gallery: {gallery_command(config, replaced[0])}" if replaced else ""
        log.info(f"neighbour evidence written to {evidence} ({len(replaced)} replaced){example}")
    return result


def multihot_targets(labels: np.ndarray) -> list[str]:
    """Target strings of binary [N, 28] rows."""
    return [multihot_to_target(row) for row in labels]
