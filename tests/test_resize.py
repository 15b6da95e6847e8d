"""Tests for hpa_tf.data.resize: bilinear resize vs TF, Kaggle/HPAv18 resize caches, cache checks, stats."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from hpa_tf.data.io import ImageReadError, read_gray, read_plane_jpg
from hpa_tf.data.resize import (
    cache_external_image,
    cache_is_complete,
    cache_kaggle_image,
    channel_stats,
    read_cached_rgby,
    resize_bilinear,
)
from hpa_tf.layout import COLORS, DataLayout

ID = "img_01"
EXT_ID = "10580_1610_C1_1"


def _rand_u8(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth(seed: int, shape, lo: float = 0.0, hi: float = 255.0) -> np.ndarray:
    """Low-frequency float64 image in [lo, hi]: a sum of random sinusoids."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    img = np.zeros(shape)
    for _ in range(3):
        fy, fx, py, px = rng.uniform(0.3, 1.5), rng.uniform(0.3, 1.5), rng.uniform(0, 6), rng.uniform(0, 6)
        img += np.sin(2 * np.pi * fy * yy + py) * np.cos(2 * np.pi * fx * xx + px)
    img = (img - img.min()) / (img.max() - img.min())
    return lo + img * (hi - lo)


def _mean2x2(x: np.ndarray) -> np.ndarray:
    """Float64 2x2 block means (an exact factor-2 area downscale)."""
    x = x.astype(np.float64)
    return (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) / 4.0


def _tf_resize(x: np.ndarray, size: int) -> np.ndarray:
    tf = pytest.importorskip("tensorflow")
    batch = x[None, ..., None].astype(np.float32)
    out = tf.image.resize(batch, (size, size), method="bilinear", antialias=False)
    return out.numpy()[0, ..., 0].astype(np.float64)


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


# ---------------------------------------------------------------------------------------- resize_bilinear


@pytest.mark.parametrize(
    ("shape", "size"),
    [((64, 64), 32), ((64, 64), 48), ((100, 100), 37), ((32, 32), 64), ((512, 512), 768), ((40, 72), 50)],
)
def test_resize_matches_tf_bilinear(shape, size):
    x = _rand_u8(sum(shape) + size, shape)
    expected = np.clip(np.floor(_tf_resize(x, size) + 0.5), 0, 255)
    out = resize_bilinear(x, size)
    assert out.dtype == np.uint8 and out.shape == (size, size)
    assert _diff(out, expected) <= 1
    # off by one where OpenCV's fixed-point weights (11 bits) round otherwise than float math: at most ~15%
    # of random pixels, not about half of them as truncation would be
    assert np.mean(out != expected) < 0.25


@pytest.mark.parametrize(("shape", "size"), [((2048, 2048), 768), ((300, 200), 131), ((50, 50), 97)])
def test_resize_is_cv2_inter_linear(shape, size):
    noise = np.random.default_rng(size).normal(0, 20, shape)
    x = np.clip(_smooth(size, shape) + noise, 0, 255).astype(np.uint8)  # smooth content plus sensor noise
    out = resize_bilinear(x, size)
    np.testing.assert_array_equal(out, cv2.resize(x, (size, size), interpolation=cv2.INTER_LINEAR))
    assert _diff(out, np.clip(np.floor(_tf_resize(x, size) + 0.5), 0, 255)) <= 1  # fixed point vs float


def test_resize_uint16_matches_tf_then_to_uint8_scaling():
    x = np.random.default_rng(5).integers(0, 65536, size=(60, 60), dtype=np.uint16)
    expected = np.clip(np.floor(_tf_resize(x, 25) * 255.0 / 65535.0 + 0.5), 0, 255)
    out = resize_bilinear(x, 25)
    assert out.dtype == np.uint8 and out.shape == (25, 25)
    assert _diff(out, expected) <= 1
    assert resize_bilinear(np.full((8, 8), 65535, np.uint16), 8).min() == 255


def test_resize_identity_when_size_equals_input():
    x = _rand_u8(1, (33, 33))
    out = resize_bilinear(x, 33)
    np.testing.assert_array_equal(out, x)
    assert out is not x


