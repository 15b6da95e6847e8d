"""Galleries for curators: an image beside its nearest annotated images (labels shared with it in green,
cosines; its predicted labels against the known ones, each with its Grad-CAM map in a second row), and the
noise report's most disagreeing images beside their neighbours."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf import viz
from hpa_tf.config import InferenceConfig
from hpa_tf.curation.explain import Explanations
from hpa_tf.curation.pool import AnnotatedPool, Query, find_query, nearest_annotated, open_pool
from hpa_tf.curation.predictions import ImagePredictions
from hpa_tf.data.io import read_rgby
from hpa_tf.errors import InferenceError
from hpa_tf.labels import parse_target
from hpa_tf.layout import DataLayout

log = logging.getLogger(__name__)


def read_image(layout: DataLayout, image_id: str, kaggle_split: str) -> np.ndarray:
    """An image's raw uint8 RGBY [H, W, 4]: HPAv18 JPEGs ("external") or the Kaggle PNGs of its split."""
    if kaggle_split == "external":
        return read_rgby(layout, image_id, "external")
    return read_rgby(layout, image_id, "png", kaggle_split)


def load_thumbnail(layout: DataLayout, image_id: str, kaggle_split: str) -> np.ndarray:
    """An image's RGB composite for a tile, from the raw files."""
    return viz.thumbnail(read_image(layout, image_id, kaggle_split))


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
            predicted: list[int] | None = None, explanations: dict[int, np.ndarray] | None = None) -> Path:
    """PNG: the query (true vs predicted labels, missed and added marked) and its k nearest annotated
    images (labels shared with the query in green, cosine); under them, the query under each map of
    `explanations` (class -> Grad-CAM map) with the class's name."""
    rows, cosines = nearest_annotated(pool, query, k)
    head = [(f"query {viz.short_id(query.image_id)}", viz.PLAIN)]
    thumbnail = load_thumbnail(layout, query.image_id, query.kaggle_split)
    query_tile = viz.Tile(thumbnail, head + viz.label_lines(query.true, predicted))
    highlight = set(query.reference_labels(predicted))
    tiles = [_pool_tile(layout, pool, int(r), float(c), highlight)
             for r, c in zip(rows, cosines, strict=True)]
    maps = [viz.Tile(viz.heatmap_overlay(thumbnail, heat), [(f"Grad-CAM: {viz.LABEL_NAMES[c]}", viz.PLAIN)])
            for c, heat in (explanations or {}).items()]
    return viz.render_gallery([[query_tile] + tiles] + ([maps] if maps else []), path)


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


def gallery_path(figures: str | Path, image_id: str) -> Path:
    """FIGURES/gallery_<ID>.png."""
    return Path(figures) / f"gallery_{image_id}.png"


def write_galleries(config: InferenceConfig, image_ids: list[str]) -> list[Path]:
    """`infer.py --gallery ID ...`: one gallery per image under config.figures, with the classifier folds'
    prediction (as the curators' page has it: predictions.ImagePredictions) and its Grad-CAM maps where a
    fold is trained (the metric run's embeddings extracted first where missing)."""
    runs, embedder, pool = open_pool(config, "--gallery")
    if not runs.folds:
        log.warning("note: no trained classifier fold (python train_classifier.py): galleries show no "
                    "prediction")
    predictions = ImagePredictions(config, runs)
    explanations = Explanations(predictions)
    written = []
    for image_id in image_ids:
        query = find_query(pool, embedder.root, runs.data, image_id)
        prediction = predictions.of(query)
        predicted = None if prediction is None else prediction.labels
        written.append(gallery(pool, query, runs.data, config.k, gallery_path(config.figures, image_id),
                               predicted, explanations.maps(query, predicted) if predicted else None))
        log.info(f"gallery written to {written[-1]}")
    return written
