"""Training: schedules, split metrics, the global-batch trainer (1 replica, MirroredStrategy over 2
logical CPUs, MultiWorkerMirroredStrategy over 2 loopback processes), the loop, resume and the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from hpa_tf.config import ConfigError, classifier_config
from hpa_tf.errors import ModelError, TrainingSetupError
from hpa_tf.layout import RunLayout
from hpa_tf.losses import classifier_loss
from hpa_tf.metrics import macro_f1
from hpa_tf.models.classifier import build_classifier
from hpa_tf.models.loading import load_classifier
from hpa_tf.schedules import learning_rate
from hpa_tf.training.callbacks import EpochCheckpoints, ResumingCSVLogger
from hpa_tf.training.classifier import train_classifier
from hpa_tf.training.evaluate import class_report, draw_report, evaluate_run
from hpa_tf.training.split_metrics import ElementAccuracy, SplitFocalLoss, SplitMacroF1
from hpa_tf.training.trainer import GlobalBatchTrainer

HERE = Path(__file__).parent
ROOT = HERE.parent


# ----------------------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("epoch, lr", [(1, 3e-4), (25, 3e-4), (26, 1.5e-4), (35, 1.5e-4), (36, 7.5e-5),
                                       (45, 7.5e-5), (46, 3e-5), (50, 3e-5), (51, 1e-5), (55, 1e-5)])
def test_adam55(epoch, lr):
    assert learning_rate("Adam55", epoch) == lr


@pytest.mark.parametrize("epoch, lr", [(25, 3e-4), (26, 1.5e-4), (30, 1.5e-4), (31, 7.5e-5), (35, 7.5e-5),
                                       (36, 3e-5), (40, 3e-5), (41, 1e-5), (45, 1e-5)])
def test_adam45(epoch, lr):
    assert learning_rate("Adam45", epoch) == lr


def test_face_adam_is_constant_and_schedules_stretch_to_other_lengths():
    assert {learning_rate("FaceAdam", e) for e in range(1, 60)} == {1e-4}
    # 9 epochs of Adam45 read its epochs 5, 10, ..., 45: five at 3e-4 then one of each later step.
    stretched = [learning_rate("Adam45", e, epochs=9) for e in range(1, 10)]
    assert stretched == [3e-4] * 5 + [1.5e-4, 7.5e-5, 3e-5, 1e-5]
    assert learning_rate("Adam45", 1, scale=2.0) == 6e-4
    with pytest.raises(ValueError, match="adam45"):
        learning_rate("adam45", 1)  # the reference's README casing (spec 8.1) is refused by name
    with pytest.raises(ValueError, match="from 1"):
        learning_rate("Adam45", 0)


# ----------------------------------------------------------------------------------- split metrics

def _numpy_focal_per_sample(y, z):
    p = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    pt = np.where(y > 0, p, 1 - p)
    return (bce * (1 - pt) ** 2).sum(1)


def test_split_metrics_equal_numpy_on_the_concatenated_split():
    rng = np.random.default_rng(5)
    y = (rng.random((23, 28)) < 0.2).astype("float32")
    y[:, 27] = 0  # a class with no positives
    z = rng.normal(0, 3, (23, 28)).astype("float32")
    focal, f1, accuracy = SplitFocalLoss(), SplitMacroF1(), ElementAccuracy()
    for start in range(0, 23, 5):  # batches of 5, 5, 5, 5, 3: an average of batch means would differ
        for metric in (focal, f1, accuracy):
            metric.update_state(y[start:start + 5], z[start:start + 5])
    np.testing.assert_allclose(float(focal.result()), _numpy_focal_per_sample(y, z).mean(), rtol=1e-5)
    expected_f1 = f1_score(y, z > 0, average="macro", zero_division=0)
    np.testing.assert_allclose(float(f1.result()), expected_f1, rtol=1e-6)
    assert macro_f1(y, z > 0) == pytest.approx(expected_f1)
    np.testing.assert_allclose(float(accuracy.result()), ((z > 0) == (y > 0)).mean(), rtol=1e-6)


def test_macro_f1_matches_sklearn_and_checks_shapes():
    rng = np.random.default_rng(2)
    for _ in range(5):
        t, p = rng.random((40, 28)) < 0.1, rng.random((40, 28)) < 0.1
        assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0))
    with pytest.raises(ValueError, match="shape"):
        macro_f1(np.zeros((3, 28)), np.zeros((3, 27)))


# ----------------------------------------------------------------------------- the trainer itself

def test_one_step_equals_a_hand_computed_clipped_sgd_step():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    net = keras.Model(inputs, keras.layers.Dense(28)(keras.layers.GlobalAveragePooling2D()(inputs)))
    rng = np.random.default_rng(0)
    x = rng.random((6, 8, 8, 4)).astype("float32")
    y = (rng.random((6, 28)) < 0.3).astype("float32")
    before = [w.numpy() for w in net.trainable_variables]
    with tf.GradientTape() as tape:
        loss = classifier_loss(y, net(x))
    grads = tape.gradient(loss, net.trainable_variables)
    norm = float(tf.linalg.global_norm(grads))
    clip = norm / 4  # the clip is active
    expected = [b - 0.5 * g.numpy() * clip / norm for b, g in zip(before, grads, strict=True)]
    trainer = GlobalBatchTrainer(net, classifier_loss, clipnorm=clip)
    trainer.compile(keras.optimizers.SGD(0.5))
    history = trainer.fit(x, y, batch_size=6, epochs=1, verbose=0, shuffle=False).history
    assert history["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    for got, want in zip(net.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def _run_step_script(mode: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "distributed_step.py"), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen, timeout: int = 240) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _assert_same_step(result: dict, replicas: int) -> None:
    single, distributed = result["single"], result["distributed"]
    assert distributed["replicas"] == replicas and single["replicas"] == 1
    assert distributed["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert distributed["val_focal"] == pytest.approx(single["val_focal"], rel=1e-5)
    assert distributed["val_macro_f1"] == pytest.approx(single["val_macro_f1"], rel=1e-6)
    delta_single, delta_distributed = np.array(single["delta"]), np.array(distributed["delta"])
    assert np.linalg.norm(delta_single) == pytest.approx(0.05, rel=1e-4)  # lr 1 x clipped global norm
    np.testing.assert_allclose(delta_distributed, delta_single, rtol=1e-4, atol=1e-7)


def _env(**extra) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_two_replicas_give_the_single_replica_loss_update_and_validation():
    """MirroredStrategy over 2 logical CPUs: each replica holds half the global batch, yet the loss, the
    clipped update and the whole-split validation figures equal those of one replica."""
    _assert_same_step(_result(_run_step_script("mirrored", _env())), replicas=2)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_processes_run_one_global_batch_step():
    """MultiWorkerMirroredStrategy with 2 worker processes on loopback (TF_CONFIG)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(_run_step_script("worker", _env(TF_CONFIG=json.dumps(tf_config))))
    results = [_result(p) for p in processes]
    for result in results:
        _assert_same_step(result, replicas=2)
    assert results[0]["distributed"]["delta"] == results[1]["distributed"]["delta"]