def test_resize_factor_two_is_2x2_mean():
    x = _smooth(2, (64, 64)).round().astype(np.uint8)
    out = resize_bilinear(x, 32)
    assert _diff(out, np.floor(_mean2x2(x) + 0.5)) <= 1
    # random content too; weights are exactly 0.5, so the float32 result is exact and rounds half up
    # (as OpenCV's fixed-point (sum + 2) >> 2 does): equality, not just within 1
    r = _rand_u8(3, (64, 64))
    np.testing.assert_array_equal(resize_bilinear(r, 32), np.floor(_mean2x2(r) + 0.5))


@pytest.mark.parametrize("size", [1, 7, 16, 50])
def test_resize_constant_stays_constant(size):
    out = resize_bilinear(np.full((16, 16), 173, np.uint8), size)
    assert out.shape == (size, size)
    assert np.all(out == 173)


def test_resize_non_square_input_axes():
    # a horizontal ramp must stay a horizontal ramp (rows/columns not swapped)
    x = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (20, 1))  # 20 x 100
    out = resize_bilinear(x, 50)
    assert np.all(out == out[0])  # every row equal
    assert np.all(np.diff(out[0].astype(int)) > 0)


@pytest.mark.parametrize(
    ("plane", "size"),
    [
        (np.zeros((8, 8, 1), np.uint8), 4),
        (np.zeros((8,), np.uint8), 4),
        (np.zeros((8, 8), np.float32), 4),
        (np.zeros((8, 8), np.int32), 4),
        (np.zeros((8, 8), np.uint8), 0),
        (np.zeros((8, 8), np.uint8), -3),
        (np.zeros((8, 8), np.uint8), 4.0),
        (np.zeros((0, 8), np.uint8), 4),
    ],
)
def test_resize_bad_input_raises(plane, size):
    with pytest.raises(ValueError):
        resize_bilinear(plane, size)


# ------------------------------------------------------------------------------------ Kaggle cache


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_tif(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)


def _kaggle_fixture(root: Path, dtype, tif_size: int = 128, with_tif: bool = True, seed: int = 0):
    """Kaggle layout with full-size TIFFs (smooth, `dtype`) and PNGs = the TIFF 2x2-mean downscaled to 8 bit.

    Returns (layout, {color: tif array}, {color: png array}).
    """
    layout = DataLayout(root)
    top = 65535 if dtype == np.uint16 else 255
    tifs, pngs = {}, {}
    for i, color in enumerate(COLORS):
        tif = _smooth(seed * 10 + i, (tif_size, tif_size), lo=0.05 * top, hi=0.95 * top).round().astype(dtype)
        png = np.floor(_mean2x2(tif) * 255.0 / top + 0.5).astype(np.uint8)
        tifs[color], pngs[color] = tif, png
        if with_tif:
            _write_tif(layout.kaggle_tif("train", ID, color), tif)
        _write_png(layout.kaggle_png("train", ID, color), png)
    return layout, tifs, pngs


def _cache_dir_files(layout: DataLayout, split: str, size: int) -> list[str]:
    return sorted(p.name for p in layout.kaggle_cache(split, ID, "red", size).parent.iterdir())


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_kaggle_cache_from_tif_agrees_with_png(tmp_path, dtype):
    with_tif, _, pngs = _kaggle_fixture(tmp_path / "a", dtype)
    png_only, _, _ = _kaggle_fixture(tmp_path / "b", dtype, with_tif=False)
    for size in (64, 48):
        cache_kaggle_image(with_tif, "train", ID, size)
        cache_kaggle_image(png_only, "train", ID, size)
        for color in COLORS:
            a_path = with_tif.kaggle_cache("train", ID, color, size)
            b_path = png_only.kaggle_cache("train", ID, color, size)
            for path in (a_path, b_path):
                with Image.open(path) as im:
                    assert im.format == "PNG" and im.mode == "L" and im.size == (size, size)
            a, b = read_gray(a_path), read_gray(b_path)
            assert _diff(a, b) <= 2, (color, size)
            if size == 64:  # PNG already at the cache size: copied unchanged
                np.testing.assert_array_equal(b, pngs[color])
        assert _cache_dir_files(with_tif, "train", size) == sorted(f"{ID}_{c}.png" for c in COLORS)
        assert _cache_dir_files(png_only, "train", size) == sorted(f"{ID}_{c}.png" for c in COLORS)


