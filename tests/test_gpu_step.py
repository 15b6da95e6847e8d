"""benchmarks/gpu_step.py's refusals and row order (its run is CI's `--cpu-smoke`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_step  # noqa: E402


def _run(*args: str, backend: str = "jax") -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("flag", ["--size", "--metric-size"])
def test_sizes_that_are_not_multiples_of_32_are_refused(flag):
    done = _run(flag, "500")
    assert done.returncode == 2
    assert f"argument {flag}: 500 is not a positive multiple of 32" in done.stderr


def test_other_keras_backends_are_refused_in_one_line():
    done = _run("--cpu-smoke", backend="torch")
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "gpu_step: refused: KERAS_BACKEND=torch; this benchmark times Keras under JAX (KERAS_BACKEND=jax), "
        "or under TensorFlow for a local comparison"]


def test_rows_needed_most_come_first_and_peaks_follow_the_fp32_math():
    args = gpu_step.parse_args(["--peak-tflops", "bf16=1000"])
    rows = gpu_step.rows_in_priority_order(args)
    assert [(r.kind, r.batch, r.precision) for r in rows] == [
        ("classifier", 32, "fp32"), ("classifier", 32, "bf16"), ("metric", 32, "fp32"),
        ("classifier", 64, "fp32"), ("classifier", 64, "bf16"), ("metric", 32, "bf16")]
    assert {r.size for r in rows if r.kind == "metric"} == {768} and rows[2].classes == 12815
    assert gpu_step.peak_tflops(rows[1], args, gpu=True) == 1000.0
    assert gpu_step.peak_tflops(rows[0], args, gpu=True) == 494.0
    ieee = gpu_step.parse_args(["--fp32-math", "ieee"])
    assert gpu_step.peak_tflops(rows[0], ieee, gpu=True) == 67.0
    assert gpu_step.peak_tflops(rows[0], ieee, gpu=False) is None
