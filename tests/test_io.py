"""Tests for hpa_tf.data.io: exact round trips, channel order, HPAv18 plane choice, 16-bit scaling, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from hpa_tf.data.io import (
    ImageReadError,
    read_gray,
    read_plane_jpg,
    read_rgby,
    read_tif,
    stack_channels,
    to_uint8,
)
from hpa_tf.layout import COLORS, DataLayout

H, W = 24, 40  # non-square, so a transposed read would fail


def _rand_u8(seed: int, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth_u8(seed: int, shape=(H, W)) -> np.ndarray:
    """Low-frequency random image in 20..235 (JPEG keeps it within ~1 grey level at quality 95)."""
    small = np.random.default_rng(seed).integers(20, 236, size=(4, 5), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((shape[1], shape[0]), Image.BILINEAR))


def _write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _write_jpg(path: Path, planes: list[np.ndarray] | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack(planes, axis=-1) if isinstance(planes, list) else planes
    Image.fromarray(arr).save(path, quality=95, subsampling=0)
    return path


def _write_tif(path: Path, arr: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, **kwargs)
    return path


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _expected_u16_to_u8(v: np.ndarray) -> np.ndarray:
    return np.round(v.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


# ---------------------------------------------------------------- PNG (Kaggle, resize caches)


def test_read_gray_png_round_trip_exact(tmp_path):
    arr = _rand_u8(0)
    got = read_gray(_write_png(tmp_path / "a.png", arr))
    assert got.dtype == np.uint8 and got.shape == (H, W)
    np.testing.assert_array_equal(got, arr)


def test_read_gray_accepts_grayscale_jpeg(tmp_path):
    arr = _smooth_u8(1)
    path = tmp_path / "cache" / "x_green.jpg"
    path.parent.mkdir()
    Image.fromarray(arr).save(path, quality=95)
    got = read_gray(path)
    assert got.shape == (H, W) and got.dtype == np.uint8
    assert _mad(got, arr) < 2


@pytest.mark.parametrize("split", ["train", "test"])
def test_read_rgby_png_channel_order(tmp_path, split):
    layout = DataLayout(tmp_path)
    arrays = {c: _rand_u8(10 + i) for i, c in enumerate(COLORS)}
    for c, a in arrays.items():
        _write_png(layout.kaggle_png(split, "img_1", c), a)
    got = read_rgby(layout, "img_1", "png", split=split)
    assert got.dtype == np.uint8 and got.shape == (H, W, 4)
    for i, c in enumerate(COLORS):
        np.testing.assert_array_equal(got[..., i], arrays[c], err_msg=c)


def test_read_rgby_png_constant_channels_land_in_place(tmp_path):
    layout = DataLayout(tmp_path)
    for value, c in zip((11, 22, 33, 44), COLORS, strict=True):
        _write_png(layout.kaggle_png("train", "abc", c), np.full((H, W), value, np.uint8))
    got = read_rgby(layout, "abc", "png")
    assert got[0, 0].tolist() == [11, 22, 33, 44]
    assert (got == np.array([11, 22, 33, 44], np.uint8)).all()


def test_stack_channels_mapping_and_sequence(tmp_path):
    arrays = {c: _rand_u8(20 + i) for i, c in enumerate(COLORS)}
    paths = {c: _write_png(tmp_path / f"q_{c}.png", a) for c, a in arrays.items()}
    expected = np.stack([arrays[c] for c in COLORS], axis=-1)
    reversed_mapping = dict(reversed(list(paths.items())))  # key order must not matter
    np.testing.assert_array_equal(stack_channels(reversed_mapping), expected)
    np.testing.assert_array_equal(stack_channels([str(paths[c]) for c in COLORS], read_gray), expected)
    with pytest.raises(ValueError, match="yellow"):
        stack_channels({c: paths[c] for c in COLORS[:3]})
    with pytest.raises(ValueError):
        stack_channels([paths["red"], paths["green"]])


# ---------------------------------------------------------------- HPAv18 raw JPEGs


def _hpa_v18_jpegs(layout: DataLayout, image_id: str) -> dict[str, np.ndarray]:
    """Write the 4 raw JPEGs the way HPA serves them; return each channel's true data."""
    data = {c: _smooth_u8(30 + i) for i, c in enumerate(COLORS)}
    other_a, other_b, zero = _smooth_u8(98), _smooth_u8(99), np.zeros((H, W), np.uint8)
    planes = {
        "red": [data["red"], zero, zero],
        "green": [other_a, data["green"], other_b],  # wrong planes hold different content
        "blue": [other_a, other_b, data["blue"]],
        "yellow": [data["yellow"], data["yellow"], zero],  # yellow = red + green light
    }
    for c in COLORS:
        _write_jpg(layout.external_jpg(image_id, c), planes[c])
    return data


