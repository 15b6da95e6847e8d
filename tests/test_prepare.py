"""`python -m hpa_tf.data.prepare` end to end on the tiny synthetic dataset."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
import tifffile
from atomic_files import temporaries
from PIL import Image

from hpa_tf import parallel
from hpa_tf.data import prepare
from hpa_tf.data.io import read_rgby
from hpa_tf.data.resize import read_cached_rgby
from hpa_tf.errors import DataError
from hpa_tf.labels import LABEL_NAMES
from hpa_tf.layout import COLORS, DataLayout
from hpa_tf.parallel import imap

SIZE = 64  # the tiny preset's image size: prepare's default cache size for it
ROOT = Path(__file__).parent.parent


def _copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def _run(root: Path, **kwargs) -> dict:
    return prepare.prepare(root, workers=1, progress=False, **kwargs)


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"Id": str, "Target": str}, keep_default_na=False)


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_meta_tables_follow_spec_1_4(prepared):
    root, _ = prepared
    meta = DataLayout(root).meta_dir
    train, external = _csv(meta / "train_meta.csv"), _csv(meta / "external_meta.csv")
    assert list(train.columns) == ["Id", "Target", *LABEL_NAMES, "External"]
    assert list(external.columns) == ["Id", "Target", *LABEL_NAMES, "External", "antibody", "antibody_code"]
    raw = _csv(root / "raw" / "train.csv").set_index("Id")
    for image_id, target in zip(train["Id"], train["Target"], strict=True):
        assert target == " ".join(str(c) for c in sorted(int(t) for t in raw.loc[image_id, "Target"].split()))
    onehot = train[LABEL_NAMES].to_numpy()
    assert (onehot.sum(axis=1) == train["Target"].str.split().str.len()).all()
    antibodies = sorted(external["Id"].str.split("_").str[0].unique())  # codes follow string order
    assert (external["antibody_code"] == external["Id"].str.split("_").str[0].map(antibodies.index)).all()
    assert (~train["External"].astype(bool)).all() and external["External"].astype(bool).all()
    test_ids = list(_csv(root / "raw" / "sample_submission.csv")["Id"])
    assert list(_csv(meta / "test_meta.csv")["Id"]) == test_ids


def test_resize_caches_exist_and_tiffs_agree_with_pngs(prepared):
    root, summary = prepared
    layout = DataLayout(root)
    assert summary["sizes"] == [SIZE]
    for split, csv in (("train", "train.csv"), ("test", "sample_submission.csv")):
        for image_id in _csv(root / "raw" / csv)["Id"]:
            assert read_cached_rgby(layout, "kaggle", split, image_id, SIZE).shape == (SIZE, SIZE, 4)
    for image_id in _csv(root / "raw" / "HPAv18RBGY_wodpl.csv")["Id"][:20]:
        cached = read_cached_rgby(layout, "external", "train", image_id, SIZE).astype(int)
        assert np.abs(cached - read_rgby(layout, image_id, "external").astype(int)).mean() < 2
    tifs = _csv(root / "raw" / "synthetic_antibodies.csv").query("tif != ''")
    assert set(tifs["tif"]) == {"uint8", "uint16"}
    for image_id, split in zip(tifs["Id"], tifs["split"], strict=True):
        from_tif = read_cached_rgby(layout, "kaggle", split, image_id, SIZE).astype(int)
        png = read_rgby(layout, image_id, "png", split).astype(int)
        assert np.abs(from_tif - png).max() <= 1  # 8- and 16-bit TIFFs, scaled and resized


def test_planted_duplicates_are_recovered_exactly(prepared):
    root, summary = prepared
    meta = DataLayout(root).meta_dir
    planted = _csv(root / "raw" / "synthetic_duplicates.csv")

    def pairs(kind):
        rows = planted[planted["kind"] == kind]
        return set(zip(rows["Id1"], rows["Id2"], strict=True))

    train_ext = _csv(meta / "train_match_external.csv")
    assert list(train_ext.columns) == ["Train", "Extra", "SimR", "SimG", "SimB"]
    assert set(zip(train_ext["Train"], train_ext["Extra"], strict=True)) == pairs("train_external")
    assert (train_ext[["SimR", "SimG", "SimB"]].to_numpy() <= 12).all()
    test_test = _csv(meta / "test_match_test.csv")
    both_orders = pairs("test_test") | {(b, a) for a, b in pairs("test_test")}
    assert set(zip(test_test["Test1"], test_test["Test2"], strict=True)) == both_orders
    test_ext = _csv(meta / "test_match_external.csv")
    leaks = {(b, a) for a, b in zip(test_ext["Test"], test_ext["Extra"], strict=True)}
    assert leaks == pairs("test_external")
    assert summary["train_match_external"] == len(pairs("train_external"))


def test_leak_list_gives_the_matched_hpav18_labels(prepared):
    root, _ = prepared
    leak = _csv(DataLayout(root).meta_dir / "test_leak_meta.csv")
    assert list(leak.columns) == ["Id", "External", "Target", "antibody", "antibody_code"]
    truth = _csv(root / "raw" / "test_truth.csv").set_index("Id")
    planted = _csv(root / "raw" / "synthetic_duplicates.csv").query("kind == 'test_external'")
    assert set(leak["Id"]) == set(planted["Id2"])
    for image_id, target in zip(leak["Id"], leak["Target"], strict=True):
        assert target == truth.loc[image_id, "Target"]


def test_stats_json_equals_a_direct_numpy_computation(prepared):
    """The float64 numpy statistics prepare computed before its integer histograms, to the same digits."""
    root, _ = prepared
    layout = DataLayout(root)
    stats = json.loads((layout.meta_dir / "stats.json").read_text())
    means, stds = [], []
    for split, csv in (("train", "train.csv"), ("test", "sample_submission.csv")):
        for image_id in _csv(root / "raw" / csv)["Id"]:
            x = read_rgby(layout, image_id, "png", split).astype(np.float64) / 255.0
            means.append(x.mean(axis=(0, 1)))
            stds.append(x.std(axis=(0, 1)))
    assert stats["mean"] == [round(float(v), 6) for v in np.mean(means, axis=0)]
    assert stats["std"] == [round(float(v), 6) for v in np.mean(stds, axis=0)]
    assert stats["images"] == len(means)
    features = _csv(layout.meta_dir / "image_features.csv")
    assert (features[features["key"].str.startswith("external/")]["mean_r"] == "").all()  # not averaged


def _phash(plane: np.ndarray) -> int:
    return int(str(imagehash.phash(Image.fromarray(plane))), 16)


def _independent_hashes(root: Path) -> dict[str, tuple[int, int, int]]:
    """{Id: R, G, B pHashes} by imagehash of the re-read files: Kaggle PNGs, HPAv18 JPEG planes (spec 2)."""
    layout, hashes = DataLayout(root), {}
    for split, csv in (("train", "train.csv"), ("test", "sample_submission.csv")):
        for image_id in _csv(root / "raw" / csv)["Id"]:
            hashes[image_id] = tuple(_phash(np.array(Image.open(layout.kaggle_png(split, image_id, color))))
                                     for color in COLORS[:3])
    for image_id in _csv(root / "raw" / "HPAv18RBGY_wodpl.csv")["Id"]:
        hashes[image_id] = tuple(
            _phash(np.array(Image.open(layout.external_jpg(image_id, color)).convert("RGB"))[:, :, c].copy())
            for c, color in enumerate(COLORS[:3]))
    return hashes


def _pairs(hashes, query: list[str], reference: list[str]) -> list[tuple]:
    """(query, reference, SimR, SimG, SimB) within 12 on every channel by a plain loop, without self-pairs."""
    rows = []
    for a in query:
        for b in reference:
            distances = [bin(x ^ y).count("1") for x, y in zip(hashes[a], hashes[b], strict=True)]
            if a != b and max(distances) <= 12:
                rows.append((a, b, *distances))
    return rows


def test_hashes_matches_and_caches_equal_an_independent_computation(prepared):
    """pHashes, all three match tables (rows, order, distances) and every cache's pixels or bytes, computed
    here the plain way from the raw files."""
    root, _ = prepared
    layout = DataLayout(root)
    hashes = _independent_hashes(root)
    features = _csv(layout.meta_dir / "image_features.csv")
    written = {key.rsplit("/", 1)[1]: tuple(int(h, 16) for h in row)
               for key, *row in features[["key", "hash_r", "hash_g", "hash_b"]].itertuples(index=False)}
    assert written == hashes
    train, test, external = (list(_csv(root / "raw" / csv)["Id"])
                             for csv in ("train.csv", "sample_submission.csv", "HPAv18RBGY_wodpl.csv"))
    for name, query, reference in (("train_match_external", train, external), ("test_match_test", test, test),
                                   ("test_match_external", test, external)):
        table = _csv(layout.meta_dir / f"{name}.csv")
        assert list(table.itertuples(index=False, name=None)) == _pairs(hashes, query, reference), name
    tifs = _csv(root / "raw" / "synthetic_antibodies.csv").set_index("Id")["tif"]
    for split, ids in (("train", train), ("test", test)):
        for image_id in ids:  # from the PNGs of the cache's size as they are, else from the larger TIFFs
            if tifs[image_id]:  # 16-bit ones rounded to 8 bits, then resized bilinearly
                planes = [tifffile.imread(layout.kaggle_tif(split, image_id, c)).astype(int) for c in COLORS]
                planes = [(p * 2 + 257) // 514 if tifs[image_id] == "uint16" else p for p in planes]
                source = [cv2.resize(p.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
                          for p in planes]
            else:
                source = [np.array(Image.open(layout.kaggle_png(split, image_id, c))) for c in COLORS]
            np.testing.assert_array_equal(read_cached_rgby(layout, "kaggle", split, image_id, SIZE),
                                          np.stack(source, axis=-1))
    for image_id in external:
        for color, c in zip(COLORS, (0, 1, 2, 0), strict=True):  # yellow: the red plane (spec 1.3)
            plane = np.array(Image.open(layout.external_jpg(image_id, color)).convert("RGB"))[:, :, c].copy()
            expected = cv2.imencode(".jpg", plane, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
            assert layout.external_cache(image_id, color, SIZE).read_bytes() == expected


def test_hpav18_images_over_512_px_are_hashed_as_their_512_px_cache(tmp_path):
    layout, image_id = DataLayout(tmp_path), "1000_1600_C1_1"
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (600, 600), interpolation=cv2.INTER_CUBIC)  # smooth: pHashes that mean something
    layout.external_jpg(image_id, "red").parent.mkdir(parents=True)
    for color in COLORS:
        Image.fromarray(rgb).save(layout.external_jpg(image_id, color))
    _, cached, features = prepare._image_task((str(tmp_path), prepare.ImageRef("external", "train", image_id),
                                               {}, True))
    decoded = np.array(Image.open(layout.external_jpg(image_id, "red")))
    expected = [_phash(cv2.resize(decoded[:, :, c].copy(), (512, 512), interpolation=cv2.INTER_LINEAR))
                for c in range(3)]
    assert cached == {} and [int(h, 16) for h in features[:3]] == expected
    assert expected != [_phash(decoded[:, :, c].copy()) for c in range(3)]  # the full-size planes differ
    assert np.isnan(features[3:]).all()  # no statistics: spec 4 averages Kaggle images only


def test_splits_are_written(prepared):
    root, _ = prepared
    split = DataLayout(root).split_dir
    raw = root / "raw"
    train_ids = set(_csv(raw / "train.csv")["Id"]) | set(_csv(raw / "HPAv18RBGY_wodpl.csv")["Id"])
    for folder in ("random_ext_folds5", "random_ext_noleak_clean_folds5"):
        valid = [set(_csv(split / folder / f"random_valid_cv{k}.csv")["Id"]) for k in range(5)]
        for k in range(5):
            train = set(_csv(split / folder / f"random_train_cv{k}.csv")["Id"])
            assert not train & valid[k]
        assert all(not a & b for i, a in enumerate(valid) for b in valid[i + 1:])
        if folder == "random_ext_folds5":
            assert set().union(*valid) == train_ids
    conflicts = _csv(root / "raw" / "synthetic_duplicates.csv").query("not same_labels")["Id2"]
    for k in range(5):
        for part in ("train", "valid"):
            ids = set(_csv(split / "random_ext_noleak_clean_folds5" / f"random_{part}_cv{k}.csv")["Id"])
            assert not ids & set(conflicts)  # spec 3.2 "clean"
    antibody = pd.concat([_csv(split / "external_trainset_antibody_split.csv").assign(valid=False),
                          _csv(split / "external_validset_antibody_split.csv").assign(valid=True)])
    per_antibody = antibody.groupby("antibody")["valid"].agg(["size", "sum"])
    assert (per_antibody["sum"] == per_antibody["size"] // 4).all()
    for name in ("external_tr_trainset_antibody_split.csv", "external_tr_validset_antibody_split.csv",
                 "external_antibody_split.csv"):
        assert (split / name).is_file()
    corrected = _csv(DataLayout(root).meta_dir / "external_antibody_correct_meta.csv")
    assert corrected.equals(_csv(split / "external_antibody_split.csv"))  # no train_extra.csv: unchanged


def test_rerun_is_idempotent_and_repairs_damage(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    first = _run(root)
    before = _mtimes(root)
    assert _run(root) == first
    assert _mtimes(root) == before  # nothing rewritten
    layout = DataLayout(root)
    image_id = _csv(root / "raw" / "train.csv")["Id"][0]
    external_id = _csv(root / "raw" / "HPAv18RBGY_wodpl.csv")["Id"][0]
    damaged = layout.kaggle_cache("train", image_id, "green", SIZE)
    damaged.write_bytes(damaged.read_bytes()[:50])  # a half-written cache file
    missing = layout.external_cache(external_id, "blue", SIZE)
    missing.unlink()
    _run(root)
    assert read_cached_rgby(layout, "kaggle", "train", image_id, SIZE).shape == (SIZE, SIZE, 4)
    assert missing.is_file()
    changed = {p for p, t in _mtimes(root).items() if before.get(p) != t}
    redone = {layout.kaggle_cache("train", image_id, c, SIZE) for c in COLORS}
    redone |= {layout.external_cache(external_id, c, SIZE) for c in COLORS}
    assert {damaged, missing} <= changed <= redone  # only the two damaged images are redone


def test_corrupt_png_fails_naming_the_file(tiny_dataset, tmp_path, capsys):
    root = _copy(tiny_dataset, tmp_path)
    image_id = _csv(root / "raw" / "sample_submission.csv")["Id"][5]
    corrupt = DataLayout(root).kaggle_png("test", image_id, "yellow")
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    assert prepare.main(["--data-dir", str(root), "--quiet", "--workers", "1"]) == 2
    assert str(corrupt) in capsys.readouterr().err
    assert not list(root.rglob("*.tmp*"))  # nothing half-written


def _edit_csv(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(path, index=False)


@pytest.mark.parametrize("edit, message", [
    (lambda f: pd.concat([f, f.iloc[[3]]]), "line 122: duplicate Id"),
    (lambda f: f.assign(Target=f["Target"].where(f.index != 6, "3 28")), "line 8: .*'28'"),
    (lambda f: f.assign(Target=f["Target"].where(f.index != 0, "x")), "line 2: .*'x'"),
    (lambda f: f.assign(Target=f["Target"].where(f.index != 4, " ")), "line 6: empty Target for Id"),
    (lambda f: f.assign(Id=f["Id"].where(f.index != 9, "../etc/passwd")), "line 11: invalid image Id"),
    (lambda f: f.drop(columns="Target"), r"missing column\(s\) \['Target'\]"),
])
def test_bad_raw_csv_rows_are_named(tiny_dataset, tmp_path, edit, message):
    root = _copy(tiny_dataset, tmp_path)
    _edit_csv(root / "raw" / "train.csv", edit)
    with pytest.raises(prepare.PrepareError, match=message) as error:
        _run(root)
    assert "train.csv" in str(error.value)
    assert not (root / "meta").exists()  # failed before writing anything


def test_missing_channel_file_is_named(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    image_id = _csv(root / "raw" / "HPAv18RBGY_wodpl.csv")["Id"][2]
    gone = DataLayout(root).external_jpg(image_id, "yellow")
    gone.unlink()
    with pytest.raises(ValueError, match=str(gone)):
        _run(root)


def test_label_correction_from_train_extra(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    external = _csv(root / "raw" / "HPAv18RBGY_wodpl.csv")
    first, second = external["Id"][0], external["Id"][1]
    antibody, rest = first.split("_", 1)
    pd.DataFrame({"Id": [f"{antibody}/{rest}", second], "Target": ["0 8 25", ""]}).to_csv(
        root / "raw" / "train_extra.csv", index=False)
    _run(root)
    corrected = _csv(DataLayout(root).meta_dir / "external_antibody_correct_meta.csv").set_index("Id")
    old = external.set_index("Id")["Target"]
    expected_first = sorted({0, 25} | ({8} & {int(t) for t in old[first].split()}))
    expected_first = sorted(set(expected_first) | ({9, 10, 20, 26} & {int(t) for t in old[first].split()}))
    assert corrected.loc[first, "Target"] == " ".join(map(str, expected_first))
    assert corrected.loc[second, "Target"] == old[second]  # an empty new Target keeps the old one


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        prepare.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data-dir", "--sizes", "--workers"):
        assert option in out


def test_rerun_notices_a_source_corrupted_after_preparation(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    _run(root)
    layout = DataLayout(root)
    image_id = _csv(root / "raw" / "train.csv")["Id"][7]
    corrupt = layout.kaggle_png("train", image_id, "red")
    corrupt.write_bytes(corrupt.read_bytes()[:80])
    with pytest.raises(ValueError, match=str(corrupt)):
        _run(root)


# ------------------------------------------------------------------- bad images in a worker pool

def _damage(root: Path, which: str) -> Path:
    """Cut one source file of a copied tiny dataset to half its bytes; returns it."""
    layout = DataLayout(root)
    with_tifs = _csv(root / "raw" / "synthetic_antibodies.csv").query("tif != '' and split == 'train'")["Id"]
    path = {"tif": lambda: sorted((root / "train" / "tifs").glob("*.tif"))[0],
            "png of a TIFF image": lambda: layout.kaggle_png("train", with_tifs.iloc[0], "blue"),
            "HPAv18 jpg": lambda: layout.external_jpg(_csv(root / "raw" / "HPAv18RBGY_wodpl.csv")["Id"][4],
                                                      "green")}[which]()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


# a truncated zlib TIFF: imagecodecs' DeflateError could not be unpickled in the parent, so the pool's result
# thread died and prepare waited forever; the PNG of an image with TIFFs is read only for its pHashes and
# statistics, in the same pass as its caches
@pytest.mark.parametrize("which", ["tif", "png of a TIFF image", "HPAv18 jpg"])
def test_a_damaged_source_stops_a_pool_run_with_one_error(tiny_dataset, tmp_path, which):
    root = _copy(tiny_dataset, tmp_path)
    damaged = _damage(root, which)
    command = [sys.executable, "-m", "hpa_tf.data.prepare", "--data-dir", str(root), "--workers", "2",
               "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(damaged) in errors[0] and "Traceback" not in done.stderr, done.stderr
    assert not temporaries(root)


def test_processes_obey_an_explicit_workers_at_any_size():
    assert prepare._processes(None, 63) == 1 and prepare._processes(None, 64) == (os.cpu_count() or 1)
    assert prepare._processes(2, 5) == 2 and prepare._processes(8, 10) == 8
    assert prepare._processes(2, 1) == 1 and prepare._processes(2, 0) == 1  # never more than the images


def test_workers_below_one_are_refused(tmp_path, capsys):
    assert prepare.main(["--data-dir", str(tmp_path), "--workers", "0", "--quiet"]) == 2
    assert capsys.readouterr().err == "error: --workers must be at least 1, got 0\n"


def test_explicit_workers_reach_the_pool_and_the_log(tiny_dataset, tmp_path, monkeypatch, caplog):
    root = _copy(tiny_dataset, tmp_path)
    asked = []

    def recording(fn, items, workers, chunksize):  # runs here: a pool would only make the test slower
        asked.append(workers)
        return imap(fn, items, 1, chunksize)

    monkeypatch.setattr(prepare, "imap", recording)
    monkeypatch.setattr(logging.getLogger("hpa_tf"), "propagate", True)  # a CLI run earlier stops it
    caplog.set_level(logging.INFO, "hpa_tf")
    prepare.prepare(root, workers=3, progress=False)
    assert asked == [3]
    assert "280 images to prepare in 3 processes" in caplog.text


def _prepared_copy(prepared, tmp_path) -> tuple[Path, DataLayout]:
    """A copy of the prepared tiny dataset to damage, and its layout."""
    root = tmp_path / "tiny"
    shutil.copytree(prepared[0], root)
    return root, DataLayout(root)


def test_stray_temp_files_are_removed_by_a_rerun(prepared, tmp_path):
    root, layout = _prepared_copy(prepared, tmp_path)
    image_id = _csv(root / "raw" / "train.csv")["Id"][0]
    cache = layout.kaggle_cache("train", image_id, "red", SIZE)
    stray = [cache.parent / f".{cache.name}.k3j_x9q2.tmp.png",  # left by a worker killed mid-write
             layout.external_cache("x", "red", SIZE).parent / ".a_red.jpg.abcdefgh.tmp.jpg",
             layout.meta_dir / ".stats.json.0a1b2c3d.tmp.json"]
    for path in stray:
        path.write_bytes(b"half")
    kept = cache.parent / ".notes"  # not a temp file of ours
    kept.write_text("keep")
    _run(root)
    assert not temporaries(root) and kept.is_file()


def _within(seconds: float, fn):
    """fn() in a thread, failing the test if it has not returned (or raised) after `seconds`."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no result after {seconds} s: the pool hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_an_unpicklable_worker_exception_is_a_runtime_error_with_its_traceback():
    import imagecodecs  # its DeflateError cannot be unpickled (its __init__ wants 2 arguments)

    with pytest.raises(RuntimeError) as error:
        _within(60, lambda: list(imap(imagecodecs.deflate_decode, [b"not zlib"] * 4, workers=2, chunksize=1)))
    assert not isinstance(error.value, DataError)  # a bug, not bad user data
    text = str(error.value)
    assert "Error" in text and "deflate_decode" in text and "Traceback" in text  # the worker's traceback


