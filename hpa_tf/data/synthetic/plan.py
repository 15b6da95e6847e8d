"""The plan of a synthetic dataset: every image, its antibody, labels, Id and planted duplicates, drawn
from one RNG stream before any pixel is rendered (so it is cheap and deterministic)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hpa_tf.data.cells import CELL_LINES, CellLayout, FieldStyle
from hpa_tf.labels import KAGGLE_TRAIN_COUNTS, NUM_CLASSES

_MAX_LABELS = 5


@dataclass(frozen=True)
class Preset:
    """Sizes of a synthetic dataset (image counts include the planted duplicate copies)."""

    name: str
    size: int  # PNG / HPAv18 JPEG side; TIFFs are twice that
    n_train: int
    n_test: int
    n_external: int
    layout: CellLayout
    n_tif_train: int
    n_tif_test: int
    dup_train_external: int  # HPAv18 copies of train images ...
    dup_conflicts: int  # ... of which this many carry different labels
    dup_test_test: int
    dup_test_external: int  # test copies of HPAv18 images (the leak)
    min_class_count: int  # every class has at least this many images in train, test and HPAv18


PRESETS = {
    "tiny": Preset("tiny", 64, 120, 40, 120, CellLayout((2, 4), (0.17, 0.25)), 8, 4, 6, 2, 2, 3, 1),
    "demo": Preset("demo", 256, 2000, 500, 2000, CellLayout((3, 7), (0.1, 0.15)), 24, 8, 60, 8, 12, 25, 8),
}


@dataclass
class Antibody:
    """One antibody (one protein): its labels, its stain's look, the cell lines it was stained in (with its
    expression in each) and the wells of its HPAv18 fields."""

    number: int  # HPA antibody id, the first part of an HPAv18 Id
    labels: set[int]
    style: FieldStyle
    lines: dict[int, float]  # index into CELL_LINES -> expression (a factor on the stain's gain)
    wells: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # line -> (plate, well)s

    def field_style(self, line: int) -> FieldStyle:
        """The stain's look in one cell line: its brightness scaled by the expression there."""
        return dataclasses.replace(self.style, gain=self.style.gain * self.lines[line])


@dataclass
class PlannedImage:
    """One image of the plan: where it goes, whose antibody, and what it is a copy of."""

    split: str  # train | test | external
    antibody: int  # index into the antibody list
    field: int  # index of the rendered field it shows
    line: int = 0  # index into CELL_LINES: the cell line of its well
    image_id: str = ""
    copy: bool = False  # a re-encoded, noised copy of the field (a planted duplicate)
    conflict_label: int | None = None  # for label-conflict copies: the class swapped in
    tif: str | None = None  # "uint8" / "uint16": also write a full-size TIFF


@dataclass
class Plan:
    preset: Preset
    seed: int
    antibodies: list[Antibody]
    images: list[PlannedImage]
    duplicates: list[tuple[int, int, str]]  # (image index, image index, kind)

    def target(self, image: PlannedImage) -> list[int]:
        labels = set(self.antibodies[image.antibody].labels)
        if image.conflict_label is not None:
            labels.discard(max(labels, key=lambda c: (KAGGLE_TRAIN_COUNTS[c], c)))
            labels.add(image.conflict_label)
        return sorted(labels)


def _label_weights() -> np.ndarray:
    counts = np.asarray(KAGGLE_TRAIN_COUNTS, dtype=float)
    return counts / counts.sum()


def _draw_labels(rng: np.random.Generator) -> set[int]:
    k = int(rng.choice([1, 2, 3, 4], p=[0.5, 0.36, 0.11, 0.03]))
    return {int(c) for c in rng.choice(NUM_CLASSES, size=k, replace=False, p=_label_weights())}


def _kaggle_id(rng: np.random.Generator) -> str:
    digits = "".join(f"{int(d):x}" for d in rng.integers(0, 16, size=28))
    return f"{digits[:8]}-{digits[8:12]}-11e8-{digits[12:16]}-{digits[16:]}"


def _new_antibody(rng: np.random.Generator, used: set[int]) -> Antibody:
    number = int(rng.integers(100, 60000))
    while number in used:
        number = int(rng.integers(100, 60000))
    used.add(number)
    return Antibody(number, _draw_labels(rng), FieldStyle.draw(rng), _draw_lines(rng))


def _draw_lines(rng: np.random.Generator) -> dict[int, float]:
    """1-3 cell lines (the first lines of CELL_LINES more often, as HPA used some lines far more than
    others), each with the protein's expression there."""
    weights = 1.0 / np.arange(1, len(CELL_LINES) + 1) ** 0.7
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    chosen = rng.choice(len(CELL_LINES), size=count, replace=False, p=weights / weights.sum())
    return {int(line): float(rng.uniform(0.7, 1.0)) for line in chosen}