def test_kaggle_cache_prefers_tif(tmp_path):
    layout, tifs, pngs = _kaggle_fixture(tmp_path, np.uint8)
    inverted = {c: 255 - t for c, t in tifs.items()}  # TIFF content no longer matches the PNG
    for color in COLORS:
        _write_tif(layout.kaggle_tif("train", ID, color), inverted[color])
    cache_kaggle_image(layout, "train", ID, 64)
    for color in COLORS:
        got = read_gray(layout.kaggle_cache("train", ID, color, 64))
        assert _diff(got, np.floor(_mean2x2(inverted[color]) + 0.5)) <= 1
        assert _diff(got, pngs[color]) > 100


def test_kaggle_cache_uses_png_unless_all_four_tifs(tmp_path):
    layout, tifs, pngs = _kaggle_fixture(tmp_path, np.uint8)
    for color in COLORS:
        _write_tif(layout.kaggle_tif("train", ID, color), 255 - tifs[color])
    layout.kaggle_tif("train", ID, "yellow").unlink()
    cache_kaggle_image(layout, "train", ID, 64)
    for color in COLORS:
        np.testing.assert_array_equal(read_gray(layout.kaggle_cache("train", ID, color, 64)), pngs[color])


def test_kaggle_cache_test_split_and_upscale(tmp_path):
    layout = DataLayout(tmp_path)
    planes = {c: _rand_u8(i, (32, 32)) for i, c in enumerate(COLORS)}
    for color, plane in planes.items():
        _write_png(layout.kaggle_png("test", ID, color), plane)
    cache_kaggle_image(layout, "test", ID, 80)
    for color, plane in planes.items():
        got = read_gray(layout.kaggle_cache("test", ID, color, 80))
        np.testing.assert_array_equal(got, resize_bilinear(plane, 80))
    assert not layout.kaggle_cache("train", ID, "red", 80).exists()


def test_kaggle_cache_missing_source_names_file(tmp_path):
    layout, _, _ = _kaggle_fixture(tmp_path, np.uint8, with_tif=False)
    missing = layout.kaggle_png("train", ID, "blue")
    missing.unlink()
    with pytest.raises(ImageReadError, match=str(missing)):
        cache_kaggle_image(layout, "train", ID, 48)


