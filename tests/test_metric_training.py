"""Embedding files and nearest neighbours (spec 10.4), metric-model training and extraction on `tiny`."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import scale

from hpa_tf.config import embedder_config
from hpa_tf.embeddings import (
    EmbeddingFileError,
    exact_neighbours,
    load_embeddings,
    matching_space,
    nearest_neighbour_accuracy,
    save_embeddings,
    standardize_columns,
)
from hpa_tf.errors import ModelError, RunFolderError, TrainingSetupError
from hpa_tf.models.loading import build_run_model, load_embedder, load_run
from hpa_tf.training.embedder import VALID_SPLIT, extract, start_from_classifier, train_embedder

ROOT = Path(__file__).parent.parent


def test_embedding_file_round_trip_without_pickle(tmp_path):
    feats = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float64)
    path = save_embeddings(tmp_path / "e.npz", feats, ["a", "b", "c", "d", "e"])
    with np.load(path, allow_pickle=False) as data:
        assert data["feats"].dtype == np.float32 and data["ids"].dtype.kind == "U"
    loaded, ids = load_embeddings(path)
    np.testing.assert_array_equal(loaded, feats.astype(np.float32))
    assert ids.tolist() == ["a", "b", "c", "d", "e"]


def test_bad_embedding_files_are_named(tmp_path):
    with pytest.raises(EmbeddingFileError, match="missing.npz"):
        load_embeddings(tmp_path / "missing.npz")
    np.savez(tmp_path / "keys.npz", x=np.zeros((2, 3)))
    with pytest.raises(EmbeddingFileError, match="'feats' and 'ids'"):
        load_embeddings(tmp_path / "keys.npz")
    np.savez(tmp_path / "rows.npz", feats=np.zeros((2, 3)), ids=np.array(["a"]))
    with pytest.raises(EmbeddingFileError, match="do not match"):
        load_embeddings(tmp_path / "rows.npz")
    with pytest.raises(EmbeddingFileError, match="one id per row"):
        save_embeddings(tmp_path / "x.npz", np.zeros((3, 2)), ["a"])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_name_the_file_and_the_first_bad_row(tmp_path, value):
    """One NaN row would turn every standardised column into NaN and silently switch matching off."""
    feats = np.ones((6, 4), np.float32)
    feats[3, 2] = value
    feats[5, 0] = value
    path = save_embeddings(tmp_path / "embeddings_ext.npz", feats, list("abcdef"))
    expected = r"embeddings_ext.npz: row 3 \(id d\) and 1 more have non-finite"
    with pytest.raises(EmbeddingFileError, match=expected):
        load_embeddings(path)


def test_truncated_embedding_file_is_named(tmp_path):
    path = save_embeddings(tmp_path / "embeddings_test.npz", np.ones((50, 8)), [str(i) for i in range(50)])
    data = path.read_bytes()
    for size in (len(data) // 2, 10, 0):
        path.write_bytes(data[:size])
        with pytest.raises(EmbeddingFileError, match=r"embeddings_test.npz is damaged"):
            load_embeddings(path)


def test_standardisation_matches_sklearn_scale_and_neighbours_match_brute_force():
    rng = np.random.default_rng(1)
    feats = rng.normal(3.0, 2.0, size=(40, 6))
    feats[:, 2] = 5.0  # a constant column
    np.testing.assert_allclose(standardize_columns(feats), scale(feats), atol=1e-5)
    queries, references = matching_space(rng.normal(size=(17, 6))), matching_space(rng.normal(size=(50, 6)))
    references[31] = references[4]  # a tie: the lower row comes first
    sims = queries.astype(np.float64) @ references.T
    order = np.argsort(-sims, axis=1, kind="stable")
    for k, block in ((3, 7), (3, 50), (1, 7), (1, 64), (60, 9)):  # merged across blocks, or one block
        indices, scores = exact_neighbours(queries, references, k=k, chunk=5, block=block)
        want = order[:, :min(k, 50)]
        np.testing.assert_array_equal(indices, want, err_msg=f"k={k} block={block}")
        np.testing.assert_allclose(scores, np.take_along_axis(sims, want, axis=1), rtol=1e-5, atol=1e-6)


def test_nearest_neighbour_accuracy_on_a_hand_made_case():
    references = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], float)
    queries = np.array([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [0.1, 0.9, 0.1]], float)
    # per-set standardisation changes the geometry; compute the expectation the same documented way
    best = (matching_space(queries) @ matching_space(references).T).argmax(1)
    labels_ref = np.array([10, 11, 12, 13])
    query_labels = labels_ref[best].copy()
    query_labels[0] = 99  # one miss
    assert nearest_neighbour_accuracy(queries, query_labels, references, labels_ref) == pytest.approx(2 / 3)


def _config(root, out, **overrides):
    values = dict(data_dir=str(root), out_dir=str(out), img_size=64, batch_size=16, epochs=3, verbose=0,
                  nn_every=1)
    return embedder_config("demo", **{**values, **overrides})


def test_training_lowers_the_loss_and_extraction_writes_deterministic_files(prepared, tmp_path):
    root, _ = prepared
    config = _config(root, tmp_path, epochs=2)
    summary = train_embedder(config, progress=False)
    folder = tmp_path / "metric_demo"
    log = pd.read_csv(folder / "log.csv")
    assert log["epoch"].tolist() == [0, 1]
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    for column in ("val_top1", "val_top5", "val_map5", "val_nn_top1"):
        assert log[column].between(0, 1).all()
    assert (log["val_top1"] <= log["val_map5"] + 1e-6).all()
    assert (log["val_map5"] <= log["val_top5"] + 1e-6).all()
    assert summary["best_epoch"] == int(log["val_map5"].idxmax()) + 1  # best by MAP@5 (the first of ties)
    log_bytes = (folder / "log.csv").read_bytes()
    again = train_embedder(config, progress=False)  # finished: reported, not trained again
    assert again["optimizer_steps"] == 0 and again.get("already_finished")
    assert again["best_epoch"] == summary["best_epoch"] and (folder / "log.csv").read_bytes() == log_bytes

    checkpoint = (folder / "best.weights.h5").read_bytes()
    damaged = folder / "damaged.weights.h5"
    damaged.write_bytes(checkpoint[:len(checkpoint) // 2])
    with pytest.raises(ModelError, match=re.escape(str(damaged)) + ".*retrain"):
        load_embedder(folder, damaged.name)
    damaged.unlink()

    paths = extract(folder, ["val", "test", "kaggle"], progress=False)
    assert [p.name for p in paths] == ["embeddings_val.npz", "embeddings_test.npz", "embeddings_kaggle.npz"]
    kaggle_ids = pd.read_csv(Path(root) / "meta" / "train_meta.csv", dtype=str)["Id"].tolist()
    assert load_embeddings(paths[2])[1].tolist() == kaggle_ids
    feats, ids = load_embeddings(paths[0])
    valid = pd.read_csv(Path(root) / "split" / "external_validset_antibody_split.csv", dtype=str)
    assert feats.shape == (len(valid), 512) and feats.dtype == np.float32
    assert ids.tolist() == valid["Id"].tolist()
    test_ids = pd.read_csv(Path(root) / "raw" / "sample_submission.csv", dtype=str)["Id"].tolist()
    assert load_embeddings(paths[1])[1].tolist() == test_ids
    again = extract(folder, ["val"], progress=False)[0]
    np.testing.assert_array_equal(load_embeddings(again)[0], feats)


def test_extraction_without_a_checkpoint_and_unknown_sets_fail_clearly(prepared, tmp_path):
    root, _ = prepared
    with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / 'config.json'} not found")):
        extract(tmp_path, ["test"], progress=False)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(_config(root, tmp_path))))
    with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / 'best.weights.h5'} not found")):
        extract(tmp_path, ["test"], progress=False)
    with pytest.raises(TrainingSetupError, match="unknown extraction set"):
        extract(tmp_path, ["holdout"], progress=False)


def test_an_empty_antibody_validation_split_is_refused_before_training(prepared, tmp_path):
    root, _ = prepared
    copy = tmp_path / "data"
    copy.mkdir()
    for entry in Path(root).iterdir():  # the images and caches linked, the split files copied
        if entry.name == "split":
            shutil.copytree(entry, copy / "split")
        else:
            (copy / entry.name).symlink_to(entry)
    valid = copy / "split" / VALID_SPLIT
    valid.write_text(valid.read_text().splitlines()[0] + "\n")  # the header only
    with pytest.raises(TrainingSetupError, match=re.escape(str(valid)) + ".*fewer than 4"):
        train_embedder(_config(copy, tmp_path), progress=False)
    assert not (tmp_path / "metric_demo").exists()  # refused before anything was written


def _cli():
    """train_metric.py loaded as the script it is."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_metric_cli", ROOT / "train_metric.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        _cli().main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--extract", "--checkpoint", "--embedding-dim", "--nn-every", "--strategy", "--precision",
                 "--dropout", "--profile", "--restart"):
        assert flag in shown


