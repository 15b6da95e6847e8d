"""Files the package derives (the neighbour index, a metric run's embeddings, prepare's bookkeeping tables,
TFRecord shards) are derived again when damaged (cut short, emptied, garbled, missing) or foreign, with one
log line naming the file and what was wrong; inputs it cannot derive (config.json, a checkpoint, raw CSVs,
and prepared files that only prepare writes) are refused in one `error:` line naming them (exit status 2).
The whole submission after a damaged index is in test_fault_injection.py."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from hpa_tf.cli import infer
from hpa_tf.data import pipeline, prepare
from hpa_tf.data.tfrecords import shard_paths, write_tfrecords
from hpa_tf.embeddings import load_embeddings, matching_space, save_embeddings
from hpa_tf.errors import DataError, InferenceError
from hpa_tf.inference.neighbours import INDEX_INFO, NeighbourIndex, cached_index, index_problem
from hpa_tf.inference.submission import serving_record
from hpa_tf.layout import DataLayout
from hpa_tf.models.loading import dataset_stats
from hpa_tf.training.embedder import ensure_embeddings

GARBAGE = bytes(range(256)) * 8  # not UTF-8, not a table, not an archive


def damage(path: Path, how: str) -> None:
    """Cut `path` to half its bytes, empty it, overwrite it with garbage or delete it."""
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    else:
        path.write_bytes({"half": data[:len(data) // 2], "empty": b"", "garbage": GARBAGE}[how])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def hpa_logs(caplog):
    """caplog receiving the package's records (a CLI run earlier in the session stops their propagation)."""
    logger = logging.getLogger("hpa_tf")
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.INFO, "hpa_tf")
    yield caplog
    logger.propagate = propagate


# ------------------------------------------------------------------------------------ neighbour index

@pytest.mark.parametrize("name", ["references.npy", INDEX_INFO])
@pytest.mark.parametrize("how", ["half", "empty", "garbage", "delete"])
def test_a_damaged_index_file_is_rebuilt_with_one_line(tmp_path, hpa_logs, name, how):
    feats = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    embeddings = save_embeddings(tmp_path / "embeddings_ext.npz", feats, [f"i{i}" for i in range(120)])
    folder = tmp_path / "index_ext"
    cached_index(embeddings, feats, folder)
    intact = {p.name: p.read_bytes() for p in folder.iterdir()}
    damage(folder / name, how)
    hpa_logs.clear()
    index = cached_index(embeddings, feats, folder)
    (line,) = _warnings(hpa_logs)
    assert line.startswith(f"neighbour index of 120 references rebuilt in {folder}: {name} ")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == intact
    np.testing.assert_array_equal(index.references, matching_space(feats))


def test_an_index_of_other_embeddings_or_rows_is_rebuilt(tmp_path, hpa_logs):
    feats = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    embeddings = save_embeddings(tmp_path / "embeddings_ext.npz", feats, [f"i{i}" for i in range(50)])
    folder = tmp_path / "index_ext"
    cached_index(embeddings, feats, folder)
    save_embeddings(embeddings, feats[::-1], [f"i{i}" for i in range(50)][::-1])  # other embeddings
    hpa_logs.clear()
    np.testing.assert_array_equal(cached_index(embeddings, feats[::-1], folder).references,
                                  matching_space(feats[::-1]))
    assert _warnings(hpa_logs) == [f"neighbour index of 50 references rebuilt in {folder}: it was built from "
                                   "other embeddings (or by another version)"]
    info = json.loads((folder / INDEX_INFO).read_text())
    (folder / INDEX_INFO).write_text(json.dumps({**info, "rows": 49}))  # a foreign info, same checksum
    hpa_logs.clear()
    cached_index(embeddings, feats[::-1], folder)
    assert _warnings(hpa_logs) == [f"neighbour index of 50 references rebuilt in {folder}: it holds 49 "
                                   "references, not the 50 of the embeddings"]
    hpa_logs.clear()
    cached_index(embeddings, feats[::-1], folder)
    assert not _warnings(hpa_logs) and "reused from" in hpa_logs.records[-1].getMessage()


