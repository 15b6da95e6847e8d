"""Review queues for curators: the test images whose labels the neighbour step replaced (its evidence
file), the noise report's disagreeing images, and the test predictions nearest a class threshold (the
submission's probabilities); each row an image to look at, the most telling first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_tf.errors import DataError, HpaTfError
from hpa_tf.inference.postprocess import apply_thresholds
from hpa_tf.inference.predict import read_probabilities
from hpa_tf.labels import describe_labels, format_target, parse_target
from hpa_tf.layout import SubmissionFiles, read_table

QUEUE_LENGTH = 200  # rows of the noise and uncertain queues (the review's head; the report has them all)
QUEUE_COLUMNS = ["Id", "Target", "detail"]  # the image, the labels shown, why it is in the queue
TITLES = {"replaced": "Test images whose labels the neighbour step replaced",
          "noise": "Annotated images that disagree with their neighbours (noise report)",
          "uncertain": "Test predictions nearest a class threshold"}


@dataclass
class ReviewQueue:
    """One queue: `rows` (QUEUE_COLUMNS, in review order) and, when it is empty, `note` saying why."""

    name: str
    rows: pd.DataFrame
    note: str = ""

    @property
    def title(self) -> str:
        return TITLES[self.name]


def _unavailable(name: str, note: str) -> ReviewQueue:
    return ReviewQueue(name, pd.DataFrame(columns=QUEUE_COLUMNS), note)


def _queue(name: str, ids, targets: list[str], detail: list[str]) -> ReviewQueue:
    rows = pd.DataFrame({"Id": ids, "Target": targets, "detail": detail}, columns=QUEUE_COLUMNS)
    return ReviewQueue(name, rows)


def replaced_queue(output: str | Path) -> ReviewQueue:
    """The submission's test images whose labels the neighbour step replaced (OUTPUT.neighbours.csv), in
    its order, each with the labels before and its nearest HPAv18 image."""
    files, remedy = SubmissionFiles(output), f": run `python infer.py --submission --output {output}`"
    if not files.neighbours.is_file():
        return _unavailable("replaced", f"no {files.neighbours} (the neighbour step's evidence){remedy}")
    try:
        table = read_table(files.neighbours, ["Id", "before", "after", "replaced", "threshold", "top1",
                                              "top1_antibody", "top1_cosine"], remedy=remedy, written=True)
        table = table[table["replaced"] == "True"]
        detail = [f"was {describe_labels(parse_target(row.before)) or 'none'}; nearest HPAv18 {row.top1} "
                  f"(antibody {row.top1_antibody or '?'}), cosine {float(row.top1_cosine):.3f} > "
                  f"{float(row.threshold):.3f}" for row in table.itertuples()]
        after = [format_target(parse_target(t)) for t in table["after"]]
    except (DataError, ValueError) as error:
        return _unavailable("replaced", f"{files.neighbours} is damaged ({error}){remedy}")
    return _queue("replaced", table["Id"].to_numpy(), after, detail)


def noise_queue(report: pd.DataFrame) -> ReviewQueue:
    """The first QUEUE_LENGTH images of the noise report that disagree with their neighbours, by rank."""
    head = report[report["disagreement"] > 0].head(QUEUE_LENGTH)
    detail = [f"rank {row.rank}, disagreement {row.disagreement:.2f}; neighbours' majority: "
              f"{describe_labels(parse_target(row.majority)) or 'none'}" for row in head.itertuples()]
    return _queue("noise", head["Id"].to_numpy(), head["Target"].tolist(), detail)


def threshold_margins(probs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per image the class whose probability lies nearest its threshold, that distance)."""
    distance = np.abs(probs - thresholds[None, :])
    nearest = distance.argmin(axis=1)
    return nearest, distance[np.arange(len(probs)), nearest]


def uncertain_queue(output: str | Path) -> ReviewQueue:
    """The QUEUE_LENGTH test images of the submission (OUTPUT.prob.npy, its fitted thresholds) whose
    probability of some class lies nearest that class's threshold, nearest first, with the classifier's
    labels at the thresholds (top-1 rule)."""
    files, remedy = SubmissionFiles(output), f": run `python infer.py --submission --output {output}`"
    needed = [files.probabilities, files.prob_ids, files.thresholds]
    if not all(path.is_file() for path in needed):
        return _unavailable("uncertain", f"no {files.probabilities} and its side files{remedy}")
    try:
        ids, probs, thresholds = read_probabilities(files)
    except HpaTfError as error:  # a damaged file, or files that do not agree
        return _unavailable("uncertain", f"{error}{remedy}")
    nearest, distance = threshold_margins(probs, thresholds)
    order = np.argsort(distance, kind="stable")[:QUEUE_LENGTH]
    labels = apply_thresholds(probs[order], thresholds)
    detail = [f"{describe_labels([c])}: probability {probs[i, c]:.3f}, threshold {thresholds[c]:.3f}"
              for i, c in zip(order, nearest[order], strict=True)]
    return _queue("uncertain", np.asarray(ids)[order], [format_target(np.flatnonzero(r)) for r in labels],
                  detail)


def page_bounds(total: int, page_number: str, size: int) -> tuple[int, int]:
    """(first row, number of pages) of page `page_number` (from 1) of `total` rows in pages of `size`;
    DataError when it is not a page number of them."""
    pages = max(1, -(-total // size))
    if not page_number.isdigit() or not 1 <= int(page_number) <= pages:
        raise DataError(f"page {page_number!r} is out of range: {total} rows make pages 1..{pages}")
    return (int(page_number) - 1) * size, pages


def neighbours_in_queue(queue: ReviewQueue, image_id: str, pos: str) -> dict:
    """An image's place in a queue from its `pos` (from 1): {queue, title, pos, total, previous, next}
    with (Id, pos) of the images before and after it (None at an end); DataError when the queue has no
    such position or another image there."""
    ids = queue.rows["Id"].tolist()
    if not pos.isdigit() or not 1 <= int(pos) <= len(ids) or ids[int(pos) - 1] != image_id:
        raise DataError(f"{image_id} is not at position {pos!r} of the {queue.name} queue ({len(ids)} "
                        "images)")
    at = int(pos)
    return {"queue": queue.name, "title": queue.title, "pos": at, "total": len(ids),
            "previous": (ids[at - 2], at - 1) if at > 1 else None,
            "next": (ids[at], at + 1) if at < len(ids) else None}
