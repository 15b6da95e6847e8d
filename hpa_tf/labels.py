"""The 28 HPA localisation classes and conversions between Target strings and multi-hot vectors."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from hpa_tf.errors import DataError

LABEL_NAMES: list[str] = [
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
]
NUM_CLASSES = len(LABEL_NAMES)

# Images per class in the Kaggle HPA 2018 train.csv (31,072 images); used to give the synthetic
# dataset the same long tail and, later, train-set label ratios.
KAGGLE_TRAIN_COUNTS: list[int] = [
    12885, 1254, 3621, 1561, 1858, 2513, 1008, 2822, 53, 45, 28, 1093, 688, 537,
    1066, 21, 530, 210, 902, 1482, 172, 3777, 802, 2965, 322, 8228, 328, 11,
]
KAGGLE_TRAIN_IMAGES = 31072


def parse_target(target: str) -> list[int]:
    """Parse a space-separated Target string into sorted unique class ints.

    Raises ValueError naming the offending token when it is not an integer in 0..27.
    """
    if not isinstance(target, str):
        raise DataError(f"Target must be a string of class ids, got {target!r}")
    classes = set()
    for token in target.split():
        try:
            value = int(token)
        except ValueError:
            raise DataError(f"Target token {token!r} is not an integer class id (in {target!r})") from None
        if not 0 <= value < NUM_CLASSES:
            raise DataError(f"Target token {token!r} is outside 0..{NUM_CLASSES - 1} (in {target!r})")
        classes.add(value)
    return sorted(classes)


def format_target(classes: Iterable[int]) -> str:
    """Ascending, unique, space-separated class ints: the Kaggle Target/Predicted format."""
    values = sorted({int(c) for c in classes})
    for value in values:
        if not 0 <= value < NUM_CLASSES:
            raise DataError(f"class id {value} is outside 0..{NUM_CLASSES - 1}")
    return " ".join(str(v) for v in values)


def target_to_multihot(target: str) -> np.ndarray:
    """Target string -> float32 multi-hot vector of length 28."""
    vector = np.zeros(NUM_CLASSES, dtype=np.float32)
    vector[parse_target(target)] = 1.0
    return vector


def multihot_to_target(vector: np.ndarray, threshold: float = 0.5) -> str:
    """Multi-hot (or probability) vector of length 28 -> Target string of entries above threshold."""
    vector = np.asarray(vector)
    if vector.shape != (NUM_CLASSES,):
        raise ValueError(f"expected a vector of shape ({NUM_CLASSES},), got {vector.shape}")
    return format_target(np.flatnonzero(vector > threshold))


def describe_labels(classes: Iterable[int]) -> str:
    """Classes by number and name for people, e.g. "0 Nucleoplasm, 25 Cytosol" ("" for none)."""
    return ", ".join(f"{c} {LABEL_NAMES[c]}" for c in parse_target(format_target(classes)))


def targets_to_matrix(targets: Iterable[str]) -> np.ndarray:
    """Many Target strings -> float32 [N, 28] multi-hot matrix."""
    rows = [target_to_multihot(t) for t in targets]
    return np.stack(rows) if rows else np.zeros((0, NUM_CLASSES), dtype=np.float32)