def test_every_file_of_a_scann_index_is_checked(tmp_path):
    """ScaNN's own files (partitioner, codebook, hashed data, asset list) are checked before ScaNN reads
    them: each damage is named, never loaded."""
    references = matching_space(np.random.default_rng(2).normal(size=(400, 16)))
    folder = NeighbourIndex.build(references, exact_below=100).save(tmp_path / "index", "fingerprint")
    names = sorted(p.name for p in folder.iterdir() if p.name != INDEX_INFO)
    assert "serialized_partitioner.pb" in names and len(names) > 5
    assert index_problem(folder, "fingerprint", 400) is None
    for k, name in enumerate(names):
        intact = (folder / name).read_bytes()
        how = ["half", "empty", "garbage", "delete"][k % 4]
        damage(folder / name, how)
        problem = index_problem(folder, "fingerprint", 400)
        assert problem.startswith(f"{name} "), (how, problem)
        (folder / name).write_bytes(intact)
    assert NeighbourIndex.load(folder).searcher is not None


# ------------------------------------------------------------------------------- metric run embeddings

def test_damaged_or_foreign_embeddings_are_extracted_again(trained_runs, tmp_path, hpa_logs):
    """embeddings_test.npz cut to half, embeddings_ext.npz garbled and embeddings_kaggle.npz holding
    another set's images: one line each, one extraction, the original embeddings back."""
    metric = tmp_path / "metric"
    shutil.copytree(trained_runs[1] / "metric_demo", metric, ignore=shutil.ignore_patterns("index_ext"))
    sets = ["test", "kaggle", "ext"]
    intact = {name: load_embeddings(metric / f"embeddings_{name}.npz") for name in sets}
    damage(metric / "embeddings_test.npz", "half")
    damage(metric / "embeddings_ext.npz", "garbage")
    save_embeddings(metric / "embeddings_kaggle.npz", *intact["ext"])
    hpa_logs.clear()
    ensure_embeddings(metric, sets, progress=False)
    lines = _warnings(hpa_logs)
    checkpoint = metric / "best.weights.h5"
    assert len(lines) == 3 and all(x.endswith(f": extracting it again from {checkpoint}") for x in lines)
    assert lines[0].startswith(f"{metric / 'embeddings_test.npz'} is damaged (")
    assert lines[1].startswith(f"{metric / 'embeddings_kaggle.npz'} holds 120 embeddings, not those of its "
                               "set's")
    assert lines[2].startswith(f"{metric / 'embeddings_ext.npz'} is damaged (")
    for name in sets:
        feats, ids = load_embeddings(metric / f"embeddings_{name}.npz")
        np.testing.assert_array_equal(ids, intact[name][1])
        np.testing.assert_array_equal(feats, intact[name][0])


# ------------------------------------------------------------------------- prepare and its TFRecords

def _prepared_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "meta").iterdir())}


@pytest.mark.parametrize("manifest, features", [("half", "garbage"), ("garbage", "empty")])
def test_prepare_redoes_a_damaged_manifest_or_feature_table(prepared, tmp_path, hpa_logs, manifest, features):
    root = tmp_path / "tiny"
    shutil.copytree(prepared[0], root)  # copy2: the sources keep their times, so no image is new
    layout, intact = DataLayout(root), _prepared_files(prepared[0])
    damage(layout.cache_manifest(64), manifest)
    damage(layout.meta_dir / "image_features.csv", features)
    hpa_logs.clear()
    prepare.prepare(root, workers=1, progress=False)
    lines = _warnings(hpa_logs)
    assert len(lines) == 2 and all(line.endswith("not used, the work it recorded is checked or redone")
                                   for line in lines)
    assert lines[0].startswith(f"{layout.meta_dir / 'image_features.csv'} is damaged (")
    assert lines[1].startswith(f"{layout.cache_manifest(64)} is damaged (")
    assert _prepared_files(root) == intact


