"""The validation ensemble: out-of-fold TTA predictions of fold folders and their scores (spec 9.2-9.3)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from hpa_tf.config import classifier_config
from hpa_tf.data import pipeline
from hpa_tf.errors import RunFolderError
from hpa_tf.inference import validation
from hpa_tf.inference.postprocess import THRESHOLD_GRID, fit_thresholds
from hpa_tf.inference.predict import InferenceError, tta_probabilities
from hpa_tf.inference.validation import (
    RULES,
    kaggle_rows,
    out_of_fold,
    read_validation,
    validation_report,
    write_validation,
)
from hpa_tf.labels import LABEL_NAMES
from hpa_tf.layout import DataLayout
from hpa_tf.models.classifier import build_classifier, load_stats
from hpa_tf.training.classifier import split_frames

BACKBONE = "densenet_1_1_1_1"


def scan_threshold(p: np.ndarray, ratio: float) -> float:
    """The reference's loop over linspace(0, 1, 10000): a new t wins if strictly closer to the ratio, or
    as close and strictly closer to 0.5."""
    errors = np.abs((p[:, None] > THRESHOLD_GRID[None, :]).mean(axis=0) - ratio)
    best, best_error = 0.0, np.inf
    for t, error in zip(THRESHOLD_GRID, errors, strict=True):
        if error < best_error or (error == best_error and abs(t - 0.5) < abs(best - 0.5)):
            best, best_error = t, error
    return best


def top1(probs: np.ndarray) -> np.ndarray:
    """Probabilities with each row's maximum set to 1."""
    forced = probs.copy()
    forced[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
    return forced


@pytest.fixture(scope="module")
def random_case():
    """Labels [300, 28] (class 5 never positive, with small probabilities), probabilities correlated with
    them and often all below 0.5 in a row (so the top-1 rule matters), on the threshold grid (so p > t and
    p >= t differ), ratios and a Kaggle mask."""
    rng = np.random.default_rng(7)
    n = 300
    probs = rng.beta(1.0, 5.0, size=(n, 28))
    truth = (rng.random((n, 28)) < np.clip(probs * 1.8, 0, 1)).astype(int)
    truth[:, 5] = 0
    probs[:, 5] *= 0.05
    probs = THRESHOLD_GRID[np.round(probs * (len(THRESHOLD_GRID) - 1)).astype(int)]  # some p == a threshold
    ratios = rng.uniform(0.02, 0.4, size=28)
    mask = rng.random(n) < 0.4
    return truth, probs, ratios, mask


def test_validation_report_matches_sklearn_and_a_threshold_scan(random_case):
    truth, probs, ratios, mask = random_case
    summary, per_class = validation_report(truth, probs, ratios, kaggle_mask=mask)
    p = probs
    thresholds = np.array([scan_threshold(p[:, c], ratios[c]) for c in range(28)])
    np.testing.assert_array_equal(per_class["threshold"], thresholds)
    np.testing.assert_array_equal(per_class["threshold"], fit_thresholds(probs, ratios))
    predicted = {"0.5": p > 0.5, "0.5 + top-1": top1(p) > 0.5,
                 "thresholds": p > thresholds, "thresholds + top-1": top1(p) > thresholds}
    assert (predicted["0.5"].sum(axis=1) == 0).sum() > 50  # the top-1 rule changes many rows
    assert (p == thresholds).any()  # probabilities on a threshold: strict > matters
    assert summary["rule"].tolist() == list(RULES)
    assert per_class["class"].tolist() == LABEL_NAMES
    np.testing.assert_array_equal(per_class["positives"], truth.sum(axis=0))
    for rule, pred in predicted.items():
        row = summary.set_index("rule").loc[rule]
        assert row["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
        assert row["macro_f1_kaggle"] == pytest.approx(
            f1_score(truth[mask], pred[mask], average="macro", zero_division=0))
        np.testing.assert_allclose(per_class[f"f1 {rule}"],
                                   f1_score(truth, pred, average=None, zero_division=0))
    assert per_class.loc[5, "f1 0.5"] == 0.0  # no true and no predicted positive: sklearn's 0
    scores = summary.set_index("rule")["macro_f1"]
    assert scores["0.5"] != scores["0.5 + top-1"] and scores["thresholds"] != scores["thresholds + top-1"]
    # without a mask, or with no Kaggle row, the Kaggle column is NaN; the rest is unchanged
    for no_kaggle in (None, np.zeros(len(truth), bool)):
        other, _ = validation_report(truth, probs, ratios, kaggle_mask=no_kaggle)
        assert other["macro_f1_kaggle"].isna().all()
        np.testing.assert_array_equal(other["macro_f1"], summary["macro_f1"])
    with pytest.raises(InferenceError, match="kaggle_mask has 3 entries for 300 rows"):
        validation_report(truth, probs, ratios, kaggle_mask=mask[:3])


def test_write_validation_reads_back_with_pandas(random_case, tmp_path):
    truth, probs, ratios, mask = random_case
    summary, per_class = validation_report(truth, probs, ratios, kaggle_mask=mask)
    path = write_validation(summary, per_class, tmp_path / "out" / "validation.csv")
    assert path == tmp_path / "out" / "validation.csv"
    assert sorted(p.name for p in path.parent.iterdir()) == ["validation.csv"]  # no temp file left
    table = pd.read_csv(path, index_col="class")
    assert table.index.tolist() == LABEL_NAMES + ["macro", "macro_kaggle"]
    assert table.columns.tolist() == ["positives", "threshold"] + [f"f1 {r}" for r in RULES]
    for rule in RULES:
        np.testing.assert_allclose(table.loc["macro", f"f1 {rule}"],
                                   summary.set_index("rule").loc[rule, "macro_f1"])
        np.testing.assert_allclose(table.loc["macro_kaggle", f"f1 {rule}"],
                                   summary.set_index("rule").loc[rule, "macro_f1_kaggle"])
        np.testing.assert_allclose(table[f"f1 {rule}"].iloc[:28], per_class[f"f1 {rule}"])
    np.testing.assert_array_equal(table["threshold"].iloc[:28], per_class["threshold"])
    np.testing.assert_array_equal(table["positives"].iloc[:28], truth.sum(axis=0))
    back_summary, back_per_class = read_validation(path)
    pd.testing.assert_frame_equal(back_summary, summary, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(back_per_class, per_class, check_exact=False, rtol=1e-12)
    # no Kaggle rows: that row is empty and reads back as NaN
    unmasked, _ = validation_report(truth, probs, ratios)
    write_validation(unmasked, per_class, path)
    assert pd.read_csv(path, index_col="class").loc["macro_kaggle"].isna().all()


def write_fold(folder, root, fold: int, seed: int, split: str = "random_ext_folds5") -> keras.Model:
    """A fold folder as train_classifier.py leaves it (config.json, best.weights.h5), with untrained
    weights drawn from `seed`; returns the model."""
    config = classifier_config("demo", data_dir=str(root), img_size=64, crop_size=32, backbone=BACKBONE,
                               fold=fold, split=split)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    keras.utils.set_random_seed(seed)
    mean, std = load_stats(DataLayout(root).meta_dir / "stats.json")
    model = build_classifier(BACKBONE, weights=None, mean=mean, std=std)
    model.save_weights(folder / "best.weights.h5")
    return model


@pytest.fixture(scope="module")
def fold_runs(prepared, tmp_path_factory):
    """(root, runs dir, {fold: model}) with two untrained fold folders, fold0 and fold1."""
    root, _ = prepared
    runs = tmp_path_factory.mktemp("runs")
    models = {fold: write_fold(runs / f"fold{fold}", root, fold, seed=10 + fold) for fold in (0, 1)}
    return root, runs, models


def test_out_of_fold_is_every_folds_own_validation_prediction(fold_runs, caplog):
    root, runs, models = fold_runs
    options = dict(seeds=(0,), views=["default", "fliplr"], combine="mean", batch_size=8)
    with caplog.at_level(logging.INFO, logger=validation.__name__):  # with or without a command's logging
        frame, probs = out_of_fold([runs / "fold1", runs / "fold0"], **options)
    layout = DataLayout(root)
    valid = {fold: split_frames(layout, "random_ext_folds5", fold)[1] for fold in (0, 1)}
    assert frame.columns.tolist() == ["Id", "Target", "External", "fold"]
    assert frame["Id"].tolist() == valid[1]["Id"].tolist() + valid[0]["Id"].tolist()
    assert frame["Id"].is_unique and probs.shape == (len(frame), 28) and probs.dtype == np.float32
    source = pipeline.Source(layout, 64, "train")
    for fold in (0, 1):
        rows = frame["fold"].to_numpy() == fold
        assert frame.loc[rows, "Id"].tolist() == valid[fold]["Id"].tolist()
        assert frame.loc[rows, "Target"].tolist() == valid[fold]["Target"].tolist()
        expected = tta_probabilities(models[fold], source, valid[fold], 32, **options)
        np.testing.assert_allclose(probs[rows], expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(probs[frame["fold"] == 0].mean(0), probs[frame["fold"] == 1].mean(0))
    np.testing.assert_array_equal(kaggle_rows(frame), ~frame["External"].to_numpy(bool))
    assert 0 < kaggle_rows(frame).sum() < len(frame)
    logged = [r.getMessage() for r in caplog.records if r.name == validation.__name__]
    assert logged == [f"{runs / 'fold1'}: TTA probabilities of {len(valid[1])} validation images",
                      f"{runs / 'fold0'}: TTA probabilities of {len(valid[0])} validation images"]
    summary, _ = validation_report(pipeline.frame_labels(frame), probs, np.full(28, 0.1), kaggle_rows(frame))
    assert summary[["macro_f1", "macro_f1_kaggle"]].notna().all().all()


def test_out_of_fold_refuses_folds_that_do_not_make_one_oof_set(fold_runs, tmp_path):
    root, runs, _ = fold_runs
    with pytest.raises(InferenceError, match="no trained fold"):
        out_of_fold([])
    with pytest.raises(InferenceError, match=r"fold0 and .*fold0 are both fold 0 of split random_ext_folds5"):
        out_of_fold([runs / "fold0", runs / "fold0"])
    copy = tmp_path / "copy_of_fold1"
    shutil.copytree(runs / "fold1", copy)
    with pytest.raises(InferenceError, match=re.escape(f"{runs / 'fold1'} and {copy} are both fold 1")):
        out_of_fold([runs / "fold1", copy])
    other_split = tmp_path / "noleak"
    other_split.mkdir()
    shutil.copy(runs / "fold0" / "best.weights.h5", other_split)
    config = json.loads((runs / "fold0" / "config.json").read_text())
    (other_split / "config.json").write_text(json.dumps({**config, "split": "noleak_clean", "fold": 1}))
    with pytest.raises(InferenceError, match=r"random_ext_folds5 of .* but .*noleak on split noleak_clean"):
        out_of_fold([runs / "fold0", other_split])
    (other_split / "config.json").write_text(json.dumps({**config, "data_dir": str(tmp_path), "fold": 1}))
    with pytest.raises(InferenceError, match=re.escape(f"{root} but {other_split} on split "
                                                       f"random_ext_folds5 of {tmp_path}")):
        out_of_fold([runs / "fold0", other_split])
    (other_split / "best.weights.h5").unlink()
    with pytest.raises(RunFolderError, match=re.escape(f"{other_split / 'best.weights.h5'} not found")):
        out_of_fold([runs / "fold0", other_split])
