"""The label-noise report for curators: annotated images whose labels disagree with the majority of their
neighbours of the same antibody or of very high embedding similarity."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf.atomic import write_csv_atomic
from hpa_tf.config import InferenceConfig
from hpa_tf.curation.gallery import noise_gallery
from hpa_tf.curation.pool import AnnotatedPool, open_pool
from hpa_tf.inference.neighbours import NeighbourIndex
from hpa_tf.labels import format_target, targets_to_matrix
from hpa_tf.output import bars_disabled

log = logging.getLogger(__name__)
SEARCH_CHUNK = 8192  # pool images searched per step of the noise report's progress bar
REPORT_CSV, REPORT_PNG = "noise_report.csv", "noise_report.png"  # under --figures


def calibrate_similarity(pool: AnnotatedPool, quantile: float = 0.999, sample: int = 2000, seed: int = 0
                         ) -> float:
    """'Very high' similarity: the cosine that only 1 - quantile of the images with a known antibody reach
    with any image of another antibody (estimated on a sample of them)."""
    antibody = pool.frame["antibody"].to_numpy()
    known = np.flatnonzero(antibody != "")
    if len(np.unique(antibody[known])) < 2:
        return 1.0
    rows = np.random.default_rng(seed).choice(known, min(sample, len(known)), replace=False)
    best_other = []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        sims = pool.space[chunk] @ pool.space[known].T
        sims[antibody[chunk][:, None] == antibody[known][None, :]] = -np.inf
        best_other.append(sims.max(axis=1))
    return float(np.quantile(np.concatenate(best_other), quantile))


def _neighbours(pool: AnnotatedPool, k: int, similarity: float, progress: bool = True
                ) -> list[dict[int, float]]:
    """Per pool row {row: cosine} of its neighbours: its k nearest of the same antibody, and any of its k
    nearest overall with cosine >= similarity."""
    found: list[dict[int, float]] = [{} for _ in range(len(pool.frame))]
    if len(pool.frame) > 1:
        index = NeighbourIndex.build(pool.space)
        chunks = range(0, len(pool.frame), SEARCH_CHUNK)
        quiet = bars_disabled(progress) or len(chunks) < 2
        for start in tqdm(chunks, desc="nearest neighbours", unit="chunk", disable=quiet):
            rows, cosines = index.search(pool.space[start:start + SEARCH_CHUNK], min(k + 1, len(pool.frame)))
            for i, (row, cosine) in enumerate(zip(rows, cosines, strict=True), start):
                found[i].update((int(j), float(c)) for j, c in zip(row, cosine, strict=True)
                                if j != i and c >= similarity)
    antibody = pool.frame["antibody"]
    for members in antibody[antibody != ""].groupby(antibody).groups.values():
        members = np.asarray(members)
        if len(members) < 2:
            continue
        sims = pool.space[members] @ pool.space[members].T
        np.fill_diagonal(sims, -np.inf)
        for a, i in enumerate(members):
            for b in np.argsort(-sims[a], kind="stable")[:min(k, len(members) - 1)]:
                found[i][int(members[b])] = float(sims[a, b])
    return found


def label_noise_report(pool: AnnotatedPool, k: int = 10, similarity: float | None = None,
                       progress: bool = True) -> tuple[pd.DataFrame, float]:
    """(report, similarity used): one row per annotated image with the majority label set of its
    neighbours (classes held by at least half of them: a tie does not count against the image) and the
    disagreement 1 - Jaccard(labels, majority), ranked by disagreement, then by the number of neighbours;
    images without a neighbour last."""
    similarity = calibrate_similarity(pool) if similarity is None else float(similarity)
    labels = targets_to_matrix(pool.frame["Target"]).astype(bool)
    ids = pool.frame["Id"].to_numpy()
    antibody = pool.frame["antibody"].to_numpy()
    records = []
    for i, found in enumerate(_neighbours(pool, k, similarity, progress)):
        order = sorted(found, key=lambda j: -found[j])
        record = {"disagreement": np.nan, "neighbours": len(order), "same_antibody": 0, "majority": "",
                  "only_in_labels": "", "only_in_majority": "", "nearest_id": "", "nearest_cosine": np.nan,
                  "neighbour_ids": " ".join(ids[order])}
        if order:
            majority = labels[order].mean(axis=0) >= 0.5
            union = (labels[i] | majority).sum()
            record.update(
                disagreement=round(1.0 - (labels[i] & majority).sum() / union, 4) if union else 0.0,
                same_antibody=int(sum(antibody[i] != "" and antibody[j] == antibody[i] for j in order)),
                majority=format_target(np.flatnonzero(majority)),
                only_in_labels=format_target(np.flatnonzero(labels[i] & ~majority)),
                only_in_majority=format_target(np.flatnonzero(majority & ~labels[i])),
                nearest_id=ids[order[0]], nearest_cosine=round(found[order[0]], 4))
        records.append(record)
    report = pd.concat([pool.frame.reset_index(drop=True), pd.DataFrame(records)], axis=1)
    report = report.sort_values(["disagreement", "neighbours", "nearest_cosine"], ascending=False,
                                na_position="last", kind="stable").reset_index(drop=True)
    report.insert(0, "rank", np.arange(1, len(report) + 1))
    return report, similarity


def write_noise_report(config: InferenceConfig) -> pd.DataFrame:
    """`infer.py --noise-report`: FIGURES/noise_report.csv and .png of the metric run's annotated pool
    (its embeddings extracted first where missing or stale); logs the top rows."""
    runs, _, pool = open_pool(config, "--noise-report")
    report, similarity = label_noise_report(pool, config.noise_neighbours, config.noise_similarity,
                                            config.progress)
    figures = Path(config.figures)
    write_csv_atomic(report, figures / REPORT_CSV)
    disagreeing = int((report["disagreement"] > 0).sum())
    alone = int(report["disagreement"].isna().sum())
    log.info(f"{disagreeing} of {len(report)} annotated images disagree with their neighbours (same "
             f"antibody or cosine >= {similarity:.4f}); {alone} have none")
    log.info(report.head(10)[["rank", "Id", "set", "Target", "majority", "disagreement", "neighbours"]]
             .to_string(index=False))
    log.info(f"report written to {figures / REPORT_CSV}")
    if disagreeing:
        path = noise_gallery(report, pool, runs.data, figures / REPORT_PNG, k=config.k)
        log.info(f"gallery written to {path}")
    return report