def test_damaged_tfrecords_are_refused_by_readers_and_written_again(prepared, tmp_path, hpa_logs):
    """index.csv, shards.csv or a shard cut short, emptied, garbled or deleted: shard_paths (what training
    and inference read through) refuses the group naming the command; a rerun writes it again (a shard
    garbled in place at its size: with verify), naming what was wrong."""
    root = tmp_path / "tiny"
    shutil.copytree(prepared[0], root)
    layout = DataLayout(root)
    ids = prepare.read_raw_csv(layout.sample_submission_csv, ["Id"])["Id"].tolist()
    folder = write_tfrecords(layout, "test", ids, 64, shard_bytes=100_000, progress=False)
    intact = {p.name: p.read_bytes() for p in folder.iterdir()}
    shard = sorted(name for name in intact if name.startswith("shard-"))[1]
    cases = [("index.csv", "half", "index.csv is damaged"), ("index.csv", "delete", "index.csv is missing"),
             ("shards.csv", "empty", "shards.csv is damaged"),
             ("shards.csv", "delete", "shards.csv is missing"),
             (shard, "half", f"{shard} has {len(intact[shard]) // 2} bytes"),
             (shard, "garbage", f"{shard} has {len(GARBAGE)} bytes"),
             (shard, "delete", f"{shard} is missing")]
    for name, how, problem in cases:
        damage(folder / name, how)
        if name != "index.csv":
            with pytest.raises(DataError, match="--tfrecords` to write them again") as error:
                shard_paths(layout, "test", 64)
            assert f"{folder} are damaged ({problem}" in str(error.value)
        hpa_logs.clear()
        write_tfrecords(layout, "test", ids, 64, shard_bytes=100_000, progress=False)
        (line,) = _warnings(hpa_logs)
        assert line.startswith(f"writing the TFRecords in {folder} again: {problem}"), (name, how, line)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == intact, (name, how)
    garbled = bytearray(intact[shard])
    garbled[1000:1016] = bytes(16)  # same size: found by the CRC-32 only
    (folder / shard).write_bytes(bytes(garbled))
    write_tfrecords(layout, "test", ids, 64, shard_bytes=100_000, progress=False)
    assert (folder / shard).read_bytes() == bytes(garbled)
    with pytest.raises(tf.errors.DataLossError) as lost:  # what training and inference then meet
        list(tf.data.TFRecordDataset(str(folder / shard)))
    refused = str(pipeline.unreadable_image(pipeline.Source(layout, 64, "test", True), pd.DataFrame(),
                                            lost.value))
    assert refused.startswith(f"a TFRecord shard in {root / 'tfrecords'} is damaged (corrupted record at")
    assert refused.endswith("--tfrecords --verify` to write it again")
    hpa_logs.clear()
    write_tfrecords(layout, "test", ids, 64, shard_bytes=100_000, progress=False, verify=True)
    assert _warnings(hpa_logs) == [f"writing the TFRecords in {folder} again: {shard} is not the file that "
                                   "was written (its CRC-32 differs)"]
    assert (folder / shard).read_bytes() == intact[shard]


# ---------------------------------------------------------------------------- inputs it cannot derive

def test_damaged_inputs_are_refused_in_one_line_naming_them(trained_runs, tmp_path, capsys):
    """A fold's config.json or checkpoint, the raw sample_submission.csv and train.csv: `error:` and exit
    status 2; prepared files that only prepare writes (meta tables, stats.json) and the serving record of a
    submission name the command that writes them again."""
    data, out = trained_runs
    runs = tmp_path / "runs"
    shutil.copytree(out / "demo", runs / "demo", ignore=shutil.ignore_patterns("tensorboard", "0*"))
    root = tmp_path / "tiny"
    shutil.copytree(data, root, ignore=shutil.ignore_patterns("images_*", "external_v18_*", "tfrecords"))
    layout = DataLayout(root)
    base = ["--submission", "--runs", str(runs), "--run", "demo", "--metric-run", "none", "--output",
            str(tmp_path / "submission.csv")]
    checks = [(runs / "demo" / "fold0" / "config.json", "garbage", base, "is damaged (UnicodeDecodeError"),
              (runs / "demo" / "fold1" / "best.weights.h5", "half", [*base, "--folds", "1"],
               "does not load (OSError"),
              (layout.sample_submission_csv, "empty", [*base, "--folds", "1", "--data-dir", str(root)],
               "is damaged (EmptyDataError")]
    for path, how, args, message in checks:
        damage(path, how)
        capsys.readouterr()
        assert infer.main(args) == 2, path
        err = capsys.readouterr().err
        assert err.startswith(f"error: checkpoint {path} " if path.suffix == ".h5" else f"error: {path} ")
        assert message in err and err.count("\n") == 1, err
    damage(layout.train_csv, "garbage")
    capsys.readouterr()
    assert prepare.main(["--data-dir", str(root), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {layout.train_csv} is damaged (") and err.count("\n") == 1
    remedy = re.escape(f"run {layout.prepare_hint()} to write it again")
    damage(layout.meta_dir / "test_match_test.csv", "garbage")
    with pytest.raises(DataError, match="test_match_test.csv is damaged .*" + remedy):
        layout.read_meta("test_match_test.csv")
    damage(layout.stats_json, "half")
    with pytest.raises(DataError, match="stats.json is damaged .*" + remedy):
        dataset_stats(layout)
    serving = tmp_path / "submission.serving.json"
    serving.write_text('{"thresholds": [0.5, 0.5')
    with pytest.raises(InferenceError, match="serving.json is damaged .*infer.py --submission --output"):
        serving_record(tmp_path / "submission.csv")
