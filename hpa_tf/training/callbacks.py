"""Per-epoch checkpoints and the `best` checkpoint by lowest validation focal loss (spec 8.1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras

from hpa_tf.atomic import write_json_atomic

BEST_WEIGHTS = "best.weights.h5"
BEST_STATE = "best.json"


def epoch_weights(folder: str | Path, epoch: int) -> Path:
    """Where the weights after 1-based `epoch` are saved: `{epoch:03d}.weights.h5`."""
    return Path(folder) / f"{epoch:03d}.weights.h5"


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """model.save_weights to a temporary name in the same folder, then renamed: never half-written."""
    temporary = path.with_name(f".{path.name[:-len('.weights.h5')]}.{os.getpid()}.tmp.weights.h5")
    model.save_weights(temporary)
    os.replace(temporary, path)


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a file through a temporary name, so the target is either old or complete."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


class EpochCheckpoints(keras.callbacks.Callback):
    """Saves the network's weights every epoch and copies the epoch with the best `monitor` (lowest for
    mode "min", e.g. the classifier's whole-split validation focal loss; highest for "max", e.g. MAP@5) to
    best.weights.h5; best.json keeps that choice across resumes. Adds best_epoch and best_<monitor> to
    the epoch logs and, with `report`, prints one line per epoch."""

    def __init__(self, net: keras.Model, folder: str | Path, monitor: str = "val_focal", mode: str = "min",
                 write: bool = True, report: bool = True):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.net, self.folder, self.monitor = net, Path(folder), monitor
        self.sign = 1 if mode == "min" else -1
        self.write, self.report = write, report
        self.best_epoch, self.best_value = 0, float("inf") * self.sign

    def on_train_begin(self, logs=None):
        state = self.folder / BEST_STATE
        if state.is_file():
            saved = json.loads(state.read_text())
            self.best_epoch, self.best_value = int(saved["epoch"]), float(saved[self.monitor])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        number = epoch + 1
        if self.monitor not in logs:
            raise KeyError(f"no {self.monitor!r} in the epoch logs {sorted(logs)}: pass validation data")
        value = float(logs[self.monitor])
        path = epoch_weights(self.folder, number)
        if self.write:
            save_weights_atomic(self.net, path)
        if self.sign * value < self.sign * self.best_value:
            self.best_epoch, self.best_value = number, value
            if self.write:
                copy_atomic(path, self.folder / BEST_WEIGHTS)
                write_json_atomic({"epoch": number, self.monitor: value,
                                   **{k: float(v) for k, v in logs.items() if k.startswith("val_")}},
                                  self.folder / BEST_STATE)
        logs["best_epoch"] = self.best_epoch
        logs[f"best_{self.monitor}"] = self.best_value
        if self.report:
            figures = ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items()
                                if k == "loss" or k.startswith("val_"))
            print(f"epoch {number}: {figures}; best epoch {self.best_epoch} "
                  f"({self.monitor} {self.best_value:.4f}) -> {self.folder / BEST_WEIGHTS}", flush=True)
