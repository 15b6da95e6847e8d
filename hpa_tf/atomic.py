"""Atomic file outputs: write to a temporary file in the same folder, then rename over the target.

A reader never sees a half-written CSV, JSON or image; an interrupted run leaves the old file (or none).
Writers that produce identical bytes leave the existing file untouched, so reruns change nothing.
file_sha256 is the one checksum of a file's bytes (index files, checkpoints, bioimage.io resources).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp_path) and rename the temp file to path; the temp file is removed on failure. The
    temporary name ends with all of path's suffixes (`.weights.h5` as Keras requires, `.npz`, `.csv`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes),
                                dir=path.parent)
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


def save_weights_atomic(model, path: str | Path) -> Path:
    """model.save_weights(path), atomically (a killed run never leaves a half-written checkpoint)."""
    return write_atomic(path, lambda temporary: model.save_weights(temporary))


def copy_atomic(source: str | Path, target: str | Path) -> Path:
    """Copy a file; the target is either the old file or the complete copy."""
    return write_atomic(target, lambda temporary: shutil.copyfile(source, temporary))


def file_sha256(path: str | Path, prefix: bytes = b"") -> str:
    """The hex sha256 of `prefix` followed by the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256(prefix)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_folder_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp_folder), then put the folder in place of `path` (an old folder there is removed
    after the swap): a reader finds the old folder or the complete new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        write(temporary)
        os.chmod(temporary, 0o777 & ~_umask())
        if path.exists():
            os.replace(path, old)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


# What write_atomic and write_folder_atomic name their temporaries: `.{name}.{8 random characters of
# mkstemp}.tmp{suffixes}`.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\..+)?")


def remove_temporaries(folders, stem: str = "") -> list[Path]:
    """Delete the temporary files (and folders) that write_atomic (write_folder_atomic) left in these
    folders when a process was killed mid-write and its cleanup never ran; only those of outputs whose
    names start with `stem` when one is given. Returns what was removed."""
    removed = []
    for folder in [folders] if isinstance(folders, (str, Path)) else folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if not match or not match["name"].startswith(stem):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
            else:
                continue
            removed.append(Path(entry.path))
    return removed
