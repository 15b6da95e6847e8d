"""The reference-style resize script that benchmarks/prepare.py times `prepare` against: the original's s2
(Kaggle TIFFs -> PNG) and s3 (HPAv18 RGB JPEGs -> grayscale JPEG of quality 85), spec 1.2 and 1.3.

    python benchmarks/reference_resize.py DATA_DIR OUT_DIR [--sizes 768 1536] [--workers 2]

Like the original: only numpy, PIL and OpenCV; a `multiprocessing.Pool` of the platform's default start
method; one pass over every source file per size. Each file is read with PIL (`np.array(Image.open(path))`;
an HPAv18 JPEG's channel is one plane of its RGB array, yellow the red one), resized with
`cv2.resize(INTER_LINEAR)` (a 16-bit TIFF at 16 bits, then scaled to 8 bits) and written with
`cv2.imwrite` (PNG with OpenCV's default compression; JPEG quality 85) under OUT_DIR/images_{size}/ and
OUT_DIR/external_v18_{size}/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

PLANE = {"red": 0, "green": 1, "blue": 2, "yellow": 0}  # which plane of an HPAv18 JPEG holds the channel
JPEG_QUALITY = 85  # spec 1.3


def tasks(root: Path, out: Path, size: int) -> list[tuple[str, str, int]]:
    """(source file, cache file, size) for every Kaggle train TIFF and HPAv18 JPEG under `root`."""
    found = []
    for folder, cache in (("train/tifs", f"images_{size}"), ("external/jpg", f"external_v18_{size}")):
        (out / cache).mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(root / folder)):
            target = out / cache / name.replace(".tif", ".png")
            found.append((str(root / folder / name), str(target), size))
    return found


def resize_one(task: tuple[str, str, int]) -> None:
    """Worker: one source file to its cache file at one size, as s2 / s3 did it."""
    source, target, size = task
    if source.endswith(".tif"):
        plane = np.array(Image.open(source))
    else:
        color = source.rsplit("_", 1)[1].removesuffix(".jpg")
        plane = np.array(Image.open(source))[:, :, PLANE[color]]
    small = cv2.resize(plane, (size, size), interpolation=cv2.INTER_LINEAR)
    if small.dtype == np.uint16:
        small = np.round(small * (255 / 65535)).astype(np.uint8)
    if target.endswith(".png"):
        cv2.imwrite(target, small)
    else:
        cv2.imwrite(target, small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1536])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with multiprocessing.Pool(args.workers) as pool:
        for size in args.sizes:  # the original ran its scripts once per size
            pool.map(resize_one, tasks(args.data_dir, args.out_dir, size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
