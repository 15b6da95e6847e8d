"""`--match-threshold auto`: the best image of another antibody, the estimated share of test antibodies among
HPAv18's, the expected gain per threshold and its choice, the classifier's out-of-fold label accuracy (saved
files reused only while they are these folds'), and `python infer.py --sweep` against an independent
brute-force computation."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import normalize, scale

from hpa_tf.cli import infer
from hpa_tf.config import InferenceConfig
from hpa_tf.embeddings import best_elsewhere, load_embeddings
from hpa_tf.errors import InferenceError
from hpa_tf.inference.match_threshold import GRID, NO_SHARE, antibody_share, choose, expected_gain
from hpa_tf.inference.validation import (
    label_set_accuracy,
    out_of_fold_frame,
    saved_out_of_fold_problem,
    validation_jobs,
)
from hpa_tf.layout import DataLayout, ValidationFiles


def test_best_elsewhere_skips_the_query_group_like_a_loop():
    rng = np.random.default_rng(3)
    queries, references = normalize(rng.normal(size=(40, 6))), normalize(rng.normal(size=(70, 6)))
    query_groups, reference_groups = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
    reference_groups[reference_groups == 4] = 3  # group 4 queries then have no reference of their own
    index, got = best_elsewhere(queries, query_groups, references, reference_groups, chunk=7)
    for q in range(40):
        others = {r: float(queries[q] @ references[r]) for r in range(70)
                  if reference_groups[r] != query_groups[q]}
        best = max(others, key=others.get)
        assert index[q] == best and got[q] == pytest.approx(others[best], abs=1e-6)
    index, alone = best_elsewhere(queries[:2], [1, 1], references[:3], [1, 1, 1])
    assert np.isneginf(alone).all() and (index == -1).all()  # no reference of another group


def _sweep(selected, correct, impostors, impostors_correct, queries=100):
    return pd.DataFrame({"threshold": [0.5, 0.6, 0.7, 0.8], "selected": selected, "matched": selected,
                         "correct": correct, "accuracy": np.asarray(correct) / np.maximum(selected, 1),
                         "impostors": impostors, "impostors_correct": impostors_correct,
                         "impostor_rate": np.asarray(impostors) / queries})


def test_expected_gain_weighs_both_cases_against_the_classifier():
    sweep = _sweep([90, 60, 30, 5], [60, 50, 28, 4], [80, 40, 10, 1], [20, 12, 4, 0])
    got = expected_gain(sweep, 100, share=0.4, accuracy=0.3)
    by_hand = [0.4 * (c - 0.3 * s) / 100 + 0.6 * (ic - 0.3 * i) / 100
               for s, c, i, ic in [(90, 60, 80, 20), (60, 50, 40, 12), (30, 28, 10, 4), (5, 4, 1, 0)]]
    assert got == pytest.approx(by_hand)


def test_choose_takes_the_largest_expected_gain():
    sweep = _sweep([90, 60, 30, 5], [60, 50, 28, 4], [80, 40, 10, 1], [20, 12, 4, 0])
    gains = expected_gain(sweep, 100, 0.4, 0.3)
    choice = choose(sweep, 100, share=0.4, accuracy=0.3)
    assert choice.threshold == [0.5, 0.6, 0.7, 0.8][int(np.argmax(gains))] == 0.6
    assert isinstance(choice.row["selected"], int) and choice.row["selected"] == 60
    line = choice.describe()
    assert line.startswith("match threshold auto: 0.60 (the largest expected gain, +")
    assert "40% of test" in line
    assert "right for 30.0%" in line and "impostors_correct 12," in line
    # a better classifier leaves only the surest matches worth replacing
    assert choose(sweep, 100, share=0.4, accuracy=0.7).threshold == 0.7
    # the cap keeps only thresholds with few impostors
    assert choose(sweep, 100, 0.4, 0.3, impostor_rate=0.2).threshold == 0.7
    # equal gains: the lowest threshold
    flat = _sweep([10, 10, 10, 5], [10, 10, 10, 5], [0, 0, 0, 0], [0, 0, 0, 0])
    assert choose(flat, 100, 0.5, 0.0).threshold == 0.5
    # nothing is expected to gain: no replacement
    worse = choose(sweep, 100, share=0.4, accuracy=0.99)
    assert worse.threshold == math.inf and worse.row is None and "no replacement" in worse.describe()
    assert "expected to make more label sets right than wrong" in worse.describe()
    nothing = choose(_sweep([0] * 4, [0] * 4, [0] * 4, [0] * 4), 100, 0.5, 0.1)
    assert nothing.threshold == math.inf and "above any threshold" in nothing.describe()
    with pytest.raises(InferenceError, match="between 0 and 1"):
        choose(sweep, 100, 0.4, 0.3, impostor_rate=1.5)


def test_antibody_share_recovers_a_known_mixture():
    """Test cosines drawn from the val images' two distributions in a known proportion: the estimate
    finds the proportion; curves that never differ say nothing (NO_SHARE)."""
    rng = np.random.default_rng(0)
    own, other = rng.beta(8, 2, 4000), rng.beta(4, 4, 4000)  # best cosines with / without the antibody
    sweep = pd.DataFrame({"threshold": GRID, "selected": [(own > t).sum() for t in GRID],
                          "impostors": [(other > t).sum() for t in GRID]})
    for share in (0.2, 0.55, 0.9):
        test = np.concatenate([rng.beta(8, 2, int(3000 * share)), rng.beta(4, 4, 3000 - int(3000 * share))])
        assert antibody_share(sweep, 4000, test) == pytest.approx(share, abs=0.03)
    assert antibody_share(sweep, 4000, np.ones(10)) == 1.0  # clipped
    same = sweep.assign(impostors=sweep["selected"])
    assert antibody_share(same, 4000, own) == NO_SHARE


def _oof_truth(root, folds):
    """The folds' validation labels as a multi-hot matrix, in out-of-fold order, read with pandas."""
    split = DataLayout(root).split_dir / "random_ext_noleak_clean_folds5"
    frames = [pd.read_csv(split / f"random_valid_cv{f}.csv", dtype=str, keep_default_na=False) for f in folds]
    targets = pd.concat(frames)["Target"]
    return np.array([[str(c) in t.split() for c in range(28)] for t in targets], dtype=bool)


