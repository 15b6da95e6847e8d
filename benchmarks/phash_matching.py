"""Benchmark of pHash duplicate matching (spec 2): vectorised `match_hashes` against a per-pair Python loop.

Run from the repository root: `python benchmarks/phash_matching.py` (about a minute on 2 CPU cores).
Prints both rates on the same small subset and their ratio, then times `match_hashes` on a slice of the
real problem (31,072 Kaggle train x 74,000 HPAv18 images, 3 channels) and extrapolates to the full size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import imagehash
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hpa_tf.data.dedup import MAX_DISTANCE, match_hashes  # noqa: E402


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=(n, 3), dtype=np.uint64, endpoint=True)


def plant_near_pairs(query: np.ndarray, reference: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Overwrite `count` reference rows with copies of query rows that have 0..12 bits flipped per channel."""
    for qi, rj in zip(rng.choice(len(query), count), rng.choice(len(reference), count, replace=False),
                      strict=True):
        for c in range(3):
            flips = rng.choice(64, size=int(rng.integers(0, MAX_DISTANCE + 1)), replace=False)
            mask = np.bitwise_or.reduce(np.left_shift(np.uint64(1), flips.astype(np.uint64)), initial=0)
            reference[rj, c] = query[qi, c] ^ np.uint64(mask)


def loop_matches(query: np.ndarray, reference: np.ndarray, max_distance: int) -> list[tuple]:
    """Reference-style brute force: each pair compared at Python level, per-pair popcount, R, G, B."""
    q_rows, r_rows = query.tolist(), reference.tolist()
    out = []
    for i, (qr, qg, qb) in enumerate(q_rows):
        for j, (rr, rg, rb) in enumerate(r_rows):
            dr = bin(qr ^ rr).count("1")
            if dr > max_distance:
                continue
            dg = bin(qg ^ rg).count("1")
            if dg > max_distance:
                continue
            db = bin(qb ^ rb).count("1")
            if db <= max_distance:
                out.append((i, j, dr, dg, db))
    return out


def to_imagehash(value: int) -> imagehash.ImageHash:
    bits = np.array([(value >> (63 - k)) & 1 for k in range(64)], dtype=bool).reshape(8, 8)
    return imagehash.ImageHash(bits)


def best_time(fn, min_total_s: float = 0.5, max_repeats: int = 50) -> float:
    """Best wall time of fn() over repeats (at least one, until min_total_s has been spent)."""
    times: list[float] = []
    while not times or (sum(times) < min_total_s and len(times) < max_repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, nargs=2, default=(200, 5000), metavar=("N", "M"))
    parser.add_argument("--slice-queries", type=int, default=2000)
    parser.add_argument("--references", type=int, default=74_000)
    parser.add_argument("--full-queries", type=int, default=31_072)
    parser.add_argument("--chunk-size", type=int, default=None, help="match_hashes chunk_size (its default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kwargs = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    rng = np.random.default_rng(args.seed)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, max_distance {MAX_DISTANCE}")

    # (a) vs (b) on the same small subset, with planted near pairs so there is something to find
    n, m = args.subset
    query, reference = random_hashes(rng, n), random_hashes(rng, m)
    plant_near_pairs(query, reference, rng, count=min(20, m))
    start = time.perf_counter()
    expected = loop_matches(query, reference, MAX_DISTANCE)
    loop_s = time.perf_counter() - start
    got = match_hashes(query, reference, **kwargs)
    if [tuple(r) for r in got.itertuples(index=False)] != expected:
        raise SystemExit("match_hashes and the Python loop disagree on the subset")
    vec_s = best_time(lambda: match_hashes(query, reference, **kwargs))
    loop_rate, vec_rate = n * m / loop_s, n * m / vec_s
    print(f"subset: {n} x {m} pairs x 3 channels, {len(expected)} matches (both agree)")
    print(f"python_loop_pairs_per_s: {loop_rate:,.0f}  ({loop_s:.3f} s)")
    print(f"match_hashes_pairs_per_s: {vec_rate:,.0f}  ({vec_s * 1e3:.2f} ms, best of repeats)")
    print(f"subset_ratio: {vec_rate / loop_rate:,.0f}x")

    # for information: imagehash's own subtraction, which the reference scripts call per pair
    hq = [to_imagehash(v) for v in query[:5, 0].tolist()]
    hr = [to_imagehash(v) for v in reference[:500, 0].tolist()]
    start = time.perf_counter()
    for a in hq:
        for b in hr:
            _ = a - b
    ih_rate = len(hq) * len(hr) / (time.perf_counter() - start) / 3  # 3 channels per pair
    print(f"imagehash_subtraction_pairs_per_s: {ih_rate:,.0f}  (info: one ImageHash '-' per channel)")

    # real-size-proportional slice, extrapolated to the full problem
    query = random_hashes(rng, args.slice_queries)
    reference = random_hashes(rng, args.references)
    slice_s = best_time(lambda: match_hashes(query, reference, **kwargs), min_total_s=2.0, max_repeats=3)
    slice_rate = args.slice_queries * args.references / slice_s
    full_s = slice_s * args.full_queries / args.slice_queries
    print(f"slice: {args.slice_queries} x {args.references} x 3 channels in {slice_s:.2f} s "
          f"({slice_rate:,.0f} pairs/s)")
    full_pairs = args.full_queries * args.references
    print(f"full problem: {args.full_queries} x {args.references}; estimates: python loop "
          f"{full_pairs / loop_rate / 3600:,.1f} h, imagehash '-' {full_pairs / ih_rate / 3600:,.1f} h")
    print(f"phash_full_size_estimate_s: {full_s:.1f}")
    print(f"phash_matching_speedup: {vec_rate / loop_rate:.0f}x")


if __name__ == "__main__":
    main()
