"""The label-noise report and nearest annotated images on hand-made pools: hand-computed disagreements,
the neighbour rule (same antibody, or very high similarity), the calibrated similarity against brute
force; decisions appended by two processes at once."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hpa_tf.curation.corrections import COLUMNS, read_corrections
from hpa_tf.curation.pool import AnnotatedPool, Query, nearest_annotated
from hpa_tf.curation.report import calibrate_similarity, label_noise_report
from hpa_tf.embeddings import l2_normalize


def _pool(rng: np.random.Generator) -> tuple[AnnotatedPool, dict[str, str]]:
    """20 antibodies of 4 HPAv18 images sharing labels and a direction in embedding space; planted:
    one image per antibody 0-2 with a label swapped, and two Kaggle images (no antibody) that are near
    copies of antibody 5's first image, one with its labels and one with other labels."""
    centres = rng.normal(size=(20, 32))
    rows, vectors = [], []
    group_labels = {a: sorted(rng.choice(28, size=2, replace=False).tolist()) for a in range(20)}
    for a in range(20):
        for n in range(4):
            labels = list(group_labels[a])
            if a < 3 and n == 0:
                labels = [labels[0], next(c for c in range(28) if c not in group_labels[a])]
            rows.append({"Id": f"{a}_{n}", "set": "ext", "Target": " ".join(map(str, sorted(labels))),
                         "antibody": str(a)})
            vectors.append(centres[a] + 0.2 * rng.normal(size=32))
    for name, target in (("copy", group_labels[5]), ("conflict", [27])):
        rows.append({"Id": name, "set": "kaggle", "Target": " ".join(map(str, target)), "antibody": ""})
        vectors.append(vectors[5 * 4] + 0.001 * rng.normal(size=32))
    frame = pd.DataFrame(rows)
    return AnnotatedPool(frame, l2_normalize(np.asarray(vectors))), {
        "swapped": [f"{a}_0" for a in range(3)], "group5": group_labels[5]}


def test_planted_conflicts_rank_first_with_hand_computed_disagreements():
    pool, planted = _pool(np.random.default_rng(0))
    report, similarity = label_noise_report(pool, k=5, similarity=0.99)
    assert similarity == 0.99
    top = report.head(4)
    # the Kaggle copy with other labels: its only neighbours are the two near-identical images (antibody
    # 5's first image and the faithful copy), whose labels are the majority; nothing in common: 1.0
    assert top["Id"].iloc[0] == "conflict" and top["disagreement"].iloc[0] == 1.0
    assert top["neighbours"].iloc[0] == 2 and top["same_antibody"].iloc[0] == 0
    assert top["majority"].iloc[0] == " ".join(map(str, planted["group5"]))
    # the faithful copy: one neighbour each way, a tie adds class 27 to its majority: 1 - 2/3
    assert report.set_index("Id").loc["copy", "disagreement"] == pytest.approx(1 / 3, abs=1e-4)  # 4 places
    # each swapped image: 3 mates with the group's 2 labels, one shared: 1 - 1/3
    swapped = report.set_index("Id").loc[planted["swapped"]]
    np.testing.assert_allclose(swapped["disagreement"], 2 / 3, atol=1e-4)
    assert (swapped["same_antibody"] == 3).all() and set(top["Id"].iloc[1:]) == set(planted["swapped"])
    # their mates: 2 of 3 neighbours carry the group's labels, so the majority agrees with them
    mates = report.set_index("Id").loc[[f"{a}_{n}" for a in range(3) for n in (1, 2, 3)]]
    assert (mates["disagreement"] == 0).all()
    assert report["rank"].tolist() == list(range(1, len(report) + 1))


def test_neighbours_of_unknown_antibody_need_very_high_similarity():
    pool, _ = _pool(np.random.default_rng(1))
    report, _ = label_noise_report(pool, k=5, similarity=1.01)  # nothing is that similar
    by_id = report.set_index("Id")
    assert np.isnan(by_id.loc["conflict", "disagreement"]) and by_id.loc["conflict", "neighbours"] == 0
    assert set(report["Id"].iloc[-2:]) == {"copy", "conflict"}  # no neighbour: last
    assert (by_id.loc[[f"{a}_1" for a in range(20)], "neighbours"] == 3).all()  # same antibody only


def test_calibrated_similarity_equals_brute_force():
    pool, _ = _pool(np.random.default_rng(2))
    antibody = pool.frame["antibody"].to_numpy()
    best = []
    for i in np.flatnonzero(antibody != ""):
        others = [j for j in range(len(antibody)) if antibody[j] not in ("", antibody[i])]
        best.append(max(float(pool.space[i] @ pool.space[j]) for j in others))
    assert calibrate_similarity(pool, quantile=0.9, sample=10_000) == pytest.approx(np.quantile(best, 0.9),
                                                                                     abs=1e-6)
    report, used = label_noise_report(pool, k=5)
    assert used == pytest.approx(np.quantile(best, 0.999), abs=1e-6)


def test_nearest_annotated_leaves_the_query_out_and_orders_by_cosine():
    pool, _ = _pool(np.random.default_rng(3))
    query = Query("7_2", pool.space[30], "external", [1], pool_row=30)
    rows, cosines = nearest_annotated(pool, query, 5)
    others = [j for j in range(len(pool.space)) if j != 30]
    brute = sorted(others, key=lambda j: -pool.space[j] @ pool.space[30])
    assert rows.tolist() == brute[:5]
    np.testing.assert_allclose(cosines, pool.space[brute[:5]] @ pool.space[30], rtol=1e-6)
    assert set(pool.frame["antibody"].iloc[rows[:3]]) == {"7"}  # its mates first


WRITER = """
import pathlib, sys, time
from hpa_tf.curation.corrections import append_correction
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
folder = pathlib.Path(path).parent
(folder / f"{name}.ready").touch()
while not all((folder / f"{other}.ready").exists() for other in ("a", "b")):
    time.sleep(0.01)
for i in range(n):
    append_correction(path, f"{name}-{i}", [i % 28], [0], name)
"""


def test_two_processes_appending_at_once_lose_no_decision(tmp_path):
    """Two processes, started together (each waits until the other is ready), append 150 decisions each
    to one file: each decision is in it exactly once, in its writer's order, under one header."""
    path, n = tmp_path / "corrections.csv", 150
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n)]) for name in "ab"]
    assert [writer.wait() for writer in writers] == [0, 0]
    rows = read_corrections(path)
    assert rows.columns.tolist() == COLUMNS and len(rows) == 2 * n
    for name in "ab":
        mine = rows[rows["who"] == name]
        assert mine["Id"].tolist() == [f"{name}-{i}" for i in range(n)]
        assert mine["Target"].tolist() == [str(i % 28) for i in range(n)]
    assert path.read_text().count("Id,Target") == 1