def test_label_set_accuracy_reuses_only_these_folds_fresh_files(trained_runs, tmp_path, caplog):
    """Computed first (files written as --validate writes them), then reused; files older than a checkpoint,
    damaged, or of other folds are not used. The value: exact label sets of the saved probabilities with the
    top-1 rule, recomputed here."""
    root, out = trained_runs
    folds = [out / "demo" / "fold0", out / "demo" / "fold1"]
    config = InferenceConfig(runs=str(out), seeds=(0,), views=["default"],  # one view: quicker
                             output=str(tmp_path / "submission.csv"))
    files = ValidationFiles(tmp_path / "validation.csv")
    caplog.set_level(logging.INFO, logger="hpa_tf")
    first = label_set_accuracy(config, folds)
    assert "computed first" in caplog.text and f"{files.probabilities} does not exist" in caplog.text
    probs, thresholds = np.load(files.probabilities), np.load(files.thresholds)
    labels = (probs > thresholds) | (probs == probs.max(axis=1, keepdims=True))
    assert first == pytest.approx((labels == _oof_truth(root, (0, 1))).all(axis=1).mean())
    caplog.clear()
    stamp = files.probabilities.stat().st_mtime_ns
    assert label_set_accuracy(config, folds) == first and "computed first" not in caplog.text
    assert files.probabilities.stat().st_mtime_ns == stamp  # reused, not written again

    frames = {k: out_of_fold_frame(validation_jobs(folds[:k])) for k in (1, 2)}
    assert saved_out_of_fold_problem(files, folds, frames[2]) is None
    assert "other images or folds" in saved_out_of_fold_problem(files, folds[:1], frames[1])
    os.utime(files.probabilities, ns=(stamp, stamp - 10**12))  # older than the checkpoints
    assert "older than a fold's checkpoint" in saved_out_of_fold_problem(files, folds, frames[2])
    files.probabilities.write_bytes(files.probabilities.read_bytes()[:100])
    assert "is damaged" in saved_out_of_fold_problem(files, folds, frames[2])
    files.probabilities.unlink()
    assert "does not exist" in saved_out_of_fold_problem(files, folds, frames[2])


