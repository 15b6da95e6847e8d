"""The synthetic dataset: layout, formats, determinism, label statistics, planted duplicates, learnability."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hpa_tf.data import synthetic
from hpa_tf.data.cells import CELL_LINES, render_field
from hpa_tf.data.dedup import match_hashes, phash_planes
from hpa_tf.data.io import read_rgby
from hpa_tf.labels import KAGGLE_TRAIN_COUNTS, NUM_CLASSES, parse_target, targets_to_matrix
from hpa_tf.layout import COLORS, DataLayout

KAGGLE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-11e8-[0-9a-f]{4}-[0-9a-f]{12}$")
HPA_ID = re.compile(r"^\d+_\d{4}_[A-H]\d{1,2}_\d+$")
TINY = synthetic.PRESETS["tiny"]
TINY_SEED = 3  # the seed of the session fixture in conftest.py


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    raw = DataLayout(root).raw_dir
    names = ["train", "sample_submission", "HPAv18RBGY_wodpl", "test_truth", "synthetic_duplicates",
             "synthetic_antibodies"]
    dtypes = {"Id": str, "Target": str, "Predicted": str, "tif": str}
    return {n: pd.read_csv(raw / f"{n}.csv", keep_default_na=False, dtype=dtypes) for n in names}


def _digest(root: Path) -> str:
    """One hash over every file's relative path and bytes."""
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(root)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_csv_columns_and_row_counts(tiny_dataset):
    t = _tables(tiny_dataset)
    assert list(t["train"].columns) == ["Id", "Target"]
    assert list(t["sample_submission"].columns) == ["Id", "Predicted"]
    assert list(t["HPAv18RBGY_wodpl"].columns) == ["Id", "Target"]
    assert list(t["test_truth"].columns) == ["Id", "Target", "antibody"]
    assert list(t["synthetic_duplicates"].columns) == ["Id1", "Id2", "kind", "same_labels"]
    assert (len(t["train"]), len(t["sample_submission"]), len(t["HPAv18RBGY_wodpl"])) == (
        TINY.n_train, TINY.n_test, TINY.n_external)
    assert t["sample_submission"]["Id"].tolist() == t["test_truth"]["Id"].tolist()
    assert set(t["sample_submission"]["Predicted"]) == {"0"}
    info = json.loads((DataLayout(tiny_dataset).raw_dir / "synthetic_info.json").read_text())
    assert info["preset"] == "tiny" and info["seed"] == TINY_SEED and info["image_size"] == 64


def test_ids_look_like_kaggle_and_hpav18_and_are_unique(tiny_dataset):
    t = _tables(tiny_dataset)
    kaggle = t["train"]["Id"].tolist() + t["test_truth"]["Id"].tolist()
    external = t["HPAv18RBGY_wodpl"]["Id"].tolist()
    assert all(KAGGLE_ID.match(i) for i in kaggle), [i for i in kaggle if not KAGGLE_ID.match(i)][:3]
    assert all(HPA_ID.match(i) for i in external), [i for i in external if not HPA_ID.match(i)][:3]
    assert len(set(kaggle + external)) == len(kaggle) + len(external)


def test_targets_parse_and_every_class_occurs(tiny_dataset):
    t = _tables(tiny_dataset)
    for name in ("train", "HPAv18RBGY_wodpl", "test_truth"):
        matrix = targets_to_matrix(t[name]["Target"])
        assert matrix.sum(axis=1).min() >= 1, f"{name} has an image without labels"
        assert matrix.sum(axis=0).min() >= TINY.min_class_count, f"{name} misses a class"


