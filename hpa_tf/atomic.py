"""Atomic file outputs: write to a temporary file in the same folder, then rename over the target.

A reader never sees a half-written CSV, JSON or image; an interrupted run leaves the old file (or none).
Writers that produce identical bytes leave the existing file untouched, so reruns change nothing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp_path) and rename the temp file to path; the temp file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    temp = Path(name)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> bool:
    """Write data to path atomically unless the file already holds exactly these bytes; True if written."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    write_atomic(path, lambda temp: temp.write_bytes(data))
    return True


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> bool:
    """DataFrame -> CSV (no index), atomically and only when the content changed; True if written."""
    return write_bytes_atomic(path, frame.to_csv(index=False, lineterminator="\n").encode())


def write_json_atomic(payload: dict, path: str | Path) -> bool:
    """dict -> pretty JSON, atomically and only when the content changed; True if written."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def save_npy_atomic(array, path: str | Path) -> Path:
    """numpy.save to path, atomically (np.save would add .npy to a temporary name without it)."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.save(handle, array)

    return write_atomic(path, write)


# What write_atomic names its temporary files: `.{name}.{8 random characters of mkstemp}.tmp{suffix}`.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\.[^.]+)?")


def remove_temporaries(folders, stem: str = "") -> list[Path]:
    """Delete the temporary files that write_atomic left in these folders (not their subfolders) when a
    process was killed mid-write and its cleanup never ran; only those of outputs whose names start with
    `stem` when one is given. Returns what was removed."""
    removed = []
    for folder in [folders] if isinstance(folders, (str, Path)) else folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match["name"].startswith(stem) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed
