"""Writing a planned dataset: the tables, then every field through render tasks (a spawn pool for the
larger presets), then redraws of accidental near-duplicates; built aside and renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf.data.cells import CELL_LINES
from hpa_tf.data.dedup import match_hashes
from hpa_tf.data.synthetic.plan import PRESETS, Plan, PlannedImage, make_plan
from hpa_tf.data.synthetic.render import _MAX_REDRAWS, FieldTask, ImageTask, render_task
from hpa_tf.labels import format_target
from hpa_tf.layout import DataLayout
from hpa_tf.output import bars_disabled
from hpa_tf.parallel import imap

_CLASH_DISTANCE = 16  # unplanned pairs this close on R, G and B are redrawn (a margin over spec 2's 12)


def _tasks(plan: Plan, root: Path) -> list[FieldTask]:
    """One render task per field, its images with the original first."""
    by_field: dict[int, list[PlannedImage]] = {}
    for image in plan.images:
        by_field.setdefault(image.field, []).append(image)
    tasks = []
    for field_index in sorted(by_field):
        members = sorted(by_field[field_index], key=lambda im: im.copy)  # the original first
        antibody = plan.antibodies[members[0].antibody]
        tasks.append(FieldTask(
            root=str(root), seed=plan.seed, field=field_index, attempt=0, size=plan.preset.size,
            layout=plan.preset.layout, line=members[0].line, style=antibody.field_style(members[0].line),
            labels=sorted(antibody.labels),
            images=[ImageTask(im.image_id, im.split, im.copy, im.tif) for im in members],
        ))
    return tasks


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
        "line": [CELL_LINES[im.line].name for im in plan.images],
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
            redo = [t for t in tasks if t.field in clashes]
            for task in redo:
                task.attempt += 1
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


def _run(tasks: list[FieldTask], workers: int, desc: str, progress: bool) -> dict[str, np.ndarray]:
    """Run render tasks (in a spawn pool when workers > 1); Id -> pHashes of every image written."""
    hashes: dict[str, np.ndarray] = {}
    by_field = {task.field: task for task in tasks}
    with tqdm(total=sum(len(t.images) for t in tasks), desc=desc, unit="img",
              disable=bars_disabled(progress)) as bar:
        for done in imap(render_task, tasks, workers):
            by_field[done.field].attempt = done.attempt
            hashes.update(done.hashes)
            bar.update(len(done.hashes))
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
