"""A small synthetic HPA dataset in the real on-disk layout: the embedded default and the test fixture.

It mimics Kaggle HPA 2018 + HPAv18: 4-channel fields of cells, 28 green patterns with Kaggle's long-tailed
label frequencies, antibody groups that span train/test/HPAv18, HPAv18 RGB JPEGs, full-size TIFFs for a
subset, and planted near-duplicates (train<->HPAv18, test<->test, test<->HPAv18 leaks). The same preset
and seed give byte-identical files, whatever the number of workers.

    python -m hpa_tf.data.synthetic --out DIR [--preset tiny|demo] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from tqdm import tqdm

from hpa_tf.data.cells import CellLayout, FieldStyle, render_field
from hpa_tf.data.dedup import match_hashes, phash_planes
from hpa_tf.data.io import read_rgby
from hpa_tf.data.layout import COLORS, DataLayout
from hpa_tf.labels import KAGGLE_TRAIN_COUNTS, NUM_CLASSES, format_target
from hpa_tf.parallel import imap

DATA_ENV = "HPA_TF_DATA"
JPEG_PLANE = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}  # yellow: R+G planes (spec 1.3)
_MAX_LABELS = 5
_CLASH_DISTANCE = 16  # unplanned pairs this close on R, G and B are redrawn (a margin over spec 2's 12)
_PLANTED_DISTANCE = 8  # planted copies stay this close to their original on R, G and B
_MAX_REDRAWS = 5


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
    number: int  # HPA antibody id, the first part of an HPAv18 Id
    labels: set[int]
    style: FieldStyle
    wells: list[tuple[int, str]] = field(default_factory=list)  # (plate, well) of its HPAv18 fields


@dataclass
class PlannedImage:
    """One image of the plan: where it goes, whose antibody, and what it is a copy of."""

    split: str  # train | test | external
    antibody: int  # index into the antibody list
    field: int  # index of the rendered field it shows
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


# ---------------------------------------------------------------------------------------------- planning

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
    return Antibody(number, _draw_labels(rng), FieldStyle.draw(rng))


def _fill(rng, plan_images, antibodies, used, need: int, home: str, other: str | None) -> int:
    """Create antibody groups of 2-8 fields until `need` fields of `home` exist; half of a shared
    group's fields go to `other`. Returns how many `other` fields were made."""
    made_other = 0
    while need > 0:
        antibodies.append(_new_antibody(rng, used))
        group = int(rng.integers(2, 9))
        if other is None:
            n_home, n_other = min(need, group), 0
        else:  # about half at home, the rest (at least one) elsewhere
            n_home = min(need, (group + 1) // 2)
            n_other = max(1, group - n_home)
        for split, n in ((home, n_home), (other, n_other)):
            for _ in range(n):
                plan_images.append(PlannedImage(split, len(antibodies) - 1, len(plan_images)))
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
    image = PlannedImage(split, original.antibody, original.field, copy=True)
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
    ext_made = _fill(rng, images, antibodies, used, train_only, "train", None)
    ext_made += _fill(rng, images, antibodies, used, p.n_train - train_only, "train", "external")
    ext_made += _fill(rng, images, antibodies, used, test_base // 2, "test", "external")
    _fill(rng, images, antibodies, used, test_base - test_base // 2, "test", None)
    if ext_made > ext_base:
        raise ValueError(f"preset {p.name}: shared antibodies give {ext_made} HPAv18 fields > {ext_base}")
    _fill(rng, images, antibodies, used, ext_base - ext_made, "external", None)
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
            if not antibody.wells or rng.uniform() < 0.25:
                well = f"{'ABCDEFGH'[int(rng.integers(8))]}{int(rng.integers(1, 13))}"
                antibody.wells.append((int(rng.integers(1000, 2000)), well))
            plate, well = antibody.wells[int(rng.integers(len(antibody.wells)))]
            key = (antibody.number, plate, well)
            per_well[key] = per_well.get(key, 0) + 1
            image.image_id = f"{antibody.number}_{plate}_{well}_{per_well[key]}"
        else:
            image.image_id = _kaggle_id(rng)
        if image.image_id in seen:
            raise RuntimeError(f"duplicate synthetic Id {image.image_id}")
        seen.add(image.image_id)


# --------------------------------------------------------------------------------------------- rendering

def _to_uint(image: np.ndarray, dtype: str) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.round(np.clip(image, 0, 1) * top).astype(dtype)


def _downsample2(image: np.ndarray) -> np.ndarray:
    """2x2 box average: what a bilinear half-size resize gives for an exact factor of 2."""
    h, w = image.shape[:2]
    return image.reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))


def _perturb(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A re-acquired / re-encoded copy: slight gain change and fresh noise."""
    gain = rng.uniform(0.92, 1.08)
    noise = rng.standard_normal(image.shape).astype(np.float32) * 0.01
    return np.clip(image * gain + noise, 0, 1).astype(np.float32)


def _write_png(path: Path, plane: np.ndarray) -> None:
    Image.fromarray(plane, mode="L").save(path, compress_level=1)  # fast; sizes are within 15% of level 6


def _write_external(layout: DataLayout, image_id: str, rgby: np.ndarray) -> None:
    for c, color in enumerate(COLORS):
        rgb = np.zeros(rgby.shape[:2] + (3,), np.uint8)
        for plane in JPEG_PLANE[color]:
            rgb[..., plane] = rgby[..., c]
        Image.fromarray(rgb, mode="RGB").save(layout.external_jpg(image_id, color), quality=90, subsampling=0)


def _write_kaggle(layout: DataLayout, split: str, image_id: str, rgby: np.ndarray) -> None:
    for c, color in enumerate(COLORS):
        _write_png(layout.kaggle_png(split, image_id, color), rgby[..., c])


def _write(layout: DataLayout, image: dict, field_png: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = _perturb(rng, field_png) if image["copy"] else field_png
    rgby = _to_uint(pixels, "uint8")
    if image["split"] == "external":
        _write_external(layout, image["id"], rgby)
    else:
        _write_kaggle(layout, image["split"], image["id"], rgby)
    return rgby


def render_task(task: dict) -> dict:
    """Render one field and write every image that shows it (original, TIFF, duplicate copies).

    Redraws the field (next attempt) until its planted copies are within _PLANTED_DISTANCE of the
    original on the files as written. Returns the field, the attempt used and each image's pHashes."""
    attempt = task["attempt"]
    while True:
        hashes = _render_attempt(task, attempt)
        near = all(np.bitwise_count(hashes[0][1] ^ h).max() <= _PLANTED_DISTANCE for _, h in hashes[1:])
        if near:
            return {"field": task["field"], "attempt": attempt, "hashes": hashes}
        if attempt >= task["attempt"] + _MAX_REDRAWS:
            raise RuntimeError(f"field {task['field']}: planted copies keep drifting apart")
        attempt += 1


def _render_attempt(task: dict, attempt: int) -> list[tuple[str, np.ndarray]]:
    layout = DataLayout(task["root"])
    rng = np.random.default_rng([task["seed"], 1, task["field"], attempt])
    size = task["size"]
    tif = next((im["tif"] for im in task["images"] if im["tif"]), None)
    field_full = render_field(rng, task["labels"], task["style"], task["layout"], 2 * size if tif else size)
    field_png = _downsample2(field_full) if tif else field_full
    hashes = []
    for image in task["images"]:
        rgby = _write(layout, image, field_png, rng)
        if len(task["images"]) > 1 and image["split"] == "external":  # exact hashes of planted pairs
            rgby = read_rgby(layout, image["id"], "external")
        hashes.append((image["id"], phash_planes(rgby)))
        if image["tif"]:
            planes = _to_uint(field_full, image["tif"])
            for c, color in enumerate(COLORS):
                tifffile.imwrite(layout.kaggle_tif(image["split"], image["id"], color), planes[..., c],
                                 compression="zlib", compressionargs={"level": 1})
    return hashes


def _tasks(plan: Plan, root: Path) -> list[dict]:
    by_field: dict[int, list[PlannedImage]] = {}
    for image in plan.images:
        by_field.setdefault(image.field, []).append(image)
    tasks = []
    for field_index in sorted(by_field):
        members = sorted(by_field[field_index], key=lambda im: im.copy)  # the original first
        antibody = plan.antibodies[members[0].antibody]
        tasks.append({
            "root": str(root), "seed": plan.seed, "field": field_index, "attempt": 0,
            "size": plan.preset.size,
            "layout": plan.preset.layout, "style": antibody.style, "labels": sorted(antibody.labels),
            "images": [{"id": im.image_id, "split": im.split, "copy": im.copy, "tif": im.tif}
                       for im in members],
        })
    return tasks


# ----------------------------------------------------------------------------------------------- writing

def _write_tables(plan: Plan, layout: DataLayout) -> None:
    rng = np.random.default_rng([plan.seed, 2])

    def kaggle_target(image: PlannedImage) -> str:  # Kaggle's train.csv does not sort its labels
        return " ".join(str(c) for c in rng.permutation(plan.target(image)))

    rows = {s: [im for im in plan.images if im.split == s] for s in ("train", "test", "external")}
    layout.raw_dir.mkdir(parents=True, exist_ok=True)
    train = pd.DataFrame({"Id": [im.image_id for im in rows["train"]],
                          "Target": [kaggle_target(im) for im in rows["train"]]})
    train.sort_values("Id").to_csv(layout.train_csv, index=False)
    external = pd.DataFrame({"Id": [im.image_id for im in rows["external"]],
                             "Target": [format_target(plan.target(im)) for im in rows["external"]]})
    external.sort_values("Id").to_csv(layout.external_csv, index=False)
    test = pd.DataFrame({"Id": [im.image_id for im in rows["test"]],
                         "Target": [format_target(plan.target(im)) for im in rows["test"]],
                         "antibody": [plan.antibodies[im.antibody].number for im in rows["test"]]})
    test = test.sort_values("Id")
    test[["Id", "Target", "antibody"]].to_csv(layout.test_truth_csv, index=False)
    test.assign(Predicted="0")[["Id", "Predicted"]].to_csv(layout.sample_submission_csv, index=False)
    pd.DataFrame({
        "Id": [im.image_id for im in plan.images],
        "split": [im.split for im in plan.images],
        "antibody": [plan.antibodies[im.antibody].number for im in plan.images],
        "tif": [im.tif or "" for im in plan.images],
    }).to_csv(layout.raw_dir / "synthetic_antibodies.csv", index=False)
    pd.DataFrame([
        {"Id1": plan.images[a].image_id, "Id2": plan.images[b].image_id, "kind": kind,
         "same_labels": plan.target(plan.images[a]) == plan.target(plan.images[b])}
        for a, b, kind in plan.duplicates
    ]).to_csv(layout.raw_dir / "synthetic_duplicates.csv", index=False)
    info = {"preset": plan.preset.name, "seed": plan.seed, "image_size": plan.preset.size,
            "tif_size": 2 * plan.preset.size,
            "counts": {s: len(v) for s, v in rows.items()}, "antibodies": len(plan.antibodies)}
    (layout.raw_dir / "synthetic_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _make_dirs(layout: DataLayout) -> None:
    for folder in ("train/images", "train/tifs", "test/images", "test/tifs", "external/jpg", "raw"):
        (layout.root / folder).mkdir(parents=True, exist_ok=True)


def generate(out: str | Path, preset: str = "tiny", seed: int = 0, workers: int | None = None,
             overwrite: bool = False, progress: bool = True) -> Path:
    """Write the synthetic dataset to `out` atomically (built in a sibling folder, then renamed)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    building = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    plan = make_plan(PRESETS[preset], seed)
    tasks = _tasks(plan, building)
    if workers is None:  # a pool only pays for itself on the larger presets
        workers = 1 if len(tasks) < 400 else os.cpu_count() or 1
    try:
        layout = DataLayout(building)
        _make_dirs(layout)
        _write_tables(plan, layout)
        hashes = _run(tasks, workers, f"synthetic {preset}", progress)
        for _ in range(_MAX_REDRAWS):
            clashes = _accidental_duplicates(plan, hashes)
            if not clashes:
                break
            redo = [t for t in tasks if t["field"] in clashes]
            for task in redo:
                task["attempt"] += 1
            hashes.update(_run(redo, 1, "redrawing accidental near-duplicates", progress))
        else:
            raise RuntimeError(f"could not remove accidental near-duplicates after {_MAX_REDRAWS} redraws")
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    building.rename(out)
    return out


def _run(tasks: list[dict], workers: int, desc: str, progress: bool) -> dict[str, np.ndarray]:
    """Run render tasks (in a spawn pool when workers > 1); Id -> pHashes of every image written."""
    hashes: dict[str, np.ndarray] = {}
    by_field = {task["field"]: task for task in tasks}
    with tqdm(total=sum(len(t["images"]) for t in tasks), desc=desc, unit="img", disable=not progress) as bar:
        for done in imap(render_task, tasks, workers):
            by_field[done["field"]]["attempt"] = done["attempt"]
            hashes.update(done["hashes"])
            bar.update(len(done["hashes"]))
    return hashes


def _accidental_duplicates(plan: Plan, hashes: dict[str, np.ndarray]) -> set[int]:
    """Fields to redraw: one of each unplanned pair within _CLASH_DISTANCE on R, G and B, among the
    pairs that prepare compares (train<->HPAv18, test<->test, test<->HPAv18)."""
    planted = {frozenset((plan.images[a].field, plan.images[b].field)) for a, b, _ in plan.duplicates}
    members = {s: [im for im in plan.images if im.split == s] for s in ("train", "test", "external")}
    stack = {s: np.stack([hashes[im.image_id] for im in v]) for s, v in members.items()}
    clashes = set()
    for a, b in (("train", "external"), ("test", "test"), ("test", "external")):
        pairs = match_hashes(stack[a], stack[b], max_distance=_CLASH_DISTANCE, exclude_self=a == b)
        for i, j in zip(pairs["query"], pairs["reference"], strict=True):
            fields = (members[a][i].field, members[b][j].field)
            if fields[0] != fields[1] and frozenset(fields) not in planted:
                clashes.add(max(fields))
    return clashes


def default_data_dir(preset: str = "demo", seed: int = 0) -> Path:
    """Where the embedded default dataset lives: $HPA_TF_DATA or ~/.cache/hpa_tf, per preset and seed."""
    base = Path(os.environ.get(DATA_ENV, Path.home() / ".cache" / "hpa_tf"))
    return base / f"synthetic-{preset}-seed{seed}"


def ensure_dataset(preset: str = "demo", seed: int = 0, root: str | Path | None = None) -> Path:
    """The synthetic dataset's folder, generated on first use (what the CLIs use with no --data-dir)."""
    path = Path(root) if root is not None else default_data_dir(preset, seed)
    if not (path / "raw" / "synthetic_info.json").exists():
        print(f"generating the synthetic {preset} dataset in {path} (first use)", file=sys.stderr)
        generate(path, preset=preset, seed=seed, overwrite=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpa_tf.data.synthetic",
        description="Write a small synthetic HPA dataset (Kaggle HPA 2018 + HPAv18 layout) to --out.",
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: ~120 train/40 test/120 HPAv18 at 64 px (tests); "
                             "demo: ~2000/500/2000 at 256 px (the embedded default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = generate(args.out, args.preset, args.seed, args.workers, args.overwrite, not args.quiet)
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    info = json.loads((out / "raw" / "synthetic_info.json").read_text())
    counts = info["counts"]
    print(f"wrote {out}: {counts['train']} train, {counts['test']} test, {counts['external']} HPAv18 "
          f"images at {info['image_size']} px in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