def test_infer_sweep_matches_brute_force_and_prints_the_choice(trained_runs, tmp_path, capsys):
    """Val against train (the reference's columns), against every HPAv18 image of another antibody
    (impostors, and those sharing the val image's label set), the share and the gain, recomputed here with
    sklearn's scale from the rows of the embedding files."""
    root, out = trained_runs
    args = ["--sweep", "--data-dir", str(root), "--runs", str(out), "--run", "demo", "--metric-run",
            str(out / "metric_demo"), "--seeds", "0", "--validation-csv", str(tmp_path / "validation.csv")]
    assert infer.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    lines = lines[next(k for k, line in enumerate(lines) if line.split()[:1] == ["threshold"]):]
    header = lines[0].split()
    assert header == ["threshold", "selected", "matched", "correct", "accuracy", "recall", "f1", "impostors",
                      "impostor_rate", "impostors_correct", "gain"]
    printed = pd.DataFrame([line.split() for line in lines[1:-1]], columns=header).astype(float)

    feats, ids = load_embeddings(out / "metric_demo" / "embeddings_ext.npz")
    test_feats, _ = load_embeddings(out / "metric_demo" / "embeddings_test.npz")
    row = {image_id: r for r, image_id in enumerate(ids)}
    split = DataLayout(root).split_dir
    val, train, ext = (pd.read_csv(split / f"external_{name}antibody_split.csv", dtype=str,
                                   keep_default_na=False) for name in ("validset_", "trainset_", ""))
    space = [normalize(scale(feats[[row[i] for i in frame["Id"]]].astype(np.float64)))
             for frame in (val, train, ext)]
    to_train, to_ext = space[0] @ space[1].T, space[0] @ space[2].T
    best = to_train.argmax(axis=1)
    nearest = train.iloc[best]
    same_antibody = val["antibody_code"].to_numpy() == nearest["antibody_code"].to_numpy()

    def same_labels(a, b):
        return np.array([sorted(x.split()) == sorted(y.split()) for x, y in zip(a, b, strict=True)])

    correct = same_labels(val["Target"], nearest["Target"])
    other = val["antibody_code"].to_numpy()[:, None] != ext["antibody_code"].to_numpy()[None, :]
    masked = np.where(other, to_ext, -np.inf)
    elsewhere = masked.max(axis=1)
    other_correct = same_labels(val["Target"], ext["Target"].iloc[masked.argmax(axis=1)])
    test_space, ext_space = (normalize(scale(f.astype(np.float64))) for f in (test_feats, feats))
    test_best = (test_space @ ext_space.T).max(axis=1)
    expected = pd.DataFrame({"threshold": GRID})
    cos = to_train.max(axis=1)
    expected["selected"] = [(cos > t).sum() for t in GRID]
    expected["matched"] = [((cos > t) & same_antibody).sum() for t in GRID]
    expected["correct"] = [((cos > t) & correct).sum() for t in GRID]
    expected["impostors"] = [(elsewhere > t).sum() for t in GRID]
    expected["impostors_correct"] = [((elsewhere > t) & other_correct).sum() for t in GRID]
    # the share: least squares of the test curve on the two val curves
    s_own, s_other = expected["selected"] / len(val), expected["impostors"] / len(val)
    s_test = np.array([(test_best > t).mean() for t in GRID])
    fit = np.linalg.lstsq((s_own - s_other).to_numpy()[:, None], s_test - s_other, rcond=None)[0][0]
    share = np.clip(fit, 0, 1)
    probs = np.load(tmp_path / "validation.prob.npy")
    thresholds = np.load(tmp_path / "validation.thresholds.npy")
    labels = (probs > thresholds) | (probs == probs.max(axis=1, keepdims=True))
    accuracy = (labels == _oof_truth(root, (0, 1))).all(axis=1).mean()
    gain = (share * (expected["correct"] - accuracy * expected["selected"])
            + (1 - share) * (expected["impostors_correct"] - accuracy * expected["impostors"])) / len(val)
    expected["gain"] = gain
    # the printed rows are those where a count changes: each equals the brute-force row of its threshold
    indexed = expected.set_index(expected["threshold"].round(2))
    for _, line in printed.iterrows():
        want = indexed.loc[round(line["threshold"], 2)]
        for column in ("selected", "matched", "correct", "impostors", "impostors_correct"):
            assert line[column] == want[column], (line["threshold"], column)
        assert line["gain"] == pytest.approx(want["gain"], abs=1e-4)
    counts = expected[["selected", "matched", "correct", "impostors", "impostors_correct"]]
    assert len(printed) == (counts != counts.shift()).any(axis=1).sum()
    if gain.max() <= 0:
        assert "no replacement" in lines[-1]
    else:
        assert lines[-1].startswith(f"match threshold auto: {GRID[int(np.argmax(gain))]:.2f} ")
        assert f"right for {accuracy:.1%}" in lines[-1] and f"{share:.0%} of test images" in lines[-1]


def test_match_threshold_flag_takes_auto_or_a_number():
    assert infer.parse_args(["--submission"]).match_threshold == "auto"
    assert infer.parse_args(["--submission", "--match-threshold", "0.7"]).match_threshold == 0.7
    with pytest.raises(SystemExit):
        infer.parse_args(["--submission", "--match-threshold", "high"])
    assert infer.main(["--submission", "--impostor-rate", "0"]) == 2
