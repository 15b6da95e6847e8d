"""Metric learning (spec 8.2): the embedder + ArcMarginProduct trained with ArcFace on antibody codes
of the "tr" antibody split, selected by validation MAP@5; nearest-neighbour accuracy per epoch
(spec 10.4) and embedding extraction."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from hpa_tf.config import ClassifierConfig, EmbedderConfig
from hpa_tf.data import pipeline
from hpa_tf.embeddings import load_embeddings, nearest_neighbour_accuracy, save_embeddings
from hpa_tf.errors import EmbeddingFileError, TrainingSetupError
from hpa_tf.layout import DataLayout, RunLayout, read_table, run_dataset
from hpa_tf.losses import arcface_loss
from hpa_tf.models.embedder import number_of_classes
from hpa_tf.models.loading import build_run_model, load_embedder, load_run
from hpa_tf.output import keras_verbose
from hpa_tf.training.loop import (
    Session,
    adam,
    begin_run,
    fit_run,
    start_session,
    training_dataset,
)
from hpa_tf.training.split_metrics import RankHits
from hpa_tf.training.trainer import GlobalBatchTrainer

log = logging.getLogger(__name__)
TRAIN_SPLIT = "external_tr_trainset_antibody_split.csv"
VALID_SPLIT = "external_tr_validset_antibody_split.csv"
# Extraction sets of spec 10.4 (split file, Kaggle image folder); None: the test Ids of sample_submission.
# "kaggle" (all Kaggle train images, meta/train_meta.csv) is ours: the label-noise report's second pool.
EXTRACT_SETS = {"test": (None, "test"), "kaggle": ("train_meta.csv", "train"),
                "ext": ("external_antibody_split.csv", "train"),
                "train": ("external_trainset_antibody_split.csv", "train"),
                "val": ("external_validset_antibody_split.csv", "train")}


def run_folder(config: EmbedderConfig) -> RunLayout:
    """Where a metric run's checkpoints and logs go: out_dir/run, default run metric_<profile> (no fold
    level, spec 8.2)."""
    return RunLayout(Path(config.out_dir) / config.run_name)


def _frame(layout: DataLayout, name: str | None) -> pd.DataFrame:
    """A split file, or the Kaggle images of sample_submission (None) / train_meta.csv with no antibody
    (code -1)."""
    if name is not None and name != "train_meta.csv":
        return layout.read_split(name)
    if name is None:
        if not layout.sample_submission_csv.is_file():
            raise TrainingSetupError(f"missing {layout.sample_submission_csv}")
        frame = read_table(layout.sample_submission_csv, ["Id"])
    else:
        frame = layout.read_meta(name)
    return frame[["Id"]].assign(External="False", antibody_code=-1)


def embed(embedder: keras.Model, session: Session, config: EmbedderConfig, frame: pd.DataFrame,
          kaggle_split: str = "train", batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
    """[N, D] float32 embeddings of a frame's images, in frame order (one pass, no TTA: spec 10.4); a
    cache image TF cannot decode is named."""
    source = pipeline.Source(session.layout, config.img_size, kaggle_split, config.tfrecords)
    images = pipeline.metric_dataset(source, frame, batch_size or config.batch_size, training=False)
    try:
        return embedder.predict(images.map(lambda x, y: x), verbose=verbose).astype(np.float32)
    except pipeline.READ_ERRORS as error:
        raise pipeline.unreadable_image(source, frame, error) from None


class NeighbourAccuracy(keras.callbacks.Callback):
    """Every `every` epochs, logs `val_nn_top1`: for each antibody-val image the most similar
    antibody-train image (spec 10.4, each set standardised on its own) has the same antibody."""

    def __init__(self, embed_frame, train: pd.DataFrame, valid: pd.DataFrame, every: int = 1):
        super().__init__()
        self.embed_frame, self.train, self.valid, self.every = embed_frame, train, valid, every

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        logs["val_nn_top1"] = nearest_neighbour_accuracy(
            self.embed_frame(self.valid), self.valid["antibody_code"].to_numpy(),
            self.embed_frame(self.train), self.train["antibody_code"].to_numpy())


def start_from_classifier(embedder: keras.Model, config: EmbedderConfig) -> None:
    """Copy the backbone of the trained classifier fold `config.init_from` (under out_dir, or a path) into
    the embedder's; without one, log that the embedder starts from its --weights instead."""
    folder = Path(config.out_dir) / config.init_from  # an absolute init_from replaces out_dir
    if not RunLayout(folder).weights(RunLayout.BEST_WEIGHTS).is_file():
        log.warning(f"no trained classifier in {folder} to start the embedder from: it starts from "
                    f"{config.weights or 'random'} weights (train the classifier first, "
                    f"{ClassifierConfig.command} --fold 0, or pass --init-from none)")
        return
    classifier, trained = load_run(folder, kind=ClassifierConfig)
    if trained.backbone != config.backbone:
        raise TrainingSetupError(f"--init-from {folder} trained a {trained.backbone}, not the embedder's "
                                 f"{config.backbone}")
    embedder.get_layer(config.backbone).set_weights(classifier.get_layer(trained.backbone).get_weights())
    log.info(f"the embedder's {config.backbone} starts from the classifier's in {folder}")


