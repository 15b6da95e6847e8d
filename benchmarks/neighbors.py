"""ScaNN vs exact brute-force cosine search on clustered random 512-d embeddings, side by side in one run:
at HPA's real size (74,000 HPAv18 references, 11,702 test queries) and at 1M references.

Exact search at 1M is timed on a subset of the queries (its cost per query does not depend on how many
are asked) and recall@1 of ScaNN is measured against it on that subset.

    python benchmarks/neighbors.py                 # both sizes
    python benchmarks/neighbors.py --sizes 74000   # the HPA size only

Last line: `scann_speedup_1m: <ratio>x` (queries/s of ScaNN over exact search at 1M references).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hpa_tf.embeddings import exact_neighbours, l2_normalize
from hpa_tf.inference.neighbors import NeighbourIndex


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float) -> np.ndarray:
    """n unit vectors around unit cluster centres (antibody-like groups): noise of norm about `spread`."""
    rows = centres[rng.integers(0, len(centres), n)]
    noise = spread / np.sqrt(centres.shape[1]) * rng.standard_normal(rows.shape, dtype=np.float32)
    return l2_normalize((rows + noise).astype(np.float32))


def measure(references: np.ndarray, queries: np.ndarray, exact_queries: int) -> dict:
    """Build time, queries/s of both searches and recall@1 of ScaNN against exact search."""
    start = time.perf_counter()
    index = NeighbourIndex.build(references)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    found, _ = index.search(queries, k=1)
    scann_qps = len(queries) / (time.perf_counter() - start)
    subset = queries[:exact_queries]
    start = time.perf_counter()
    truth, _ = exact_neighbours(subset, references, k=1, chunk=256)
    exact_qps = len(subset) / (time.perf_counter() - start)
    return {"build_s": build_s, "scann_qps": scann_qps, "exact_qps": exact_qps,
            "recall1": float(np.mean(found[:exact_queries, 0] == truth[:, 0])), "exact_queries": len(subset)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[74_000, 1_000_000], help="reference counts")
    parser.add_argument("--queries", type=int, default=11_702)
    parser.add_argument("--exact-queries", type=int, default=1_000, help="queries timed for exact search")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--spread", type=float, default=0.5, help="noise norm around unit cluster centres")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'references':>11s} {'build s':>8s} {'ScaNN q/s':>10s} {'exact q/s':>10s} {'speedup':>8s} "
          f"{'recall@1':>9s}", flush=True)
    speedup = {}
    for size in args.sizes:
        centres = l2_normalize(rng.standard_normal((max(100, size // 6), args.dim), dtype=np.float32))
        references = clustered(rng, size, centres, args.spread)
        queries = clustered(rng, args.queries, centres, args.spread)
        result = measure(references, queries, args.exact_queries)
        speedup[size] = result["scann_qps"] / result["exact_qps"]
        print(f"{size:11d} {result['build_s']:8.1f} {result['scann_qps']:10.0f} {result['exact_qps']:10.0f} "
              f"{speedup[size]:7.1f}x {result['recall1']:9.4f}", flush=True)
    largest = max(speedup)
    print(f"scann_speedup_{'1m' if largest == 1_000_000 else largest}: {speedup[largest]:.1f}x")


if __name__ == "__main__":
    main()