def test_read_rgby_external_planes(tmp_path):
    layout = DataLayout(tmp_path)
    data = _hpa_v18_jpegs(layout, "10580_1610_C1_1")
    got = read_rgby(layout, "10580_1610_C1_1", "external")
    assert got.dtype == np.uint8 and got.shape == (H, W, 4)
    for i, c in enumerate(COLORS):
        assert _mad(got[..., i], data[c]) < 2, c
    # the check can fail: the decoy planes are far from the data
    assert _mad(_smooth_u8(98), data["green"]) > 10 and _mad(_smooth_u8(99), data["blue"]) > 10


def test_read_plane_jpg_yellow_uses_red_plane(tmp_path):
    red_plane, green_plane = _smooth_u8(40), _smooth_u8(41)
    assert _mad(red_plane, green_plane) > 10
    path = _write_jpg(tmp_path / "y_yellow.jpg", [red_plane, green_plane, np.zeros((H, W), np.uint8)])
    got = read_plane_jpg(path, "yellow")
    assert got.shape == (H, W) and got.dtype == np.uint8
    assert _mad(got, red_plane) < 2
    assert _mad(got, green_plane) > 10


@pytest.mark.parametrize("index,color", [(0, "red"), (1, "green"), (2, "blue"), (0, "yellow")])
def test_read_plane_jpg_each_plane(tmp_path, index, color):
    planes = [_smooth_u8(50 + k) for k in range(3)]
    path = _write_jpg(tmp_path / f"p_{color}.jpg", planes)
    got = read_plane_jpg(path, color)
    for k in range(3):
        if k == index:
            assert _mad(got, planes[k]) < 2
        else:
            assert _mad(got, planes[k]) > 10


def test_read_plane_jpg_grayscale_jpeg_is_the_plane(tmp_path):
    arr = _smooth_u8(60)
    path = tmp_path / "g_green.jpg"
    Image.fromarray(arr).save(path, quality=95)
    assert Image.open(path).mode == "L"
    assert _mad(read_plane_jpg(path, "green"), arr) < 2
    assert _mad(read_plane_jpg(path, "yellow"), arr) < 2


def test_read_plane_jpg_unknown_color(tmp_path):
    path = _write_jpg(tmp_path / "p.jpg", [_smooth_u8(k) for k in range(3)])
    with pytest.raises(ValueError, match="purple"):
        read_plane_jpg(path, "purple")


# ---------------------------------------------------------------- TIFF


def test_to_uint8_uint16_exact_values():
    k = np.arange(256)
    v = np.concatenate([[0, 65535], 257 * k, 257 * k[:-1] + 128, 257 * k[:-1] + 129]).astype(np.uint16)
    want = np.concatenate([[0, 255], k, k[:-1], k[:-1] + 1]).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(v), want)
    # 65280 = 255 * 256: a shift (v >> 8) would give 255, a cast (v % 256) 0; round(65280 / 257) = 254
    assert to_uint8(np.array([65280], np.uint16)).tolist() == [254]
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # all values, against integer rounding
    np.testing.assert_array_equal(to_uint8(every), (every.astype(np.int64) * 2 + 257) // 514)


def test_to_uint8_rejects_other_dtypes():
    with pytest.raises(ValueError, match="float32"):
        to_uint8(np.zeros((2, 2), np.float32))


def test_read_tif_16bit_values(tmp_path):
    k = np.arange(256, dtype=np.uint16)
    v = np.zeros((4, 256), np.uint16)
    v[0], v[1], v[2, 0], v[2, 1:] = 257 * k, 257 * k, 65535, 0
    got = read_tif(_write_tif(tmp_path / "v.tif", v))
    assert got.dtype == np.uint8 and got.shape == (4, 256)
    np.testing.assert_array_equal(got[0], k.astype(np.uint8))
    assert got[2, 0] == 255 and (got[2, 1:] == 0).all() and (got[3] == 0).all()


@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "packbits"])  # lzw/packbits: imagecodecs
def test_read_tif_random_16bit_equals_rounded_scale(tmp_path, compression):
    rng = np.random.default_rng(70)
    smooth = np.asarray(
        Image.fromarray(rng.random((6, 8), np.float32)).resize((W * 2, H * 2), Image.BILINEAR)
    )
    v = (smooth * 65535).astype(np.uint16)
    v[0, :8] = [0, 1, 128, 129, 65279, 65280, 65534, 65535]
    got = read_tif(_write_tif(tmp_path / "s.tif", v, compression=compression))
    np.testing.assert_array_equal(got, _expected_u16_to_u8(v))
    assert got[0, :8].tolist() == [0, 0, 0, 1, 254, 254, 255, 255]


