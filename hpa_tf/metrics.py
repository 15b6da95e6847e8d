"""Evaluation metrics of the reference (spec 11) on numpy arrays."""

from __future__ import annotations

import numpy as np


def f1_per_class(y_true, y_pred) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) of each column of binary [N, C] matrices; 0 where a class has no true
    and no predicted positives (sklearn's convention)."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"y_true and y_pred must be [N, C] of one shape, got {t.shape} and {p.shape}")
    tp = (t & p).sum(0)
    denominator = 2 * tp + (~t & p).sum(0) + (t & ~p).sum(0)
    return np.divide(2.0 * tp, denominator, out=np.zeros(t.shape[1]), where=denominator > 0)


def macro_f1(y_true, y_pred) -> float:
    """The competition metric: mean F1 over classes (sklearn `f1_score(average='macro')`)."""
    return float(f1_per_class(y_true, y_pred).mean())


def _hits(labels, scores, k: int) -> np.ndarray:
    """[N, k] booleans: whether the j-th highest score of each row is its label (ties: lower index first)."""
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return order == labels[:, None]


def top_k_accuracy(labels, scores, k: int = 1) -> float:
    """Share of rows whose label is among the k highest scores (spec 8.2 top-1 / top-5)."""
    return float(_hits(labels, scores, k).any(axis=1).mean())


def map_at_5(labels, scores) -> float:
    """MAP@5 with one label per row: mean over rows of sum_k hit@k / k (spec 8.2)."""
    return float((_hits(labels, scores, 5) / np.arange(1, 6)).sum(axis=1).mean())
