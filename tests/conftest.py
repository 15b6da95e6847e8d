"""Shared fixtures: one tiny synthetic dataset per test session."""

from __future__ import annotations

import shutil

import pytest

from hpa_tf.data import prepare
from hpa_tf.data.synthetic import generate

TINY_SEED = 3


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a `tiny` synthetic dataset (seed 3), generated once for the whole session."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=TINY_SEED, progress=False)


@pytest.fixture(scope="session")
def prepared(tiny_dataset, tmp_path_factory):
    """(root, summary) of a prepared copy of the tiny dataset (the raw session dataset stays raw)."""
    root = tmp_path_factory.mktemp("prepared") / "tiny"
    shutil.copytree(tiny_dataset, root)
    summary = prepare.prepare(root, workers=1, progress=False, log=lambda *_: None)
    return root, summary
