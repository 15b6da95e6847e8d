"""Where every file lives: a dataset (spec section 1), a training run's folder and a submission's side
files; validation of image Ids. No other module spells one of these file names."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hpa_tf.config import RunConfig, saved_config
from hpa_tf.errors import DataError, RunFolderError, TrainingSetupError

COLORS = ("red", "green", "blue", "yellow")  # channel order R, G, B, Y everywhere
KAGGLE_FOLDERS = ("train", "test")  # Kaggle image folders

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # the whole Id (fullmatch: no trailing newline)


def validate_id(image_id: str) -> str:
    """Return image_id if it is safe to put in a file name (letters, digits, '-' and '_' only).

    Raises ValueError naming the Id otherwise (path separators, '..', spaces, empty).
    """
    if not isinstance(image_id, str) or not _ID_PATTERN.fullmatch(image_id):
        raise DataError(
            f"invalid image Id {image_id!r}: only letters, digits, '-' and '_' are allowed"
        )
    return image_id


@dataclass(frozen=True)
class DataLayout:
    """Paths of one dataset root: Kaggle HPA 2018 + HPAv18 in the reference layout."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # raw inputs
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def train_csv(self) -> Path:
        return self.raw_dir / "train.csv"

    @property
    def sample_submission_csv(self) -> Path:
        return self.raw_dir / "sample_submission.csv"

    @property
    def external_csv(self) -> Path:
        return self.raw_dir / "HPAv18RBGY_wodpl.csv"

    @property
    def train_extra_csv(self) -> Path:
        return self.raw_dir / "train_extra.csv"

    @property
    def test_truth_csv(self) -> Path:
        """True test labels; exists for the synthetic dataset only."""
        return self.raw_dir / "test_truth.csv"

    def kaggle_png(self, split: str, image_id: str, color: str) -> Path:
        """Original Kaggle 512 px grayscale PNG (or the synthetic preset's size)."""
        return self.root / _split(split) / "images" / f"{validate_id(image_id)}_{_color(color)}.png"

    def kaggle_tif(self, split: str, image_id: str, color: str) -> Path:
        """Full-size Kaggle TIFF (8- or 16-bit)."""
        return self.root / _split(split) / "tifs" / f"{validate_id(image_id)}_{_color(color)}.tif"

    def external_jpg(self, image_id: str, color: str) -> Path:
        """Raw HPAv18 download: an RGB JPEG holding the channel in one plane (spec 1.3)."""
        return self.root / "external" / "jpg" / f"{validate_id(image_id)}_{_color(color)}.jpg"

    @property
    def external_failed_csv(self) -> Path:
        """The HPAv18 files the last download could not fetch (Id, color, url, reason)."""
        return self.root / "external" / "download_failed.csv"

    # prepared outputs
    def kaggle_cache(self, split: str, image_id: str, color: str, size: int) -> Path:
        """Resize cache of a Kaggle image channel: 8-bit grayscale PNG of size x size (spec 1.2)."""
        return self.root / _split(split) / f"images_{int(size)}" / _file(image_id, color, "png")

    def external_cache(self, image_id: str, color: str, size: int) -> Path:
        """Resize cache of an HPAv18 image channel: grayscale JPEG of size x size (spec 1.3)."""
        return self.root / "train" / f"external_v18_{int(size)}" / _file(image_id, color, "jpg")

    @property
    def meta_dir(self) -> Path:
        return self.root / "meta"

    @property
    def split_dir(self) -> Path:
        return self.root / "split"

    @property
    def stats_json(self) -> Path:
        """RGBY mean and std of the prepared images (spec 4)."""
        return self.meta_dir / "stats.json"

    def cache_manifest(self, size: int) -> Path:
        """What prepare recorded of each resize cache image of `size` px (source fingerprints)."""
        return self.meta_dir / f"cache_manifest_{int(size)}.csv"

    def tfrecord_dir(self, group: str, size: int) -> Path:
        """The TFRecord shards of one group of images at `size` px (prepare --tfrecords)."""
        return self.root / "tfrecords" / f"{group}_{int(size)}"

    def prepare_hint(self) -> str:
        """The command that writes this dataset's prepared files."""
        return f"`python -m hpa_tf.data.prepare --data-dir {self.root}`"

    def read_meta(self, name: str) -> pd.DataFrame:
        """A prepared table `meta/<name>` as strings, or TrainingSetupError naming the prepare command."""
        return _read_prepared(self.meta_dir / name, self, dtype=str)

    def read_split(self, name: str) -> pd.DataFrame:
        """The prepared split CSV `split/<name>` (Id and Target as strings), or TrainingSetupError naming
        the prepare command."""
        return _read_prepared(self.split_dir / name, self, dtype={"Id": str, "Target": str})


