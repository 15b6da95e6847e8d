"""Training configurations and the named profiles of the reference runs (spec 8.1) and the demo."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hpa_tf.training.schedules import SCHEDULES

SPLITS = {"random_ext_folds5": "random_ext_folds5", "noleak_clean": "random_ext_noleak_clean_folds5"}
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
STRATEGIES = ("auto", "default", "mirrored", "multiworker")


class ConfigError(ValueError):
    """An unknown profile or setting, or settings that contradict each other."""


@dataclass
class ClassifierConfig:
    """Everything one classifier training run depends on (one fold)."""

    data_dir: str | None = None  # None: the embedded synthetic demo dataset
    out_dir: str = "runs"
    run: str | None = None  # results go to out_dir/run/fold<k>; default: the profile name
    profile: str = "demo"
    fold: int = 0
    split: str = "random_ext_folds5"
    backbone: str = "densenet121"
    weights: str | None = "imagenet"
    large: bool = False
    img_size: int = 768
    crop_size: int = 512
    batch_size: int = 48
    schedule: str = "Adam55"
    epochs: int = 55
    lr_scale: float = 1.0
    clipnorm: float = 1.0
    dropout: float = 0.5
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

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent setting."""
        checks = [
            (self.schedule in SCHEDULES,
             f"--schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}"),
            (self.split in SPLITS, f"--split must be one of {sorted(SPLITS)}, got {self.split!r}"),
            (0 <= self.fold < 5, f"--fold must be 0..4, got {self.fold}"),
            (self.precision in PRECISIONS, f"--precision must be one of {sorted(PRECISIONS)}"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {STRATEGIES}"),
            (0 < self.crop_size <= self.img_size,
             f"--crop-size ({self.crop_size}) must be in 1..--img-size ({self.img_size})"),
            (self.batch_size > 0 and self.epochs > 0, "--batch-size and --epochs must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


# Run A and run B of spec 8.1, and the demo that fits 2 CPU cores (a small DenseNet from scratch).
PROFILES: dict[str, dict] = {
    "demo": dict(backbone="densenet_2_2_2_2", weights=None, img_size=128, crop_size=64, batch_size=32,
                 schedule="Adam45", epochs=10, lr_scale=3.0),
    "i768": dict(backbone="densenet121", weights="imagenet", img_size=768, crop_size=512, batch_size=48,
                 schedule="Adam55", epochs=55, split="random_ext_folds5"),
    "i1536": dict(backbone="densenet121", weights="imagenet", large=True, img_size=1536, crop_size=1024,
                  batch_size=36, schedule="Adam45", epochs=45, split="noleak_clean"),
}


def classifier_config(profile: str = "demo", **overrides) -> ClassifierConfig:
    """The profile's configuration with `overrides` (None values ignored; weights "none" = random)
    applied and validated."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    fields = {f.name for f in dataclasses.fields(ClassifierConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    if str(values.get("weights")).lower() == "none":  # the CLI's way to ask for random weights
        values["weights"] = None
    config = ClassifierConfig(profile=profile, **values)
    config.validate()
    return config
