"""What every training run shares (spec 8): devices and strategy, precision, the prepared data, Adam,
the learning-rate schedule, checkpoints, logs, resume after interruption, and `fit`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from hpa_tf.atomic import write_json_atomic
from hpa_tf.config import PRECISIONS, RunConfig
from hpa_tf.data import pipeline
from hpa_tf.data.layout import DataLayout
from hpa_tf.errors import TrainingSetupError
from hpa_tf.models.backbones import check_backbone
from hpa_tf.training.callbacks import (
    BEST_STATE,
    BEST_WEIGHTS,
    LOG,
    EpochCheckpoints,
    ResumingCSVLogger,
    read_log,
)
from hpa_tf.training.schedules import learning_rate
from hpa_tf.viz import training_curves

ADAM_EPSILON = 1e-8  # PyTorch's default (Keras' is 1e-7), spec 8.1
CONFIG = "config.json"
BACKUP = "backup"  # BackupAndRestore's folder: present while a run is unfinished
# What a run writes in its folder (with the NNN.weights.h5 of every epoch), all deleted by a restart:
# training's files, the evaluation charts and the embeddings (and their neighbour index) of a metric run.
RUN_FILES = (CONFIG, LOG, BEST_WEIGHTS, BEST_STATE, "training_curves.png", "per_class_f1.png")
RUN_FOLDERS = (BACKUP, "tensorboard", "index_ext")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over all GPUs when there are several, else the default strategy;
    mirrored: MirroredStrategy over all local GPUs (or logical CPUs); multiworker:
    MultiWorkerMirroredStrategy configured from TF_CONFIG."""
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":  # all GPUs; without GPUs all logical CPUs (one, unless configured otherwise)
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingSetupError(f"unknown strategy {name!r}")


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, str]:
    """(is chief, a name for this worker): the chief writes the run's files, other workers a scratch copy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True, "chief"
    task_id = int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, f"{task_type}-{task_id}"


def demo_data_dir(img_size: int, progress: bool = True) -> Path:
    """The embedded synthetic demo dataset, generated and prepared at `img_size` on first use."""
    from hpa_tf.data.prepare import prepare
    from hpa_tf.data.synthetic import ensure_dataset

    root = ensure_dataset("demo", seed=0)
    layout = DataLayout(root)
    if not (layout.meta_dir / f"cache_manifest_{img_size}.csv").is_file() or \
            not (layout.meta_dir / "stats.json").is_file():
        print(f"preparing {root} at {img_size} px (first use)", flush=True)
        prepare(root, sizes=[img_size], progress=progress)
    return root


def _check_caches(layout: DataLayout, img_size: int, tfrecords: bool) -> None:
    """Fail early, naming the prepare command, when the resize cache (or TFRecords) of img_size is absent."""
    marker = (layout.root / "tfrecords" / f"train_{img_size}") if tfrecords else \
        (layout.meta_dir / f"cache_manifest_{img_size}.csv")
    if not marker.exists():
        flag = " --tfrecords" if tfrecords else ""
        raise TrainingSetupError(f"{marker} not found: run `python -m hpa_tf.data.prepare --data-dir "
                                 f"{layout.root} --sizes {img_size}{flag}` first")


@dataclass
class Session:
    """The devices and data of one run, set up before any model is built."""

    strategy: tf.distribute.Strategy
    layout: DataLayout
    chief: bool
    worker: str

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def source(self, config: RunConfig) -> pipeline.Source:
        return pipeline.Source(self.layout, config.img_size, "train", config.tfrecords)


def start_session(config: RunConfig, progress: bool = True) -> Session:
    """Validate the config, set precision and seeds, make the strategy and find the prepared data (the
    synthetic demo is generated and prepared when no data_dir is given)."""
    config.validate()
    check_backbone(config.backbone, config.weights)
    keras.config.set_dtype_policy(PRECISIONS[config.precision])
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    data_dir = Path(config.data_dir) if config.data_dir else demo_data_dir(config.img_size, progress)
    layout = DataLayout(data_dir)
    _check_caches(layout, config.img_size, config.tfrecords)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise TrainingSetupError(f"--batch-size {config.batch_size} is not divisible by the "
                                 f"{strategy.num_replicas_in_sync} replicas")
    return Session(strategy, layout, *worker_role(strategy))


def read_split(layout: DataLayout, name: str):
    """The prepared split CSV `split/<name>`, or TrainingSetupError naming the prepare command."""
    path = layout.split_dir / name
    if not path.is_file():
        raise TrainingSetupError(f"missing split file {path}: run "
                                 f"`python -m hpa_tf.data.prepare --data-dir {layout.root}` first")
    return pd.read_csv(path, dtype={"Id": str, "Target": str}, keep_default_na=False)


def training_dataset(session: Session, builder, *args, **kwargs):
    """A training pipeline: per-replica pipelines (distribute_datasets_from_function) under a strategy
    with several replicas, the plain dataset otherwise."""
    if session.replicas > 1:
        function = pipeline.dataset_fn(builder, *args, **kwargs)
        return session.strategy.distribute_datasets_from_function(function)
    return builder(*args, **kwargs)


def adam(config: RunConfig) -> keras.optimizers.Adam:
    """Adam with eps 1e-8 and no weight decay, at the schedule's first learning rate."""
    return keras.optimizers.Adam(learning_rate(config.schedule, 1, config.epochs, config.lr_scale),
                                 epsilon=ADAM_EPSILON)


