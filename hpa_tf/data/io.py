"""Image readers: one channel plane as uint8 (H, W), or one RGBY image as uint8 (H, W, 4) (spec 1.1-1.3).

Every failure (missing, unreadable, truncated, wrong bit depth, mismatched channels) raises
`ImageReadError` naming the file, so nothing is silently skipped or filled in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from hpa_tf.errors import DataError
from hpa_tf.layout import COLORS, KAGGLE_FOLDERS, DataLayout, validate_id

PathLike = str | os.PathLike

SOURCES = ("png", "tif", "external")  # Kaggle PNGs, full-size Kaggle TIFFs, raw HPAv18 JPEGs

# Which plane of a raw HPAv18 RGB JPEG holds each channel; yellow is the red plane (spec 1.3).
HPA_V18_PLANE = {"red": 0, "green": 1, "blue": 2, "yellow": 0}

# 8-bit colour modes a JPEG (or a stray PNG) may decode to; read_plane_jpg converts them to RGB.
# 16-bit or bilevel modes are rejected instead: converting them would clip or invent values.
_EIGHT_BIT_COLOR_MODES = ("CMYK", "YCbCr", "RGBA", "RGBX", "P", "PA", "LA")

# Not the file's fault: these pass through a decode untouched. Every other exception raised while one
# file is decoded (PIL's, tifffile's, imagecodecs' DeflateError and other RuntimeErrors, a missing codec's
# ImportError, ...) becomes an ImageReadError naming the file, keeping the decoder's type and message.
_NOT_DECODE_ERRORS = (MemoryError,)  # KeyboardInterrupt and SystemExit are not Exceptions at all


class ImageReadError(DataError):
    """An image file is missing, unreadable or not what the reader expects; the message names it."""


def _decode_error(path: Path, exc: Exception) -> ImageReadError:
    if isinstance(exc, FileNotFoundError):
        return ImageReadError(f"missing image file: {path}")
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ImageReadError(f"cannot read image {path}: {detail}")


def _pil_array(path: PathLike, to_rgb: tuple[str, ...] = (), band: int | None = None
               ) -> tuple[str, np.ndarray]:
    """Fully decode an image with PIL (`load()`, so truncation is caught) and return (mode, array).

    Images whose PIL mode is in `to_rgb` are converted to "RGB"; the original mode is returned. With `band`,
    a multi-band image gives only that band as (H, W), without an array of all bands in between.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            image = im.convert("RGB") if mode in to_rgb else im
            if band is not None and len(image.getbands()) > 1:
                image = image.getchannel(band)
            return mode, np.array(image)
    except _NOT_DECODE_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's read error
        raise _decode_error(path, exc) from exc


def read_gray(path: PathLike) -> np.ndarray:
    """Read an 8-bit grayscale PNG/JPEG (Kaggle PNG, resize cache) as uint8 (H, W).

    Any other mode (RGB, palette, 16-bit, ...) raises ImageReadError rather than being guessed at.
    """
    mode, arr = _pil_array(path)
    if mode != "L":
        raise ImageReadError(
            f"{path}: expected an 8-bit grayscale image (PIL mode 'L'), got mode {mode!r} "
            f"with shape {arr.shape} and dtype {arr.dtype}"
        )
    return arr


def read_plane_jpg(path: PathLike, color: str) -> np.ndarray:
    """Read the plane of a raw HPAv18 JPEG that holds `color` as uint8 (H, W) (spec 1.3).

    RGB images give plane HPA_V18_PLANE[color] (yellow -> red plane); a grayscale image is the plane.
    """
    if color not in HPA_V18_PLANE:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    mode, arr = _pil_array(path, to_rgb=_EIGHT_BIT_COLOR_MODES, band=HPA_V18_PLANE[color])
    if mode not in ("L", "RGB", *_EIGHT_BIT_COLOR_MODES):
        raise ImageReadError(
            f"{path}: expected an 8-bit RGB or grayscale image, got mode {mode!r} "
            f"with shape {arr.shape} and dtype {arr.dtype}"
        )
    return arr


