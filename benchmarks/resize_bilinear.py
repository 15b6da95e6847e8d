"""Benchmark of `resize_bilinear` on full-size planes (a timing, so not a test: its pixels are tested).

Run from the repository root: `python benchmarks/resize_bilinear.py` (a few seconds). Prints the best time
of `--repeats` calls after a warm-up, for uint8 and uint16 sources and each cache size, and whether the
2048 px uint8 -> 768 px case is within the 200 ms a test once asserted (tests/test_resize.py checks its
pixels against cv2 and TensorFlow).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hpa_tf.data.resize import resize_bilinear  # noqa: E402

BUDGET_MS = 200.0  # 2048 px uint8 -> 768 px


def best_ms(plane: np.ndarray, size: int, repeats: int) -> float:
    """Best wall time of resize_bilinear(plane, size) over `repeats` calls after one warm-up, in ms."""
    resize_bilinear(plane, size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        resize_bilinear(plane, size)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048, help="source side in px (default 2048)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1536], help="cache sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (best; default 5)")
    args = parser.parse_args(argv)
    if args.side < 1 or args.repeats < 1 or any(s < 1 for s in args.sizes):
        parser.error("--side, --sizes and --repeats must be positive")
    rng = np.random.default_rng(9)
    timings = {}
    for dtype in (np.uint8, np.uint16):
        plane = rng.integers(0, np.iinfo(dtype).max, size=(args.side, args.side), dtype=dtype, endpoint=True)
        for size in args.sizes:
            timings[np.dtype(dtype).name, size] = ms = best_ms(plane, size, args.repeats)
            print(f"resize_bilinear {args.side}x{args.side} {np.dtype(dtype).name} -> {size}: {ms:.1f} ms")
    if args.side == 2048 and ("uint8", 768) in timings:
        within = timings["uint8", 768] < BUDGET_MS
        print(f"2048 uint8 -> 768 within {BUDGET_MS:.0f} ms: {'yes' if within else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