def _fill(rng, plan_images, antibodies, used, need: int, home: str, other: str | None = None,
          room: int = 0) -> int:
    """Create antibody groups until `need` fields of `home` exist: 2-8 fields at home, 3-10 when home is
    HPAv18 (which held 5.8 fields an antibody); a shared group puts 1-4 at home and 3-8 (at most `room`
    in all) in `other`. Returns how many `other` fields were made."""
    made_other = 0
    while need > 0:
        antibodies.append(_new_antibody(rng, used))
        if other is None:
            n_home, n_other = min(need, int(rng.integers(*((3, 11) if home == "external" else (2, 9))))), 0
        else:
            n_home = min(need, int(rng.integers(1, 5)))
            n_other = min(int(rng.integers(3, 9)), room - made_other)
        lines = list(antibodies[-1].lines)
        for split, n in ((home, n_home), (other, n_other)):
            for _ in range(n):
                line = lines[int(rng.integers(len(lines)))]
                plan_images.append(PlannedImage(split, len(antibodies) - 1, len(plan_images), line))
        need -= n_home
        made_other += n_other
    return made_other


def _force_min_counts(rng, plan: Plan) -> None:
    """Add classes to antibody groups until each class has min_class_count images in every split."""
    minimum = plan.preset.min_class_count
    for split in ("train", "test", "external"):
        members = [im for im in plan.images if im.split == split]
        for cls in range(NUM_CLASSES):
            while sum(cls in plan.target(im) for im in members) < minimum:
                candidates = sorted({im.antibody for im in members
                                     if cls not in plan.antibodies[im.antibody].labels
                                     and len(plan.antibodies[im.antibody].labels) < _MAX_LABELS})
                plan.antibodies[int(rng.choice(candidates))].labels.add(cls)


def _copy(plan: Plan, source: int, split: str, kind: str) -> PlannedImage:
    """A planted duplicate: a copy of image `source` (same antibody and field) placed in `split`."""
    original = plan.images[source]
    image = PlannedImage(split, original.antibody, original.field, original.line, copy=True)
    plan.images.append(image)
    plan.duplicates.append((source, len(plan.images) - 1, kind))
    return image


def make_plan(preset: Preset, seed: int) -> Plan:
    """Every image, its antibody, labels, Id and duplicate relations; cheap and deterministic."""
    rng = np.random.default_rng([seed, 0])
    p = preset
    antibodies: list[Antibody] = []
    images: list[PlannedImage] = []
    used: set[int] = set()
    test_base = p.n_test - p.dup_test_test - p.dup_test_external
    ext_base = p.n_external - p.dup_train_external
    train_only = int(round(p.n_train * 0.7))
    _fill(rng, images, antibodies, used, train_only, "train")
    # half the test antibodies have HPAv18 fields (first claim on the HPAv18 room), then train's
    ext_made = _fill(rng, images, antibodies, used, test_base // 2, "test", "external", ext_base)
    ext_made += _fill(rng, images, antibodies, used, p.n_train - train_only, "train", "external",
                      ext_base - ext_made)
    _fill(rng, images, antibodies, used, test_base - test_base // 2, "test")
    _fill(rng, images, antibodies, used, ext_base - ext_made, "external")
    plan = Plan(preset, seed, antibodies, images, [])

    by_split = {s: [i for i, im in enumerate(images) if im.split == s] for s in ("train", "test", "external")}
    sources = rng.choice(by_split["train"], size=p.dup_train_external, replace=False)
    for k, source in enumerate(sources):
        copy = _copy(plan, int(source), "external", "train_external")
        if k < p.dup_conflicts:
            copy.conflict_label = -1  # resolved after the label sets are final
    for source in rng.choice(by_split["test"], size=p.dup_test_test, replace=False):
        _copy(plan, int(source), "test", "test_test")
    for source in rng.choice(by_split["external"], size=p.dup_test_external, replace=False):
        _copy(plan, int(source), "test", "test_external")

    _force_min_counts(rng, plan)
    weights = _label_weights()
    for image in plan.images:
        if image.conflict_label == -1:
            labels = plan.antibodies[image.antibody].labels
            choices = [c for c in range(NUM_CLASSES) if c not in labels]
            w = weights[choices] / weights[choices].sum()
            image.conflict_label = int(rng.choice(choices, p=w))

    tif_train = rng.choice(by_split["train"], size=p.n_tif_train, replace=False)
    tif_test = rng.choice([i for i in by_split["test"]], size=p.n_tif_test, replace=False)
    for k, index in enumerate(sorted(int(i) for i in np.concatenate([tif_train, tif_test]))):
        images[index].tif = ("uint8", "uint16")[k % 2]
    _assign_ids(rng, plan)
    return plan


def _assign_ids(rng: np.random.Generator, plan: Plan) -> None:
    """Kaggle-like UUIDs for train/test; `{antibody}_{plate}_{well}_{field}` for HPAv18."""
    seen: set[str] = set()
    per_well: dict[tuple[int, int, str], int] = {}
    for image in plan.images:
        if image.split == "external":
            antibody = plan.antibodies[image.antibody]
            wells = antibody.wells.setdefault(image.line, [])
            if not wells or rng.uniform() < 0.25:  # a cell line's fields come from one well or a few
                well = f"{'ABCDEFGH'[int(rng.integers(8))]}{int(rng.integers(1, 13))}"
                wells.append((int(rng.integers(1000, 2000)), well))
            plate, well = wells[int(rng.integers(len(wells)))]
            key = (antibody.number, plate, well)
            per_well[key] = per_well.get(key, 0) + 1
            image.image_id = f"{antibody.number}_{plate}_{well}_{per_well[key]}"
        else:
            image.image_id = _kaggle_id(rng)
        if image.image_id in seen:
            raise RuntimeError(f"duplicate synthetic Id {image.image_id}")
        seen.add(image.image_id)
