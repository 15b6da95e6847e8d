"""RunLayout (a run folder's files and its typed config read back) and SubmissionFiles."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from hpa_tf.config import ClassifierConfig, EmbedderConfig, classifier_config, embedder_config
from hpa_tf.errors import RunFolderError
from hpa_tf.layout import RunLayout, SubmissionFiles


def _saved(folder, config) -> RunLayout:
    """A run folder whose config.json is what training writes (the config, the data root, replicas)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**dataclasses.asdict(config), "replicas": 2}
    (folder / "config.json").write_text(json.dumps(payload))
    return RunLayout(folder)


def test_a_run_reads_its_typed_config_back(tmp_path):
    classifier = classifier_config("i1536", data_dir=str(tmp_path / "data"), fold=3, weights="none")
    embedder = embedder_config("demo", data_dir=str(tmp_path / "data"), embedding_dim=64)
    assert _saved(tmp_path / "c", classifier).read_config() == classifier
    assert type(_saved(tmp_path / "e", embedder).read_config(EmbedderConfig)) is EmbedderConfig
    assert RunLayout(tmp_path / "e").read_config() == embedder
    with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / 'c'} holds a ClassifierConfig run, not "
                                                       "a EmbedderConfig run (python train_metric.py)")):
        RunLayout(tmp_path / "c").read_config(EmbedderConfig)
    with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / 'none' / 'config.json'} not found: "
                                                       "train this run first (python train_classifier.py)")):
        RunLayout(tmp_path / "none").read_config(ClassifierConfig)
    with pytest.raises(RunFolderError, match=re.escape(f"{tmp_path / 'c' / '007.weights.h5'} not found")):
        RunLayout(tmp_path / "c").checkpoint(ClassifierConfig, "007.weights.h5")


def test_the_run_files_are_the_ones_a_restart_deletes(tmp_path):
    run = RunLayout(tmp_path)
    for name in ("config.json", "log.csv", "best.json", "best.weights.h5", "012.weights.h5",
                 "embeddings_ext.npz", "training_curves.png", "per_class_f1.png", "notes.txt",
                 "damaged.weights.h5"):
        (tmp_path / name).write_text("x")
    for name in ("backup", "tensorboard", "index_ext", ".scratch-worker-1"):
        (tmp_path / name).mkdir()
    kept = sorted(p.name for p in tmp_path.iterdir() if not run.is_run_file(p))
    assert kept == [".scratch-worker-1", "damaged.weights.h5", "notes.txt"]
    assert run.epoch_weights(12) == tmp_path / "012.weights.h5"
    assert run.scratch("worker-1").root == tmp_path / ".scratch-worker-1"
    assert run.embeddings("test") == tmp_path / "embeddings_test.npz" and run.index == tmp_path / "index_ext"


def test_submission_side_files_sit_beside_the_output(tmp_path):
    files = SubmissionFiles(tmp_path / "sub.csv")
    side = (files.steps, files.neighbours, files.serving, files.probabilities, files.prob_ids,
            files.thresholds, files.fold_probabilities("runs/demo/fold1"))
    assert [p.name for p in side] == \
        ["sub.steps.csv", "sub.neighbours.csv", "sub.serving.json", "sub.prob.npy", "sub.prob_ids.csv",
         "sub.thresholds.npy", "sub.fold1.prob.npy"]
