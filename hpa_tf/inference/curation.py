"""For HPA curators (the uses the original author proposed): the nearest annotated images of an image,
and the label-noise report, annotated images whose labels disagree with the majority of their neighbours
of the same antibody or of very high embedding similarity. Both read a metric run's embeddings.

The annotated pool is every HPAv18 image (embeddings_ext.npz, labels and antibody from
meta/external_meta.csv) plus, when extracted, the Kaggle train images (embeddings_kaggle.npz, labels from
meta/train_meta.csv; the antibody of the HPAv18 image a pHash match found, spec 2). The pool is put in
matching space as one set (spec 10.4: column-standardised, unit rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf import viz
from hpa_tf.data import pipeline
from hpa_tf.data.io import read_rgby
from hpa_tf.data.layout import DataLayout
from hpa_tf.embeddings import exact_neighbours, load_embeddings, matching_space
from hpa_tf.inference.neighbors import NeighbourIndex
from hpa_tf.inference.postprocess import apply_thresholds
from hpa_tf.inference.predict import InferenceError, tta_probabilities
from hpa_tf.labels import format_target, parse_target, targets_to_matrix

EXTRACT_HINT = "python train_metric.py --extract test kaggle ext"
SEARCH_CHUNK = 8192  # pool images searched per step of the noise report's progress bar


@dataclass
class AnnotatedPool:
    """The annotated images: `frame` (Id, set "ext" | "kaggle", Target, antibody: "" when unknown) and
    their embeddings in matching space, row for row."""

    frame: pd.DataFrame
    space: np.ndarray

    def position(self, image_id: str) -> int | None:
        rows = np.flatnonzero(self.frame["Id"].to_numpy() == image_id)
        return int(rows[0]) if len(rows) else None

    def split(self, row: int) -> str:
        """Where a pool image's files are: "external" (HPAv18 JPEGs) or "train" (Kaggle train PNGs)."""
        return "external" if self.frame["set"].iat[row] == "ext" else "train"


def _meta(layout: DataLayout, name: str, columns: list[str]) -> pd.DataFrame:
    path = layout.meta_dir / name
    if not path.is_file():
        raise InferenceError(f"missing {path}: run `python -m hpa_tf.data.prepare --data-dir {layout.root}`")
    return pd.read_csv(path, dtype=str, keep_default_na=False)[columns].drop_duplicates("Id").set_index("Id")


def annotated_pool(metric_run: str | Path, layout: DataLayout) -> AnnotatedPool:
    """The pool of a metric run's extracted annotated sets (ext required, kaggle used when present)."""
    metric_run = Path(metric_run)
    ext = _meta(layout, "external_meta.csv", ["Id", "Target", "antibody"])
    kaggle = _meta(layout, "train_meta.csv", ["Id", "Target"])
    matches = pd.read_csv(layout.meta_dir / "train_match_external.csv", dtype=str, keep_default_na=False)
    matched = dict(zip(matches["Train"], ext["antibody"].reindex(matches["Extra"]).fillna(""), strict=True))
    kaggle["antibody"] = [matched.get(i, "") for i in kaggle.index]
    frames, feats = [], []
    for name, meta in (("ext", ext), ("kaggle", kaggle)):
        path = metric_run / f"embeddings_{name}.npz"
        if name == "kaggle" and not path.is_file():
            print(f"note: {path} not found, the pool is HPAv18 only (add the Kaggle train images with "
                  f"`python train_metric.py --extract kaggle`)", flush=True)
            continue
        if not path.is_file():
            raise InferenceError(f"{path} not found: run `{EXTRACT_HINT}` first")
        set_feats, ids = load_embeddings(path)
        unknown = [i for i in ids if i not in meta.index]
        if unknown:
            raise InferenceError(f"{path} has {len(unknown)} ids without labels in the metadata, "
                                 f"e.g. {unknown[0]}")
        frames.append(meta.loc[ids].reset_index().assign(set=name))
        feats.append(set_feats)
    frame = pd.concat(frames, ignore_index=True)[["Id", "set", "Target", "antibody"]]
    return AnnotatedPool(frame, matching_space(np.concatenate(feats)))


# ------------------------------------------------------------------------------------------ one image

@dataclass
class Query:
    """An image to show: its vector in matching space, where its files are and its known labels."""

    image_id: str
    vector: np.ndarray
    kaggle_split: str  # "train" | "test"; "external" for HPAv18
    true: list[int] | None
    pool_row: int | None  # its own row in the pool (left out of its neighbours)


def find_query(pool: AnnotatedPool, metric_run: str | Path, layout: DataLayout, image_id: str) -> Query:
    """The query of `image_id`: a pool image, or a test image (embeddings_test.npz, the test set
    standardised on its own, spec 10.4) with its true labels where test_truth.csv exists (synthetic)."""
    row = pool.position(image_id)
    if row is not None:
        return Query(image_id, pool.space[row], pool.split(row), parse_target(pool.frame["Target"].iat[row]),
                     row)
    path = Path(metric_run) / "embeddings_test.npz"
    if path.is_file():
        feats, ids = load_embeddings(path)
        rows = np.flatnonzero(ids == image_id)
        if len(rows):
            truth = None
            if layout.test_truth_csv.is_file():
                known = pd.read_csv(layout.test_truth_csv, dtype=str, keep_default_na=False)
                known = known.set_index("Id")["Target"]
                truth = parse_target(known[image_id]) if image_id in known.index else None
            return Query(image_id, matching_space(feats)[rows[0]], "test", truth, None)
    sets = ", ".join(sorted(pool.frame["set"].unique()))
    raise InferenceError(f"{image_id} is in none of the embedding files of {metric_run} (annotated: "
                         f"{sets}; test: {'yes' if path.is_file() else 'not extracted'}): run "
                         f"`{EXTRACT_HINT}`")


