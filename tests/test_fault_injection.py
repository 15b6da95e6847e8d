"""Fault injection: `prepare` and `infer.py --submission`, SIGKILLed at a chosen point of their progress
(a file write, a stage boundary, a log line: tests/kill_at.py, never a delay, so that the point is the same
on any machine), then run again, give exactly the outputs of an uninterrupted run (classifier training
killed between an epoch's log row and its backup is in test_training.py)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from atomic_files import temporaries

from hpa_tf.cli import infer
from hpa_tf.data import prepare

ROOT = Path(__file__).parent.parent
KILL_AT = Path(__file__).with_name("kill_at.py")
PREPARE = ["-m", "hpa_tf.data.prepare", "--workers", "1", "--quiet", "--data-dir"]
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


def _run_killed(when: str, target: object, command: list[str]) -> None:
    """`python COMMAND`, SIGKILLed by tests/kill_at.py at `when target`; fails if it ended otherwise."""
    done = subprocess.run([sys.executable, str(KILL_AT), when, str(target), *command], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (
        f"not killed at {when} {target} (exit status {done.returncode}): {done.stderr[-3000:]}")


def test_prepare_killed_inside_a_random_write_reruns_to_the_same_files(tiny_dataset, prepared, tmp_path):
    """Killed inside write k (seeded) of the N a fresh run makes, one per output: k - 1 outputs are left."""
    reference = _prepared_files(prepared[0])
    k = random.Random(0).randrange(1, len(reference))
    root = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, root)
    _run_killed("in-write", k, [*PREPARE, str(root)])
    left = _prepared_files(root)
    assert len(left) == k < len(reference) and len(temporaries(root)) == 1
    prepare.prepare(root, workers=1, progress=False)
    assert _prepared_files(root) == reference
    assert not temporaries(root)


def test_prepare_killed_after_its_image_stage_reruns_to_the_same_files(tiny_dataset, prepared, tmp_path):
    """Killed inside the first write after the image stage: the rerun keeps the saved image work."""
    root = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, root)
    _run_killed("in-write", "train_match_external.csv", [*PREPARE, str(root)])
    meta = root / "meta"
    assert (meta / "image_features.csv").is_file() and not (meta / "train_match_external.csv").exists()
    assert [p.parent for p in temporaries(root)] == [meta]
    prepare.prepare(root, workers=1, progress=False)
    assert _prepared_files(root) == _prepared_files(prepared[0])
    assert not temporaries(root)


def test_infer_killed_between_its_folds_reruns_to_the_same_submission(trained_runs, tmp_path):
    """Killed as it logs fold 0's TTA, before fold 1's: no output yet, as all are written at the end."""
    _, out = trained_runs
    args = ["--submission", "--runs", str(out)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert infer.main([*args, "--output", str(reference / "submission.csv")]) == 0
    killed.mkdir()
    _run_killed("log", "fold0: TTA probabilities",
                ["infer.py", *args, "--output", str(killed / "submission.csv")])
    assert not list(killed.iterdir())
    assert infer.main([*args, "--output", str(killed / "submission.csv")]) == 0
    for name in SUBMISSION_FILES:
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())
