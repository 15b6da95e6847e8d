"""Benchmark of `python -m hpa_tf.data.prepare` at full size (spec 1.2, 1.3): ours against a reference-style
script, on the same 2048 px sources with the same number of worker processes, at several dataset sizes.

Run from the repository root: `python benchmarks/prepare.py` (about 10 minutes on 2 busy CPU cores).

Data, written to a temporary folder per dataset size in the layout `DataLayout` reads (`--images`, default 40
and 120): half of the images Kaggle train images, each 4 full-size 2048 px TIFFs (half of them 8-bit, half
16-bit; zlib-compressed unless `--tif-compression none`) plus the 4 512 px PNGs that prepare's pHashes and
statistics read, the other half HPAv18 images, each 4 2048 px RGB JPEGs holding the channel in one plane.
The fields are blurred cell-like blobs with sensor noise, so that they compress like fluorescence images.

Timed side by side over `--rounds` rounds that alternate who goes first (medians are reported):
  whole command        each contender as a user runs it, in a fresh process with `--workers` processes:
                       ours `python -m hpa_tf.data.prepare --data-dir D --sizes ... --workers N --quiet` from
                       the raw data alone (caches, meta, pHashes, matches, splits, statistics); the reference
                       `python benchmarks/reference_resize.py D OUT --sizes ... --workers N`, the original's
                       s2/s3 scripts (PIL read, `cv2.resize` INTER_LINEAR, `cv2.imwrite`), once per size.
                       Reported as wall seconds and, less sensitive to other load on the machine, as CPU
                       seconds of the process and its pool.
  cache stage          the per-image work alone in a `multiprocessing.Pool(--workers)` started and warmed up
                       beforehand: prepare's own per-image task (`_image_task`, without pHashes and
                       statistics: each source decoded once, resized to every size, encoded and written)
                       against the reference script's per-file function.

The full-dataset estimate applies the whole command's seconds per image at the largest `--images` to the
42,774 Kaggle and 74,000 HPAv18 image sets. The last line is `prepare_speedup: <whole-command ratio>x (cache
stage <ratio>x)`, each the lowest over the dataset sizes (reference seconds / ours, medians).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import reference_resize
import tifffile
from PIL import Image

from hpa_tf.data import prepare
from hpa_tf.data.io import HPA_V18_PLANE
from hpa_tf.layout import COLORS, DataLayout

FULL = 2048  # side of the full-size Kaggle TIFFs and HPAv18 JPEGs
PNG_SIZE = 512  # side of the Kaggle PNGs
FULL_HPA = 31_072 + 11_702 + 74_000  # Kaggle train + test TIFF sets, HPAv18 JPEG sets
REPO = Path(__file__).resolve().parent.parent
STAGES = ("whole command", "whole, CPU s", "cache stage")  # wall seconds, CPU seconds in the second


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
    """Worker: import everything both contenders use, so that no cache-stage timing pays for it."""
    cv2.resize(np.zeros((8, 8), np.uint8), (4, 4), interpolation=cv2.INTER_LINEAR)


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of every finished child process of this one, their pools included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a command in a fresh process, run from the repository root; fails
    loudly if it fails."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, _cpu_seconds() - cpu


def whole_reference(root: Path, out: Path, sizes: list[int], workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the reference-style script as a whole command, writing into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    return _timed([sys.executable, str(Path(reference_resize.__file__).resolve()), str(root), str(out),
                   "--sizes", *map(str, sizes), "--workers", str(workers)])


def whole_ours(root: Path, sizes: list[int], workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the whole prepare command from the raw data alone (earlier outputs removed)."""
    _remove_outputs(root)
    return _timed([sys.executable, "-m", "hpa_tf.data.prepare", "--data-dir", str(root),
                   "--sizes", *map(str, sizes), "--workers", str(workers), "--quiet"])


def cache_reference(pool, root: Path, out: Path, sizes: list[int]) -> float:
    """Seconds for the reference script's per-file work at every size in a warm pool."""
    start = time.perf_counter()
    for size in sizes:
        pool.map(reference_resize.resize_one, reference_resize.tasks(root, out, size))
    return time.perf_counter() - start