def test_cli_refuses_restart_with_extract(tmp_path, capsys):
    assert _cli().main(["--extract", "test", "--restart", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: --restart trains the run anew; it does not go with")


def test_the_embedder_starts_from_the_classifier_folds_backbone(trained_runs, tmp_path, caplog):
    """--init-from copies the trained fold's backbone weights (the demo's stand-in for ImageNet's); a
    missing fold leaves the embedder as built, with one warning; another backbone is refused."""
    root, runs = trained_runs
    config = _config(root, runs)  # the demo profile: init_from demo/fold0
    assert config.init_from == "demo/fold0"
    embedder = build_run_model(config).get_layer("embedder")
    before = [w.copy() for w in embedder.get_layer(config.backbone).get_weights()]
    start_from_classifier(embedder, config)
    classifier, _ = load_run(runs / "demo" / "fold0")
    expected = classifier.get_layer(config.backbone).get_weights()
    after = embedder.get_layer(config.backbone).get_weights()
    assert all(np.array_equal(a, e) for a, e in zip(after, expected, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))

    missing = _config(root, tmp_path)
    fresh = build_run_model(missing).get_layer("embedder")
    weights = [w.copy() for w in fresh.get_weights()]
    with caplog.at_level("WARNING", logger="hpa_tf.training.embedder"):
        start_from_classifier(fresh, missing)
    assert [r.getMessage() for r in caplog.records if "no trained classifier" in r.getMessage()] == [
        f"no trained classifier in {tmp_path / 'demo' / 'fold0'} to start the embedder from: it starts from "
        "random weights (train the classifier first, python train_classifier.py --fold 0, or pass "
        "--init-from none)"]
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), weights, strict=True))

    other = _config(root, runs, backbone="densenet_1_1_1_1")
    refused = "trained a densenet_2_2_2_2, not the embedder's densenet_1_1"
    with pytest.raises(TrainingSetupError, match=refused):
        start_from_classifier(build_run_model(other).get_layer("embedder"), other)
    assert _config(root, runs, init_from="none").init_from is None
