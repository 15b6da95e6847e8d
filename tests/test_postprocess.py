"""Ratio thresholds (spec 10.1) and the top-1 rule (spec 10.2) against direct implementations."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_tf.inference.postprocess import LB_RATIOS, apply_thresholds, fit_thresholds, ratios


def reference_scan(p: np.ndarray, ratio: float, grid: np.ndarray) -> float:
    """The reference's loop, written out: keep t if strictly better, or as good and strictly closer to 0.5."""
    best_t, best_error = None, np.inf
    for t in grid:
        error = abs(np.mean(p > t) - ratio)
        if error < best_error or (error == best_error and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_error = t, error
    return best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_thresholds_equals_the_direct_scan(seed):
    rng = np.random.default_rng(seed)
    probs = rng.beta(0.5, 3.0, size=(57, 28))
    probs[:, 3] = np.round(probs[:, 3], 1)  # many equal values: long runs of tied thresholds
    probs[:, 4] = 0.2  # a constant column
    target = rng.uniform(0.0, 0.5, 28)
    grid = np.linspace(0, 1, 1000)  # the scan is the same for any grid; 1,000 keeps the loop quick
    expected = [reference_scan(probs[:, c], target[c], grid) for c in range(28)]
    np.testing.assert_array_equal(fit_thresholds(probs, target, grid), expected)


def test_fit_thresholds_full_grid_hits_the_ratio():
    probs = np.random.default_rng(5).random((2000, 28))
    thresholds = fit_thresholds(probs, np.full(28, 0.1))
    assert np.abs((probs > thresholds).mean(axis=0) - 0.1).max() <= 1 / 2000 + 1e-12  # one image


def test_top1_rule_keeps_the_argmax_and_uses_strict_comparison():
    probs = np.array([[0.1, 0.2, 0.05], [0.9, 0.95, 0.3], [0.3, 0.3, 0.3]])
    thresholds = np.array([0.5, 0.5, 0.3])
    labels = apply_thresholds(probs, thresholds)
    # row 0: nothing above, its argmax (1) kept; row 1: both above; row 2: 0.3 is not > 0.3, argmax 0 kept
    assert labels.tolist() == [[0, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert probs[0, 1] == 0.2  # the input is not modified


def test_ratio_sources(tmp_path):
    train = np.zeros((10, 28))
    train[:4, 0] = 1
    train[:2, 8] = 1
    np.testing.assert_allclose(ratios("train", train), train.mean(0))
    lb = ratios("lb", train)
    assert lb[0] == LB_RATIOS[0] and lb[8] == 0.2 and lb[9] == 0.0
    np.testing.assert_allclose(ratios("mean", train), (train.mean(0) + lb) / 2)
    path = tmp_path / "r.txt"
    path.write_text(",".join(["0.1"] * 28))
    np.testing.assert_allclose(ratios(str(path), train), 0.1)
    path.write_text("0.1,0.2")
    with pytest.raises(ValueError, match="expected 28 ratios"):
        ratios(str(path), train)
    with pytest.raises(ValueError, match="not found"):
        ratios(str(tmp_path / "none.csv"), train)