def train_embedder(config: EmbedderConfig, callbacks=(), progress: bool = True, restart: bool = False
                   ) -> dict:
    """Train the metric model; a rerun after an interruption resumes, and after the run finished reports
    it without training (`restart`: delete the run's files and train anew). Returns the best epoch's
    summary."""
    session = start_session(config, progress)
    train, valid = session.layout.read_split(TRAIN_SPLIT), session.layout.read_split(VALID_SPLIT)
    if len(train) < config.batch_size:
        raise TrainingSetupError(f"{TRAIN_SPLIT} has {len(train)} rows, fewer than one batch of "
                                 f"{config.batch_size}")
    if valid.empty:  # no val_map5 to choose the best epoch by
        raise TrainingSetupError(
            f"{session.layout.split_dir / VALID_SPLIT} has no rows: the antibody validation split is empty "
            "(every antibody has fewer than 4 HPAv18 images; an antibody gives a quarter of its images to "
            "validation, spec 3.3), so no epoch can be chosen by validation MAP@5")
    folder = run_folder(config)
    finished = begin_run(config, session, folder, "val_map5", restart)
    if finished is not None:
        return finished
    classes = number_of_classes(session.layout)
    source = session.source(config)
    train_ds = training_dataset(session, pipeline.metric_dataset, source, train, config.batch_size,
                                training=True, seed=config.seed)
    valid_ds = pipeline.metric_dataset(source, valid, config.batch_size, training=False)
    with session.strategy.scope():
        net = build_run_model(config, config.weights, session.layout)
        if config.init_from:
            start_from_classifier(net.get_layer("embedder"), config)
        loss = functools.partial(arcface_loss, s=config.arc_scale, m=config.arc_margin)
        trainer = GlobalBatchTrainer(net, loss, clipnorm=config.clipnorm, gather=False,
                                     eval_metrics=[RankHits("top1"), RankHits("top5"), RankHits("map5")])
        trainer.compile(adam(config), jit_compile=config.jit)
    extra = list(callbacks)
    if config.nn_every and session.worker == "chief":  # predict() is not run under several workers
        embedder = net.get_layer("embedder")
        nn_train, nn_valid = (session.layout.read_split(EXTRACT_SETS[name][0]) for name in ("train", "val"))
        extra.insert(0, NeighbourAccuracy(lambda frame: embed(embedder, session, config, frame),
                                          nn_train, nn_valid, config.nn_every))
    description = (f"training the {config.backbone} embedder on {classes} antibodies: {len(train)} train / "
                   f"{len(valid)} valid images of {session.layout.root} at {config.img_size} px, batch "
                   f"{config.batch_size}")
    return fit_run(config, session, trainer, train_ds, valid_ds, folder, "val_map5", "max",
                   description, extra, progress)


