"""Duplicate detection by perceptual hash (spec section 2): pHash of the R, G and B planes, and
vectorised matching of hash sets (a pair is a duplicate when it is close on R and on G and on B).

Bit order of a packed hash: the 8x8 boolean ``imagehash`` array is flattened row-major and the first
element becomes the most significant bit, so ``int(str(imagehash_hash), 16)`` equals the packed value
and ``popcount(a ^ b)`` equals ``imagehash`` subtraction (the Hamming distance).
"""

from __future__ import annotations

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from hpa_tf.output import bars_disabled

HASH_CHANNELS = ("red", "green", "blue")  # yellow is not hashed (spec 2)
MAX_DISTANCE = 12  # per-channel Hamming limit of the reference (spec 2)
HASH_SIZE = 512  # the side of the images spec 2 hashes: Kaggle's PNGs, the 512 px HPAv18 caches
COLUMNS = ("query", "reference", "dist_r", "dist_g", "dist_b")


def pack_hash(hash_bits: np.ndarray) -> np.uint64:
    """Pack a 64-element boolean hash (e.g. ``imagehash.ImageHash.hash``) into one uint64, MSB first."""
    bits = np.asarray(hash_bits, dtype=bool).ravel()
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash (8x8), got {bits.size} bits")
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


def phash_planes(rgby: np.ndarray) -> np.ndarray:
    """Return the default ``imagehash.phash`` of the R, G and B planes of an RGBY uint8 image (H, W, 4).

    Result: uint64 array of shape (3,) in R, G, B order; the yellow plane is ignored as in the reference.
    """
    rgby = np.asarray(rgby)
    if rgby.ndim != 3 or rgby.shape[2] != 4 or rgby.dtype != np.uint8:
        raise ValueError(f"expected an RGBY uint8 image of shape (H, W, 4), got {rgby.dtype} {rgby.shape}")
    planes = (Image.fromarray(np.ascontiguousarray(rgby[:, :, c])) for c in range(3))
    return np.array([pack_hash(imagehash.phash(p).hash) for p in planes], dtype=np.uint64)


def _check_hashes(name: str, hashes: np.ndarray) -> np.ndarray:
    """Raise a clear ValueError unless hashes is a uint64 array of shape [n, 3] (R, G, B)."""
    if not isinstance(hashes, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape [n, 3] and dtype uint64, got {type(hashes)}")
    if hashes.ndim != 2 or hashes.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n, 3] (one R, G, B hash per row), got {hashes.shape}")
    if hashes.dtype != np.uint64:
        raise ValueError(f"{name} must have dtype uint64 (packed 64-bit pHashes), got {hashes.dtype}")
    return hashes


def _empty_matches() -> pd.DataFrame:
    return pd.DataFrame({c: np.empty(0, dtype=np.int64) for c in COLUMNS})


def match_hashes(
    query: np.ndarray,
    reference: np.ndarray,
    max_distance: int = MAX_DISTANCE,
    exclude_self: bool = False,
    chunk_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Every (query row, reference row) pair within max_distance on R and on G and on B (spec 2).

    Brute force over all pairs in chunks of query rows (memory ~ 10 * chunk_size * len(reference) bytes);
    G and B are only computed for pairs that pass R. exclude_self (a set against itself, test<->test)
    drops i == j and keeps both orders. Output is sorted by query then reference.
    """
    _check_hashes("query", query)
    _check_hashes("reference", reference)
    if not isinstance(max_distance, (int, np.integer)) or not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be an int in 0..64, got {max_distance!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if exclude_self and len(query) != len(reference):
        raise ValueError(
            f"exclude_self=True matches a set with itself, but query has {len(query)} rows "
            f"and reference {len(reference)}"
        )
    n, m = len(query), len(reference)
    if n == 0 or m == 0:
        return _empty_matches()

    ref = [np.ascontiguousarray(reference[:, c]) for c in range(3)]
    chunk_size = min(int(chunk_size), n)
    xor_buf = np.empty((chunk_size, m), dtype=np.uint64)  # reused for every chunk: bounded memory
    count_buf = np.empty((chunk_size, m), dtype=np.uint8)
    mask_buf = np.empty((chunk_size, m), dtype=bool)

    parts = []
    starts = range(0, n, chunk_size)
    for start in tqdm(starts, desc="pHash matching", unit="chunk", disable=bars_disabled(progress)):
        q = query[start : start + chunk_size]
        rows = len(q)
        xor, count, mask = xor_buf[:rows], count_buf[:rows], mask_buf[:rows]
        np.bitwise_xor(q[:, 0, None], ref[0][None, :], out=xor)
        np.bitwise_count(xor, out=count)
        np.less_equal(count, max_distance, out=mask)
        qi, rj = np.nonzero(mask)  # row-major: sorted by query then reference
        if qi.size == 0:
            continue
        dists = [count[qi, rj].astype(np.int64)]
        keep = np.ones(qi.size, dtype=bool)
        for c in (1, 2):  # survivors of R only
            d = np.bitwise_count(q[qi, c] ^ ref[c][rj]).astype(np.int64)
            keep &= d <= max_distance
            dists.append(d)
        qi = qi + start
        if exclude_self:
            keep &= qi != rj
        parts.append((qi[keep], rj[keep], *(d[keep] for d in dists)))

    if not parts:
        return _empty_matches()
    columns = [np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(len(COLUMNS))]
    return pd.DataFrame(dict(zip(COLUMNS, columns, strict=True)))
