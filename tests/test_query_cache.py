"""A test image's query on the curators' pages: the test set's matching space is read and standardised
once per version of embeddings_test.npz (each page, view and map of a test image asked for it again),
with the same vector as computed directly, and read again when the file changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpa_tf.curation import pool as pool_module
from hpa_tf.curation.pool import AnnotatedPool, find_query
from hpa_tf.embeddings import matching_space, save_embeddings
from hpa_tf.errors import InferenceError
from hpa_tf.layout import DataLayout, RunLayout


@pytest.fixture
def staged(tmp_path):
    run = RunLayout(tmp_path / "metric")
    ids = [f"t{n}" for n in range(50)]
    feats = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)  # as stored
    save_embeddings(run.embeddings("test"), feats, ids)
    pool = AnnotatedPool(pd.DataFrame({"Id": ["e0"], "set": ["ext"], "Target": ["0"], "antibody": [""]}),
                         matching_space(np.ones((1, 16))))
    return run, DataLayout(tmp_path / "data"), pool, feats


def test_a_test_query_reads_the_file_once_per_version(staged, monkeypatch):
    run, layout, pool, feats = staged
    reads = []
    original = pool_module.load_embeddings
    monkeypatch.setattr(pool_module, "load_embeddings", lambda path: reads.append(path) or original(path))
    pool_module._read_test_space.cache_clear()
    for image_id, row in (("t7", 7), ("t7", 7), ("t31", 31)):
        query = find_query(pool, run.root, layout, image_id)
        np.testing.assert_array_equal(query.vector, matching_space(feats)[row])
        assert query.kaggle_split == "test" and query.pool_row is None and query.true is None
    assert len(reads) == 1
    query.vector[:] = 0  # a caller's change does not reach the cached set
    assert np.abs(find_query(pool, run.root, layout, "t31").vector).sum() > 0

    changed = feats[::-1].copy()  # the embeddings extracted again: the new file is read
    save_embeddings(run.embeddings("test"), changed, [f"t{n}" for n in range(50)])
    np.testing.assert_array_equal(find_query(pool, run.root, layout, "t7").vector, matching_space(changed)[7])
    assert len(reads) == 2
    with pytest.raises(InferenceError, match="t99 is in none of the embedding files"):
        find_query(pool, run.root, layout, "t99")


def test_the_served_page_reads_the_test_set_and_probabilities_before_its_first_request(staged, monkeypatch,
                                                                                        caplog):
    """`--serve` warms up before printing its URL, so the first image page is as fast as the next; a
    damaged file is a warning there (its pages say what is wrong), not a failed start."""
    from types import SimpleNamespace

    from hpa_tf.curation.web import Curation

    run, layout, pool, feats = staged
    loads, reads = [], []
    original = pool_module.load_embeddings
    monkeypatch.setattr(pool_module, "load_embeddings", lambda path: reads.append(path) or original(path))
    pool_module._read_test_space.cache_clear()
    curation = SimpleNamespace(embedder=run, predictions=SimpleNamespace(load=lambda: loads.append(1)))
    Curation.warm(curation)
    assert loads == [1] and len(reads) == 1
    find_query(pool, run.root, layout, "t3")
    assert len(reads) == 1  # the first query found the set read

    run.embeddings("test").write_bytes(b"not an npz")
    Curation.warm(curation)
    assert "is damaged" in caplog.text and loads == [1, 1]
