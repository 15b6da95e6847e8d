"""Rendering one field and writing every image file that shows it (PNG / HPAv18 JPEG, full-size TIFF,
planted copies); the unit of work of the spawn pool, so its task and result are plain picklable data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from hpa_tf.data.cells import CELL_LINES, CellLayout, FieldStyle, render_field
from hpa_tf.data.dedup import phash_planes
from hpa_tf.data.io import read_rgby
from hpa_tf.layout import COLORS, DataLayout

JPEG_PLANE = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}  # yellow: R+G planes (spec 1.3)
_PLANTED_DISTANCE = 8  # planted copies stay this close to their original on R, G and B
_MAX_REDRAWS = 5


@dataclass(frozen=True)
class ImageTask:
    """One image file set to write from a field: its Id, split, whether it is a noised copy, its TIFF."""

    id: str
    split: str
    copy: bool
    tif: str | None


@dataclass
class FieldTask:
    """One field to render and the images that show it (the original first); `attempt` picks its RNG
    stream and is raised by the writer when the field has to be redrawn."""

    root: str
    seed: int
    field: int
    attempt: int
    size: int
    layout: CellLayout
    line: int  # index into CELL_LINES
    style: FieldStyle  # the antibody's, in that cell line
    labels: list[int]
    images: list[ImageTask]


@dataclass(frozen=True)
class Rendered:
    """What the writer needs back from a task: the field, the attempt used and each image's pHashes."""

    field: int
    attempt: int
    hashes: list[tuple[str, np.ndarray]]


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


def _write(layout: DataLayout, image: ImageTask, field_png: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    pixels = _perturb(rng, field_png) if image.copy else field_png
    rgby = _to_uint(pixels, "uint8")
    if image.split == "external":
        _write_external(layout, image.id, rgby)
    else:
        _write_kaggle(layout, image.split, image.id, rgby)
    return rgby


def render_task(task: FieldTask) -> Rendered:
    """Render one field and write every image that shows it (original, TIFF, duplicate copies).

    Redraws the field (next attempt) until its planted copies are within _PLANTED_DISTANCE of the
    original on the files as written. Returns the field, the attempt used and each image's pHashes."""
    attempt = task.attempt
    while True:
        hashes = _render_attempt(task, attempt)
        near = all(np.bitwise_count(hashes[0][1] ^ h).max() <= _PLANTED_DISTANCE for _, h in hashes[1:])
        if near:
            return Rendered(task.field, attempt, hashes)
        if attempt >= task.attempt + _MAX_REDRAWS:
            raise RuntimeError(f"field {task.field}: planted copies keep drifting apart")
        attempt += 1


def _render_attempt(task: FieldTask, attempt: int) -> list[tuple[str, np.ndarray]]:
    layout = DataLayout(task.root)
    rng = np.random.default_rng([task.seed, 1, task.field, attempt])
    size = task.size
    tif = next((im.tif for im in task.images if im.tif), None)
    field_full = render_field(rng, task.labels, task.style, task.layout, 2 * size if tif else size,
                              CELL_LINES[task.line])
    field_png = _downsample2(field_full) if tif else field_full
    hashes = []
    for image in task.images:
        rgby = _write(layout, image, field_png, rng)
        if len(task.images) > 1 and image.split == "external":  # exact hashes of planted pairs
            rgby = read_rgby(layout, image.id, "external")
        hashes.append((image.id, phash_planes(rgby)))
        if image.tif:
            planes = _to_uint(field_full, image.tif)
            for c, color in enumerate(COLORS):
                tifffile.imwrite(layout.kaggle_tif(image.split, image.id, color), planes[..., c],
                                 compression="zlib", compressionargs={"level": 1})
    return hashes
