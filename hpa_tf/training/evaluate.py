"""Per-class validation report of a trained classifier run: ROC AUC, F1 at probability 0.5 and F1 with
per-class thresholds that make each class's predicted rate equal its training-set rate.

    python -m hpa_tf.training.evaluate runs/demo/fold0 [--weights best.weights.h5]

Also draws per_class_f1.png (both F1 columns) and training_curves.png (from log.csv) in the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.labels import LABEL_NAMES
from hpa_tf.layout import RunLayout, run_dataset
from hpa_tf.metrics import f1_per_class
from hpa_tf.output import run_or_exit


def rate_thresholds(probs: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per-class thresholds at the (1 - rate) quantile of the probabilities: the predicted positive rate
    of each class matches `rates` (the idea of spec 10.1, as a quantile rather than a grid scan)."""
    return np.array([np.quantile(probs[:, c], 1.0 - rates[c]) for c in range(probs.shape[1])])


def _auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula; NaN when a class has no positive or no negative."""
    positives = truth.astype(bool)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank().to_numpy()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def class_report(truth: np.ndarray, probs: np.ndarray, train_rates: np.ndarray) -> pd.DataFrame:
    """One row per class: positives, AUC, F1 at 0.5, threshold and F1 at the training-rate threshold."""
    thresholds = rate_thresholds(probs, train_rates)
    return pd.DataFrame({
        "class": LABEL_NAMES, "positives": truth.sum(0).astype(int),
        "auc": [_auc(truth[:, c], probs[:, c]) for c in range(truth.shape[1])],
        "f1_at_0.5": f1_per_class(truth, probs > 0.5),
        "rate_threshold": thresholds, "f1_at_rate": f1_per_class(truth, probs > thresholds)})


def evaluate_run(folder: str | Path, weights: str = RunLayout.BEST_WEIGHTS, batch_size: int = 64
                 ) -> pd.DataFrame:
    """The class report of a run folder's checkpoint on its validation fold."""
    from hpa_tf.data import pipeline
    from hpa_tf.models.loading import load_classifier
    from hpa_tf.training.classifier import split_frames

    model, config = load_classifier(folder, weights)
    layout = run_dataset(config)
    train, valid = split_frames(layout, config.split, config.fold)
    source = pipeline.Source(layout, config.img_size, "train", config.tfrecords)
    images = pipeline.valid_dataset(source, valid, config.crop_size, batch_size).map(lambda x, y: x)
    probs = 1.0 / (1.0 + np.exp(-model.predict(images, verbose=0)))
    return class_report(pipeline.frame_labels(valid), probs, pipeline.frame_labels(train).mean(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpa_tf.training.evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a run folder (runs/<run>/fold<k>) written by train_classifier.py")
    parser.add_argument("--weights", default=RunLayout.BEST_WEIGHTS, help="checkpoint file in the folder")
    args = parser.parse_args(argv)

    def action():
        report = evaluate_run(args.folder, args.weights)
        print(report.round(3).to_string(index=False))
        print(f"macro: AUC {np.nanmean(report['auc']):.3f}, F1 at 0.5 {report['f1_at_0.5'].mean():.4f}, "
              f"F1 at training-rate thresholds {report['f1_at_rate'].mean():.4f}")
        for path in draw_report(report, RunLayout(args.folder), args.weights):
            print(f"chart written to {path}")

    return run_or_exit(action)


def draw_report(report: pd.DataFrame, run: RunLayout, weights: str) -> list[Path]:
    """per_class_f1.png of a class report, and training_curves.png when the folder has a log.csv."""
    from hpa_tf.viz import f1_bar_chart, training_curves  # matplotlib, only to draw

    scores = {"F1 at 0.5": report["f1_at_0.5"].to_numpy(),
              "F1 at training-rate thresholds": report["f1_at_rate"].to_numpy()}
    written = [f1_bar_chart(scores, run.class_chart, f"{run.root} ({weights}), validation fold")]
    if run.log.is_file():
        written.append(training_curves(run.log, run.curves, str(run.root)))
    return written


if __name__ == "__main__":
    sys.exit(main())
