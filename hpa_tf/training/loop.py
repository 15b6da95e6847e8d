"""The classifier training run (spec 8.1): strategy, precision, data, model, optimizer, callbacks, fit."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from hpa_tf.atomic import write_json_atomic
from hpa_tf.config import PRECISIONS, SPLITS, ClassifierConfig
from hpa_tf.data import pipeline
from hpa_tf.data.layout import DataLayout
from hpa_tf.losses import classifier_loss
from hpa_tf.models.classifier import build_classifier, load_stats
from hpa_tf.training.callbacks import EpochCheckpoints
from hpa_tf.training.schedules import learning_rate
from hpa_tf.training.split_metrics import ElementAccuracy, SplitFocalLoss, SplitMacroF1
from hpa_tf.training.trainer import GlobalBatchTrainer

ADAM_EPSILON = 1e-8  # PyTorch's default (Keras' is 1e-7), spec 8.1


class TrainingSetupError(ValueError):
    """Missing prepared data or an impossible setting, found before training starts."""


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: MirroredStrategy over all GPUs when there are several, else the default strategy;
    mirrored: MirroredStrategy over all local GPUs (or logical CPUs); multiworker: MultiWorkerMirroredStrategy
    configured from TF_CONFIG."""
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


def split_frames(layout: DataLayout, split: str, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) rows of fold `fold` of a prepared split (spec 3.1, 3.2)."""
    folder = layout.split_dir / SPLITS[split]
    paths = [folder / f"random_{part}_cv{fold}.csv" for part in ("train", "valid")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TrainingSetupError(f"missing split files {missing}: run "
                                 f"`python -m hpa_tf.data.prepare --data-dir {layout.root}` first")
    return tuple(pd.read_csv(p, dtype={"Id": str, "Target": str}, keep_default_na=False) for p in paths)


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


def _datasets(config: ClassifierConfig, layout: DataLayout, strategy: tf.distribute.Strategy):
    """(train, valid, number of train and valid images): per-replica input pipelines for training,
    one global-batch pipeline for validation (Keras splits its batches, the last one included)."""
    train, valid = split_frames(layout, config.split, config.fold)
    if len(train) < config.batch_size:
        raise TrainingSetupError(f"fold {config.fold} has {len(train)} training images, fewer than one "
                                 f"batch of {config.batch_size}")
    if config.batch_size % strategy.num_replicas_in_sync:
        raise TrainingSetupError(f"--batch-size {config.batch_size} is not divisible by the "
                                 f"{strategy.num_replicas_in_sync} replicas")
    source = pipeline.Source(layout, config.img_size, "train", config.tfrecords)
    args = (source, train, config.crop_size, config.batch_size)
    if strategy.num_replicas_in_sync > 1:
        train_ds = strategy.distribute_datasets_from_function(
            pipeline.dataset_fn(pipeline.train_dataset, *args, seed=config.seed))
    else:
        train_ds = pipeline.train_dataset(*args, seed=config.seed)
    valid_ds = pipeline.valid_dataset(source, valid, config.crop_size, config.batch_size)
    return train_ds, valid_ds, len(train), len(valid)


def build_trainer(config: ClassifierConfig, mean, std) -> GlobalBatchTrainer:
    """The classifier wrapped for global-batch training, compiled with Adam (eps 1e-8, no weight decay);
    call inside the strategy's scope."""
    net = build_classifier(config.backbone, weights=config.weights, large=config.large, mean=mean, std=std,
                           dropout=config.dropout, sync_bn=config.sync_bn)
    trainer = GlobalBatchTrainer(net, classifier_loss, clipnorm=config.clipnorm,
                                 eval_metrics=[SplitFocalLoss(), SplitMacroF1(), ElementAccuracy()])
    first_lr = learning_rate(config.schedule, 1, config.epochs, config.lr_scale)
    trainer.compile(keras.optimizers.Adam(first_lr, epsilon=ADAM_EPSILON), jit_compile=config.jit)
    return trainer


def run_folder(config: ClassifierConfig) -> Path:
    """Where a run's checkpoints and logs go: out_dir/run/fold<k>."""
    return Path(config.out_dir) / config.run_name / f"fold{config.fold}"


def train_classifier(config: ClassifierConfig, callbacks=(), progress: bool = True) -> dict:
    """Train one fold; rerunning the same command after an interruption resumes at the last finished
    epoch. Returns a summary: folder, best epoch and its validation figures."""
    config.validate()
    keras.config.set_dtype_policy(PRECISIONS[config.precision])
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    data_dir = Path(config.data_dir) if config.data_dir else demo_data_dir(config.img_size, progress)
    layout = DataLayout(data_dir)
    _check_caches(layout, config.img_size, config.tfrecords)
    stats = layout.meta_dir / "stats.json"
    mean, std = load_stats(stats if stats.is_file() else None)
    train_ds, valid_ds, n_train, n_valid = _datasets(config, layout, strategy)

    chief, worker = worker_role(strategy)
    folder = run_folder(config)
    files = folder if chief else folder / f".scratch-{worker}"  # other workers' copies are thrown away
    files.mkdir(parents=True, exist_ok=True)
    if chief:
        write_json_atomic({**dataclasses.asdict(config), "data_dir": str(data_dir),
                           "replicas": strategy.num_replicas_in_sync}, folder / "config.json")
    print(f"training {config.backbone} fold {config.fold}: {n_train} train / {n_valid} valid images of "
          f"{data_dir}, {config.img_size} -> {config.crop_size} px, batch {config.batch_size} over "
          f"{strategy.num_replicas_in_sync} replica(s), {config.epochs} epochs of {config.schedule}; "
          f"files in {folder}", flush=True)

    with strategy.scope():
        trainer = build_trainer(config, mean, std)
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: learning_rate(config.schedule, epoch + 1, config.epochs, config.lr_scale))
    verbose = config.verbose if progress else 0
    # Keras' own epoch line shows the same figures when its progress output is on.
    checkpoints = EpochCheckpoints(trainer.net, files, report=chief and verbose == 0)
    fit_callbacks = [schedule, checkpoints, *callbacks,
                     keras.callbacks.CSVLogger(str(files / "log.csv"), append=True),
                     keras.callbacks.TensorBoard(str(files / "tensorboard")),
                     keras.callbacks.BackupAndRestore(str(files / "backup"), double_checkpoint=True)]
    trainer.fit(train_ds, validation_data=valid_ds, epochs=config.epochs, callbacks=fit_callbacks,
                shuffle=False, verbose=verbose)
    if not chief:
        shutil.rmtree(files, ignore_errors=True)
    summary = {"folder": str(folder), "best_epoch": checkpoints.best_epoch,
               "best_weights": str(folder / "best.weights.h5"),
               "optimizer_steps": int(trainer.optimizer.iterations.numpy())}
    best_state = folder / "best.json"
    if chief and best_state.is_file():
        summary.update(json.loads(best_state.read_text()))
    return summary
