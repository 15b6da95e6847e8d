"""What every training run shares (spec 8): devices and strategy, precision, the prepared data, Adam,
the learning-rate schedule, checkpoints, logs, resume after interruption, and `fit`."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass

import keras
import tensorflow as tf

from hpa_tf.atomic import write_json_atomic
from hpa_tf.config import PRECISIONS, RunConfig
from hpa_tf.data import pipeline
from hpa_tf.data.synthetic import ensure_demo
from hpa_tf.errors import TrainingSetupError
from hpa_tf.layout import DataLayout, RunLayout
from hpa_tf.models.backbones import check_backbone
from hpa_tf.output import keras_verbose
from hpa_tf.schedules import learning_rate
from hpa_tf.training.callbacks import EpochCheckpoints, ResumingCSVLogger, read_log

log = logging.getLogger(__name__)
ADAM_EPSILON = 1e-8  # PyTorch's default (Keras' is 1e-7), spec 8.1


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


def _check_caches(layout: DataLayout, img_size: int, tfrecords: bool) -> None:
    """Fail early, naming the prepare command, when the resize cache (or TFRecords) of img_size is absent."""
    marker = layout.tfrecord_dir("train", img_size) if tfrecords else layout.cache_manifest(img_size)
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


def data_layout(config: RunConfig, progress: bool = True) -> DataLayout:
    """The dataset of a run: its data_dir, else the synthetic demo (generated and prepared when missing)."""
    return DataLayout(config.data_dir if config.data_dir else ensure_demo(config.img_size, progress))


def start_session(config: RunConfig, progress: bool = True) -> Session:
    """Validate the config, set precision and seeds, make the strategy and find the prepared data (the
    synthetic demo is generated and prepared when no data_dir is given)."""
    config.validate()
    check_backbone(config.backbone, config.weights)
    keras.config.set_dtype_policy(PRECISIONS[config.precision])
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    layout = data_layout(config, progress)
    _check_caches(layout, config.img_size, config.tfrecords)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise TrainingSetupError(f"--batch-size {config.batch_size} is not divisible by the "
                                 f"{strategy.num_replicas_in_sync} replicas")
    return Session(strategy, layout, *worker_role(strategy))


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


def finished_run(run: RunLayout, epochs: int) -> dict | None:
    """The summary of the run in `run` when it is finished (no backup/, best.weights.h5 and best.json
    present, every epoch of its config.json, else `epochs`, in log.csv); None otherwise."""
    if run.backup.exists() or not all(p.is_file() for p in (run.log, run.best_weights, run.best_state)):
        return None
    if run.config_json.is_file():
        epochs = run.read_config().epochs
    if not set(range(epochs)) <= set(read_log(run.log)[1]):
        return None
    best = json.loads(run.best_state.read_text())
    summary = {"folder": str(run.root), "best_epoch": int(best["epoch"]),
               "best_weights": str(run.best_weights), "optimizer_steps": 0, "epochs": epochs,
               "already_finished": True, **best}
    if run.curves.is_file():
        summary["curves"] = str(run.curves)
    return summary


def clear_run(run: RunLayout) -> None:
    """Delete a run's own files from its folder (RunLayout.is_run_file); anything else there, other
    workers' scratch folders included, stays."""
    if not run.root.is_dir():
        return
    for path in run.root.iterdir():
        if run.is_run_file(path):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def begin_run(config: RunConfig, session: Session, run: RunLayout, monitor: str, restart: bool = False
              ) -> dict | None:
    """Before building anything: with `restart`, delete the run's files (this worker's own scratch copy
    on a worker that is not the chief) so that it trains anew; otherwise, when `run` holds a finished
    run, log one line saying so and return its summary (None: train, or resume)."""
    if restart:
        if session.chief:
            clear_run(run)
        else:
            shutil.rmtree(run.scratch(session.worker).root, ignore_errors=True)
        return None
    summary = finished_run(run, config.epochs)
    if summary is not None:
        log.info(f"{run.root} holds a finished run: best epoch {summary['best_epoch']} of "
                 f"{summary['epochs']} ({monitor} {float(summary.get(monitor, float('nan'))):.4f}, "
                 f"{summary['best_weights']}); nothing to train. To train it again, rerun with --restart "
                 "(deletes its files) or --run NAME (a new folder)")
    return summary


def fit_run(config: RunConfig, session: Session, trainer: keras.Model, train_ds, valid_ds, run: RunLayout,
            monitor: str, mode: str, description: str, callbacks=(), progress: bool = True) -> dict:
    """Fit with the schedule, per-epoch and best checkpoints (by `monitor`, `mode` min or max), CSV log
    (drawn as training_curves.png at the end), TensorBoard and BackupAndRestore (a rerun resumes); returns
    the summary of the best epoch."""
    files = run if session.chief else run.scratch(session.worker)  # a worker's copy is thrown away
    files.root.mkdir(parents=True, exist_ok=True)
    if session.chief:
        write_json_atomic({**dataclasses.asdict(config), "data_dir": str(session.layout.root),
                           "replicas": session.replicas}, run.config_json)
    log.info(f"{description}; {session.replicas} replica(s), {config.epochs} epochs of {config.schedule}; "
             f"files in {run.root}")
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: learning_rate(config.schedule, epoch + 1, config.epochs, config.lr_scale))
    verbose = keras_verbose(config.verbose, progress)
    # Keras' own epoch line shows the same figures when its progress output is on.
    checkpoints = EpochCheckpoints(trainer.net, files, monitor=monitor, mode=mode,
                                   report=session.chief and verbose == 0)
    # The order matters when a run is killed: an epoch's checkpoints, then its log row, then its backup;
    # a rerun resumes from the backup and drops the later row and best choice (ResumingCSVLogger,
    # EpochCheckpoints).
    fit_callbacks = [schedule, *callbacks, checkpoints, ResumingCSVLogger(files.log),
                     keras.callbacks.TensorBoard(str(files.tensorboard)),
                     keras.callbacks.BackupAndRestore(str(files.backup), double_checkpoint=True)]
    trainer.fit(train_ds, validation_data=valid_ds, epochs=config.epochs, callbacks=fit_callbacks,
                shuffle=False, verbose=verbose)
    if not session.chief:
        shutil.rmtree(files.root, ignore_errors=True)
    summary = {"folder": str(run.root), "best_epoch": checkpoints.best_epoch,
               "best_weights": str(run.best_weights),
               "optimizer_steps": int(trainer.optimizer.iterations.numpy())}
    if session.chief and run.best_state.is_file():
        summary.update(json.loads(run.best_state.read_text()))
    if session.chief and run.log.is_file():
        from hpa_tf.viz import training_curves  # matplotlib, only once a run has a log to draw

        summary["curves"] = str(training_curves(run.log, run.curves, str(run.root)))
    return summary
