"""Classifier training (spec 8.1): one fold, selected by the whole-split validation focal loss."""

from __future__ import annotations

import functools
from pathlib import Path

from hpa_tf.config import FOLD_FAMILIES, ClassifierConfig
from hpa_tf.data import device_augment, pipeline
from hpa_tf.errors import TrainingSetupError
from hpa_tf.layout import DataLayout, RunLayout
from hpa_tf.losses import classifier_loss
from hpa_tf.models.loading import build_run_model
from hpa_tf.training.loop import Session, adam, begin_run, fit_run, start_session, training_dataset
from hpa_tf.training.split_metrics import ElementAccuracy, SplitFocalLoss, SplitMacroF1
from hpa_tf.training.trainer import GlobalBatchTrainer


def split_frames(layout: DataLayout, split: str, fold: int):
    """(train, valid) rows of fold `fold` of a prepared split (spec 3.1, 3.2)."""
    folder = FOLD_FAMILIES[split]
    return tuple(layout.read_split(f"{folder}/random_{part}_cv{fold}.csv") for part in ("train", "valid"))


def run_folder(config: ClassifierConfig) -> RunLayout:
    """Where a run's checkpoints and logs go: out_dir/run/fold<k>."""
    return RunLayout(Path(config.out_dir) / config.run_name / f"fold{config.fold}")


def build_trainer(config: ClassifierConfig, layout: DataLayout) -> GlobalBatchTrainer:
    """The classifier (normalised with the dataset's stats.json) wrapped for global-batch training and
    compiled; call inside the strategy's scope."""
    net = build_run_model(config, config.weights, layout)
    prepare = None
    if config.device_augment:
        prepare = functools.partial(device_augment.apply_plans, img_size=config.img_size,
                                    crop_size=config.crop_size)
    trainer = GlobalBatchTrainer(net, classifier_loss, clipnorm=config.clipnorm,
                                 eval_metrics=[SplitFocalLoss(), SplitMacroF1(), ElementAccuracy()],
                                 prepare=prepare)
    trainer.compile(adam(config), jit_compile=config.jit)
    return trainer


def train_classifier(config: ClassifierConfig, callbacks=(), progress: bool = True,
                     restart: bool = False) -> dict:
    """Train one fold; rerunning the same command after an interruption resumes at the last finished
    epoch, and after the run finished reports it without training (`restart`: delete the run's files and
    train anew). Returns a summary: folder, best epoch and its validation figures."""
    session: Session = start_session(config, progress)
    train, valid = split_frames(session.layout, config.split, config.fold)
    if len(train) < config.batch_size:
        raise TrainingSetupError(f"fold {config.fold} has {len(train)} training images, fewer than one "
                                 f"batch of {config.batch_size}")
    folder = run_folder(config)
    finished = begin_run(config, session, folder, "val_focal", restart)
    if finished is not None:
        return finished
    source = session.source(config)
    train_ds = training_dataset(session, pipeline.train_dataset, source, train, config.crop_size,
                                config.batch_size, seed=config.seed, on_device=config.device_augment)
    # Validation stays one global-batch pipeline: Keras splits its batches, the last one included.
    valid_ds = pipeline.valid_dataset(source, valid, config.crop_size, config.batch_size,
                                      on_device=config.device_augment)
    with session.strategy.scope():
        trainer = build_trainer(config, session.layout)
    description = (f"training {config.backbone} fold {config.fold}: {len(train)} train / {len(valid)} valid "
                   f"images of {session.layout.root}, {config.img_size} -> {config.crop_size} px, batch "
                   f"{config.batch_size}")
    return fit_run(config, session, trainer, train_ds, valid_ds, folder, "val_focal", "min",
                   description, callbacks, progress)
