"""Resize caches (spec 1.2, 1.3): OpenCV-style bilinear resize, cache writers/readers, per-image mean/std.

Cache files are written atomically (temp file in the same folder, then os.replace), so a crash leaves
either the old file, no file, or a stray hidden `.tmp` file (which the next `prepare` run removes);
`cache_is_complete` tells a rerun what to redo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hpa_tf.atomic import write_atomic
from hpa_tf.data.io import ImageReadError, read_gray, read_rgby, stack_channels
from hpa_tf.data.layout import COLORS, DataLayout

KINDS = ("kaggle", "external")  # Kaggle PNG caches, HPAv18 JPEG caches
EXTERNAL_JPEG_QUALITY = 85  # spec 1.3


def _axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for each output: OpenCV INTER_LINEAR, half-pixel centres."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of x (uint or float32) along `axis` to `size` samples, as float32."""
    n_in = x.shape[axis]
    if n_in == size:
        return x.astype(np.float32, copy=False)
    lo, hi, w = _axis_taps(n_in, size)
    if axis == 1:
        w = w[None, :]
    else:
        w = w[:, None]
    a = np.take(x, lo, axis=axis).astype(np.float32, copy=False)
    b = np.take(x, hi, axis=axis).astype(np.float32, copy=False)
    b -= a  # a + w * (b - a) == (1 - w) * a + w * b
    b *= w
    b += a
    return b


def resize_bilinear(plane: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 or uint16 (H, W) plane to uint8 (size, size) like cv2.resize(..., INTER_LINEAR).

    Float32 math, rounded half up. uint16 input is resized first, then scaled as io.to_uint8 does.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not isinstance(plane, np.ndarray) or plane.ndim != 2 or plane.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"expected a uint8 or uint16 (H, W) plane, got {getattr(plane, 'dtype', type(plane).__name__)} "
            f"with shape {getattr(plane, 'shape', None)}"
        )
    if plane.size == 0:
        raise ValueError(f"cannot resize an empty plane of shape {plane.shape}")
    size = int(size)
    if plane.dtype == np.uint8 and plane.shape == (size, size):
        return plane.copy()
    out = _resize_axis(_resize_axis(plane, size, axis=1), size, axis=0)  # each row, then each column
    if plane.dtype == np.uint16:
        out *= np.float32(255.0 / 65535.0)
    out += np.float32(0.5)
    np.floor(out, out=out)
    return np.clip(out, 0, 255).astype(np.uint8)


def _write_image(path: Path, plane: np.ndarray, fmt: str, **save_kwargs) -> None:
    """Write a uint8 (H, W) plane as an 8-bit grayscale image, atomically."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.uint8))
    write_atomic(path, lambda temp: image.save(temp, format=fmt, **save_kwargs))


def cache_source(layout: DataLayout, kind: str, split: str, image_id: str) -> str:
    """The read_rgby source a cache is made from: Kaggle full-size TIFFs when all 4 exist, else the PNGs
    (spec 1.2); HPAv18 raw JPEGs (spec 1.3)."""
    if kind == "external":
        return "external"
    tifs = all(layout.kaggle_tif(split, image_id, color).is_file() for color in COLORS)
    return "tif" if tifs else "png"


def write_cache(layout: DataLayout, kind: str, split: str, image_id: str, size: int,
                rgby: np.ndarray) -> None:
    """Resize an RGBY source image and write its 4 cache files atomically: 8-bit PNGs for Kaggle, grayscale
    JPEGs of quality 85 for HPAv18. A channel already at `size` keeps its pixels (re-encoded)."""
    paths = cache_paths(layout, kind, split, image_id, size)  # raises on an unknown kind
    if kind == "kaggle":
        fmt, options = "PNG", {"compress_level": 1}
    else:
        fmt, options = "JPEG", {"quality": EXTERNAL_JPEG_QUALITY}
    for c, path in enumerate(paths.values()):
        _write_image(path, resize_bilinear(rgby[..., c], size), fmt, **options)


def cache_kaggle_image(layout: DataLayout, split: str, image_id: str, size: int) -> None:
    """Write the PNG cache of one Kaggle image (spec 1.2): from its TIFFs if all 4 exist, else PNGs."""
    source = cache_source(layout, "kaggle", split, image_id)
    rgby = read_rgby(layout, image_id, source, split)  # raises naming a bad file
    write_cache(layout, "kaggle", split, image_id, size, rgby)


def cache_external_image(layout: DataLayout, image_id: str, size: int) -> None:
    """Write the size x size grayscale JPEG (quality 85) cache of one HPAv18 image (spec 1.3)."""
    write_cache(layout, "external", "train", image_id, size, read_rgby(layout, image_id, "external"))


def cache_paths(layout: DataLayout, kind: str, split: str, image_id: str, size: int) -> dict[str, Path]:
    """{color: cache file} of one image; `split` is not used for kind "external" (always train)."""
    if kind == "kaggle":
        return {color: layout.kaggle_cache(split, image_id, color, size) for color in COLORS}
    if kind == "external":
        return {color: layout.external_cache(image_id, color, size) for color in COLORS}
    raise ValueError(f"unknown cache kind {kind!r}; expected one of {KINDS}")


def _read_sized(path: Path, size: int) -> np.ndarray:
    """read_gray, plus an ImageReadError naming the file if it is not size x size."""
    plane = read_gray(path)
    if plane.shape != (size, size):
        raise ImageReadError(
            f"wrong-size image in a cache: {path} is {plane.shape[0]}x{plane.shape[1]}, "
            f"expected {size}x{size}"
        )
    return plane


def cache_is_complete(layout: DataLayout, kind: str, split: str, image_id: str, size: int) -> bool:
    """True if all 4 cache files exist, decode fully and are size x size 8-bit grayscale.

    A missing, truncated, corrupt or wrong-size file gives False (never an exception); a bad `kind` raises.
    """
    for path in cache_paths(layout, kind, split, image_id, size).values():
        try:
            _read_sized(path, int(size))
        except ImageReadError:
            return False
    return True


def read_cached_rgby(layout: DataLayout, kind: str, split: str, image_id: str, size: int) -> np.ndarray:
    """Read one image's 4 cache files as uint8 (size, size, 4); ImageReadError names a missing/bad file."""
    paths = cache_paths(layout, kind, split, image_id, size)
    return stack_channels(paths, lambda p: _read_sized(p, int(size)), name=image_id)


def channel_stats(rgby: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (ddof 0) of one uint8 (H, W, 4) image, pixels / 255: float64 (4,) each.

    These are the per-image terms of spec 4; the caller averages means and stds over images.
    """
    if not isinstance(rgby, np.ndarray) or rgby.ndim != 3 or rgby.shape[-1] != 4 or rgby.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 (H, W, 4) image, got {getattr(rgby, 'dtype', type(rgby).__name__)} "
            f"with shape {getattr(rgby, 'shape', None)}"
        )
    x = rgby.reshape(-1, 4).astype(np.float64) / 255.0
    return x.mean(axis=0), x.std(axis=0)