def test_kaggle_cache_failed_write_leaves_no_file(tmp_path, monkeypatch):
    layout, _, _ = _kaggle_fixture(tmp_path, np.uint8, with_tif=False)
    write_bytes = Path.write_bytes

    def broken_write(self, data):
        write_bytes(self, data[: len(data) // 2])  # a half-written temp file
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(OSError, match="disk full"):
        cache_kaggle_image(layout, "train", ID, 48)
    assert _cache_dir_files(layout, "train", 48) == []  # neither the target nor a temp file


# ---------------------------------------------------------------------------------- external cache


def test_external_cache_plane_choice_and_jpeg(tmp_path):
    layout = DataLayout(tmp_path)
    size = 48
    wanted = {}
    for i, color in enumerate(COLORS):
        planes = [
            _smooth(100 + 3 * i + k, (96, 96), lo=30, hi=120).round().astype(np.uint8) for k in range(3)
        ]
        plane = {"red": 0, "green": 1, "blue": 2, "yellow": 0}[color]
        planes[plane] = (255 - planes[plane]).astype(np.uint8)  # wanted plane in 135..225, others in 30..120
        wanted[color] = planes[plane]
        path = layout.external_jpg(EXT_ID, color)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack(planes, axis=-1)).save(path, quality=95, subsampling=0)
    cache_external_image(layout, EXT_ID, size)
    for color in COLORS:
        path = layout.external_cache(EXT_ID, color, size)
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (size, size)
        got = read_gray(path)
        decoded_src = read_plane_jpg(layout.external_jpg(EXT_ID, color), color)
        assert _diff(got, resize_bilinear(decoded_src, size)) <= 4, color  # q85 JPEG error only
        assert _diff(got, resize_bilinear(wanted[color], size)) <= 6, color
        assert got.min() > 125, color  # not one of the other (darker) planes
    files = sorted(p.name for p in layout.external_cache(EXT_ID, "red", size).parent.iterdir())
    assert files == sorted(f"{EXT_ID}_{c}.jpg" for c in COLORS)


# ------------------------------------------------------------------------- cache checks and reading


def test_cache_is_complete_and_read_cached_rgby(tmp_path):
    layout, _, pngs = _kaggle_fixture(tmp_path, np.uint8, with_tif=False)
    assert not cache_is_complete(layout, "kaggle", "train", ID, 64)  # missing
    cache_kaggle_image(layout, "train", ID, 64)
    assert cache_is_complete(layout, "kaggle", "train", ID, 64)
    assert not cache_is_complete(layout, "kaggle", "train", ID, 48)  # other size not cached
    rgby = read_cached_rgby(layout, "kaggle", "train", ID, 64)
    assert rgby.dtype == np.uint8 and rgby.shape == (64, 64, 4)
    for c, color in enumerate(COLORS):
        np.testing.assert_array_equal(rgby[..., c], pngs[color])

    green = layout.kaggle_cache("train", ID, "green", 64)
    data = green.read_bytes()
    green.write_bytes(data[: len(data) // 2])  # truncated
    assert not cache_is_complete(layout, "kaggle", "train", ID, 64)
    with pytest.raises(ImageReadError, match=str(green)):
        read_cached_rgby(layout, "kaggle", "train", ID, 64)

    green.write_bytes(b"")  # empty
    assert not cache_is_complete(layout, "kaggle", "train", ID, 64)

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(green)  # RGB, not grayscale
    assert not cache_is_complete(layout, "kaggle", "train", ID, 64)

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(green)  # wrong size
    assert not cache_is_complete(layout, "kaggle", "train", ID, 64)
    with pytest.raises(ImageReadError, match="wrong-size") as info:
        read_cached_rgby(layout, "kaggle", "train", ID, 64)
    assert str(green) in str(info.value)

    cache_kaggle_image(layout, "train", ID, 64)  # a rerun repairs it
    assert cache_is_complete(layout, "kaggle", "train", ID, 64)
    assert _cache_dir_files(layout, "train", 64) == sorted(f"{ID}_{c}.png" for c in COLORS)


def test_cache_is_complete_external(tmp_path):
    layout = DataLayout(tmp_path)
    for i, color in enumerate(COLORS):
        path = layout.external_jpg(EXT_ID, color)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rand_u8(i, (40, 40, 3))).save(path)
    assert not cache_is_complete(layout, "external", "train", EXT_ID, 20)
    cache_external_image(layout, EXT_ID, 20)
    assert cache_is_complete(layout, "external", "train", EXT_ID, 20)
    assert read_cached_rgby(layout, "external", "train", EXT_ID, 20).shape == (20, 20, 4)
    layout.external_cache(EXT_ID, "yellow", 20).unlink()
    assert not cache_is_complete(layout, "external", "train", EXT_ID, 20)
    with pytest.raises(ValueError, match="kind"):
        cache_is_complete(layout, "hpa", "train", EXT_ID, 20)


# ------------------------------------------------------------------------------------- channel stats


def test_channel_stats_matches_numpy():
    rgby = _rand_u8(11, (30, 20, 4))
    rgby[..., 2] = 7  # a constant channel: std 0
    mean, std = channel_stats(rgby)
    assert mean.dtype == np.float64 and mean.shape == (4,) and std.shape == (4,)
    for c in range(4):
        vals = [float(v) / 255.0 for v in rgby[..., c].ravel()]
        m = sum(vals) / len(vals)
        s = (sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5
        assert mean[c] == pytest.approx(m, abs=1e-12)
        assert std[c] == pytest.approx(s, abs=1e-12)
    assert std[2] == pytest.approx(0.0, abs=1e-12) and mean[2] == pytest.approx(7 / 255)
    with pytest.raises(ValueError):
        channel_stats(rgby[..., :3])