def nearest_annotated(pool: AnnotatedPool, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, cosines) of the k most similar annotated images, best first, the query itself left out."""
    rows, cosines = exact_neighbours(query.vector[None, :], pool.space, k + 1)
    keep = rows[0] != query.pool_row
    return rows[0][keep][:k], cosines[0][keep][:k]


def predicted_labels(runs: list[tuple], layout: DataLayout, query: Query, serving: dict) -> list[int]:
    """The classifier's labels for one image from the fold runs' (model, config) pairs of
    predict.load_run_model, computed as the exported model computes them: the views and TTA combination of
    the `serving` record (submission.serving_record) per fold, fold mean, its thresholds with the top-1 rule
    (the submission without the duplicate, leak and neighbour steps)."""
    frame = pd.DataFrame({"Id": [query.image_id], "External": [str(query.kaggle_split == "external")]})
    split = "test" if query.kaggle_split == "test" else "train"
    probs = []
    for model, config in runs:
        source = pipeline.Source(layout, config["img_size"], split, config["tfrecords"])
        probs.append(tta_probabilities(model, source, frame, config["crop_size"], seeds=(0,),
                                       combine=serving["combine"], views=serving["views"]))
    thresholds = np.asarray(serving["thresholds"])
    return np.flatnonzero(apply_thresholds(np.mean(probs, axis=0), thresholds)[0]).tolist()


def load_thumbnail(layout: DataLayout, image_id: str, kaggle_split: str) -> np.ndarray:
    """An image's RGB composite for a tile, from the raw files (Kaggle PNGs or HPAv18 JPEGs)."""
    if kaggle_split == "external":
        return viz.thumbnail(read_rgby(layout, image_id, "external"))
    return viz.thumbnail(read_rgby(layout, image_id, "png", kaggle_split))


def _pool_tile(layout: DataLayout, pool: AnnotatedPool, row: int, cosine: float, highlight: set[int],
               mark: str = "") -> viz.Tile:
    """A neighbour tile: Id, cosine, and its labels (green where they are in `highlight`)."""
    record = pool.frame.iloc[row]
    lines = [(f"{viz.short_id(record['Id'])} {mark}".rstrip(), viz.PLAIN),
             (f"cosine {cosine:.3f}", viz.PLAIN)]
    lines += [(viz.LABEL_NAMES[c], viz.CORRECT if c in highlight else viz.PLAIN)
              for c in parse_target(record["Target"])]
    return viz.Tile(load_thumbnail(layout, record["Id"], pool.split(row)), lines)


def gallery(pool: AnnotatedPool, query: Query, layout: DataLayout, k: int, path: str | Path,
            predicted: list[int] | None = None) -> Path:
    """PNG: the query (true vs predicted labels, missed and added marked) and its k nearest annotated
    images (labels shared with the query in green, cosine)."""
    rows, cosines = nearest_annotated(pool, query, k)
    head = [(f"query {viz.short_id(query.image_id)}", viz.PLAIN)]
    query_tile = viz.Tile(load_thumbnail(layout, query.image_id, query.kaggle_split),
                          head + viz.label_lines(query.true, predicted))
    highlight = set(query.true if query.true is not None else predicted or [])
    tiles = [_pool_tile(layout, pool, int(r), float(c), highlight)
             for r, c in zip(rows, cosines, strict=True)]
    return viz.render_gallery([[query_tile] + tiles], path)


# --------------------------------------------------------------------------------------- noise report

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
        quiet = not progress or len(chunks) < 2
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


def noise_gallery(report: pd.DataFrame, pool: AnnotatedPool, layout: DataLayout, path: str | Path,
                  rows: int = 6, k: int = 6) -> Path:
    """PNG: the `rows` most disagreeing images, each beside up to k of its neighbours (labels shared with
    it in green; 'same ab' marks its antibody); an image already shown as a neighbour gets no row."""
    position = {image_id: n for n, image_id in enumerate(pool.frame["Id"])}
    gallery_rows, shown = [], set()
    for record in report[report["disagreement"] > 0].itertuples():
        if len(gallery_rows) == rows:
            break
        if record.Id in shown:  # already beside an earlier image (the other half of a conflicting pair)
            continue
        shown.update(record.neighbour_ids.split()[:k])
        i = position[record.Id]
        own = set(parse_target(record.Target))
        lines = [(f"#{record.rank} {viz.short_id(record.Id)}", viz.PLAIN),
                 (f"disagreement {record.disagreement:.2f}", viz.PLAIN)]
        lines += viz.label_lines(parse_target(record.majority), sorted(own), ("majority only", "only here"))
        tiles = [viz.Tile(load_thumbnail(layout, record.Id, pool.split(i)), lines)]
        for neighbour in record.neighbour_ids.split()[:k]:
            j = position[neighbour]
            same = record.antibody != "" and pool.frame["antibody"].iat[j] == record.antibody
            tiles.append(_pool_tile(layout, pool, j, float(pool.space[i] @ pool.space[j]), own,
                                    "same ab" if same else ""))
        gallery_rows.append(tiles)
    if not gallery_rows:
        raise InferenceError("no image disagrees with its neighbours: nothing to show")
    return viz.render_gallery(gallery_rows, path)