POOL_HELPERS = '''
import time
from pathlib import Path

from hpa_tf.atomic import write_atomic
from hpa_tf.errors import DataError


def _wait(until, limit=30.0):
    deadline = time.monotonic() + limit
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)


def task(item):
    kind, folder = item
    folder = Path(folder)
    if kind == "bad":  # fails while the other worker is in the middle of an atomic write
        _wait(lambda: any(folder.glob(".*.tmp*")))
        raise DataError(f"cannot read image {folder / 'bad.png'}")

    def slow(temp):  # ends its write only once the parent, stopping the pool, waits for it
        temp.write_bytes(b"half")
        _wait((folder / "draining").is_file)
        temp.write_bytes(b"whole")

    write_atomic(folder / "out.bin", slow)
    return kind
'''


def test_a_worker_error_stops_the_pool_cleanly_and_keeps_its_type(tmp_path, monkeypatch):
    """The write under way when another worker fails is finished (no temp file left), at any speed."""
    # terminating the pool at once killed workers mid-write, leaving their temp files behind
    (tmp_path / "pool_helpers.py").write_text(POOL_HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get this sys.path too
    import pool_helpers

    folder = tmp_path / "out"
    folder.mkdir()
    drain = parallel._drain

    def draining(results):  # the slow write goes on until here: a pool terminated at once kills it
        (folder / "draining").touch()
        drain(results)

    monkeypatch.setattr(parallel, "_drain", draining)
    items = [("slow", str(folder)), ("bad", str(folder))]
    with pytest.raises(DataError, match="bad.png"):
        _within(60, lambda: list(imap(pool_helpers.task, items, workers=2, chunksize=1)))
    assert not temporaries(folder)
    assert (folder / "out.bin").read_bytes() == b"whole"  # the write under way was finished


# ------------------------------------------------------------------------ cache damage on a rerun

def test_verifying_rerun_redoes_a_cache_png_corrupted_in_place(prepared, tmp_path):
    """A plain rerun checks sizes only (a stat per file, fast at real scale); --verify compares CRC-32s."""
    root, layout = _prepared_copy(prepared, tmp_path)
    image_id = _csv(root / "raw" / "train.csv")["Id"][3]
    damaged = layout.kaggle_cache("train", image_id, "blue", SIZE)
    image = {layout.kaggle_cache("train", image_id, c, SIZE) for c in COLORS}
    good = {path: path.read_bytes() for path in image}
    middle = len(good[damaged]) // 2  # inside the IDAT data of these small PNGs
    flipped = bytes(b ^ 0xFF for b in good[damaged][middle:middle + 16])
    damaged.write_bytes(good[damaged][:middle] + flipped + good[damaged][middle + 16:])
    os.utime(damaged, ns=(0, 0))  # a rewrite then shows in its mtime, however fast it follows this write
    assert damaged.stat().st_size == len(good[damaged])
    before = _mtimes(root)
    _run(root)
    assert _mtimes(root) == before  # same sizes: not noticed without --verify
    _run(root, verify=True)
    assert {path: path.read_bytes() for path in image} == good  # the uninterrupted run's bytes
    changed = {p for p, t in _mtimes(root).items() if before.get(p) != t}
    assert damaged in changed and changed <= image  # only the damaged image is redone


def test_a_kaggle_row_saved_without_statistics_is_redone(prepared, tmp_path):
    root, layout = _prepared_copy(prepared, tmp_path)
    path = layout.meta_dir / "image_features.csv"
    good = path.read_bytes()
    features = _csv(path)
    features.loc[features["key"].str.startswith("kaggle/").idxmax(), "std_g"] = ""
    features.to_csv(path, index=False)
    _run(root)
    assert path.read_bytes() == good
