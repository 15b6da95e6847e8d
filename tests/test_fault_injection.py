"""Fault injection: `prepare` and `infer.py --submission` killed with SIGKILL at random points (seeded),
then run again, give exactly the outputs of an uninterrupted run (classifier training killed between an
epoch's log row and its backup is in test_training.py)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpa_tf.cli import infer
from hpa_tf.data import prepare

ROOT = Path(__file__).parent.parent
RAW = ("raw/", "train/images/", "test/images/", "train/tifs/", "test/tifs/", "external/jpg/")
SUBMISSION_FILES = [f"submission{suffix}" for suffix in (
    ".csv", ".steps.csv", ".prob.npy", ".prob_ids.csv", ".thresholds.npy", ".serving.json", ".fold0.prob.npy",
    ".fold1.prob.npy")]


def _prepared_files(root: Path) -> dict[str, bytes]:
    """Every file under a dataset root that prepare wrote (the raw inputs left out), by relative path."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not relative.startswith(RAW):
            files[relative] = path.read_bytes()
    return files


def _kill_when(process: subprocess.Popen, started, delay: float, limit: float = 120) -> None:
    """SIGKILL `process` `delay` seconds after started() first holds; fail if it ended by itself first."""
    deadline = time.monotonic() + limit
    while not started() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill: move the kill point earlier"


@pytest.mark.parametrize("seed", [0, 1])
def test_prepare_killed_at_a_random_point_reruns_to_the_same_files(tiny_dataset, prepared, tmp_path, seed):
    root = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, root)
    process = subprocess.Popen([sys.executable, "-m", "hpa_tf.data.prepare", "--data-dir", str(root),
                                "--workers", "1", "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    caches_begun = lambda: any((root / "train").glob("images_*/*.png"))  # noqa: E731
    _kill_when(process, caches_begun, random.Random(seed).uniform(0.0, 1.0))
    assert _prepared_files(root) != _prepared_files(prepared[0])  # the kill left the work unfinished
    prepare.prepare(root, workers=1, progress=False)
    assert _prepared_files(root) == _prepared_files(prepared[0])
    assert not [p for p in root.rglob(".*") if ".tmp" in p.name]


def test_infer_killed_at_a_random_point_reruns_to_the_same_submission(trained_runs, tmp_path):
    root, out = trained_runs
    args = ["--submission", "--runs", str(out)]  # its log lines say when to kill
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert infer.main([*args, "--output", str(reference / "submission.csv")]) == 0
    killed.mkdir()
    command = [sys.executable, "infer.py", *args, "--output", str(killed / "submission.csv")]
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    for line in process.stdout:  # after the first fold's TTA, during the second
        if "fold0: TTA probabilities" in line:
            break
    _kill_when(process, lambda: True, random.Random(2).uniform(0.0, 0.5))
    assert not (killed / "submission.csv").exists()
    assert infer.main([*args, "--output", str(killed / "submission.csv")]) == 0
    for name in SUBMISSION_FILES:
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())
