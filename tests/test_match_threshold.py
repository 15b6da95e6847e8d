"""`--match-threshold auto`: the best cosine to another antibody, the rule that picks the threshold from the
antibody-val sweep, and `python infer.py --sweep` against an independent brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import normalize, scale

from hpa_tf.cli import infer
from hpa_tf.embeddings import best_cosine_elsewhere, load_embeddings
from hpa_tf.errors import InferenceError
from hpa_tf.inference.match_threshold import GRID, choose
from hpa_tf.layout import DataLayout


def test_best_cosine_elsewhere_skips_the_query_group_like_a_loop():
    rng = np.random.default_rng(3)
    queries, references = normalize(rng.normal(size=(40, 6))), normalize(rng.normal(size=(70, 6)))
    query_groups, reference_groups = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
    reference_groups[reference_groups == 4] = 3  # group 4 queries then have no reference of their own
    got = best_cosine_elsewhere(queries, query_groups, references, reference_groups, chunk=7)
    for q in range(40):
        others = [float(queries[q] @ references[r]) for r in range(70)
                  if reference_groups[r] != query_groups[q]]
        assert got[q] == pytest.approx(max(others), abs=1e-6)
    alone = best_cosine_elsewhere(queries[:2], [1, 1], references[:3], [1, 1, 1])
    assert np.isneginf(alone).all()  # no reference of another group


def _sweep(selected, impostors, n=100):
    return pd.DataFrame({"threshold": [0.5, 0.6, 0.7, 0.8], "selected": selected, "matched": selected,
                         "correct": selected, "accuracy": 1.0, "impostors": impostors,
                         "impostor_rate": np.asarray(impostors) / n})


def test_choose_takes_the_lowest_threshold_within_the_impostor_rate():
    choice = choose(_sweep([90, 60, 30, 5], [40, 8, 1, 0]), impostor_rate=0.01)
    assert choice.threshold == 0.7 and choice.row["selected"] == 30
    assert isinstance(choice.row["selected"], int)
    assert "0.70" in choice.describe() and "impostors 1," in choice.describe()
    assert choose(_sweep([90, 60, 30, 5], [40, 8, 1, 0]), impostor_rate=0.1).threshold == 0.6
    # within the rate only where nothing is selected any more: no replacement
    none = choose(_sweep([90, 60, 0, 0], [40, 8, 1, 0]), impostor_rate=0.01)
    assert none.threshold == math.inf and none.row is None
    assert "no replacement" in none.describe() and "more than 1.00%" in none.describe()
    nothing = choose(_sweep([0, 0, 0, 0], [0, 0, 0, 0]))
    assert nothing.threshold == math.inf and "above any threshold" in nothing.describe()
    with pytest.raises(InferenceError, match="between 0 and 1"):
        choose(_sweep([1, 1, 1, 1], [0, 0, 0, 0]), impostor_rate=1.5)


def test_infer_sweep_matches_brute_force_and_prints_the_choice(trained_runs, capsys):
    """Val against train (the reference's columns) and against every HPAv18 image of another antibody
    (impostors), recomputed here with sklearn's scale from the rows of embeddings_ext.npz."""
    root, out = trained_runs
    args = ["--sweep", "--data-dir", str(root), "--runs", str(out), "--metric-run", str(out / "metric_demo"),
            "--impostor-rate", "0.05"]
    assert infer.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split()
    assert header == ["threshold", "selected", "matched", "correct", "accuracy", "recall", "f1", "impostors",
                      "impostor_rate"]
    printed = pd.DataFrame([line.split() for line in lines[1:-1]], columns=header).astype(float)

    feats, ids = load_embeddings(out / "metric_demo" / "embeddings_ext.npz")
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
    correct = [sorted(a.split()) == sorted(b.split())
               for a, b in zip(val["Target"], nearest["Target"], strict=True)]
    other = val["antibody_code"].to_numpy()[:, None] != ext["antibody_code"].to_numpy()[None, :]
    elsewhere = np.where(other, to_ext, -np.inf).max(axis=1)
    expected = pd.DataFrame({"threshold": GRID})
    expected["selected"] = [(to_train.max(axis=1) > t).sum() for t in GRID]
    expected["matched"] = [((to_train.max(axis=1) > t) & same_antibody).sum() for t in GRID]
    expected["correct"] = [((to_train.max(axis=1) > t) & np.array(correct)).sum() for t in GRID]
    expected["impostors"] = [(elsewhere > t).sum() for t in GRID]
    # the printed rows are those where a count changes: each equals the brute-force row of its threshold
    indexed = expected.set_index(expected["threshold"].round(2))
    for _, line in printed.iterrows():
        want = indexed.loc[round(line["threshold"], 2)]
        for column in ("selected", "matched", "correct", "impostors"):
            assert line[column] == want[column], (line["threshold"], column)
    counts = expected[["selected", "matched", "correct", "impostors"]]
    assert len(printed) == (counts != counts.shift()).any(axis=1).sum()
    # the rule on the brute-force table: lowest threshold with a selected image and <= 5% impostors
    fit = expected[(expected["impostors"] <= 0.05 * len(val)) & (expected["selected"] > 0)]
    if fit.empty:
        assert "no replacement" in lines[-1]
    else:
        assert lines[-1].startswith(f"match threshold auto: {fit['threshold'].iloc[0]:.2f} ")


def test_match_threshold_flag_takes_auto_or_a_number():
    assert infer.parse_args(["--submission"]).match_threshold == "auto"
    assert infer.parse_args(["--submission", "--match-threshold", "0.7"]).match_threshold == 0.7
    with pytest.raises(SystemExit):
        infer.parse_args(["--submission", "--match-threshold", "high"])
    assert infer.main(["--submission", "--impostor-rate", "0"]) == 2