def extract(folder: str | Path | RunLayout, sets: list[str], weights: str = RunLayout.BEST_WEIGHTS,
            progress: bool = True, data_dir: str | Path | None = None) -> list[Path]:
    """Write `embeddings_<set>.npz` (feats [N, D] float32, ids) for each named set of EXTRACT_SETS into a
    metric run's folder, from its checkpoint `weights`, with the run's own settings (config.json), of the
    images of `data_dir` (default: the run's dataset; an imported run names none)."""
    unknown = [s for s in sets if s not in EXTRACT_SETS]
    if unknown:
        raise TrainingSetupError(f"unknown extraction set(s) {unknown}; choose from {sorted(EXTRACT_SETS)}")
    run = folder if isinstance(folder, RunLayout) else RunLayout(folder)
    embedder, config = load_embedder(run.root, weights)  # before any data work: fails early
    data_dir = str(data_dir) if data_dir is not None else str(run_dataset(config).root)
    config = dataclasses.replace(config, strategy="default", data_dir=data_dir)  # one device
    session = start_session(config, progress)
    written = []
    for name in sets:
        split_file, kaggle_split = EXTRACT_SETS[name]
        frame = _frame(session.layout, split_file)
        feats = embed(embedder, session, config, frame, kaggle_split, verbose=keras_verbose("auto", progress))
        written.append(save_embeddings(run.embeddings(name), feats, frame["Id"]))
        log.info(f"{name}: {len(frame)} embeddings of dimension {feats.shape[1]} -> {written[-1]}")
    return written


def ensure_embeddings(metric_run: str | Path, sets: list[str], weights: str = RunLayout.BEST_WEIGHTS,
                      progress: bool = True, data_dir: str | Path | None = None) -> list[Path]:
    """The metric run's `embeddings_<set>.npz` files, extracted first from the checkpoint `weights` (images
    of `data_dir`, else of the run's dataset) where one is missing, older than it, damaged or of other
    images than its set's (so inference needs no separate --extract step); one log line says which and
    why."""
    run = RunLayout(metric_run)
    checkpoint = run.weights(weights)
    paths = [run.embeddings(name) for name in sets]
    if not checkpoint.is_file():
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise TrainingSetupError(f"{missing[0]} not found, nor the checkpoint {checkpoint} to extract it "
                                     f"from: train the metric model first ({EmbedderConfig.command})")
        return paths  # embeddings without their checkpoint: used as they are
    layout, stale, damaged = None, [], []
    for name, path in zip(sets, paths, strict=True):
        if not path.is_file() or path.stat().st_mtime < checkpoint.stat().st_mtime:
            stale.append(name)
            continue
        layout = layout or (DataLayout(data_dir) if data_dir is not None else
                            run_dataset(run.read_config(EmbedderConfig)))
        problem = _problem(path, _frame(layout, EXTRACT_SETS[name][0])["Id"].tolist())
        if problem:
            log.warning(f"{problem}: extracting it again from {checkpoint}")
            damaged.append(name)
    if stale:
        log.info(f"extracting embeddings {', '.join(stale)} of {run.root} (missing or older than {weights})")
    if stale or damaged:
        extract(run, [name for name in sets if name in stale + damaged], weights, progress, data_dir)
    return paths


def _problem(path: Path, ids: list[str]) -> str | None:
    """What is wrong with an embedding file that should hold the embeddings of `ids` in order: damaged (it
    does not load) or another set's; None when nothing is."""
    try:
        saved = load_embeddings(path)[1].tolist()
    except EmbeddingFileError as error:
        return str(error)
    if saved != ids:
        return f"{path} holds {len(saved)} embeddings, not those of its set's {len(ids)} images in order"
    return None
