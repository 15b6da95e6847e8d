"""Tests of pHash duplicate detection (spec 2) against imagehash and a brute-force double loop."""

from __future__ import annotations

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hpa_tf.data.dedup import COLUMNS, match_hashes, pack_hash, phash_planes

SIZE = 128


def blob_image(rng: np.random.Generator, size: int = SIZE, channels: int = 4) -> np.ndarray:
    """A structured uint8 image (H, W, channels): a few random Gaussian blobs per channel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((size, size, channels))
    for c in range(channels):
        for _ in range(6):
            cy, cx = rng.uniform(0, size, 2)
            sigma = rng.uniform(size / 20, size / 6)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
            out[:, :, c] += rng.uniform(0.3, 1.0) * blob
        out[:, :, c] *= 230 / out[:, :, c].max()
    return np.round(out).astype(np.uint8)


def popcount(x: int) -> int:
    return bin(x).count("1")


def brute_force(query: np.ndarray, reference: np.ndarray, max_distance: int, exclude_self: bool = False):
    """Independent double loop over Python ints: the expected match table."""
    rows = []
    for i, qrow in enumerate(query.tolist()):
        for j, rrow in enumerate(reference.tolist()):
            if exclude_self and i == j:
                continue
            d = [popcount(a ^ b) for a, b in zip(qrow, rrow, strict=True)]
            if all(x <= max_distance for x in d):
                rows.append((i, j, *d))
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=np.int64)


def flip_bits(value: int, k: int, rng: np.random.Generator) -> int:
    """value with exactly k distinct bits flipped."""
    for b in rng.choice(64, size=k, replace=False):
        value ^= 1 << int(b)
    return value


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, 3), dtype=np.uint64, endpoint=True)


def assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(COLUMNS)
    assert all(got[c].dtype == np.int64 for c in COLUMNS)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))


# ---------------------------------------------------------------- hashing


def test_packed_distance_equals_imagehash_subtraction():
    rng = np.random.default_rng(0)
    images = [blob_image(rng) for _ in range(3)] + [rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)]
    hashes = [imagehash.phash(Image.fromarray(np.ascontiguousarray(img[:, :, c])))
              for img in images for c in range(3)]
    packed = [pack_hash(h.hash) for h in hashes]
    for h, p in zip(hashes, packed, strict=True):
        assert int(p) == int(str(h), 16)  # documented bit order: row-major, first bit most significant
    for a in range(len(hashes)):
        for b in range(len(hashes)):
            expected = hashes[a] - hashes[b]
            assert int(np.bitwise_count(packed[a] ^ packed[b])) == expected
            assert popcount(int(packed[a]) ^ int(packed[b])) == expected


def test_phash_planes_matches_imagehash_per_plane():
    img = blob_image(np.random.default_rng(1))
    got = phash_planes(img)
    assert got.dtype == np.uint64 and got.shape == (3,)
    for c in range(3):
        assert int(got[c]) == int(str(imagehash.phash(Image.fromarray(img[:, :, c].copy()))), 16)


def test_phash_planes_ignores_yellow():
    rng = np.random.default_rng(2)
    img = blob_image(rng)
    other = img.copy()
    other[:, :, 3] = blob_image(rng, channels=1)[:, :, 0]
    assert not np.array_equal(img[:, :, 3], other[:, :, 3])
    np.testing.assert_array_equal(phash_planes(img), phash_planes(other))


def test_noisy_copy_matches_and_unrelated_image_does_not():
    rng = np.random.default_rng(3)
    img = blob_image(rng)
    noisy = np.clip(np.round(img + rng.normal(0.0, 2.0, img.shape)), 0, 255).astype(np.uint8)
    assert np.abs(noisy.astype(int) - img.astype(int)).max() > 0
    unrelated = blob_image(rng)
    base, near, far = phash_planes(img), phash_planes(noisy), phash_planes(unrelated)
    assert np.bitwise_count(base ^ near).max() <= 12
    assert np.bitwise_count(base ^ far).min() > 12  # far on every plane, not just one
    matches = match_hashes(base[None], np.stack([near, far]))
    assert matches["reference"].tolist() == [0]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 64), dtype=np.uint8), np.zeros((4, 4, 3), dtype=np.uint8), np.zeros((4, 4, 4), np.uint16)],
)
def test_phash_planes_rejects_bad_images(bad):
    with pytest.raises(ValueError, match=r"RGBY uint8 image of shape \(H, W, 4\)"):
        phash_planes(bad)


# ---------------------------------------------------------------- matching


def planted_sets(seed: int = 4):
    """Random query/reference hashes plus planted pairs around the distance-12 boundary."""
    rng = np.random.default_rng(seed)
    query, reference = random_hashes(rng, 30), random_hashes(rng, 200)
    # (query row, reference row, bits flipped on R, G, B)
    plants = [(0, 10, (0, 0, 0)), (1, 11, (12, 12, 12)), (2, 12, (13, 0, 0)), (3, 13, (0, 13, 0)),
              (4, 14, (0, 0, 13)), (5, 15, (11, 12, 10)), (6, 16, (3, 3, 30)), (6, 17, (12, 5, 1)),
              (7, 18, (14, 12, 12)), (8, 150, (1, 2, 3)), (29, 199, (12, 11, 12))]
    ref = reference.tolist()
    for qi, rj, ks in plants:
        ref[rj] = [flip_bits(v, k, rng) for v, k in zip(query[qi].tolist(), ks, strict=True)]
    return query, np.array(ref, dtype=np.uint64)


def test_match_equals_brute_force_with_planted_boundary_pairs():
    query, reference = planted_sets()
    got = match_hashes(query, reference)
    assert_same(got, brute_force(query, reference, 12))
    pairs = set(zip(got["query"], got["reference"], strict=True))
    assert {(0, 10), (1, 11), (5, 15), (6, 17), (8, 150), (29, 199)} <= pairs  # <= 12 on all three
    assert not pairs & {(2, 12), (3, 13), (4, 14), (7, 18)}  # 13 (or 14) on one channel
    assert (6, 16) not in pairs  # near on R and G, far on B: the AND must reject it
    row = got[(got["query"] == 1) & (got["reference"] == 11)].iloc[0]
    assert (row["dist_r"], row["dist_g"], row["dist_b"]) == (12, 12, 12)


@pytest.mark.parametrize("max_distance", [0, 13, 26])
def test_match_equals_brute_force_other_limits(max_distance):
    # 26 gives many random survivors of R, so the G and B stages do real work
    query, reference = planted_sets(seed=5)
    got = match_hashes(query, reference, max_distance=max_distance, chunk_size=7)
    expected = brute_force(query, reference, max_distance)
    assert len(expected) > 0
    assert_same(got, expected)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 30, 31, 1000])
def test_chunk_size_does_not_change_result(chunk_size):
    query, reference = planted_sets(seed=6)
    expected = brute_force(query, reference, 26)
    assert_same(match_hashes(query, reference, max_distance=26, chunk_size=chunk_size), expected)


def test_exclude_self_drops_diagonal_and_keeps_both_orders():
    rng = np.random.default_rng(7)
    hashes = random_hashes(rng, 40).tolist()
    hashes[5] = [flip_bits(v, 4, rng) for v in hashes[2]]
    hashes[9] = [flip_bits(v, 12, rng) for v in hashes[2]]
    hashes[30] = list(hashes[17])  # exact duplicate
    hashes = np.array(hashes, dtype=np.uint64)

    with_self = match_hashes(hashes, hashes, chunk_size=3)
    assert set(zip(with_self["query"], with_self["reference"], strict=True)) >= {(i, i) for i in range(40)}

    got = match_hashes(hashes, hashes, exclude_self=True, chunk_size=3)
    assert_same(got, brute_force(hashes, hashes, 12, exclude_self=True))
    pairs = set(zip(got["query"], got["reference"], strict=True))
    assert all(i != j for i, j in pairs)
    assert {(2, 5), (5, 2), (17, 30), (30, 17)} <= pairs
    assert all((j, i) in pairs for i, j in pairs)


def test_output_sorted_and_typed():
    query, reference = planted_sets(seed=8)
    got = match_hashes(query, reference, max_distance=26, chunk_size=4)
    assert len(got) > 10
    order = np.lexsort((got["reference"].to_numpy(), got["query"].to_numpy()))
    np.testing.assert_array_equal(order, np.arange(len(got)))
    assert got.index.equals(pd.RangeIndex(len(got)))


def test_empty_inputs_and_no_matches_give_empty_typed_frame():
    rng = np.random.default_rng(9)
    empty = np.empty((0, 3), dtype=np.uint64)
    some = random_hashes(rng, 5)
    for got in (match_hashes(empty, some), match_hashes(some, empty), match_hashes(some, ~some)):
        assert len(got) == 0
        assert list(got.columns) == list(COLUMNS)
        assert all(got[c].dtype == np.int64 for c in COLUMNS)


@pytest.mark.parametrize(
    ("query", "reference", "kwargs", "message"),
    [
        (np.zeros((3, 4), np.uint64), np.zeros((3, 3), np.uint64), {}, r"query must have shape \[n, 3\]"),
        (np.zeros(3, np.uint64), np.zeros((3, 3), np.uint64), {}, r"query must have shape \[n, 3\]"),
        (np.zeros((3, 3), np.uint64), np.zeros((3, 3, 1), np.uint64), {}, r"reference must have shape"),
        (np.zeros((3, 3), np.int64), np.zeros((3, 3), np.uint64), {}, r"query must have dtype uint64"),
        (np.zeros((3, 3), np.uint64), np.zeros((3, 3), np.float64), {}, r"reference must have dtype uint64"),
        ([[1, 2, 3]], np.zeros((3, 3), np.uint64), {}, r"query must be a numpy array"),
        (np.zeros((3, 3), np.uint64), np.zeros((3, 3), np.uint64), {"chunk_size": 0}, r"chunk_size"),
        (np.zeros((3, 3), np.uint64), np.zeros((3, 3), np.uint64), {"max_distance": -1}, r"max_distance"),
        (np.zeros((3, 3), np.uint64), np.zeros((4, 3), np.uint64), {"exclude_self": True}, r"itself"),
    ],
)
def test_bad_inputs_raise_clear_value_error(query, reference, kwargs, message):
    with pytest.raises(ValueError, match=message):
        match_hashes(query, reference, **kwargs)


def test_progress_bar_does_not_change_result(capsys, monkeypatch):
    query, reference = planted_sets(seed=10)
    assert_same(match_hashes(query, reference, progress=True, chunk_size=8), match_hashes(query, reference))
    assert "pHash matching" not in capsys.readouterr().err  # not a terminal: no bar
    monkeypatch.setattr("hpa_tf.output.on_terminal", lambda: True)
    assert_same(match_hashes(query, reference, progress=True, chunk_size=8), match_hashes(query, reference))
    assert "pHash matching" in capsys.readouterr().err
