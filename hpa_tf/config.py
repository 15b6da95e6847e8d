"""Every setting and its default, once: the training configurations with the named profiles of the
reference runs (spec 8.1, 8.2) and the demos, and the inference settings of `python infer.py`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar

from hpa_tf.errors import ConfigError
from hpa_tf.schedules import SCHEDULES

FOLD_FAMILIES = {"random_ext_folds5": "random_ext_folds5", "noleak_clean": "random_ext_noleak_clean_folds5"}
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
STRATEGIES = ("auto", "default", "mirrored", "multiworker")


@dataclass
class RunConfig:
    """What every training run depends on: data, output, model, optimisation and devices."""

    data_dir: str | None = None  # None: the embedded synthetic demo dataset
    out_dir: str = "runs"
    run: str | None = None  # results go to out_dir/<run>[/fold<k>]; default: the profile name
    profile: str = "demo"
    backbone: str = "densenet121"
    weights: str | None = "torchvision"
    img_size: int = 768
    batch_size: int = 48
    schedule: str = "Adam55"
    epochs: int = 55
    lr_scale: float = 1.0
    clipnorm: float = 1.0
    seed: int = 0
    tfrecords: bool = False
    strategy: str = "auto"
    sync_bn: bool = False
    precision: str = "fp32"
    jit: bool = False
    verbose: str | int = "auto"

    @property
    def run_name(self) -> str:
        return self.run or self.profile

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message if it fails) pairs; subclasses add theirs."""
        return [
            (self.schedule in SCHEDULES,
             f"--schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}"),
            (self.precision in PRECISIONS, f"--precision must be one of {sorted(PRECISIONS)}"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {STRATEGIES}"),
            (self.batch_size > 0 and self.epochs > 0, "--batch-size and --epochs must be positive"),
            (self.img_size > 0, f"--img-size must be positive, got {self.img_size}"),
        ]

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent setting."""
        for ok, message in self.checks():
            if not ok:
                raise ConfigError(message)


@dataclass
class ClassifierConfig(RunConfig):
    """One fold of classifier training (spec 8.1)."""

    command: ClassVar[str] = "python train_classifier.py"

    fold: int = 0
    split: str = "random_ext_folds5"
    large: bool = False
    crop_size: int = 512
    dropout: float = 0.5
    device_augment: bool = False  # crops, resize and dihedral transform in the training step
    reference_stats: bool = False  # normalise with spec 4's constants, not the dataset's (imported runs)

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.split in FOLD_FAMILIES,
             f"--split must be one of {sorted(FOLD_FAMILIES)}, got {self.split!r}"),
            (0 <= self.fold < 5, f"--fold must be 0..4, got {self.fold}"),
            (0 < self.crop_size <= self.img_size,
             f"--crop-size ({self.crop_size}) must be in 1..--img-size ({self.img_size})"),
        ]


@dataclass
class EmbedderConfig(RunConfig):
    """Metric learning on antibody ids with ArcFace (spec 8.2)."""

    command: ClassVar[str] = "python train_metric.py"

    backbone: str = "resnet50"
    batch_size: int = 32
    schedule: str = "FaceAdam"
    epochs: int = 50
    embedding_dim: int = 512
    dropout: bool = False  # the original's head dropouts were no-ops (spec 6.4)
    arc_scale: float = 30.0
    arc_margin: float = 0.5
    nn_every: int = 1  # nearest-neighbour accuracy every this many epochs (0: never)
    arcface_classes: int | None = None  # ArcFace's classes; None: the dataset's antibodies (imported: set)
    init_from: str | None = None  # a classifier fold (a folder under out_dir, or a path) whose backbone
    # starts the embedder's: the demo's stand-in for the original's ImageNet start

    @property
    def run_name(self) -> str:
        return self.run or f"metric_{self.profile}"

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [(self.embedding_dim > 0, "--embedding-dim must be positive")]


# Run A and run B of spec 8.1, and the demo that fits 2 CPU cores (a small DenseNet from scratch).
CLASSIFIER_PROFILES: dict[str, dict] = {
    "demo": dict(backbone="densenet_2_2_2_2", weights=None, img_size=128, crop_size=64, batch_size=32,
                 schedule="Adam45", epochs=10, lr_scale=10.0, dropout=0.1),
    "i768": dict(backbone="densenet121", weights="torchvision", img_size=768, crop_size=512, batch_size=48,
                 schedule="Adam55", epochs=55, split="random_ext_folds5"),
    "i1536": dict(backbone="densenet121", weights="torchvision", large=True, img_size=1536, crop_size=1024,
                  batch_size=36, schedule="Adam45", epochs=45, split="noleak_clean"),
}
# Spec 8.2 (ResNet50 at 768, batch 32, FaceAdam 1e-4, 50 epochs), and its 2-core demo.
EMBEDDER_PROFILES: dict[str, dict] = {
    "demo": dict(backbone="densenet_2_2_2_2", weights=None, img_size=96, batch_size=32, schedule="FaceAdam",
                 epochs=20, lr_scale=10.0, init_from="demo/fold0", nn_every=20),
    "i768": dict(backbone="resnet50", weights="torchvision", img_size=768, batch_size=32, schedule="FaceAdam",
                 epochs=50, nn_every=5),
}


def make_config(kind: type[RunConfig], profiles: dict[str, dict], profile: str, **overrides) -> RunConfig:
    """The profile's configuration with `overrides` (None values ignored; weights "none" = random)
    applied and validated."""
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(profiles)}")
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    values = {**profiles[profile], **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("weights", "init_from"):  # "none": the CLI's way to ask for random weights
        if key in values and str(values[key]).lower() == "none":
            values[key] = None
    config = kind(profile=profile, **values)
    config.validate()
    return config


def classifier_config(profile: str = "demo", **overrides) -> ClassifierConfig:
    """A classifier profile (demo, i768, i1536) with overrides."""
    return make_config(ClassifierConfig, CLASSIFIER_PROFILES, profile, **overrides)


def embedder_config(profile: str = "demo", **overrides) -> EmbedderConfig:
    """A metric-learning profile (demo, i768) with overrides."""
    return make_config(EmbedderConfig, EMBEDDER_PROFILES, profile, **overrides)


def saved_config(saved: dict) -> RunConfig:
    """The typed configuration of a run's config.json (an embedder run has embedding_dim), replayed through
    its profile and validated; keys that are not settings (replicas) are left out, and saved random
    weights (null) stay random."""
    kind, profiles = (EmbedderConfig, EMBEDDER_PROFILES) if "embedding_dim" in saved else \
        (ClassifierConfig, CLASSIFIER_PROFILES)
    fields = {f.name for f in dataclasses.fields(kind)} - {"profile"}
    values = {k: v for k, v in saved.items() if k in fields}
    for key in ("weights", "init_from"):
        if key in values and values[key] is None:
            values[key] = "none"  # make_config's word for random weights (None keeps the profile's)
    return make_config(kind, profiles, saved.get("profile", "demo"), **values)


TTA_SEEDS = (0, 1, 2, 3)  # spec 5.4: seed 0 the whole image, 1-3 random-scale crops; 8 views each
DEMO_TTA_SEEDS = (0,)  # the demo's whole images are small: crops add little
AUTO = "auto"  # --match-threshold chosen on the antibody val split (inference.match_threshold)
REFERENCE_MATCH_THRESHOLD = 0.65  # what the original used for its own embedding (spec 10.5)


@dataclass
class InferenceConfig:
    """What `python infer.py` does, with every default; see its --help. None: derived from the runs (the
    demo's without data_dir, the reference i768 profile's with it)."""

    data_dir: str | None = None
    runs: str = "runs"
    run: str | None = None  # classifier run: demo, or i768 with data_dir
    folds: list[int] | None = None  # every trained fold
    metric_run: str | None = None  # runs/metric_demo or runs/metric_i768; "none": no neighbour step
    seeds: tuple[int, ...] | None = None  # TTA_SEEDS, the demo DEMO_TTA_SEEDS
    views: list[str] | None = None  # dihedral TTA views: all 8
    combine: str = "max"  # how the views of an image are combined
    ratio_source: str = "train"  # label ratios of the thresholds
    leak: bool = True
    match_threshold: float | str = AUTO
    impostor_rate: float | None = None  # auto's optional cap: share of val images matching another antibody
    neighbour_k: int = 3  # nearest HPAv18 images per test image in OUTPUT.neighbours.csv
    output: str = "submission.csv"
    batch_size: int = 4  # images per forward pass, each with all its views
    validation_csv: str | None = None  # validation.csv beside output
    k: int = 8  # neighbours per gallery image
    noise_neighbours: int = 10
    noise_similarity: float | None = None  # calibrated when None
    figures: str = "figures"
    host: str = "127.0.0.1"  # --serve binds here: this machine only
    port: int = 8000
    corrections: str = "corrections.csv"  # where the curators' decisions are appended
    curator: str | None = None  # who decides: the login name
    token: str | None = None  # --serve's access token; None: a random one where host is not loopback
    progress: bool = True

    @property
    def demo(self) -> bool:
        return self.data_dir is None

    @property
    def tta_seeds(self) -> tuple[int, ...]:
        return tuple(self.seeds or (DEMO_TTA_SEEDS if self.demo else TTA_SEEDS))

    @property
    def validation_table(self) -> str:
        """Where --validate writes its table (its probability files beside it): --validation-csv, else
        validation.csv beside --output."""
        return self.validation_csv or os.path.join(os.path.dirname(self.output), "validation.csv")

    def validate(self) -> None:
        """ConfigError naming the first setting out of range."""
        if min(self.k, self.noise_neighbours, self.neighbour_k) < 1:
            raise ConfigError("--k, --noise-neighbours and --neighbour-k must be at least 1")
        if self.impostor_rate is not None and not 0 < self.impostor_rate < 1:
            raise ConfigError(f"--impostor-rate must lie between 0 and 1, got {self.impostor_rate}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be 1..65535, got {self.port}")
        if self.combine not in ("max", "mean"):
            raise ConfigError(f"--tta must be max or mean, got {self.combine!r}")