# ------------------------------------------------------------------------------------ the loop

def _config(root, out, **overrides):
    values = dict(data_dir=str(root), out_dir=str(out), img_size=64, crop_size=32, batch_size=16, epochs=3,
                  verbose=0)
    return classifier_config("demo", **{**values, **overrides})


class _KilledAfterTheLogRow(keras.callbacks.TensorBoard):
    """TensorBoard, which fit_run places after the CSV log and before BackupAndRestore, dying at the end of
    epoch `epoch` (0-based): the epoch's checkpoints and log row are written, its backup is not, as where a
    kill -9 can land."""

    epoch = 1

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


def _cli(argv: list[str]) -> int:
    from hpa_tf.cli import train_classifier as command

    return command.main(argv)


def test_interrupted_run_resumes_to_the_same_epochs_and_a_best_checkpoint(prepared, tmp_path, monkeypatch,
                                                                          capsys):
    """Killed after epoch 2's log row, before its backup; resumed; run again when finished (nothing to do);
    a damaged checkpoint; --restart (which also checks the stretched learning-rate schedule)."""
    root, _ = prepared
    config = _config(root, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(keras.callbacks, "TensorBoard", _KilledAfterTheLogRow)
        with pytest.raises(KeyboardInterrupt):
            train_classifier(config, progress=False)
    folder = tmp_path / "demo" / "fold0"
    assert RunLayout(folder).epoch_weights(2).is_file() and not RunLayout(folder).epoch_weights(3).exists()
    assert pd.read_csv(folder / "log.csv")["epoch"].tolist() == [0, 1]  # the row of epoch 2 is written
    backed_up = json.loads((folder / "backup" / "training_metadata.json").read_text())["epoch"]
    assert backed_up == 1  # epoch 2's backup is not

    summary = train_classifier(config, progress=False)  # trains epochs 2 and 3
    log = pd.read_csv(folder / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2]  # each epoch once: the killed run's row of epoch 2 is gone
    assert all(RunLayout(folder).epoch_weights(e).is_file() for e in (1, 2, 3))
    assert not (folder / "backup").exists()  # removed once the run is complete
    best = json.loads((folder / "best.json").read_text())
    assert best["epoch"] == summary["best_epoch"] == int(log.loc[log["val_focal"].idxmin(), "epoch"]) + 1
    assert best["val_focal"] == pytest.approx(log["val_focal"].min(), rel=1e-6)
    best_weights = (folder / "best.weights.h5").read_bytes()
    assert best_weights == RunLayout(folder).epoch_weights(best["epoch"]).read_bytes()  # not the killed run's
    steps_per_epoch = 194 // 16  # fold 0 of the tiny dataset has 194 training rows
    assert summary["optimizer_steps"] == 3 * steps_per_epoch  # the optimizer state was restored too
    model = build_classifier(config.backbone, weights=None)
    model.load_weights(folder / "best.weights.h5")  # a complete, loadable checkpoint
    report = evaluate_run(folder)  # the per-class report reads the run back
    assert len(report) == 28 and report["positives"].sum() > 0
    assert ((report["f1_at_rate"] >= 0) & (report["f1_at_rate"] <= 1)).all()
    assert summary["curves"] == str(folder / "training_curves.png")  # drawn from the complete log
    charts = draw_report(report, RunLayout(folder), "best.weights.h5")
    assert [p.name for p in charts] == ["per_class_f1.png", "training_curves.png"]
    with Image.open(charts[0]) as png:
        assert png.size == (800, 900)

    # The finished run, run again: reported in one line, nothing trained or written.
    log_bytes = (folder / "log.csv").read_bytes()
    last_written = RunLayout(folder).epoch_weights(3).stat().st_mtime_ns
    again = train_classifier(config, progress=False)
    assert again["optimizer_steps"] == 0 and again.get("already_finished")
    assert again["best_epoch"] == summary["best_epoch"] and again["val_focal"] == summary["val_focal"]
    capsys.readouterr()
    same = ["--data-dir", str(root), "--out", str(tmp_path), "--profile", "demo", "--img-size", "64",
            "--crop-size", "32", "--batch-size", "16", "--epochs", "3"]
    assert _cli([*same, "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet: warnings and errors only
    assert _cli(same) == 0
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1
    assert said[0].startswith(f"{folder} holds a finished run: best epoch {best['epoch']} of 3")
    assert "--restart" in said[0]
    assert (folder / "log.csv").read_bytes() == log_bytes
    assert RunLayout(folder).epoch_weights(3).stat().st_mtime_ns == last_written

    # A checkpoint cut short is a named ModelError, not h5py's traceback.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copy(folder / "config.json", damaged)
    (damaged / "best.weights.h5").write_bytes(best_weights[:len(best_weights) // 2])
    with pytest.raises(ModelError, match=re.escape(str(damaged / "best.weights.h5")) + ".*retrain"):
        load_classifier(damaged)

    # --restart deletes the run's files (not others') and trains anew: 1 epoch of the stretched schedule.
    (folder / "notes.txt").write_text("mine")
    assert _cli([*same[:-1], "1", "--lr-scale", "1", "--quiet", "--restart"]) == 0
    log = pd.read_csv(folder / "log.csv")
    assert log["epoch"].tolist() == [0]  # a new run's log, not appended to the old one
    np.testing.assert_allclose(log["learning_rate"], [1e-5], rtol=1e-6)  # Adam45's epoch 45
    assert RunLayout(folder).epoch_weights(1).is_file() and not RunLayout(folder).epoch_weights(2).exists()
    assert not (folder / "per_class_f1.png").exists()  # the old run's chart went with it
    assert json.loads((folder / "best.json").read_text())["epoch"] == 1
    assert json.loads((folder / "config.json").read_text())["epochs"] == 1
    assert (folder / "notes.txt").read_text() == "mine"  # not a file of the run


def test_resumed_checkpoints_choose_the_best_again_without_the_epochs_trained_again(tmp_path):
    """A run killed after epoch 2's checkpoints and log row but before its backup resumes at epoch 2: the
    best (epoch 2) is chosen again among epoch 1; a fit that starts over has no best; the log keeps its
    columns; a missing monitor is a TrainingSetupError."""
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for number in (1, 2):
        net.layers[0].bias.assign([number, number])
        net.save_weights(RunLayout(tmp_path).epoch_weights(number))
    rows = ["epoch,loss,val_focal,val_nn", "0,2.0,0.5,0.25", "1,1.0,0.4,0.5", "1,1.0,0.3,0.5"]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "best.json").write_text(json.dumps({"epoch": 2, "val_focal": 0.3, "val_nn": 0.5}))
    shutil.copy(RunLayout(tmp_path).epoch_weights(2), tmp_path / "best.weights.h5")
    checkpoints = EpochCheckpoints(net, RunLayout(tmp_path), report=False)
    checkpoints.on_train_begin()
    checkpoints.on_epoch_begin(1)
    assert json.loads((tmp_path / "best.json").read_text()) == {"epoch": 1, "val_focal": 0.5, "val_nn": 0.25}
    assert (tmp_path / "best.weights.h5").read_bytes() == RunLayout(tmp_path).epoch_weights(1).read_bytes()
    assert (checkpoints.best_epoch, checkpoints.best_value) == (1, 0.5)

    logger = ResumingCSVLogger(tmp_path / "log.csv")
    logger.on_train_begin()
    logger.on_epoch_begin(1)
    logger.on_epoch_end(1, {"loss": 0.9, "val_focal": 0.45})  # no val_nn this epoch
    logger.on_train_end()
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["epoch"].tolist() == [0, 1] and log["val_focal"].tolist() == [0.5, 0.45]
    assert log["val_nn"].isna().tolist() == [False, True]  # the column of the header, not a shifted row

    checkpoints.on_train_begin()
    checkpoints.on_epoch_begin(0)  # no backup: epoch 1 is trained again, no best yet
    assert not (tmp_path / "best.json").exists() and not (tmp_path / "best.weights.h5").exists()
    with pytest.raises(TrainingSetupError, match="no 'val_focal'.*validation split"):
        checkpoints.on_epoch_end(0, {"loss": 1.0})


def test_class_report_matches_sklearn():
    rng = np.random.default_rng(4)
    truth = (rng.random((200, 28)) < 0.15).astype(float)
    truth[:, 3] = 0  # no positives: AUC undefined
    probs = np.clip(truth * 0.3 + rng.random((200, 28)) * 0.7, 0, 1)
    rates = np.full(28, 0.15)
    report = class_report(truth, probs, rates)
    for c in (0, 5, 27):
        assert report.loc[c, "auc"] == pytest.approx(roc_auc_score(truth[:, c], probs[:, c]))
        predicted = probs[:, c] > report.loc[c, "rate_threshold"]
        assert predicted.mean() == pytest.approx(0.15, abs=0.01)
        assert report.loc[c, "f1_at_rate"] == pytest.approx(f1_score(truth[:, c], predicted, zero_division=0))
    assert np.isnan(report.loc[3, "auc"])
    assert report["f1_at_0.5"].tolist() == pytest.approx(
        f1_score(truth, probs > 0.5, average=None, zero_division=0).tolist())


def test_missing_prepared_data_and_bad_settings_fail_before_training(prepared, tmp_path):
    root, _ = prepared
    with pytest.raises(TrainingSetupError, match="--sizes 128"):
        train_classifier(_config(root, tmp_path, img_size=128), progress=False)
    with pytest.raises(TrainingSetupError, match="hpa_tf.data.prepare"):
        train_classifier(_config(tmp_path / "nowhere", tmp_path), progress=False)
    with pytest.raises(ConfigError, match="--crop-size"):
        _config(root, tmp_path, crop_size=100)
    with pytest.raises(ConfigError, match="--fold"):
        _config(root, tmp_path, fold=5)
    with pytest.raises(ConfigError, match="unknown profile"):
        classifier_config("i512")


def test_cli_help_and_error_exit(prepared, tmp_path, capsys):
    """In process (the CLI's main is what the script runs; the 2-replica test runs it as a script)."""
    with pytest.raises(SystemExit) as exited:
        _cli(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--fold", "--profile", "--data-dir", "--strategy", "--sync-bn", "--precision", "--jit",
                 "--schedule", "--large", "--weights", "i1536", "--restart", "--device-augment",
                 "--tfrecords"):
        assert flag in shown
    root, _ = prepared
    assert _cli(["--data-dir", str(root), "--profile", "demo", "--img-size", "64", "--crop-size", "80"]) == 2
    assert "error: --crop-size (80)" in capsys.readouterr().err


MIRRORED_CLI_TEST = "test_cli_trains_on_two_mirrored_cpu_replicas"


@pytest.fixture(scope="module", autouse=True)
def mirrored_cli_run(request, tmp_path_factory):
    """(process, out folder) of train_classifier's CLI under MirroredStrategy over 2 logical CPUs, 1 epoch
    on the prepared tiny dataset, started when this module's first test starts so that it runs while the
    other tests do; None when its test is not selected."""
    if not any(item.name == MIRRORED_CLI_TEST for item in request.session.items):
        yield None
        return
    root, _ = request.getfixturevalue("prepared")
    out = tmp_path_factory.mktemp("mirrored_cli")
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from hpa_tf.cli import train_classifier\n"
        "sys.exit(train_classifier.main(sys.argv[1:]))\n")
    args = ["--data-dir", str(root), "--profile", "demo", "--img-size", "64", "--crop-size", "32",
            "--batch-size", "16", "--epochs", "1", "--strategy", "mirrored", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    yield process, out
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_cli_trains_on_two_mirrored_cpu_replicas(mirrored_cli_run):
    """The whole CLI path under MirroredStrategy over 2 logical CPUs, 1 epoch on the tiny dataset."""
    process, tmp_path = mirrored_cli_run
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "; 2 replica(s)" in stdout and "best epoch 1" in stdout
    config = json.loads((tmp_path / "demo" / "fold0" / "config.json").read_text())
    assert config["replicas"] == 2 and config["strategy"] == "mirrored"
    assert RunLayout(tmp_path / "demo" / "fold0").epoch_weights(1).is_file()