def finished_run(folder: Path, epochs: int) -> dict | None:
    """The summary of the run in `folder` when it is finished (no backup/, best.weights.h5 and best.json
    present, every epoch of its config.json, else `epochs`, in log.csv); None otherwise."""
    if (folder / BACKUP).exists() or not all((folder / name).is_file() for name in (LOG, BEST_WEIGHTS,
                                                                                   BEST_STATE)):
        return None
    if (folder / CONFIG).is_file():
        epochs = int(json.loads((folder / CONFIG).read_text()).get("epochs", epochs))
    if not set(range(epochs)) <= set(read_log(folder / LOG)[1]):
        return None
    best = json.loads((folder / BEST_STATE).read_text())
    summary = {"folder": str(folder), "best_epoch": int(best["epoch"]),
               "best_weights": str(folder / BEST_WEIGHTS), "optimizer_steps": 0, "epochs": epochs,
               "already_finished": True, **best}
    if (folder / "training_curves.png").is_file():
        summary["curves"] = str(folder / "training_curves.png")
    return summary


def clear_run(folder: Path) -> None:
    """Delete a run's files from its folder (RUN_FILES, RUN_FOLDERS, NNN.weights.h5, embeddings_*.npz);
    anything else there, other workers' scratch folders included, stays."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        name = path.name
        if name in RUN_FOLDERS and path.is_dir():
            shutil.rmtree(path)
        elif path.is_file() and (name in RUN_FILES or (name.endswith(".weights.h5") and
                                                       name[:-len(".weights.h5")].isdigit())
                                 or (name.startswith("embeddings_") and name.endswith(".npz"))):
            path.unlink()


def begin_run(config: RunConfig, session: Session, folder: Path, monitor: str, restart: bool = False
              ) -> dict | None:
    """Before building anything: with `restart`, delete the run's files (this worker's own scratch copy
    on a worker that is not the chief) so that it trains anew; otherwise, when `folder` holds a finished
    run, print one line saying so and return its summary (None: train, or resume)."""
    if restart:
        if session.chief:
            clear_run(folder)
        else:
            shutil.rmtree(folder / f".scratch-{session.worker}", ignore_errors=True)
        return None
    summary = finished_run(folder, config.epochs)
    if summary is not None:
        print(f"{folder} holds a finished run: best epoch {summary['best_epoch']} of {summary['epochs']} "
              f"({monitor} {float(summary.get(monitor, float('nan'))):.4f}, {summary['best_weights']}); "
              f"nothing to train. To train it again, rerun with --restart (deletes its files) or "
              f"--run NAME (a new folder)", flush=True)
    return summary


def fit_run(config: RunConfig, session: Session, trainer: keras.Model, train_ds, valid_ds, folder: Path,
            monitor: str, mode: str, description: str, callbacks=(), progress: bool = True) -> dict:
    """Fit with the schedule, per-epoch and best checkpoints (by `monitor`, `mode` min or max), CSV log
    (drawn as training_curves.png at the end), TensorBoard and BackupAndRestore (a rerun resumes); returns
    the summary of the best epoch."""
    files = folder if session.chief else folder / f".scratch-{session.worker}"  # thrown away at the end
    files.mkdir(parents=True, exist_ok=True)
    if session.chief:
        write_json_atomic({**dataclasses.asdict(config), "data_dir": str(session.layout.root),
                           "replicas": session.replicas}, folder / CONFIG)
    print(f"{description}; {session.replicas} replica(s), {config.epochs} epochs of {config.schedule}; "
          f"files in {folder}", flush=True)
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: learning_rate(config.schedule, epoch + 1, config.epochs, config.lr_scale))
    verbose = config.verbose if progress else 0
    # Keras' own epoch line shows the same figures when its progress output is on.
    checkpoints = EpochCheckpoints(trainer.net, files, monitor=monitor, mode=mode,
                                   report=session.chief and verbose == 0, log=files / LOG)
    # The order matters when a run is killed: an epoch's checkpoints, then its log row, then its backup;
    # a rerun resumes from the backup and drops the later row and best choice (ResumingCSVLogger,
    # EpochCheckpoints).
    fit_callbacks = [schedule, *callbacks, checkpoints, ResumingCSVLogger(files / LOG),
                     keras.callbacks.TensorBoard(str(files / "tensorboard")),
                     keras.callbacks.BackupAndRestore(str(files / BACKUP), double_checkpoint=True)]
    trainer.fit(train_ds, validation_data=valid_ds, epochs=config.epochs, callbacks=fit_callbacks,
                shuffle=False, verbose=verbose)
    if not session.chief:
        shutil.rmtree(files, ignore_errors=True)
    summary = {"folder": str(folder), "best_epoch": checkpoints.best_epoch,
               "best_weights": str(folder / BEST_WEIGHTS),
               "optimizer_steps": int(trainer.optimizer.iterations.numpy())}
    if session.chief and (folder / BEST_STATE).is_file():
        summary.update(json.loads((folder / BEST_STATE).read_text()))
    if session.chief and (folder / LOG).is_file():
        curves = training_curves(folder / LOG, folder / "training_curves.png", str(folder))
        summary["curves"] = str(curves)
    return summary
