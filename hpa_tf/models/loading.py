"""A trained run rebuilt from its folder alone: the typed config.json says which model (classifier or
embedder) and how it was built; the checkpoint is loaded into it. No consumer needs training code."""

from __future__ import annotations

from pathlib import Path

import keras

from hpa_tf.config import ClassifierConfig, EmbedderConfig, RunConfig
from hpa_tf.errors import DataError, ModelError
from hpa_tf.layout import DataLayout, RunLayout, run_dataset
from hpa_tf.models.classifier import build_classifier, load_stats
from hpa_tf.models.embedder import build_arcface_network, number_of_classes


def load_checkpoint(model: keras.Model, checkpoint: Path, retrain: str) -> keras.Model:
    """`model` with the weights of `checkpoint`; a damaged file (h5py's OSError) or another model's weights
    (Keras' ValueError / KeyError) is a ModelError naming the file, `retrain` saying how to make a new one."""
    try:
        model.load_weights(checkpoint)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"checkpoint {checkpoint} does not load ({type(error).__name__}: {error}): it is "
                         f"damaged (e.g. cut short) or not this run's; retrain ({retrain}) or pick another "
                         "checkpoint of the run (NNN.weights.h5)") from error
    return model


def dataset_stats(layout: DataLayout) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's RGBY (mean, std) of stats.json, else the reference's constants; DataError naming the
    prepare command when stats.json is damaged."""
    if not layout.stats_json.is_file():
        return load_stats(None)
    try:
        return load_stats(layout.stats_json)
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError, UnicodeDecodeError, DataError
        raise DataError(f"{layout.stats_json} is damaged ({type(error).__name__}: {error}): run "
                        f"{layout.prepare_hint()} to write it again") from None


def build_run_model(config: RunConfig, weights: str | None = None, layout: DataLayout | None = None
                    ) -> keras.Model:
    """The network a run trains: the classifier normalised with its dataset's statistics (spec 4's
    constants with reference_stats), or the embedder under ArcMarginProduct for its dataset's antibody
    classes (or arcface_classes); backbone `weights` (None: random); the dataset is `layout`, else the
    config's data_dir, read only when needed (an imported run names none)."""
    def dataset() -> DataLayout:
        return layout or run_dataset(config)

    if isinstance(config, EmbedderConfig):
        return build_arcface_network(config, config.arcface_classes or number_of_classes(dataset()), weights)
    mean, std = load_stats(None) if config.reference_stats else dataset_stats(dataset())
    return build_classifier(config.backbone, weights=weights, large=config.large, mean=mean, std=std,
                            dropout=config.dropout, sync_bn=config.sync_bn)


def load_run(folder: str | Path, weights: str = RunLayout.BEST_WEIGHTS,
             kind: type[RunConfig] | None = None) -> tuple[keras.Model, RunConfig]:
    """(model, config) of a run folder: the classifier of a train_classifier.py fold, or the embedder
    (images -> embedding) of a train_metric.py run, with its checkpoint `weights` loaded. RunFolderError
    when the config or checkpoint is missing (or the run is not of `kind`), ModelError when it does not
    load."""
    run = RunLayout(folder)
    config = run.read_config(kind)
    checkpoint = run.checkpoint(type(config), weights)
    model = load_checkpoint(build_run_model(config), checkpoint, f"{config.command} --restart")
    if isinstance(config, EmbedderConfig):
        model = model.get_layer("embedder")
    return model, config


def load_classifier(folder: str | Path, weights: str = RunLayout.BEST_WEIGHTS
                    ) -> tuple[keras.Model, ClassifierConfig]:
    """load_run of a classifier fold folder."""
    return load_run(folder, weights, ClassifierConfig)


def load_embedder(folder: str | Path, weights: str = RunLayout.BEST_WEIGHTS
                  ) -> tuple[keras.Model, EmbedderConfig]:
    """load_run of a metric-learning run folder: the embedder."""
    return load_run(folder, weights, EmbedderConfig)