def test_every_image_has_its_four_files_and_nothing_else(tiny_dataset):
    t = _tables(tiny_dataset)
    layout = DataLayout(tiny_dataset)
    expected = {layout.kaggle_png("train", i, c) for i in t["train"]["Id"] for c in COLORS}
    expected |= {layout.kaggle_png("test", i, c) for i in t["test_truth"]["Id"] for c in COLORS}
    expected |= {layout.external_jpg(i, c) for i in t["HPAv18RBGY_wodpl"]["Id"] for c in COLORS}
    tif_rows = t["synthetic_antibodies"].query("tif != ''")
    expected |= {layout.kaggle_tif(s, i, c)
                 for i, s in zip(tif_rows["Id"], tif_rows["split"], strict=True) for c in COLORS}
    images = {p for p in tiny_dataset.rglob("*") if p.suffix in (".png", ".jpg", ".tif")}
    assert images == expected


def test_png_format(tiny_dataset):
    layout = DataLayout(tiny_dataset)
    image_id = _tables(tiny_dataset)["train"]["Id"][0]
    for color in COLORS:
        with Image.open(layout.kaggle_png("train", image_id, color)) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 64))


def test_hpav18_jpegs_hold_the_channel_in_the_spec_plane(tiny_dataset):
    layout = DataLayout(tiny_dataset)
    for image_id in _tables(tiny_dataset)["HPAv18RBGY_wodpl"]["Id"][:10]:
        planes = {}
        for color in COLORS:
            with Image.open(layout.external_jpg(image_id, color)) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
                planes[color] = np.asarray(image).astype(int)
        for color, data_planes in synthetic.JPEG_PLANE.items():
            rgb = planes[color]
            empty = [p for p in range(3) if p not in data_planes]
            assert rgb[..., data_planes[0]].max() > 20, color  # the stain is there
            assert np.abs(rgb[..., empty]).mean() < 1.5, color  # other planes are (JPEG-)black
        yellow = planes["yellow"]
        assert np.abs(yellow[..., 0] - yellow[..., 1]).mean() < 1.5  # HPA's yellow: R == G


def test_tiffs_are_twice_the_png_size_in_both_bit_depths(tiny_dataset):
    layout = DataLayout(tiny_dataset)
    rows = _tables(tiny_dataset)["synthetic_antibodies"].query("tif != ''")
    assert len(rows) == TINY.n_tif_train + TINY.n_tif_test
    assert set(rows["tif"]) == {"uint8", "uint16"} and set(rows["split"]) == {"train", "test"}
    for image_id, split, dtype in zip(rows["Id"], rows["split"], rows["tif"], strict=True):
        full = np.stack([tifffile.imread(layout.kaggle_tif(split, image_id, c)) for c in COLORS], axis=-1)
        assert full.dtype == np.dtype(dtype) and full.shape == (128, 128, 4)
        png = read_rgby(layout, image_id, "png", split).astype(float)
        scaled = full.astype(float) / np.iinfo(dtype).max * 255
        half = scaled.reshape(64, 2, 64, 2, 4).mean(axis=(1, 3))
        assert np.abs(half - png).max() <= 1.0  # the PNG is the TIFF at half size


def test_same_seed_same_bytes_whatever_the_workers(tiny_dataset, tmp_path):
    again = synthetic.generate(tmp_path / "again", "tiny", TINY_SEED, workers=2, progress=False)
    assert _digest(again) == _digest(tiny_dataset)
    other = synthetic.generate(tmp_path / "other", "tiny", TINY_SEED + 1, progress=False)
    assert _digest(other) != _digest(tiny_dataset)


def test_generate_refuses_to_overwrite_and_leaves_no_partial_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        synthetic.generate(out, "tiny", progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--preset", "tiny"])
    with pytest.raises(ValueError, match="unknown preset"):
        synthetic.generate(tmp_path / "x", "huge", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_cli_writes_the_dataset(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path / "d"), "--preset", "tiny", "--seed", "5", "--quiet"]) == 0
    assert "120 train, 40 test, 120 HPAv18" in capsys.readouterr().out
    assert (tmp_path / "d" / "raw" / "train.csv").exists()


def test_ensure_dataset_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv(synthetic.DATA_ENV, str(tmp_path))
    path = synthetic.ensure_dataset("tiny", seed=1)
    assert path == tmp_path / "synthetic-tiny-seed1"
    stamp = (path / "raw" / "train.csv").stat().st_mtime_ns
    assert synthetic.ensure_dataset("tiny", seed=1) == path
    assert (path / "raw" / "train.csv").stat().st_mtime_ns == stamp