def to_uint8(plane: np.ndarray) -> np.ndarray:
    """Convert a uint8 or uint16 plane to uint8; uint16 is rescaled, round(v * 255 / 65535).

    Full range is kept (65535 -> 255), unlike a plain cast or a shift. Other dtypes raise ValueError.
    """
    if plane.dtype == np.uint8:
        return plane
    if plane.dtype == np.uint16:
        # round(v / 257), 10x faster in OpenCV than in integers and exact: v / 257 is never closer than 1/514
        # to k + 0.5 (257 is odd), far more than OpenCV's float error (tested on all 65536 values)
        return cv2.convertScaleAbs(plane, alpha=1 / 257).reshape(plane.shape)
    raise ValueError(f"cannot convert dtype {plane.dtype} to uint8; expected uint8 or uint16")


def read_tif(path: PathLike) -> np.ndarray:
    """Read a single-plane full-size Kaggle TIFF (uint8 or uint16, maybe compressed) as uint8 (H, W)."""
    path = Path(path)
    try:
        arr = tifffile.imread(path)
    except _NOT_DECODE_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's read error
        raise _decode_error(path, exc) from exc
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(
            f"{path}: expected a single-plane uint8 or uint16 TIFF, got shape {arr.shape} "
            f"and dtype {arr.dtype}"
        )
    return to_uint8(arr)


def _stack(planes: Sequence[tuple[Path, np.ndarray]], name: str) -> np.ndarray:
    """Stack 4 (path, plane) pairs, in R, G, B, Y order, into uint8 (H, W, 4); checks every plane."""
    for color, (path, plane) in zip(COLORS, planes, strict=True):
        if not isinstance(plane, np.ndarray) or plane.dtype != np.uint8 or plane.ndim != 2:
            raise ImageReadError(
                f"image {name}: {color} channel {path} is not a uint8 (H, W) plane "
                f"(got {getattr(plane, 'dtype', type(plane).__name__)} {getattr(plane, 'shape', '')})"
            )
    shapes = {plane.shape for _, plane in planes}
    if len(shapes) != 1:
        detail = ", ".join(
            f"{color} {plane.shape} ({path})" for color, (path, plane) in zip(COLORS, planes, strict=True)
        )
        raise ImageReadError(f"image {name}: channel planes differ in shape: {detail}")
    return cv2.merge([plane for _, plane in planes])  # np.stack's array, 5x faster at 2048 px


def _ordered_paths(paths: Mapping[str, PathLike] | Sequence[PathLike]) -> list[Path]:
    """Four channel paths in R, G, B, Y order, from a {color: path} mapping or an ordered sequence."""
    if isinstance(paths, Mapping):
        if set(paths) != set(COLORS):
            raise ValueError(f"channel paths must have exactly the keys {COLORS}, got {sorted(paths)}")
        return [Path(paths[color]) for color in COLORS]
    if isinstance(paths, str | os.PathLike) or len(paths) != len(COLORS):
        raise ValueError(f"expected 4 channel paths in {COLORS} order, got {paths!r}")
    return [Path(p) for p in paths]


def stack_channels(
    paths: Mapping[str, PathLike] | Sequence[PathLike],
    read_fn: Callable[[Path], np.ndarray] = read_gray,
    name: str | None = None,
) -> np.ndarray:
    """Read 4 channel files with read_fn(path) and stack them into uint8 (H, W, 4), R, G, B, Y order.

    For any one-file-per-channel layout (e.g. resize caches); `name` (default: first path) labels errors.
    """
    ordered = _ordered_paths(paths)
    return _stack([(p, read_fn(p)) for p in ordered], name if name is not None else str(ordered[0]))


def read_rgby(layout: DataLayout, image_id: str, source: str, split: str = "train") -> np.ndarray:
    """Read one image of the raw dataset as uint8 (H, W, 4) in R, G, B, Y order.

    source: "png" / "tif" (Kaggle files of `split`) or "external" (HPAv18 JPEGs; `split` is not used).
    """
    validate_id(image_id)
    if source not in SOURCES:
        raise ValueError(f"unknown image source {source!r}; expected one of {SOURCES}")
    if split not in KAGGLE_FOLDERS:
        raise ValueError(f"unknown split {split!r}; expected one of {KAGGLE_FOLDERS}")
    planes = []
    for color in COLORS:
        if source == "png":
            path = layout.kaggle_png(split, image_id, color)
            planes.append((path, read_gray(path)))
        elif source == "tif":
            path = layout.kaggle_tif(split, image_id, color)
            planes.append((path, read_tif(path)))
        else:
            path = layout.external_jpg(image_id, color)
            planes.append((path, read_plane_jpg(path, color)))
    return _stack(planes, image_id)
