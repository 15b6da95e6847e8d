"""Shared fixtures: one tiny synthetic dataset per test session."""

from __future__ import annotations

import pytest

from hpa_tf.data.synthetic import generate

TINY_SEED = 3


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a `tiny` synthetic dataset (seed 3), generated once for the whole session."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=TINY_SEED, progress=False)
