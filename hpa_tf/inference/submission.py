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
from hpa_tf.inference.match_threshold import AUTO, IMPOSTOR_RATE, choose, val_sweep
from hpa_tf.inference.neighbors import cached_index, evidence_table, match, replace_labels
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
    match_threshold: float | str = AUTO  # a cosine, or chosen on the antibody val split
    impostor_rate: float = IMPOSTOR_RATE  # what `auto` allows
    neighbour_k: int = 3  # nearest HPAv18 images per test image in OUTPUT.neighbours.csv
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
                            keep_default_na=False).set_index("Id")
    missing = [i for i in ext_ids if i not in corrected.index]
    if missing:
        raise InferenceError(f"embeddings_ext.npz has {len(missing)} ids without labels, e.g. {missing[0]}")
    return {"test": test_feats, "ext": ext_feats, "ext_ids": ext_ids,
            "ext_meta": corrected.loc[ext_ids, ["antibody", "Target"]].reset_index()}


def match_threshold(options: InferenceOptions, layout: DataLayout, embeddings: dict) -> float:
    """The neighbour step's cosine threshold: --match-threshold as given, or (auto) chosen on the antibody
    val sweep of these embeddings and printed with the sweep row it came from."""
    if options.match_threshold != AUTO:
        return float(options.match_threshold)
    choice = choose(val_sweep(embeddings["ext"], embeddings["ext_ids"], layout), options.impostor_rate)
    print(choice.describe(), flush=True)
    return choice.threshold


def neighbour_step(options: InferenceOptions, embeddings: dict, ids: list[str], before: list[str],
                   threshold: float) -> tuple[list[str], pd.DataFrame]:
    """Spec 10.5: label sets replaced from the nearest HPAv18 image where its cosine is above `threshold`;
    returns (targets, the evidence table of OUTPUT.neighbours.csv)."""
    test_feats, ext_feats = embeddings["test"], embeddings["ext"]
    index, reused = cached_index(options.metric_run / "embeddings_ext.npz", ext_feats,
                                 options.metric_run / "index_ext")
    print(f"neighbour index of {len(ext_feats)} HPAv18 images {'reused from' if reused else 'saved to'} "
          f"{options.metric_run / 'index_ext'}", flush=True)
    indices, cosines = match(test_feats, ext_feats, k=options.neighbour_k, index=index)
    references = embeddings["ext_meta"]
    after, replaced = replace_labels(before, indices[:, 0], cosines[:, 0], references["Target"].tolist(),
                                     threshold)
    print(f"neighbours: {int(replaced.sum())} of {len(ids)} label sets replaced (best cosine > "
          f"{threshold:.2f})", flush=True)
    return after, evidence_table(ids, before, after, replaced, indices, cosines, references, threshold)


def neighbours_path(output: str | Path) -> Path:
    """OUTPUT.neighbours.csv: the neighbour step's evidence (nearest HPAv18 images, labels before/after)."""
    return Path(output).with_suffix(".neighbours.csv")


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
    """Run every step, write the submission, OUTPUT.steps.csv (the labels after each step),
    OUTPUT.neighbours.csv (the neighbour step's evidence) and OUTPUT.serving.json; return the steps
    [(name, targets)], macro-F1 per step where the truth is known (the synthetic test_truth.csv), the
    thresholds, the match threshold and the evidence table (None without a metric run)."""
    layout = DataLayout(data_dir)
    test = pd.read_csv(layout.sample_submission_csv, dtype=str, keep_default_na=False)[["Id"]]
    ids = test["Id"].tolist()
    embeddings = threshold = None  # before the long part: fails early, or extracts what is missing
    if options.metric_run is not None:
        embeddings = matching_embeddings(options, layout, ids)
        threshold = match_threshold(options, layout, embeddings)
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
    evidence = None
    if options.metric_run is not None:
        targets, evidence = neighbour_step(options, embeddings, ids, steps[-1][1], threshold)
        steps.append(("neighbours", targets))
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
    if evidence is not None:
        write_csv_atomic(evidence, neighbours_path(output))
    else:  # no neighbour step: an earlier run's evidence would not describe this submission
        neighbours_path(output).unlink(missing_ok=True)
    write_submission(output, ids, steps[-1][1])  # last: its presence means the others are this run's
    scores = {}
    if layout.test_truth_csv.is_file():
        truth = pd.read_csv(layout.test_truth_csv, dtype=str, keep_default_na=False).set_index("Id")
        truth_matrix = targets_to_matrix(truth.loc[ids, "Target"])
        scores = {name: macro_f1(truth_matrix, targets_to_matrix(targets)) for name, targets in steps}
    return {"steps": steps, "scores": scores, "thresholds": thresholds, "match_threshold": threshold,
            "neighbours": evidence}


def multihot_targets(labels: np.ndarray) -> list[str]:
    """Target strings of binary [N, 28] rows."""
    return [multihot_to_target(row) for row in labels]
