"""The trained runs and the dataset an `infer.py` command works on: InferenceConfig's defaults resolved
(the demo runs without --data-dir, the reference i768 runs with it; every trained fold; the dataset the
runs were trained on)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpa_tf.config import ClassifierConfig, EmbedderConfig, InferenceConfig
from hpa_tf.errors import InferenceError
from hpa_tf.layout import DataLayout, RunLayout, run_dataset

NO_RUN = "none"  # --metric-run none: no neighbour step


@dataclass
class TrainedRuns:
    """The classifier fold folders (possibly none), the metric-learning run (None: none asked for) and
    the dataset."""

    folds: list[RunLayout]
    embedder: RunLayout | None
    data: DataLayout


def classifier_run(config: InferenceConfig) -> Path:
    """RUNS/RUN: the classifier run whose folds are ensembled."""
    return Path(config.runs) / (config.run or ("demo" if config.demo else "i768"))


def find_folds(config: InferenceConfig) -> list[RunLayout]:
    """The folds asked for (--folds), else every fold of the classifier run with a best checkpoint."""
    run = classifier_run(config)
    if config.folds:
        return [RunLayout(run / f"fold{k}") for k in config.folds]
    return [RunLayout(p) for p in sorted(run.glob("fold*")) if RunLayout(p).best_weights.is_file()]


def embedder_run(config: InferenceConfig) -> RunLayout | None:
    """The metric-learning run: --metric-run, else RUNS/metric_demo (RUNS/metric_i768 with --data-dir);
    None for 'none'."""
    if config.metric_run is None:
        return RunLayout(Path(config.runs) / ("metric_demo" if config.demo else "metric_i768"))
    return None if config.metric_run.lower() == NO_RUN else RunLayout(config.metric_run)


def trained_data(folds: list[RunLayout], embedder: RunLayout | None) -> DataLayout:
    """The dataset the first fold (else the metric run) was trained on, from its config.json."""
    for run, kind in [(fold, ClassifierConfig) for fold in folds[:1]] + [(embedder, EmbedderConfig)]:
        if run is not None and run.config_json.is_file():
            return run_dataset(run.read_config(kind))
    raise InferenceError("no trained run to take the dataset from: pass --data-dir or train first")


def resolve(config: InferenceConfig, need_folds: bool = False) -> TrainedRuns:
    """The runs and dataset of `config`; InferenceError when `need_folds` and no fold is trained."""
    config.validate()
    folds, embedder = find_folds(config), embedder_run(config)
    if need_folds and not folds:
        raise InferenceError(f"no trained fold in {classifier_run(config)}: run "
                             f"`{ClassifierConfig.command}` first")
    data = DataLayout(config.data_dir) if config.data_dir else trained_data(folds, embedder)
    return TrainedRuns(folds, embedder, data)


def require_embedder(runs: TrainedRuns, what: str) -> RunLayout:
    """The metric run, or InferenceError saying that `what` needs one."""
    if runs.embedder is None:
        raise InferenceError(f"{what} needs a metric run (--metric-run)")
    return runs.embedder
