"""Curators' label decisions: one row per decision (Id, Target, previous, who, when) appended atomically
to a CSV, under a file lock so that several `--serve` processes on one file lose none. Its Id and Target
columns are those of raw/train_extra.csv, so `prepare` can take the file as label corrections (README
"Galleries and the label-noise report")."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from hpa_tf.atomic import write_bytes_atomic
from hpa_tf.errors import DataError
from hpa_tf.labels import NUM_CLASSES, format_target
from hpa_tf.layout import validate_id

COLUMNS = ["Id", "Target", "previous", "who", "when"]
LOCK_WAIT_S = 60  # how long a decision waits for another process's write before it is refused


def parse_labels(text: str) -> list[int]:
    """The class numbers of a label set typed as "0 5 25" (spaces or commas); DataError naming the first
    token that is not a class number 0..27, or an empty set."""
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if not tokens:
        raise DataError("a label set needs at least one class number 0..27")
    for token in tokens:
        if not token.isdigit() or not 0 <= int(token) < NUM_CLASSES:
            raise DataError(f"label {token!r} is not a class number 0..{NUM_CLASSES - 1}")
    return sorted({int(t) for t in tokens})


def append_correction(path: str | Path, image_id: str, labels: list[int], previous: list[int] | None,
                      who: str, when: datetime | None = None) -> dict:
    """Append one decision to the corrections CSV (created with its header), atomically and under the
    file lock PATH.lock: a reader sees the file with or without the row, never half of it, and a writer in
    another process waits. Returns the row."""
    path = Path(path)
    row = {"Id": validate_id(image_id), "Target": format_target(labels),
           "previous": format_target(previous) if previous is not None else "",
           "who": who.strip() or "unknown",
           "when": (when or datetime.now(UTC)).isoformat(timespec="seconds")}
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writerow(row)
    try:
        with FileLock(lock_path(path), timeout=LOCK_WAIT_S):
            old = path.read_bytes() if path.is_file() else b""
            header = "" if old else ",".join(COLUMNS) + "\n"
            write_bytes_atomic(path, old + (header + text.getvalue()).encode())
    except Timeout:
        raise DataError(f"{lock_path(path)} was held for {LOCK_WAIT_S} s by another process: the decision "
                        "was not written, try again") from None
    return row


def lock_path(path: str | Path) -> Path:
    """The lock file beside a corrections CSV (PATH.lock), shared by every process writing to it."""
    return Path(f"{path}.lock")


def read_corrections(path: str | Path) -> pd.DataFrame:
    """The corrections CSV as strings (empty frame with COLUMNS when there is none)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype=str, keep_default_na=False)
