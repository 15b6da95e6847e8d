"""Per-epoch checkpoints, the `best` checkpoint by lowest validation focal loss (spec 8.1) and the epoch
log, each kept consistent when a killed run resumes."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import keras

from hpa_tf.atomic import copy_atomic, save_weights_atomic, write_bytes_atomic, write_json_atomic
from hpa_tf.errors import TrainingSetupError
from hpa_tf.layout import RunLayout

log = logging.getLogger(__name__)


def read_log(path: Path) -> tuple[list[str], dict[int, list[str]]]:
    """(header, {epoch: its last row}) of a CSVLogger log (empty when there is none); a row cut short by a
    run killed while writing it is left out."""
    if not path.is_file():
        return [], {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = {int(row[0]): row for row in reader if len(row) == len(header) and row[0].isdigit()}
    return header, rows


def trim_log(path: Path, first_epoch: int) -> list[str]:
    """Rewrite the log (atomically) to hold each epoch before the 0-based `first_epoch` once, the epochs a
    resumed fit does not run again; no log when it starts from scratch. Returns the header kept ([] when
    none)."""
    header, rows = read_log(path)
    if not header or first_epoch == 0:
        path.unlink(missing_ok=True)
        return []
    text = io.StringIO()
    writer = csv.writer(text)  # the excel dialect of Keras' CSVLogger
    writer.writerow(header)
    writer.writerows(rows[epoch] for epoch in sorted(rows) if epoch < first_epoch)
    write_bytes_atomic(path, text.getvalue().encode())
    return header


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class ResumingCSVLogger(keras.callbacks.CSVLogger):
    """Keras' CSVLogger (append) that, at the first epoch a fit runs (the one BackupAndRestore restored,
    known only once every callback's on_train_begin has run), first trims the log to the epochs before it:
    an epoch whose row was written by a run killed before its backup is logged once, by the rerun. Rows
    follow the existing header's columns."""

    def __init__(self, filename: str | Path):
        super().__init__(str(filename), append=True)

    def on_train_begin(self, logs=None):
        self.csv_file = self.writer = self.keys = None  # opened at the first epoch

    def on_epoch_begin(self, epoch, logs=None):
        if self.csv_file is None:
            header = trim_log(Path(self.filename), epoch)
            self.append_header = True  # unless the kept log has one (read by on_train_begin)
            super().on_train_begin(logs)
            if header:
                self.keys = header[1:]


class EpochCheckpoints(keras.callbacks.Callback):
    """Saves the network's weights every epoch and copies the epoch with the best `monitor` (lowest for
    mode "min", e.g. the classifier's whole-split validation focal loss; highest for "max", e.g. MAP@5) to
    best.weights.h5; best.json keeps that choice across resumes. Adds best_epoch and best_<monitor> to
    the epoch logs and, with `report`, logs one line per epoch.

    When a resumed fit starts before the saved best epoch (a run killed after that epoch's checkpoint but
    before its backup), the best is chosen again among the epochs before it from the run's log.csv."""

    def __init__(self, net: keras.Model, run: RunLayout, monitor: str = "val_focal", mode: str = "min",
                 write: bool = True, report: bool = True):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.net, self.run, self.monitor = net, run, monitor
        self.sign = 1 if mode == "min" else -1
        self.write, self.report = write, report
        self.best_epoch, self.best_value = 0, float("inf") * self.sign
        self.first_epoch = None

    def on_train_begin(self, logs=None):
        self.first_epoch = None
        state = self.run.best_state
        if state.is_file():
            saved = json.loads(state.read_text())
            self.best_epoch, self.best_value = int(saved["epoch"]), float(saved[self.monitor])

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:  # the epoch this fit starts at (restored by BackupAndRestore)
            self.first_epoch = epoch
            if self.best_epoch > epoch:  # the best is an epoch about to be trained again
                self._choose_best_before(epoch)

    def _choose_best_before(self, epoch: int) -> None:
        """The best of the logged epochs before 0-based `epoch` becomes best.weights.h5 / best.json (none
        when there is no such epoch)."""
        header, rows = read_log(self.run.log)
        self.best_epoch, self.best_value, best_row = 0, float("inf") * self.sign, None
        if self.monitor in header:
            column = header.index(self.monitor)
            for logged in sorted(e for e in rows if e < epoch):
                value = _number(rows[logged][column])
                if value is not None and self.sign * value < self.sign * self.best_value:
                    self.best_epoch, self.best_value, best_row = logged + 1, value, rows[logged]
        if not self.write:
            return
        if best_row is None:
            self.run.best_state.unlink(missing_ok=True)
            self.run.best_weights.unlink(missing_ok=True)
            return
        copy_atomic(self.run.epoch_weights(self.best_epoch), self.run.best_weights)
        figures = {k: _number(v) for k, v in zip(header, best_row, strict=True) if k.startswith("val_")}
        write_json_atomic({"epoch": self.best_epoch, self.monitor: self.best_value,
                           **{k: v for k, v in figures.items() if v is not None}}, self.run.best_state)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        number = epoch + 1
        if self.monitor not in logs:
            raise TrainingSetupError(
                f"epoch {number} logged no {self.monitor!r}, which chooses {self.run.best_weights} (it "
                f"logged {sorted(logs)}): the run needs a validation split that gives it (an empty one "
                "gives none)")
        value = float(logs[self.monitor])
        path = self.run.epoch_weights(number)
        if self.write:
            save_weights_atomic(self.net, path)
        if self.sign * value < self.sign * self.best_value:
            self.best_epoch, self.best_value = number, value
            if self.write:
                copy_atomic(path, self.run.best_weights)
                write_json_atomic({"epoch": number, self.monitor: value,
                                   **{k: float(v) for k, v in logs.items() if k.startswith("val_")}},
                                  self.run.best_state)
        logs["best_epoch"] = self.best_epoch
        logs[f"best_{self.monitor}"] = self.best_value
        if self.report:
            figures = ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items()
                                if k == "loss" or k.startswith("val_"))
            log.info(f"epoch {number}: {figures}; best epoch {self.best_epoch} "
                     f"({self.monitor} {self.best_value:.4f}) -> {self.run.best_weights}")
