"""Nearest annotated images by the metric-learning embedding (spec 10.4-10.5): a ScaNN index over the
reference embeddings in matching space (per-set column standardisation, then unit rows, so the dot
product is the cosine), exact search as fallback and yardstick, and the label replacement rule."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.atomic import file_sha256, write_folder_atomic, write_json_atomic
from hpa_tf.embeddings import exact_neighbours, matching_space
from hpa_tf.errors import InferenceError
from hpa_tf.labels import format_target, parse_target

log = logging.getLogger(__name__)
# Reference sets smaller than this are searched exactly: brute force is fast there, and the tree's default
# 1/10 of sqrt(n) leaves finds only 86% of the exact top-1 on the 2,000-image demo set.
EXACT_BELOW = 20_000
INDEX_INFO = "hpa_tf_index.json"
SCANN_ASSETS = "scann_assets.pbtxt"  # ScaNN's list of its files
INDEX_VERSION = 4  # bumped when the index's build settings or files change, so saved indexes are rebuilt


@dataclass
class NeighbourIndex:
    """Top-k cosine search over reference rows already in matching space; ScaNN (tree + asymmetric
    hashing + exact re-ranking) when `searcher` is set, brute force otherwise."""

    references: np.ndarray
    searcher: object | None = None

    @classmethod
    def build(cls, references: np.ndarray, exact: bool = False, leaves: int | None = None,
              leaves_to_search: int | None = None, reorder: int = 250,
              exact_below: int = EXACT_BELOW) -> NeighbourIndex:
        """Index `references` (matching space), exactly below `exact_below` rows. ScaNN defaults: sqrt(n)
        spherical k-means leaves (unit centroids: plain ones favour long centroids under the dot product
        and lose ~1% recall@1), 1/5 of them searched, the best 250 candidates re-ranked exactly
        (benchmarks/neighbours.py: recall and speed against exact search and FAISS)."""
        references = np.ascontiguousarray(references, dtype=np.float32)
        if exact or len(references) < exact_below:
            return cls(references)
        import scann

        leaves = leaves or int(math.sqrt(len(references)))
        leaves_to_search = leaves_to_search or max(1, leaves // 5)
        searcher = (scann.scann_ops_pybind.builder(references, 10, "dot_product")
                    .tree(num_leaves=leaves, num_leaves_to_search=leaves_to_search,
                          training_sample_size=min(len(references), 250_000), spherical=True)
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

    def save(self, folder: str | Path, fingerprint: str | None = None) -> Path:
        """Write the index (ScaNN's own files, or the reference rows for exact search) to a folder, built
        beside it and swapped in whole (atomic.write_folder_atomic); its info records `fingerprint` (what it
        was built from) and each file's size and sha256. ScaNN's asset list records absolute paths: they
        are pointed at the final folder."""
        final = Path(folder).resolve()

        def write(temporary: Path) -> None:
            temporary = temporary.resolve()
            np.save(temporary / "references.npy", self.references)
            if self.searcher is not None:
                self.searcher.serialize(str(temporary))
                assets = temporary / SCANN_ASSETS
                assets.write_text(assets.read_text().replace(f'"{temporary}/', f'"{final}/'))
            files = {p.name: [p.stat().st_size, file_sha256(p)] for p in sorted(temporary.iterdir())}
            write_json_atomic({"scann": self.searcher is not None, "rows": len(self.references),
                               "fingerprint": fingerprint, "files": files}, temporary / INDEX_INFO)

        return write_folder_atomic(folder, write)

    @classmethod
    def load(cls, folder: str | Path) -> NeighbourIndex:
        """An index written by save()."""
        folder = Path(folder)
        info_path = folder / INDEX_INFO
        if not info_path.is_file():
            raise InferenceError(f"{info_path} not found: not a folder written by NeighbourIndex.save")
        info = json.loads(info_path.read_text())
        references = np.load(folder / "references.npy", allow_pickle=False)
        if not info["scann"]:
            return cls(references)
        import scann

        return cls(references, scann.scann_ops_pybind.load_searcher(str(folder)))


def index_problem(folder: str | Path, fingerprint: str, rows: int) -> str | None:
    """Why the index saved in `folder` is not one of `rows` references built from `fingerprint` with every
    file as written (missing, cut short, garbled, another version's), or None when it is."""
    folder = Path(folder)
    try:
        info = json.loads((folder / INDEX_INFO).read_text())
    except FileNotFoundError:
        return f"{INDEX_INFO} is missing"
    except (OSError, ValueError) as error:  # JSONDecodeError, UnicodeDecodeError
        return f"{INDEX_INFO} is damaged ({type(error).__name__})"
    if not isinstance(info, dict) or info.get("fingerprint") != fingerprint:
        return "it was built from other embeddings (or by another version)"
    if info.get("rows") != rows:
        return f"it holds {info.get('rows')} references, not the {rows} of the embeddings"
    files = info.get("files")
    if not (isinstance(files, dict) and "references.npy" in files and isinstance(info.get("scann"), bool)
            and all(isinstance(v, list) and len(v) == 2 for v in files.values())):
        return f"{INDEX_INFO} is damaged (no list of the index's files)"
    for name, (size, digest) in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was written"
        if file_sha256(path) != digest:
            return f"{name} is not the file that was written (its sha256 differs)"
    return None


def match(query_feats: np.ndarray, reference_feats: np.ndarray, k: int = 1, exact: bool = False,
          index: NeighbourIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k references of every query as the reference matched them: each set standardised on its own,
    then cosine (spec 10.4); `index` is one already built over these references."""
    index = index or NeighbourIndex.build(matching_space(reference_feats), exact=exact)
    return index.search(matching_space(query_feats), k)


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes and of the index defaults: an index built from it stays valid while both
    are unchanged."""
    return file_sha256(Path(path), f"{EXACT_BELOW}:{INDEX_VERSION}".encode())


def cached_index(embeddings_path: str | Path, reference_feats: np.ndarray, folder: str | Path
                 ) -> NeighbourIndex:
    """The index over `reference_feats` in matching space: the one saved in `folder` while it was built
    from the same embeddings file and its files are intact, else a new one, saved there; one log line says
    which, and why an existing one was rebuilt."""
    folder, fingerprint = Path(folder), file_fingerprint(embeddings_path)
    what = f"neighbour index of {len(reference_feats)} references"
    problem = index_problem(folder, fingerprint, len(reference_feats)) if folder.exists() else None
    if folder.exists() and problem is None:
        log.info(f"{what} reused from {folder}")
        return NeighbourIndex.load(folder)
    index = NeighbourIndex.build(matching_space(reference_feats))
    index.save(folder, fingerprint)
    if problem is None:
        log.info(f"{what} saved to {folder}")
    else:
        log.warning(f"{what} rebuilt in {folder}: {problem}")
    return index


def replace_labels(predicted: list[str], best_reference: np.ndarray, best_cosine: np.ndarray,
                   reference_targets: list[str], threshold: float) -> tuple[list[str], np.ndarray]:
    """Spec 10.5: where the best cosine is strictly above `threshold`, the whole predicted label set is
    replaced by the matched reference image's; returns (new targets, mask of replaced rows)."""
    replaced = np.asarray(best_cosine) > threshold
    targets = [reference_targets[r] if hit else p
               for p, r, hit in zip(predicted, best_reference, replaced, strict=True)]
    return targets, replaced


SWEEP = np.arange(0.60, 0.80, 0.01)  # the thresholds the reference printed


def threshold_sweep(best_cosine: np.ndarray, same_antibody: np.ndarray, same_target: np.ndarray,
                    thresholds=SWEEP, elsewhere: np.ndarray | None = None,
                    elsewhere_target: np.ndarray | None = None) -> list[dict]:
    """What the reference printed per threshold on val (spec 10.4): queries selected (cosine > t),
    matches of the same antibody, correct label sets, acc = correct / selected, recall = correct / all
    queries, and their F1; with `elsewhere` (each query's best cosine to another antibody) also the
    impostors above t, their share of all queries and (`elsewhere_target`: that image has the query's
    label set) how many of them would still get the right labels."""
    rows = []
    for t in thresholds:
        selected = np.asarray(best_cosine) > t
        count, correct = int(selected.sum()), int((selected & same_target).sum())
        accuracy = correct / count if count else 0.0
        recall = correct / len(selected) if len(selected) else 0.0
        f1 = 2 * accuracy * recall / (accuracy + recall) if accuracy + recall else 0.0
        row = {"threshold": round(float(t), 2), "selected": count,
               "matched": int((selected & same_antibody).sum()), "correct": correct,
               "accuracy": accuracy, "recall": recall, "f1": f1}
        if elsewhere is not None:
            above = np.asarray(elsewhere) > t
            impostors = int(above.sum())
            row.update(impostors=impostors, impostor_rate=impostors / len(selected) if len(selected) else 0.0)
            if elsewhere_target is not None:
                row["impostors_correct"] = int((above & elsewhere_target).sum())
        rows.append(row)
    return rows


def evidence_table(query_ids, before: list[str], after: list[str], replaced: np.ndarray,
                   indices: np.ndarray, cosines: np.ndarray, references: pd.DataFrame,
                   threshold: float) -> pd.DataFrame:
    """OUTPUT.neighbours.csv: per query its labels before and after the step, whether they were replaced
    and at which threshold, then its k nearest references best first (`top{r}`: Id, antibody, cosine,
    labels; `references` holds Id, antibody, Target in index order)."""
    table = {"Id": list(query_ids), "before": [format_target(parse_target(t)) for t in before],
             "after": [format_target(parse_target(t)) for t in after],
             "replaced": np.asarray(replaced, dtype=bool), "threshold": threshold}
    for r in range(indices.shape[1]):
        rows = references.iloc[indices[:, r]]
        table[f"top{r + 1}"] = rows["Id"].to_numpy()
        table[f"top{r + 1}_antibody"] = rows["antibody"].to_numpy()
        table[f"top{r + 1}_cosine"] = np.round(cosines[:, r].astype(np.float64), 6)
        table[f"top{r + 1}_labels"] = [format_target(parse_target(t)) for t in rows["Target"]]
    return pd.DataFrame(table)
