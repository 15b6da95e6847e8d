"""The predictions the curators' pages show (hpa_tf.curation.predictions) on the tiny runs: read from the
submission's and the validation's probability files, else predicted once and cached; a damaged, stale or
missing cache file is predicted again and equals a prediction made directly."""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np
import pandas as pd
import pytest

from hpa_tf.config import InferenceConfig
from hpa_tf.curation import predictions as page
from hpa_tf.curation.pool import find_query, open_pool
from hpa_tf.inference.postprocess import apply_thresholds
from hpa_tf.inference.predict import tta_probabilities, write_probabilities
from hpa_tf.layout import SubmissionFiles, ValidationFiles
from hpa_tf.models.loading import load_classifier


@pytest.fixture(scope="module")
def tiny(trained_runs, tmp_path_factory):
    """(config with its submission and validation files in a module folder, runs, metric run, pool); while
    the module runs, each fold is loaded once (load_classifier of the same folder gives the same (model,
    config), here and to every ImagePredictions: the tests only predict with them)."""
    _, out = trained_runs
    folder = tmp_path_factory.mktemp("page")
    config = InferenceConfig(runs=str(out), output=str(folder / "s.csv"),
                             validation_csv=str(folder / "validation.csv"))
    runs, embedder, pool = open_pool(config, "--serve")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(page, "load_classifier", functools.cache(load_classifier))
        yield config, runs, embedder, pool
    DIRECT.clear()


DIRECT: dict = {}  # (fold folders, image Id) -> direct()'s probabilities, while the module runs


def direct(runs, query) -> np.ndarray:
    """The folds' mean of the 8 dihedral views of the whole image, combined by max (serving without a
    submission), computed here fold by fold (once per image)."""
    key = (tuple(fold.root for fold in runs.folds), query.image_id)
    if key not in DIRECT:
        probs = []
        for fold in runs.folds:
            model, config = page.load_classifier(fold.root)
            source, frame = page.query_input(runs.data, query, config)
            probs.append(tta_probabilities(model, source, frame, config.crop_size, seeds=(0,))[0])
        DIRECT[key] = np.mean(probs, axis=0)
    return DIRECT[key]


def logged(caplog) -> list[str]:
    """The messages of hpa_tf.curation.predictions' log lines."""
    return [r.message for r in caplog.records if r.name == page.__name__]


def never(*args):
    raise AssertionError("predicted although the probabilities exist")


def test_an_image_without_probabilities_is_predicted_once_then_read_from_its_cache(tiny, monkeypatch, caplog):
    config, runs, embedder, pool = tiny
    query = find_query(pool, embedder.root, runs.data, pool.frame["Id"].iloc[3])
    predictions = page.ImagePredictions(config, runs)
    path = predictions.cache.file(query.image_id)
    path.unlink(missing_ok=True)
    expected = direct(runs, query)
    with caplog.at_level(logging.INFO, logger=page.__name__):
        first = predictions.of(query)  # a miss
    assert first.source == page.SERVING and path.is_file()
    np.testing.assert_allclose(first.probabilities, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(first.thresholds, np.full(28, 0.5))  # no submission: 0.5
    assert first.labels == np.flatnonzero(apply_thresholds(expected[None], np.full(28, 0.5))[0]).tolist()
    [line] = logged(caplog)
    assert line.startswith(f"{query.image_id} predicted by 2 fold(s) in ")
    assert line.endswith(f"cached in {path}")
    monkeypatch.setattr(page, "serving_probabilities", never)
    hit = page.ImagePredictions(config, runs).of(query)  # another server: the cache file alone
    np.testing.assert_array_equal(hit.probabilities, first.probabilities)
    assert hit.labels == first.labels and hit.source == page.SERVING


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"probabilities": [0.5, 0.5]}', b"[1, 2]",
                                    b"\xff\xfe\x00", "cut"])
