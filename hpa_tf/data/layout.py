"""Where every file of a dataset lives (spec section 1), and validation of image Ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hpa_tf.errors import DataError

COLORS = ("red", "green", "blue", "yellow")  # channel order R, G, B, Y everywhere
SPLITS = ("train", "test")  # Kaggle image folders

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def validate_id(image_id: str) -> str:
    """Return image_id if it is safe to put in a file name (letters, digits, '-' and '_' only).

    Raises ValueError naming the Id otherwise (path separators, '..', spaces, empty).
    """
    if not isinstance(image_id, str) or not _ID_PATTERN.match(image_id):
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


def _file(image_id: str, color: str, extension: str) -> str:
    return f"{validate_id(image_id)}_{_color(color)}.{extension}"


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def _color(color: str) -> str:
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    return color