def test_read_tif_8bit_unchanged(tmp_path):
    arr = _rand_u8(71, (H * 2, W * 2))
    got = read_tif(_write_tif(tmp_path / "e.tif", arr))
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, arr)


def test_read_tif_float_raises(tmp_path):
    path = _write_tif(tmp_path / "f.tif", np.zeros((H, W), np.float32))
    with pytest.raises(ImageReadError, match="float32") as err:
        read_tif(path)
    assert str(path) in str(err.value)


def test_read_tif_rgb_raises(tmp_path):
    path = _write_tif(tmp_path / "rgb.tif", np.zeros((H, W, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageReadError) as err:
        read_tif(path)
    assert str(path) in str(err.value)


def test_read_rgby_tif(tmp_path):
    layout = DataLayout(tmp_path)
    rng = np.random.default_rng(72)
    arrays = {c: rng.integers(0, 65536, size=(H, W), dtype=np.uint16) for c in COLORS}
    arrays["blue"] = arrays["blue"].astype(np.uint8)  # an 8-bit TIFF among 16-bit ones
    for c in COLORS:
        _write_tif(layout.kaggle_tif("test", "t1", c), arrays[c], compression="zlib")
    got = read_rgby(layout, "t1", "tif", split="test")
    assert got.dtype == np.uint8 and got.shape == (H, W, 4)
    for i, c in enumerate(COLORS):
        want = arrays[c] if arrays[c].dtype == np.uint8 else _expected_u16_to_u8(arrays[c])
        np.testing.assert_array_equal(got[..., i], want, err_msg=c)


# ---------------------------------------------------------------- errors


def test_load_truncated_images_stays_off():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert issubclass(ImageReadError, ValueError)


def _write_source(layout: DataLayout, source: str, image_id: str, color: str) -> Path:
    if source == "png":
        return _write_png(layout.kaggle_png("train", image_id, color), _rand_u8(80))
    if source == "tif":
        return _write_tif(layout.kaggle_tif("train", image_id, color), _rand_u8(80))
    return _write_jpg(layout.external_jpg(image_id, color), [_smooth_u8(80)] * 3)


def _source_path(layout: DataLayout, source: str, image_id: str, color: str) -> Path:
    if source == "png":
        return layout.kaggle_png("train", image_id, color)
    if source == "tif":
        return layout.kaggle_tif("train", image_id, color)
    return layout.external_jpg(image_id, color)


@pytest.mark.parametrize("source", ["png", "tif", "external"])
@pytest.mark.parametrize("missing", ["green", "yellow"])
def test_missing_channel_file_named(tmp_path, source, missing):
    layout = DataLayout(tmp_path)
    for c in COLORS:
        if c != missing:
            _write_source(layout, source, "m1", c)
    with pytest.raises(ImageReadError, match="missing") as err:
        read_rgby(layout, "m1", source)
    assert str(_source_path(layout, source, "m1", missing)) in str(err.value)


def test_truncated_png_raises_naming_file(tmp_path):
    path = _write_png(tmp_path / "tr_red.png", _rand_u8(81, (64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        read_gray(path)
    assert str(path) in str(err.value)


def test_truncated_png_in_rgby_raises_naming_file(tmp_path):
    layout = DataLayout(tmp_path)
    for c in COLORS:
        _write_png(layout.kaggle_png("train", "t2", c), _rand_u8(82, (64, 64)))
    bad = layout.kaggle_png("train", "t2", "blue")
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(ImageReadError) as err:
        read_rgby(layout, "t2", "png")
    assert str(bad) in str(err.value)


def test_truncated_jpeg_raises_naming_file(tmp_path):
    path = _write_jpg(tmp_path / "tr_green.jpg", np.stack([_rand_u8(83, (64, 64))] * 3, axis=-1))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ImageReadError) as err:
        read_plane_jpg(path, "green")
    assert str(path) in str(err.value)


def test_truncated_tif_raises_naming_file(tmp_path):
    path = _write_tif(tmp_path / "tr.tif", np.zeros((64, 64), np.uint16))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ImageReadError) as err:
        read_tif(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", [read_gray, read_tif, lambda p: read_plane_jpg(p, "red")])
def test_non_image_file_raises_naming_file(tmp_path, reader):
    path = tmp_path / "notes_red.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as err:
        reader(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("reader", [read_gray, read_tif, lambda p: read_plane_jpg(p, "red")])
def test_missing_file_raises_naming_file(tmp_path, reader):
    path = tmp_path / "absent_red.png"
    with pytest.raises(ImageReadError, match="missing") as err:
        reader(path)
    assert str(path) in str(err.value)


def test_read_gray_rejects_rgb_and_16bit(tmp_path):
    rgb = _write_jpg(tmp_path / "rgb.png", [_rand_u8(k) for k in range(3)])
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((H, W), 1000, np.uint16)).save(deep)
    for path in (rgb, deep):
        with pytest.raises(ImageReadError, match="grayscale") as err:
            read_gray(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("bad_id", ["a/b", "../x", "..", "a/../b", "x\\y", ""])
@pytest.mark.parametrize("source", ["png", "tif", "external"])
def test_bad_id_raises_value_error(tmp_path, bad_id, source):
    with pytest.raises(ValueError, match="invalid image Id"):
        read_rgby(DataLayout(tmp_path), bad_id, source)


def test_mismatched_channel_shapes(tmp_path):
    layout = DataLayout(tmp_path)
    for c in COLORS:
        shape = (H + 8, W) if c == "green" else (H, W)
        _write_png(layout.kaggle_png("train", "mix_1", c), _rand_u8(84, shape))
    with pytest.raises(ImageReadError) as err:
        read_rgby(layout, "mix_1", "png")
    msg = str(err.value)
    assert "mix_1" in msg and str((H + 8, W)) in msg and str((H, W)) in msg


def test_unknown_source_and_split(tmp_path):
    layout = DataLayout(tmp_path)
    with pytest.raises(ValueError, match="jpeg"):
        read_rgby(layout, "abc", "jpeg")
    with pytest.raises(ValueError, match="valid"):
        read_rgby(layout, "abc", "png", split="valid")


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits"])
def test_truncated_compressed_tif_raises_naming_file(tmp_path, compression):
    # a truncated zlib strip makes imagecodecs raise DeflateError (a RuntimeError): a decode error too
    arr = np.random.default_rng(84).integers(0, 65536, size=(128, 128), dtype=np.uint16)
    path = _write_tif(tmp_path / f"tr_{compression}.tif", arr, compression=compression)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError) as err:
        read_tif(path)
    assert str(path) in str(err.value)
    assert type(err.value.__cause__).__name__ in str(err.value)  # the decoder's own type and message


class _OddDecoderError(RuntimeError):
    def __init__(self, code, detail):  # like imagecodecs' errors: cannot be rebuilt from its message alone
        super().__init__(f"{code}: {detail}")


@pytest.mark.parametrize("module, name", [(tifffile, "imread"), (Image, "open")])
def test_any_decoder_failure_is_an_image_read_error(tmp_path, monkeypatch, module, name):
    path = _write_tif(tmp_path / "odd.tif", np.zeros((4, 4), np.uint8))
    reader = read_tif if module is tifffile else read_gray

    def fail(*args, **kwargs):
        raise _OddDecoderError(7, "codec gave up")

    monkeypatch.setattr(module, name, fail)
    with pytest.raises(ImageReadError, match="_OddDecoderError: 7: codec gave up") as err:
        reader(path)
    assert str(path) in str(err.value)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(module, name, out_of_memory)
    with pytest.raises(MemoryError):  # not the file's fault: not turned into a data error
        reader(path)