def test_a_damaged_cache_file_is_predicted_again_with_one_log_line(tiny, damage, caplog):
    config, runs, embedder, pool = tiny
    query = find_query(pool, embedder.root, runs.data, pool.frame["Id"].iloc[5])
    predictions = page.ImagePredictions(config, runs)
    path = predictions.cache.file(query.image_id)
    good = predictions.of(query).probabilities
    path.write_bytes(path.read_bytes()[:-30] if damage == "cut" else damage)
    caplog.clear()  # the first prediction's line (logged when a command set the package's level before)
    with caplog.at_level(logging.INFO, logger=page.__name__):
        again = page.ImagePredictions(config, runs).of(query)
    np.testing.assert_array_equal(again.probabilities, good)
    np.testing.assert_allclose(again.probabilities, direct(runs, query), rtol=1e-6, atol=1e-7)
    messages = logged(caplog)
    assert len(messages) == 2 and messages[0].startswith(f"{path} is damaged (")
    assert messages[0].endswith(f"predicting {query.image_id} again")
    assert "predicted by 2 fold(s)" in messages[1]
    assert json.loads(path.read_text())["probabilities"] == good.tolist()  # written again


def test_a_cache_file_of_other_views_is_predicted_again(tiny, caplog):
    config, runs, embedder, pool = tiny
    query = find_query(pool, embedder.root, runs.data, pool.frame["Id"].iloc[7])
    predictions = page.ImagePredictions(config, runs)
    path = predictions.cache.file(query.image_id)
    good = predictions.of(query).probabilities
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "views": ["default"], "probabilities": [0.9] * 28}))
    caplog.clear()  # the first prediction's line (logged when a command set the package's level before)
    with caplog.at_level(logging.INFO, logger=page.__name__):
        again = predictions.of(query)
    np.testing.assert_array_equal(again.probabilities, good)
    assert logged(caplog)[0] == f"{path} was predicted by other checkpoints or views: predicting " \
                                        f"{query.image_id} again"


def test_test_and_training_images_read_the_submission_and_out_of_fold_probabilities(tiny, monkeypatch,
                                                                                       caplog):
    """Their rows and thresholds, nothing predicted; a file older than a fold's checkpoint or damaged is
    not used (one log line each), and the page predicts instead."""
    config, runs, embedder, pool = tiny
    test_ids = pd.read_csv(runs.data.sample_submission_csv, dtype=str)["Id"].tolist()[:3]
    train_ids = pool.frame["Id"].tolist()[10:12]
    rng = np.random.default_rng(0)
    submission, oof = rng.random((3, 28)).astype(np.float32), rng.random((2, 28)).astype(np.float32)
    thresholds = {"sub": rng.random(28) * 0.5, "oof": rng.random(28) * 0.5}
    files = {"sub": SubmissionFiles(config.output), "oof": ValidationFiles(config.validation_csv)}
    write_probabilities(files["sub"], pd.DataFrame({"Id": test_ids}), submission, thresholds["sub"])
    write_probabilities(files["oof"], pd.DataFrame({"Id": train_ids, "fold": [0, 1]}), oof, thresholds["oof"])
    monkeypatch.setattr(page, "serving_probabilities", never)
    predictions = page.ImagePredictions(config, runs)
    for image_id, row, source, name in [(test_ids[2], submission[2], "submission", "sub"),
                                        (train_ids[1], oof[1], "out-of-fold validation", "oof")]:
        shown = predictions.of(find_query(pool, embedder.root, runs.data, image_id))
        assert shown.source == source
        np.testing.assert_array_equal(shown.probabilities, row)
        np.testing.assert_array_equal(shown.thresholds, thresholds[name])
        assert shown.labels == np.flatnonzero(apply_thresholds(row[None], thresholds[name])[0]).tolist()
    monkeypatch.undo()
    query = find_query(pool, embedder.root, runs.data, train_ids[0])
    checkpoint = runs.folds[0].best_weights.stat().st_mtime_ns
    os.utime(files["oof"].probabilities, ns=(checkpoint - 10**9, checkpoint - 10**9))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=page.__name__):
        assert predictions.of(query).source == page.SERVING
    assert logged(caplog)[0].startswith(f"note: {files['oof'].probabilities} is older than a fold's")
    caplog.clear()
    files["oof"].probabilities.write_bytes(b"\x93NUMPY cut")
    with caplog.at_level(logging.INFO, logger=page.__name__):
        assert predictions.of(query).source == page.SERVING
        assert predictions.of(query).source == page.SERVING  # the damaged file is read once
    warnings = [r.message for r in caplog.records if r.name == page.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "not shown" in warnings[0]