def read_table(path: Path, columns: Sequence[str] = (), dtype=str, remedy: str = "", written: bool = False
               ) -> pd.DataFrame:
    """A CSV file (empty cells kept as ""), or DataError naming it when it is not a table (empty, garbled,
    not text), lacks one of `columns` or, `written` by this package (atomic.write_csv_atomic ends every
    table with a newline), is cut short; `remedy` says how to write it again."""
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is damaged ({type(error).__name__}: {str(error).strip()}){remedy}") from None
    if written:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)  # not empty: it parsed
            if handle.read(1) != b"\n":
                raise DataError(f"{path} is damaged (cut short: no newline at its end){remedy}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}{remedy}")
    return frame


def _read_prepared(path: Path, layout: DataLayout, dtype) -> pd.DataFrame:
    if not path.is_file():
        raise TrainingSetupError(f"missing {path}: run {layout.prepare_hint()} first")
    return read_table(path, dtype=dtype, remedy=f": run {layout.prepare_hint()} to write it again",
                      written=True)


WEIGHTS_SUFFIX = ".weights.h5"


@dataclass(frozen=True)
class RunLayout:
    """Every file of one training run folder (OUT/RUN/fold<k> of train_classifier.py, OUT/RUN of
    train_metric.py), and its typed configuration read back."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    CONFIG = "config.json"
    BEST_WEIGHTS = "best" + WEIGHTS_SUFFIX
    BEST_STATE = "best.json"
    LOG = "log.csv"
    CURVES = "training_curves.png"
    CLASS_CHART = "per_class_f1.png"
    BACKUP = "backup"  # BackupAndRestore's folder: present while a run is unfinished
    TENSORBOARD = "tensorboard"
    INDEX = "index_ext"  # the ScaNN index over embeddings_ext.npz
    ORIGINAL = "original.json"  # an imported run's checkpoint of the original (models.import_original)

    @property
    def config_json(self) -> Path:
        return self.root / self.CONFIG

    @property
    def best_weights(self) -> Path:
        """The checkpoint of the best epoch: what inference, export and the galleries load."""
        return self.root / self.BEST_WEIGHTS

    @property
    def best_state(self) -> Path:
        """best.json: the best epoch and its validation figures, kept across resumes."""
        return self.root / self.BEST_STATE

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def curves(self) -> Path:
        return self.root / self.CURVES

    @property
    def class_chart(self) -> Path:
        return self.root / self.CLASS_CHART

    @property
    def backup(self) -> Path:
        return self.root / self.BACKUP

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def index(self) -> Path:
        return self.root / self.INDEX

    @property
    def original(self) -> Path:
        """original.json of a run imported from the original's checkpoint: its file, sha256, epoch, score."""
        return self.root / self.ORIGINAL

    def weights(self, name: str = BEST_WEIGHTS) -> Path:
        """A checkpoint of the run by file name (best.weights.h5, 045.weights.h5, ...)."""
        return self.root / name

    def epoch_weights(self, epoch: int) -> Path:
        """The weights after 1-based `epoch`: `{epoch:03d}.weights.h5`."""
        return self.root / f"{epoch:03d}{WEIGHTS_SUFFIX}"

    def embeddings(self, name: str) -> Path:
        """embeddings_<name>.npz of a metric run (feats, ids: train_metric.py --extract)."""
        return self.root / f"embeddings_{name}.npz"

    def scratch(self, worker: str) -> RunLayout:
        """The scratch run folder of a worker that is not the chief (thrown away after training)."""
        return RunLayout(self.root / f".scratch-{worker}")

    def is_run_file(self, path: Path) -> bool:
        """Whether `path` in the folder is one of the run's own outputs (what a restart deletes): training's
        files, the charts, the epoch checkpoints, the embeddings, the backup, TensorBoard and index
        folders."""
        name = path.name
        if path.is_dir():
            return name in (self.BACKUP, self.TENSORBOARD, self.INDEX)
        epoch = name.endswith(WEIGHTS_SUFFIX) and name[:-len(WEIGHTS_SUFFIX)].isdigit()
        embeddings = name.startswith("embeddings_") and name.endswith(".npz")
        return epoch or embeddings or name in (self.CONFIG, self.LOG, self.BEST_WEIGHTS, self.BEST_STATE,
                                               self.CURVES, self.CLASS_CHART)

    def read_config(self, kind: type[RunConfig] | None = None) -> RunConfig:
        """The run's configuration (ClassifierConfig or EmbedderConfig) from its config.json;
        RunFolderError when it is missing or of another kind than `kind`."""
        command = kind.command if kind else "python train_classifier.py / python train_metric.py"
        if not self.config_json.is_file():
            raise RunFolderError(f"{self.config_json} not found: train this run first ({command})")
        try:
            saved = json.loads(self.config_json.read_text())
            if not isinstance(saved, dict):
                raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        except ValueError as error:  # also JSONDecodeError, UnicodeDecodeError
            raise RunFolderError(f"{self.config_json} is damaged ({type(error).__name__}: {error}): restore "
                                 f"it, or train the run again ({command} --restart)") from None
        config = saved_config(saved)
        if kind is not None and not isinstance(config, kind):
            raise RunFolderError(f"{self.root} holds a {type(config).__name__} run, not a "
                                     f"{kind.__name__} run ({command})")
        return config

    def checkpoint(self, kind: type[RunConfig], name: str = BEST_WEIGHTS) -> Path:
        """The checkpoint `name`, or RunFolderError naming the command that trains it."""
        path = self.weights(name)
        if not path.is_file():
            raise RunFolderError(f"{path} not found: train this run first ({kind.command})")
        return path