def test_demo_label_statistics_follow_kaggle():
    plan = synthetic.make_plan(synthetic.PRESETS["demo"], seed=0)
    counts = {s: np.zeros(NUM_CLASSES) for s in ("train", "test", "external")}
    for image in plan.images:
        counts[image.split][plan.target(image)] += 1
    rho, _ = spearmanr(counts["train"], KAGGLE_TRAIN_COUNTS)
    assert rho >= 0.9, rho
    for split, c in counts.items():
        assert c.min() >= synthetic.PRESETS["demo"].min_class_count, (split, c)
    assert (len(plan.images) == synthetic.PRESETS["demo"].n_train + synthetic.PRESETS["demo"].n_test
            + synthetic.PRESETS["demo"].n_external)


def test_antibody_groups_share_labels_and_span_test_and_hpav18(tiny_dataset):
    t = _tables(tiny_dataset)
    external = t["HPAv18RBGY_wodpl"].assign(antibody=lambda d: d["Id"].str.split("_").str[0].astype(int))
    conflicts = set(t["synthetic_duplicates"].query("not same_labels")["Id2"])
    clean = external[~external["Id"].isin(conflicts)]
    assert clean.groupby("antibody")["Target"].nunique().max() == 1
    sizes = t["synthetic_antibodies"].groupby("antibody").size()
    assert sizes.max() <= 4 + 8 + 2 and (sizes >= 2).mean() > 0.8  # shared: 1-4 + 3-8, planted copies
    test_antibodies = set(t["test_truth"]["antibody"])
    assert test_antibodies & set(external["antibody"]) and test_antibodies - set(external["antibody"])
    lines = t["synthetic_antibodies"].set_index("Id")["line"]
    wells = external.assign(well=external["Id"].str.rsplit("_", n=1).str[0],
                            line=lines[external["Id"]].to_numpy())
    assert wells.groupby("well")["line"].nunique().max() == 1  # the fields of one well: one cell line
    assert set(lines) <= {line.name for line in CELL_LINES}


def test_demo_antibodies_look_like_hpav18s():
    """HPAv18 held 5.8 fields an antibody in 1-3 cell lines; half the test images' antibodies have HPAv18
    fields (the neighbour step's chance), the other half none."""
    plan = synthetic.make_plan(synthetic.PRESETS["demo"], seed=0)
    originals = [im for im in plan.images if not im.copy]
    external = pd.Series([im.antibody for im in originals if im.split == "external"])
    assert 4.5 <= external.value_counts().mean() <= 7
    in_hpav18 = set(external)
    test = [im for im in originals if im.split == "test"]
    share = np.mean([im.antibody in in_hpav18 for im in test])
    assert 0.45 <= share <= 0.55, share
    assert all(1 <= len(a.lines) <= 3 for a in plan.antibodies)
    assert all(im.line in plan.antibodies[im.antibody].lines for im in plan.images)


def _hashes(layout: DataLayout, ids, source, split="train") -> np.ndarray:
    return np.stack([phash_planes(read_rgby(layout, i, source, split)) for i in ids])


def test_planted_duplicates_are_near_and_nothing_else_is(tiny_dataset):
    t = _tables(tiny_dataset)
    layout = DataLayout(tiny_dataset)
    ids = {"train": t["train"]["Id"].tolist(), "test": t["test_truth"]["Id"].tolist(),
           "external": t["HPAv18RBGY_wodpl"]["Id"].tolist()}
    hashes = {"train": _hashes(layout, ids["train"], "png", "train"),
              "test": _hashes(layout, ids["test"], "png", "test"),
              "external": _hashes(layout, ids["external"], "external")}
    dups = t["synthetic_duplicates"]
    assert dups["kind"].value_counts().to_dict() == {
        "train_external": TINY.dup_train_external, "test_external": TINY.dup_test_external,
        "test_test": TINY.dup_test_test}
    assert (~dups["same_labels"]).sum() == TINY.dup_conflicts
    found = set()
    for a, b in (("train", "external"), ("test", "test"), ("test", "external")):
        pairs = match_hashes(hashes[a], hashes[b], exclude_self=a == b)
        found |= {frozenset((ids[a][i], ids[b][j]))
                  for i, j in zip(pairs["query"], pairs["reference"], strict=True)}
    planted = {frozenset(p) for p in zip(dups["Id1"], dups["Id2"], strict=True)}
    assert found == planted


