"""An image's classifier probabilities for the curators' pages and galleries, predicted again only where
no command wrote them: the last submission's for test images, the validation ensemble's out-of-fold ones
for training images, else the folds' serving TTA, computed once and cached beside the classifier run
(layout.PredictionCache)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpa_tf.atomic import write_json_atomic
from hpa_tf.config import ClassifierConfig, InferenceConfig
from hpa_tf.curation.pool import Query
from hpa_tf.data import pipeline
from hpa_tf.errors import HpaTfError
from hpa_tf.inference.postprocess import apply_thresholds
from hpa_tf.inference.predict import read_probabilities, tta_probabilities
from hpa_tf.inference.runs import TrainedRuns, classifier_run
from hpa_tf.inference.submission import serving_record
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.layout import DataLayout, PredictionCache, ProbabilityFiles, SubmissionFiles, ValidationFiles
from hpa_tf.models.loading import load_classifier

log = logging.getLogger(__name__)
SERVING = "the folds' serving TTA"  # the source of a prediction made (and cached) for the page


@dataclass
class Prediction:
    """An image's probabilities [28], the thresholds they are labelled with, and where they come from."""

    probabilities: np.ndarray
    thresholds: np.ndarray
    source: str

    @property
    def labels(self) -> list[int]:
        """The predicted classes: above their thresholds, with the top-1 rule (spec 10.2)."""
        return np.flatnonzero(apply_thresholds(self.probabilities[None], self.thresholds)[0]).tolist()


def query_input(layout: DataLayout, query: Query, config: ClassifierConfig) -> tuple[pipeline.Source,
                                                                                      pd.DataFrame]:
    """(where a fold of `config` reads the query image, its one-row frame)."""
    frame = pd.DataFrame({"Id": [query.image_id], "External": [str(query.kaggle_split == "external")]})
    split = "test" if query.kaggle_split == "test" else "train"
    return pipeline.Source(layout, config.img_size, split, config.tfrecords), frame


def serving_probabilities(folds: list[tuple], layout: DataLayout, query: Query, serving: dict) -> np.ndarray:
    """[28]: the mean over the folds' (model, config) of the TTA the `serving` record names (seed 0: the
    views of the whole image, combined as the exported model combines them, submission.serving_record)."""
    probs = []
    for model, config in folds:
        source, frame = query_input(layout, query, config)
        probs.append(tta_probabilities(model, source, frame, config.crop_size, seeds=(0,),
                                       combine=serving["combine"], views=serving["views"])[0])
    return np.mean(probs, axis=0)


class ImagePredictions:
    """The predictions the pages show: read from the submission's and the validation's probability files
    (each loaded once per version of the file; one older than a fold's checkpoint is not used), else
    predicted with the folds (loaded on first use) and cached."""

    def __init__(self, config: InferenceConfig, runs: TrainedRuns):
        self.config, self.runs = config, runs
        self.cache = PredictionCache(classifier_run(config))
        self.sources = [("submission", SubmissionFiles(config.output)),
                        ("out-of-fold validation", ValidationFiles(config.validation_table))]
        self._tables: dict = {}  # probability file -> (its stat, (row of each Id, probs, thresholds) | None)
        self._folds: list[tuple] | None = None
        self._lock = threading.RLock()  # loading the folds, predicting (one image at a time)

    @property
    def folds(self) -> list[tuple]:
        """The folds' (model, config) pairs, loaded on first use."""
        with self._lock:
            if self._folds is None:
                self._folds = [load_classifier(fold.root) for fold in self.runs.folds]
            return self._folds

    def checkpoints(self) -> list[list]:
        """[fold folder, mtime in ns, size] of each fold's checkpoint: what made a cached prediction."""
        return [[fold.root.name, fold.best_weights.stat().st_mtime_ns, fold.best_weights.stat().st_size]
                for fold in self.runs.folds]

    def _table(self, name: str, files: ProbabilityFiles):
        """(row of each Id, probabilities, thresholds) of a probability file, or None (missing, damaged or
        older than a checkpoint: one log line per version of the file)."""
        path = files.probabilities
        if not path.is_file():
            return None
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        known = self._tables.get(path)
        if known is None or known[0] != stamp:
            table = None
            if stat.st_mtime_ns < max(mtime for _, mtime, _ in self.checkpoints()):
                log.info(f"note: {path} is older than a fold's checkpoint: its {name} probabilities are not "
                         "shown (run the command again)")
            else:
                try:
                    ids, probs, thresholds = read_probabilities(files)
                    table = ({image_id: row for row, image_id in enumerate(ids)}, probs, thresholds)
                except HpaTfError as error:
                    log.warning(f"{error}: its {name} probabilities are not shown")
            known = self._tables[path] = (stamp, table)
        return known[1]

    def load(self) -> None:
        """Read the probability files now (else the first image page reads them)."""
        for name, files in self.sources:
            self._table(name, files)

    def of(self, query: Query) -> Prediction | None:
        """The query's prediction (None without a trained fold): a probability file's row, else the
        cached serving TTA, predicted first where it is missing, damaged or made by other checkpoints."""
        if not self.runs.folds:
            return None
        for name, files in self.sources:
            table = self._table(name, files)
            if table is not None and query.image_id in table[0]:
                return Prediction(table[1][table[0][query.image_id]], table[2], name)
        serving = serving_record(self.config.output)
        key = json.loads(json.dumps({"checkpoints": self.checkpoints(), "combine": serving["combine"],
                                     "views": serving["views"]}))
        probs = self._cached(query, key)
        if probs is None:
            with self._lock:
                probs = self._cached(query, key, quiet=True)  # another request may have just made it
                if probs is None:
                    probs = self._predict(query, key, serving)
        return Prediction(probs, np.asarray(serving["thresholds"]), SERVING)

    def _cached(self, query: Query, key: dict, quiet: bool = False) -> np.ndarray | None:
        """The cached probabilities made with `key`, else None (saying why, unless `quiet`)."""
        path = self.cache.file(query.image_id)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            probs = np.asarray(record["probabilities"], np.float32)
            if probs.shape != (NUM_CLASSES,) or not np.isfinite(probs).all():
                raise ValueError(f"probabilities of shape {probs.shape}, not {NUM_CLASSES} finite numbers")
        except (ValueError, KeyError, TypeError) as error:  # also JSONDecodeError, UnicodeDecodeError
            if not quiet:
                log.warning(f"{path} is damaged ({type(error).__name__}: {error}): predicting "
                            f"{query.image_id} again")
            return None
        if any(record.get(name) != value for name, value in key.items()):
            if not quiet:
                log.info(f"{path} was predicted by other checkpoints or views: predicting {query.image_id} "
                         "again")
            return None
        return probs

    def _predict(self, query: Query, key: dict, serving: dict) -> np.ndarray:
        start = time.perf_counter()
        probs = serving_probabilities(self.folds, self.runs.data, query, serving).astype(np.float32)
        path = self.cache.file(query.image_id)
        write_json_atomic({**key, "probabilities": probs.tolist()}, path)
        log.info(f"{query.image_id} predicted by {len(self.runs.folds)} fold(s) in "
                 f"{time.perf_counter() - start:.1f} s, cached in {path}")
        return probs