def cache_ours(pool, root: Path, ids: dict[str, list[str]], sizes: list[int]) -> float:
    """Seconds for prepare's per-image task over these images in a warm pool (caches of every size, no
    pHashes or statistics)."""
    todo = dict.fromkeys(sizes, True)
    tasks = [(str(root), prepare.ImageRef(kind, "train", i), todo, False) for kind in ids for i in ids[kind]]
    start = time.perf_counter()
    list(pool.imap_unordered(prepare._image_task, tasks, chunksize=1))
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
    parser = argparse.ArgumentParser(description="Time prepare as a whole command and its cache stage "
                                                 "against a reference-style script on 2048 px sources.")
    parser.add_argument("--images", type=int, nargs="+", default=[40, 120],
                        help="images per dataset: half Kaggle (4 TIFFs), half HPAv18 (4 JPEGs)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes for both contenders (default: 2, or 1 on one core)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1536], help="cache sizes")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each contender (median; default 3)")
    parser.add_argument("--tif-compression", choices=["zlib", "none"], default="zlib",
                        help="how the TIFFs are stored (default zlib, as the synthetic dataset's)")
    args = parser.parse_args(argv)
    if min(args.images) < 10 or args.rounds < 1:
        parser.error(f"--images must be at least 10 (prepare's 5 folds need 5 images of each kind) and "
                     f"--rounds at least 1, got {args.images} and {args.rounds}")
    limit = (os.cpu_count() or 1) * 4
    if not 1 <= args.workers <= limit:
        parser.error(f"--workers must be between 1 and {limit} (4 per core), got {args.workers}")
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes must be positive, got {args.sizes}")
    args.images, args.sizes = sorted(set(args.images)), sorted(set(args.sizes))
    return args


def _times(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[tuple[int, str, str], list[float]] = {}  # (images, stage, who) -> seconds of every round
    worst: dict[int, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="hpa_tf_prepare_bench_") as tmp, \
            multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        pool.map(_warm_up, range(args.workers), chunksize=1)
        roots, ids = {}, {}
        for n in args.images:
            start, roots[n] = time.perf_counter(), Path(tmp) / f"data_{n}"
            ids[n] = dict(zip(("kaggle", "external"), write_raw(pool, roots[n], n // 2, n - n // 2,
                                                                args.tif_compression), strict=True))
            print(f"raw data: {n // 2} Kaggle x 4 TIFFs ({args.tif_compression}), {n - n // 2} HPAv18 x 4 "
                  f"JPEGs at {FULL} px ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        for round_ in range(args.rounds):  # alternate who goes first, in case the machine's load drifts
            for n in args.images:
                root, out = roots[n], Path(tmp) / f"ref_{n}"
                for who in ("reference", "ours")[:: 1 if round_ % 2 == 0 else -1]:
                    wall, cpu = (whole_reference(root, out, args.sizes, args.workers) if who == "reference"
                                 else whole_ours(root, args.sizes, args.workers))
                    runs.setdefault((n, "whole command", who), []).append(wall)
                    runs.setdefault((n, "whole, CPU s", who), []).append(cpu)
                for who in ("reference", "ours")[:: 1 if round_ % 2 == 0 else -1]:
                    cache = (cache_reference(pool, root, out, args.sizes) if who == "reference"
                             else cache_ours(pool, root, ids[n], args.sizes))
                    runs.setdefault((n, "cache stage", who), []).append(cache)
                print(f"round {round_ + 1}, {n} images: " + ", ".join(
                    f"{stage} {who} {runs[n, stage, who][-1]:.1f} s"
                    for stage in STAGES for who in ("reference", "ours")),
                      file=sys.stderr)
        for n in args.images:
            layout = DataLayout(roots[n])
            worst[n] = {kind: max_difference(layout, Path(tmp) / f"ref_{n}", kind, ids[n][kind], args.sizes)
                        for kind in ("kaggle", "external")}

    print(f"sizes {' '.join(map(str, args.sizes))}, {args.workers} processes each, median of {args.rounds} "
          f"rounds (all rounds in brackets)")
    print(f"{'images':>6} {'stage':<14} {'reference-style s':>18} {'ours s':>8} {'speedup':>8}   all rounds: "
          f"reference | ours")
    ratios: dict[str, list[float]] = {}
    median = {key: float(np.median(values)) for key, values in runs.items()}
    for n in args.images:
        for stage in STAGES:
            ref, ours = median[n, stage, "reference"], median[n, stage, "ours"]
            ratios.setdefault(stage, []).append(ref / ours)
            print(f"{n:>6} {stage:<14} {ref:>18.2f} {ours:>8.2f} {ref / ours:>7.2f}x   "
                  f"{_times(runs[n, stage, 'reference'])} | {_times(runs[n, stage, 'ours'])}")
        print(f"{'':>6} max |ours - reference| pixel difference: Kaggle {worst[n]['kaggle']}, HPAv18 "
              f"{worst[n]['external']}")
    largest = args.images[-1]
    hours = {who: median[largest, "whole command", who] / largest * FULL_HPA / 3600
             for who in ("reference", "ours")}
    print(f"full dataset ({FULL_HPA} image sets) at the {largest}-image rate, whole command on "
          f"{args.workers} processes: reference-style {hours['reference']:.1f} h, ours {hours['ours']:.1f} h")
    whole, cache = min(ratios["whole command"]), min(ratios["cache stage"])
    print(f"prepare_speedup: {whole:.2f}x (cache stage {cache:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
