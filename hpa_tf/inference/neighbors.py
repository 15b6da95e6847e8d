"""Nearest annotated images by the metric-learning embedding (spec 10.4-10.5): a ScaNN index over the
reference embeddings in matching space (per-set column standardisation, then unit rows, so the dot
product is the cosine), exact search as fallback and yardstick, and the label replacement rule."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_tf.embeddings import exact_neighbours, matching_space

# Reference sets smaller than this are searched exactly: brute force is fast there, and the tree's default
# 1/10 of sqrt(n) leaves finds only 86% of the exact top-1 on the 2,000-image demo set.
EXACT_BELOW = 20_000
INDEX_INFO = "hpa_tf_index.json"


@dataclass
class NeighbourIndex:
    """Top-k cosine search over reference rows already in matching space; ScaNN (tree + asymmetric
    hashing + exact re-ranking) when `searcher` is set, brute force otherwise."""

    references: np.ndarray
    searcher: object | None = None

    @classmethod
    def build(cls, references: np.ndarray, exact: bool = False, leaves: int | None = None,
              leaves_to_search: int | None = None, reorder: int = 1000,
              exact_below: int = EXACT_BELOW) -> NeighbourIndex:
        """Index `references` (matching space), exactly below `exact_below` rows. ScaNN defaults: sqrt(n)
        leaves, 1/10 of them searched, the best 1,000 candidates re-ranked exactly (see
        benchmarks/neighbors.py for recall and speed)."""
        references = np.ascontiguousarray(references, dtype=np.float32)
        if exact or len(references) < exact_below:
            return cls(references)
        import scann

        leaves = leaves or int(math.sqrt(len(references)))
        leaves_to_search = leaves_to_search or max(1, leaves // 10)
        searcher = (scann.scann_ops_pybind.builder(references, 10, "dot_product")
                    .tree(num_leaves=leaves, num_leaves_to_search=leaves_to_search,
                          training_sample_size=min(len(references), 250_000))
                    .score_ah(2, anisotropic_quantization_threshold=0.2)
                    .reorder(reorder)
                    .build())
        return cls(references, searcher)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(indices [Q, k], cosines [Q, k]) best first, for queries in matching space."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.searcher is None:
            return exact_neighbours(queries, self.references, k)
        indices, scores = self.searcher.search_batched(queries, final_num_neighbors=k)
        return np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float32)

    def save(self, folder: str | Path) -> Path:
        """Write the index (ScaNN's own files, or the reference rows for exact search) to a folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "references.npy", self.references)
        if self.searcher is not None:
            self.searcher.serialize(str(folder))
        (folder / INDEX_INFO).write_text(json.dumps({"scann": self.searcher is not None,
                                                     "rows": len(self.references)}))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> NeighbourIndex:
        """An index written by save()."""
        folder = Path(folder)
        info_path = folder / INDEX_INFO
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} not found: not a folder written by NeighbourIndex.save")
        info = json.loads(info_path.read_text())
        references = np.load(folder / "references.npy", allow_pickle=False)
        if not info["scann"]:
            return cls(references)
        import scann

        return cls(references, scann.scann_ops_pybind.load_searcher(str(folder)))


def match(query_feats: np.ndarray, reference_feats: np.ndarray, k: int = 1, exact: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k references of every query as the reference matched them: each set standardised on its own,
    then cosine (spec 10.4)."""
    index = NeighbourIndex.build(matching_space(reference_feats), exact=exact)
    return index.search(matching_space(query_feats), k)


def replace_labels(predicted: list[str], best_reference: np.ndarray, best_cosine: np.ndarray,
                   reference_targets: list[str], threshold: float = 0.65) -> tuple[list[str], np.ndarray]:
    """Spec 10.5: where the best cosine is strictly above `threshold`, the whole predicted label set is
    replaced by the matched reference image's; returns (new targets, mask of replaced rows)."""
    replaced = np.asarray(best_cosine) > threshold
    targets = [reference_targets[r] if hit else p
               for p, r, hit in zip(predicted, best_reference, replaced, strict=True)]
    return targets, replaced


SWEEP = np.arange(0.60, 0.80, 0.01)  # the thresholds the reference printed


def threshold_sweep(best_cosine: np.ndarray, same_antibody: np.ndarray, same_target: np.ndarray,
                    thresholds=SWEEP) -> list[dict]:
    """What the reference printed per threshold on val (spec 10.4): queries selected (cosine > t),
    matches of the same antibody, correct label sets, acc = correct / selected, recall = correct / all
    queries, and their F1."""
    rows = []
    for t in thresholds:
        selected = np.asarray(best_cosine) > t
        count, correct = int(selected.sum()), int((selected & same_target).sum())
        accuracy = correct / count if count else 0.0
        recall = correct / len(selected) if len(selected) else 0.0
        f1 = 2 * accuracy * recall / (accuracy + recall) if accuracy + recall else 0.0
        rows.append({"threshold": round(float(t), 2), "selected": count,
                     "matched": int((selected & same_antibody).sum()), "correct": correct,
                     "accuracy": accuracy, "recall": recall, "f1": f1})
    return rows