def run_dataset(config: RunConfig) -> DataLayout:
    """The dataset a run was trained on (its config's data_dir); RunFolderError for a run that names none:
    one imported from the original's checkpoint, which needs --data-dir."""
    if config.data_dir is None:
        raise RunFolderError(f"the {config.backbone} run (profile {config.profile}) was imported from the "
                             "original's checkpoint and names no dataset: pass --data-dir")
    return DataLayout(config.data_dir)


@dataclass(frozen=True)
class ProbabilityFiles:
    """The probability side files of a command's output file (OUTPUT.prob.npy, .prob_ids.csv,
    .thresholds.npy): what the curators' pages read instead of predicting again."""

    output: Path

    def __init__(self, output: str | Path):
        object.__setattr__(self, "output", Path(output))

    def _side(self, suffix: str) -> Path:
        return self.output.with_suffix(suffix)

    @property
    def probabilities(self) -> Path:
        """OUTPUT.prob.npy: float [N, 28], a row per Id of prob_ids."""
        return self._side(".prob.npy")

    @property
    def prob_ids(self) -> Path:
        """OUTPUT.prob_ids.csv: the Ids of the probability rows, in row order."""
        return self._side(".prob_ids.csv")

    @property
    def thresholds(self) -> Path:
        """OUTPUT.thresholds.npy: the 28 per-class thresholds fitted on these probabilities."""
        return self._side(".thresholds.npy")


class SubmissionFiles(ProbabilityFiles):
    """The submission CSV (`python infer.py --submission --output OUTPUT`) and its side files; its
    probabilities are the fold-mean TTA ones after duplicate means, rows in sample_submission order."""

    @property
    def steps(self) -> Path:
        """OUTPUT.steps.csv: the labels after each step."""
        return self._side(".steps.csv")

    @property
    def neighbours(self) -> Path:
        """OUTPUT.neighbours.csv: the neighbour step's evidence (nearest HPAv18 images, labels before and
        after)."""
        return self._side(".neighbours.csv")

    @property
    def serving(self) -> Path:
        """OUTPUT.serving.json: what the exported classifier computes (thresholds, TTA combination, views)."""
        return self._side(".serving.json")

    def fold_probabilities(self, fold_folder: str | Path) -> Path:
        """OUTPUT.fold<k>.prob.npy: one fold's TTA probabilities."""
        return self._side(f".{Path(fold_folder).name}.prob.npy")


class ValidationFiles(ProbabilityFiles):
    """The side files of `python infer.py --validate --validation-csv CSV`: the folds' out-of-fold TTA
    probabilities (prob_ids: Id and fold) and the thresholds the validation table fitted on them."""


@dataclass(frozen=True)
class PredictionCache:
    """The curators' page's cached predictions of images that no submission or validation predicted:
    RUNS/RUN/page_predictions/<Id>.json beside the classifier run's folds (derived: rebuilt when damaged
    or made by other checkpoints)."""

    run: Path

    def __init__(self, run: str | Path):
        object.__setattr__(self, "run", Path(run))

    @property
    def folder(self) -> Path:
        return self.run / "page_predictions"

    def file(self, image_id: str) -> Path:
        """The cached prediction of one image."""
        return self.folder / f"{validate_id(image_id)}.json"


def _file(image_id: str, color: str, extension: str) -> str:
    return f"{validate_id(image_id)}_{_color(color)}.{extension}"


def _split(split: str) -> str:
    if split not in KAGGLE_FOLDERS:
        raise ValueError(f"unknown split {split!r}; expected one of {KAGGLE_FOLDERS}")
    return split


def _color(color: str) -> str:
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    return color
