"""Metric learning (spec 8.2): the embedder + ArcMarginProduct trained with ArcFace on antibody codes
of the "tr" antibody split, selected by validation MAP@5; nearest-neighbour accuracy per epoch
(spec 10.4) and embedding extraction."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from hpa_tf.config import MetricConfig, metric_config
from hpa_tf.data import pipeline
from hpa_tf.data.layout import DataLayout
from hpa_tf.embeddings import nearest_neighbour_accuracy, save_embeddings
from hpa_tf.losses import arcface_loss
from hpa_tf.models.checkpoint import load_checkpoint
from hpa_tf.models.metric import ArcMarginProduct, build_embedder
from hpa_tf.training.loop import (
    Session,
    TrainingSetupError,
    adam,
    begin_run,
    fit_run,
    read_split,
    start_session,
    training_dataset,
)
from hpa_tf.training.split_metrics import RankHits
from hpa_tf.training.trainer import GlobalBatchTrainer

TRAIN_SPLIT = "external_tr_trainset_antibody_split.csv"
VALID_SPLIT = "external_tr_validset_antibody_split.csv"
# Extraction sets of spec 10.4 (split file, Kaggle image folder); None: the test Ids of sample_submission.
# "kaggle" (all Kaggle train images, meta/train_meta.csv) is ours: the label-noise report's second pool.
EXTRACT_SETS = {"test": (None, "test"), "kaggle": ("train_meta.csv", "train"),
                "ext": ("external_antibody_split.csv", "train"),
                "train": ("external_trainset_antibody_split.csv", "train"),
                "val": ("external_validset_antibody_split.csv", "train")}


def run_folder(config: MetricConfig) -> Path:
    """Where a metric run's checkpoints and logs go: out_dir/run, default run metric_<profile> (no fold
    level, spec 8.2)."""
    return Path(config.out_dir) / config.run_name


def number_of_classes(layout) -> int:
    """Antibody classes: one more than the largest code of the split of all HPAv18 images."""
    return int(read_split(layout, "external_antibody_split.csv")["antibody_code"].max()) + 1


def build_network(config: MetricConfig, classes: int) -> keras.Model:
    """images -> cosines to the antibody classes: the embedder (layer 'embedder') then ArcMarginProduct."""
    embedder = build_embedder(config.backbone, weights=config.weights, embedding_dim=config.embedding_dim,
                              dropout=config.dropout, sync_bn=config.sync_bn)
    images = keras.Input((None, None, 4), name="images")
    cosine = ArcMarginProduct(classes, name="arc_margin")(embedder(images))
    return keras.Model(images, cosine, name="metric_net")


def load_embedder(config: MetricConfig, layout, checkpoint: Path) -> keras.Model:
    """The trained embedder of a metric run: its network rebuilt for the dataset's antibody classes with
    `checkpoint` loaded (TrainingSetupError naming the file when it is missing, ModelError when it does
    not load)."""
    if not checkpoint.is_file():
        raise TrainingSetupError(f"checkpoint {checkpoint} not found: train first (python train_metric.py)")
    net = load_checkpoint(build_network(config, number_of_classes(layout)), checkpoint,
                          "python train_metric.py --restart")
    return net.get_layer("embedder")


def metric_run_config(metric_run: str | Path) -> MetricConfig:
    """A metric run's config, replayed from its config.json through its profile (TrainingSetupError
    naming the file when it is missing)."""
    path = Path(metric_run) / "config.json"
    if not path.is_file():
        raise TrainingSetupError(f"{path} not found: train the metric model first (python train_metric.py)")
    saved = json.loads(path.read_text())
    return metric_config(saved["profile"], **{k: v for k, v in saved.items()
                                              if k not in ("profile", "replicas")})


def load_metric_run(metric_run: str | Path, weights: str = "best.weights.h5"
                    ) -> tuple[keras.Model, MetricConfig]:
    """(the trained embedder, its config) of a metric run folder."""
    config = metric_run_config(metric_run)
    return load_embedder(config, DataLayout(config.data_dir), Path(metric_run) / weights), config


def _frame(session: Session, name: str | None) -> pd.DataFrame:
    """A split file, or the Kaggle images of sample_submission (None) / train_meta.csv with no antibody
    (code -1)."""
    if name is None:
        path = session.layout.sample_submission_csv
    elif name == "train_meta.csv":
        path = session.layout.meta_dir / name
    else:
        return read_split(session.layout, name)
    if not path.is_file():
        raise TrainingSetupError(f"missing {path}: run `python -m hpa_tf.data.prepare --data-dir "
                                 f"{session.layout.root}` first")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)[["Id"]]
    return frame.assign(External="False", antibody_code=-1)


def embed(embedder: keras.Model, session: Session, config: MetricConfig, frame: pd.DataFrame,
          kaggle_split: str = "train", batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
    """[N, D] float32 embeddings of a frame's images, in frame order (one pass, no TTA: spec 10.4); a
    cache image TF cannot decode is named."""
    source = pipeline.Source(session.layout, config.img_size, kaggle_split, config.tfrecords)
    images = pipeline.metric_dataset(source, frame, batch_size or config.batch_size, training=False)
    try:
        return embedder.predict(images.map(lambda x, y: x), verbose=verbose).astype(np.float32)
    except tf.errors.InvalidArgumentError as error:
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


def train_metric(config: MetricConfig, callbacks=(), progress: bool = True, restart: bool = False) -> dict:
    """Train the metric model; a rerun after an interruption resumes, and after the run finished reports
    it without training (`restart`: delete the run's files and train anew). Returns the best epoch's
    summary."""
    session = start_session(config, progress)
    train, valid = read_split(session.layout, TRAIN_SPLIT), read_split(session.layout, VALID_SPLIT)
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
        net = build_network(config, classes)
        loss = functools.partial(arcface_loss, s=config.arc_scale, m=config.arc_margin)
        trainer = GlobalBatchTrainer(net, loss, clipnorm=config.clipnorm, gather=False,
                                     eval_metrics=[RankHits("top1"), RankHits("top5"), RankHits("map5")])
        trainer.compile(adam(config), jit_compile=config.jit)
    extra = list(callbacks)
    if config.nn_every and session.worker == "chief":  # predict() is not run under several workers
        embedder = net.get_layer("embedder")
        nn_train, nn_valid = (read_split(session.layout, EXTRACT_SETS[name][0]) for name in ("train", "val"))
        extra.insert(0, NeighbourAccuracy(lambda frame: embed(embedder, session, config, frame),
                                          nn_train, nn_valid, config.nn_every))
    description = (f"training the {config.backbone} embedder on {classes} antibodies: {len(train)} train / "
                   f"{len(valid)} valid images of {session.layout.root} at {config.img_size} px, batch "
                   f"{config.batch_size}")
    return fit_run(config, session, trainer, train_ds, valid_ds, folder, "val_map5", "max",
                   description, extra, progress)


def extract(config: MetricConfig, sets: list[str], weights: str = "best.weights.h5",
            progress: bool = True, folder: str | Path | None = None) -> list[Path]:
    """Write `embeddings_<set>.npz` (feats [N, D] float32, ids) for each named set of EXTRACT_SETS into the
    run folder (`folder`, default the config's), from the run's checkpoint `weights`."""
    unknown = [s for s in sets if s not in EXTRACT_SETS]
    if unknown:
        raise TrainingSetupError(f"unknown extraction set(s) {unknown}; choose from {sorted(EXTRACT_SETS)}")
    config = dataclasses.replace(config, strategy="default")  # one device; the caller's config untouched
    folder = Path(folder) if folder is not None else run_folder(config)
    if not (folder / weights).is_file():  # before any data work (the demo data may not exist yet)
        raise TrainingSetupError(f"checkpoint {folder / weights} not found: train first "
                                 "(python train_metric.py)")
    session = start_session(config, progress)
    embedder = load_embedder(config, session.layout, folder / weights)
    written = []
    for name in sets:
        split_file, kaggle_split = EXTRACT_SETS[name]
        frame = _frame(session, split_file)
        feats = embed(embedder, session, config, frame, kaggle_split, verbose=1 if progress else 0)
        written.append(save_embeddings(folder / f"embeddings_{name}.npz", feats, frame["Id"]))
        print(f"{name}: {len(frame)} embeddings of dimension {feats.shape[1]} -> {written[-1]}", flush=True)
    return written


def ensure_embeddings(metric_run: str | Path, sets: list[str], weights: str = "best.weights.h5",
                      progress: bool = True) -> list[Path]:
    """The metric run's `embeddings_<set>.npz` files, extracted first where one is missing or older than
    the checkpoint `weights` (so inference needs no separate --extract step)."""
    folder = Path(metric_run)
    checkpoint = folder / weights
    paths = [folder / f"embeddings_{name}.npz" for name in sets]
    missing = [path for path in paths if not path.is_file()]
    if not checkpoint.is_file():
        if missing:
            raise TrainingSetupError(f"{missing[0]} not found, nor the checkpoint {checkpoint} to extract it "
                                     "from: train the metric model first (python train_metric.py)")
        return paths  # embeddings without their checkpoint: used as they are
    stale = [name for name, path in zip(sets, paths, strict=True)
             if path in missing or path.stat().st_mtime < checkpoint.stat().st_mtime]
    if stale:
        print(f"extracting embeddings {', '.join(stale)} of {folder} (missing or older than {weights})",
              flush=True)
        extract(metric_run_config(folder), stale, weights, progress, folder)
    return paths