def test_label_conflict_copies_differ_and_others_agree(tiny_dataset):
    t = _tables(tiny_dataset)
    targets = {i: parse_target(s) for name in ("train", "HPAv18RBGY_wodpl", "test_truth")
               for i, s in zip(t[name]["Id"], t[name]["Target"], strict=True)}
    dups = t["synthetic_duplicates"]
    for a, b, same in zip(dups["Id1"], dups["Id2"], dups["same_labels"], strict=True):
        assert (targets[a] == targets[b]) == same


def test_green_patterns_are_learnable_by_a_simple_classifier():
    """Logistic regression on 16x16 average-pooled green (and green*blue) beats the prior on the
    most frequent classes: the pattern, not chance, carries the label."""
    plan = synthetic.make_plan(synthetic.PRESETS["demo"], seed=0)
    originals = [im for im in plan.images if not im.copy][:900]
    features, labels = [], []
    for k, image in enumerate(originals):
        antibody = plan.antibodies[image.antibody]
        field = render_field(np.random.default_rng([7, k]), sorted(antibody.labels), antibody.style,
                             TINY.layout, 64)
        green, blue = field[..., 1], field[..., 2]
        pool = lambda x: x.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel()  # noqa: E731
        features.append(np.concatenate([pool(green), pool(green * blue), np.sort(pool(green))]))
        labels.append(np.isin(np.arange(NUM_CLASSES), plan.target(image)))
    x, y = np.array(features), np.array(labels)
    for cls, minimum_auc in ((0, 0.85), (25, 0.85), (21, 0.58)):  # Nucleoplasm, Cytosol, Plasma membrane
        model = LogisticRegression(max_iter=2000).fit(x[:600], y[:600, cls])
        auc = roc_auc_score(y[600:, cls], model.predict_proba(x[600:])[:, 1])
        assert auc >= minimum_auc, (cls, auc)


def test_fields_of_one_antibody_look_alike():
    """Two fields of one antibody in one cell line (new cells, intensities, focus and noise) are each
    other's nearest neighbour on simple image statistics far more often than chance (1 in 79)."""
    plan = synthetic.make_plan(synthetic.PRESETS["demo"], seed=0)
    chosen = np.random.default_rng(0).choice(len(plan.antibodies), 40, replace=False)
    features, owners = [], []
    for k, index in enumerate(chosen):
        antibody = plan.antibodies[index]
        line = next(iter(antibody.lines))
        for repeat in range(2):
            field = render_field(np.random.default_rng([9, k, repeat]), sorted(antibody.labels),
                                 antibody.field_style(line), synthetic.PRESETS["demo"].layout, 64,
                                 CELL_LINES[line])
            green, nucleus = field[..., 1], field[..., 2] > 0.25
            cytoplasm = ((field[..., 0] + field[..., 3]) > 0.08) & ~nucleus
            features.append([*field.mean(axis=(0, 1)), *field.std(axis=(0, 1)), nucleus.mean(),
                             cytoplasm.mean(), green[nucleus].mean(), green[cytoplasm].mean()])
            owners.append(k)
    x = np.nan_to_num(np.array(features))
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    distance = ((x[:, None] - x[None]) ** 2).sum(axis=-1)
    np.fill_diagonal(distance, np.inf)
    owners = np.array(owners)
    assert (owners[distance.argmin(axis=1)] == owners).mean() >= 0.25
