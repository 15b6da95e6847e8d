"""Benchmark of the resize-cache stage of `python -m hpa_tf.data.prepare` at full size (spec 1.2, 1.3):
ours against a reference-style script, on the same 2048 px sources with the same number of workers.

Run from the repository root: `python benchmarks/prepare.py` (about a minute on 2 CPU cores).

Data, written to a temporary folder in the layout `DataLayout` reads: `--kaggle` Kaggle train images, each
4 full-size 2048 px TIFFs (half of the images 8-bit, half 16-bit; zlib-compressed unless
`--tif-compression none`) plus the 4 512 px PNGs that prepare's pHashes and statistics read, and
`--external` HPAv18 images, each 4 2048 px RGB JPEGs holding the channel in one plane. The fields are
blurred cell-like blobs with sensor noise, so that they compress like fluorescence images, not like noise.

Timed, each through a `multiprocessing.Pool(--workers)` (spawn, started and warmed up beforehand), over
`--rounds` rounds that alternate who goes first (the median is reported):
  ours (cache stage)   prepare's own per-image task (`_image_task`, without pHashes and statistics): each
                       source decoded once, cv2 bilinear resize to every size, encoded (PNG: Sub filter and
                       libdeflate level 1; JPEG quality 85) and written atomically, fingerprinted in memory.
  reference-style      the original's s2/s3 scripts: run once per size, each reads every channel with PIL
                       (`np.array(Image.open(path))`; a 16-bit TIFF is resized at 16 bits, then converted
                       to 8 bits), `cv2.resize(INTER_LINEAR)` and `cv2.imwrite` (PNG, default compression;
                       JPEG quality 85).
  ours (whole command) `prepare(...)` once, from the raw data alone: also meta, pHashes, splits and
                       statistics. Below 64 images it runs in one process (its pool pays only for larger
                       jobs), so this row is for information and not in the speedup. Its 5 folds need at
                       least 5 images of each kind; with fewer it is left out.

The last line is `prepare_speedup: <reference cache time / our cache time>x`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from hpa_tf.data import prepare
from hpa_tf.data.io import HPA_V18_PLANE
from hpa_tf.data.resize import EXTERNAL_JPEG_QUALITY
from hpa_tf.layout import COLORS, DataLayout

FULL = 2048  # side of the full-size Kaggle TIFFs and HPAv18 JPEGs
PNG_SIZE = 512  # side of the Kaggle PNGs
WHOLE_MIN = 5  # images of each kind the whole command needs (5 folds)
FULL_HPA = {"kaggle": 31_072 + 11_702, "external": 74_000}  # Kaggle train + test TIFF sets, HPAv18 sets


# ------------------------------------------------------------------------------------------ raw data

def _field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size) plane in [0, 1]: blurred cell-like ellipses on a dark, noisy background."""
    canvas = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(20, 40))):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 40, size // 12, 2))
        angle, value = float(rng.uniform(0, 180)), float(rng.uniform(0.2, 0.9))
        cv2.ellipse(canvas, centre, axes, angle, 0, 360, value, thickness=-1)
    texture = cv2.resize(rng.uniform(0.5, 1.0, (size // 32, size // 32)).astype(np.float32), (size, size))
    canvas = cv2.GaussianBlur(canvas * texture, (0, 0), size / 300)
    canvas += rng.normal(0.03, 0.01, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 1)


def _write_kaggle(args: tuple) -> None:
    """Worker: the 4 TIFFs (`dtype`) and 4 PNGs of one Kaggle image."""
    root, image_id, dtype, compression, seed = args
    layout, rng = DataLayout(root), np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    for color in COLORS:
        plane = _field(rng, FULL)
        tifffile.imwrite(layout.kaggle_tif("train", image_id, color), np.round(plane * top).astype(dtype),
                         compression=None if compression == "none" else compression)
        small = cv2.resize(np.round(plane * 255).astype(np.uint8), (PNG_SIZE, PNG_SIZE),
                           interpolation=cv2.INTER_AREA)
        Image.fromarray(small).save(layout.kaggle_png("train", image_id, color), compress_level=1)


def _write_external(args: tuple) -> None:
    """Worker: the 4 RGB JPEGs of one HPAv18 image, each channel in its plane (yellow: the red one)."""
    root, image_id, seed = args
    layout, rng = DataLayout(root), np.random.default_rng(seed)
    for color in COLORS:
        rgb = np.zeros((FULL, FULL, 3), np.uint8)
        rgb[..., HPA_V18_PLANE[color]] = np.round(_field(rng, FULL) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(layout.external_jpg(image_id, color), quality=90)


def write_raw(pool, root: Path, n_kaggle: int, n_external: int,
              compression: str) -> tuple[list[str], list[str]]:
    """The raw dataset prepare reads: CSVs and image files. Returns (Kaggle Ids, HPAv18 Ids)."""
    layout = DataLayout(root)
    for folder in ("train/tifs", "train/images", "external/jpg", "raw"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    kaggle = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(n_kaggle)]
    external = [f"{1000 + i // 2}_{1600 + i}_C{i % 9 + 1}_1" for i in range(n_external)]
    pd.DataFrame({"Id": kaggle, "Target": [str(i % 28) for i in range(n_kaggle)]}).to_csv(
        layout.train_csv, index=False)
    pd.DataFrame({"Id": external, "Target": [str(i % 28) for i in range(n_external)]}).to_csv(
        layout.external_csv, index=False)
    pd.DataFrame({"Id": [], "Predicted": []}).to_csv(layout.sample_submission_csv, index=False)
    pool.map(_write_kaggle, [(str(root), image_id, np.uint8 if i % 2 == 0 else np.uint16, compression, i)
                             for i, image_id in enumerate(kaggle)], chunksize=1)
    pool.map(_write_external, [(str(root), image_id, 10_000 + i) for i, image_id in enumerate(external)],
             chunksize=1)
    return kaggle, external


# ---------------------------------------------------------------------------------------- the contenders

def _warm_up(_: int) -> None:
    """Worker: import everything both contenders use, so that no timing pays for it."""
    cv2.resize(np.zeros((8, 8), np.uint8), (4, 4), interpolation=cv2.INTER_LINEAR)


def _reference_image(args: tuple) -> None:
    """Worker: the original's s2 (Kaggle TIFFs -> PNG) or s3 (HPAv18 JPEGs -> JPEG) for one image and
    one size, as that size's run of the script did it."""
    root, out, kind, image_id, size = args
    layout = DataLayout(root)
    for color in COLORS:
        if kind == "kaggle":
            plane = np.array(Image.open(layout.kaggle_tif("train", image_id, color)))
        else:
            plane = np.array(Image.open(layout.external_jpg(image_id, color)))[:, :, HPA_V18_PLANE[color]]
        small = cv2.resize(plane, (size, size), interpolation=cv2.INTER_LINEAR)
        if small.dtype == np.uint16:
            small = np.round(small * (255 / 65535)).astype(np.uint8)
        if kind == "kaggle":
            cv2.imwrite(str(Path(out) / f"images_{size}" / f"{image_id}_{color}.png"), small)
        else:
            cv2.imwrite(str(Path(out) / f"external_v18_{size}" / f"{image_id}_{color}.jpg"), small,
                        [cv2.IMWRITE_JPEG_QUALITY, EXTERNAL_JPEG_QUALITY])


def run_reference(pool, root: Path, out: Path, kind: str, ids: list[str], sizes: list[int]) -> float:
    """Seconds for the reference-style scripts: one run per size, each reading every source again."""
    start = time.perf_counter()
    for size in sizes:
        (out / (f"images_{size}" if kind == "kaggle" else f"external_v18_{size}")).mkdir(parents=True,
                                                                                          exist_ok=True)
        pool.map(_reference_image, [(str(root), str(out), kind, i, size) for i in ids], chunksize=1)
    return time.perf_counter() - start


def run_ours(pool, root: Path, kind: str, ids: list[str], sizes: list[int]) -> float:
    """Seconds for prepare's per-image task over these images (caches of every size, no features)."""
    todo = dict.fromkeys(sizes, True)
    tasks = [(str(root), prepare.ImageRef(kind, "train", i), todo, False) for i in ids]
    start = time.perf_counter()
    list(pool.imap_unordered(prepare._image_task, tasks, chunksize=1))
    return time.perf_counter() - start


def run_whole(root: Path, sizes: list[int], workers: int) -> float:
    """Seconds for the whole prepare command (caches, meta, pHashes, splits, statistics) from scratch."""
    start = time.perf_counter()
    prepare.prepare(root, sizes, workers, progress=False)
    return time.perf_counter() - start


def _remove_outputs(root: Path) -> None:
    """Delete what prepare wrote, so that the next run starts from the raw data alone."""
    for folder in [*root.glob("train/images_*"), *root.glob("train/external_v18_*"), root / "meta",
                   root / "split"]:
        shutil.rmtree(folder, ignore_errors=True)


def max_difference(layout: DataLayout, ref_out: Path, kind: str, ids: list[str], sizes: list[int]) -> int:
    """Largest pixel difference between our caches and the reference-style files."""
    worst = 0
    for size in sizes:
        for image_id in ids:
            for color in COLORS:
                if kind == "kaggle":
                    ours, folder = layout.kaggle_cache("train", image_id, color, size), f"images_{size}"
                else:
                    ours, folder = layout.external_cache(image_id, color, size), f"external_v18_{size}"
                a = np.asarray(Image.open(ours), dtype=np.int16)
                b = np.asarray(Image.open(ref_out / folder / ours.name), dtype=np.int16)
                worst = max(worst, int(np.abs(a - b).max()))
    return worst


# ----------------------------------------------------------------------------------------------- driver

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time prepare's resize caches against a reference-style "
                                                 "script on full-size (2048 px) synthetic sources.")
    parser.add_argument("--kaggle", type=int, default=8, help="Kaggle images (4 TIFFs each; default 8)")
    parser.add_argument("--external", type=int, default=8, help="HPAv18 images (4 JPEGs each; default 8)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes for both contenders (default: 2, or 1 on one core)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1536], help="cache sizes")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each contender (median; default 3)")
    parser.add_argument("--tif-compression", choices=["zlib", "none"], default="zlib",
                        help="how the TIFFs are stored (default zlib, as the synthetic dataset's)")
    args = parser.parse_args(argv)
    if args.kaggle < 1 or args.external < 1 or args.rounds < 1:
        parser.error(f"--kaggle, --external and --rounds must be at least 1, got {args.kaggle}, "
                     f"{args.external} and {args.rounds}")
    limit = (os.cpu_count() or 1) * 4
    if not 1 <= args.workers <= limit:
        parser.error(f"--workers must be between 1 and {limit} (4 per core), got {args.workers}")
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes must be positive, got {args.sizes}")
    args.sizes = sorted(set(args.sizes))
    return args


def _row(name: str, images: int, seconds: float, workers: int, core_hours: float | str) -> str:
    rate = images / seconds / workers
    hours = core_hours if isinstance(core_hours, str) else f"{core_hours:.1f}"
    return f"{name:<34} {images:>6} {seconds:>9.2f} {rate:>12.3f} {hours:>12}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = {"kaggle": args.kaggle, "external": args.external}
    with tempfile.TemporaryDirectory(prefix="hpa_tf_prepare_bench_") as tmp, \
            multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        root = Path(tmp) / "data"
        pool.map(_warm_up, range(args.workers), chunksize=1)
        start = time.perf_counter()
        raw = write_raw(pool, root, args.kaggle, args.external, args.tif_compression)
        ids = dict(zip(counts, raw, strict=True))
        print(f"raw data: {args.kaggle} Kaggle x 4 TIFFs ({args.tif_compression}), {args.external} HPAv18 "
              f"x 4 JPEGs at {FULL} px ({time.perf_counter() - start:.0f} s); sizes {args.sizes}, "
              f"{args.workers} workers",
              file=sys.stderr)
        runs: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):  # alternate who goes first, in case the machine's load drifts
            for who in ("reference", "ours")[:: 1 if round_ % 2 == 0 else -1]:
                for kind in counts:
                    if who == "reference":
                        seconds = run_reference(pool, root, Path(tmp) / "ref", kind, ids[kind], args.sizes)
                    else:
                        seconds = run_ours(pool, root, kind, ids[kind], args.sizes)
                    runs.setdefault((who, kind), []).append(seconds)
        times = {key: float(np.median(values)) for key, values in runs.items()}
        layout = DataLayout(root)
        worst = {kind: max_difference(layout, Path(tmp) / "ref", kind, ids[kind], args.sizes)
                 for kind in counts}
        whole = None
        if min(counts.values()) >= WHOLE_MIN:
            _remove_outputs(root)
            whole = run_whole(root, args.sizes, args.workers)

    print(f"median of {args.rounds} rounds; ours (whole command): one run")
    print(f"{'stage (sizes ' + ' '.join(map(str, args.sizes)) + ')':<34} {'images':>6} {'seconds':>9} "
          f"{'img/s/worker':>12} {'full HPA h':>12}")
    full = {}
    for who, name in (("reference", "reference-style"), ("ours", "ours (cache stage)")):
        for kind in counts:
            hours = FULL_HPA[kind] * times[who, kind] * args.workers / counts[kind] / 3600
            full[who, kind] = hours
            print(_row(f"{kind} {name}", counts[kind], times[who, kind], args.workers, hours))
        total = sum(times[who, kind] for kind in counts)
        print(_row(f"all {name}", sum(counts.values()), total, args.workers,
                   sum(full[who, kind] for kind in counts)))
    if whole is None:
        print(f"ours (whole command): not run (its 5-fold splits need {WHOLE_MIN} images of each kind)")
    else:
        print(_row("ours (whole command)", sum(counts.values()), whole, args.workers, "-"))
    print(f"(full HPA h: {FULL_HPA['kaggle']} Kaggle TIFF sets + {FULL_HPA['external']} HPAv18 JPEG sets, "
          f"hours on one core; max |ours - reference| pixel difference: Kaggle {worst['kaggle']}, "
          f"HPAv18 {worst['external']})")
    ratio = sum(times["reference", k] for k in counts) / sum(times["ours", k] for k in counts)
    print(f"prepare_speedup: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
