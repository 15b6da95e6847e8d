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

import pytest
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


@pytest.fixture(scope="module")
def reference_submission(default_submission) -> Path:
    """The output folder of one uninterrupted `infer.py --submission --runs RUNS --output
    FOLDER/submission.csv` on the session's trained runs (conftest.default_submission: read only)."""
    return default_submission[0].parent


def _same_outputs(folder: Path, reference: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in reference.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes(), path.name


def test_infer_killed_between_its_folds_reruns_to_the_same_submission(trained_runs, reference_submission,
                                                                     tmp_path):
    """Killed as it logs fold 0's TTA, before fold 1's: no output yet, as all are written at the end."""
    _, out = trained_runs
    args = ["--submission", "--runs", str(out), "--output", str(tmp_path / "submission.csv")]
    _run_killed("log", "fold0: TTA probabilities", ["infer.py", *args])
    assert not list(tmp_path.iterdir())
    assert infer.main(args) == 0
    for name in SUBMISSION_FILES:
        assert (reference_submission / name).is_file(), name
    _same_outputs(tmp_path, reference_submission)


def test_infer_rebuilds_a_cut_index_and_garbled_embeddings_to_the_same_submission(
        trained_runs, reference_submission, tmp_path, capsys):
    """Issue 24's case, index_ext/references.npy cut to half, with embeddings_test.npz garbled too: one line
    names each and what was wrong, both are derived again, and every output equals the intact run's."""
    runs = tmp_path / "runs"
    shutil.copytree(trained_runs[1], runs)
    metric = runs / "metric_demo"
    references = metric / "index_ext" / "references.npy"
    size = references.stat().st_size
    references.write_bytes(references.read_bytes()[:size // 2])
    embeddings = metric / "embeddings_test.npz"
    embeddings.write_bytes(bytes(range(256)) * 64)
    capsys.readouterr()
    output = tmp_path / "out" / "submission.csv"
    assert infer.main(["--submission", "--runs", str(runs), "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert err.count("rebuilt in") == 1 and (
        f"neighbour index of 120 references rebuilt in {metric / 'index_ext'}: references.npy has "
        f"{size // 2} bytes, {size} when it was written") in err
    assert f"{embeddings} is damaged (" in err
    assert f"extracting it again from {metric / 'best.weights.h5'}" in err
    _same_outputs(output.parent, reference_submission)
