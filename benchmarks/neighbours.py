"""Our neighbour search against the peer a user would pick, side by side in one run on the same clustered
random 512-d embeddings and the same cores: at HPA's real size (74,000 HPAv18 references, 11,702 test
queries) and at 1M references.

- our exact search (the fallback below 20,000 references and the yardstick) against FAISS's exact
  `IndexFlatIP`, both timed on the same subset of the queries (an exact search's cost per query does not
  depend on how many are asked) and checked to return the same neighbours;
- ScaNN with our `NeighbourIndex` defaults against FAISS's IVF-Flat (4 sqrt(n) lists) at the smallest
  `nprobe` (1, 2, 4, ...) whose recall@1 reaches ScaNN's; recall against exact search on that subset.

    pip install -e ".[bench]"                      # faiss-cpu (benchmark only)
    python benchmarks/neighbours.py                 # both sizes
    python benchmarks/neighbours.py --sizes 74000   # the HPA size only

Last lines: `exact_vs_faiss_flat_1m: <ratio>x` (queries/s of our exact search over FAISS's flat index),
`scann_vs_faiss_ivf_1m: <ratio>x (...)` (queries/s of ScaNN over FAISS IVF at equal recall) and
`scann_speedup_1m: <ratio>x` (ScaNN over our exact search).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from hpa_tf.embeddings import exact_neighbours, l2_normalize
from hpa_tf.inference.neighbours import NeighbourIndex


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float) -> np.ndarray:
    """n unit vectors around unit cluster centres (antibody-like groups): noise of norm about `spread`."""
    rows = centres[rng.integers(0, len(centres), n)]
    noise = spread / np.sqrt(centres.shape[1]) * rng.standard_normal(rows.shape, dtype=np.float32)
    return l2_normalize((rows + noise).astype(np.float32))


def timed(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """(top-1 indices [Q], queries/s) of `search(queries)`."""
    start = time.perf_counter()
    found = search(queries)
    return np.asarray(found).reshape(len(queries), -1)[:, 0], len(queries) / (time.perf_counter() - start)


def measure(references: np.ndarray, queries: np.ndarray, exact_queries: int) -> dict:
    """Build time, queries/s of ScaNN and of our exact search, and ScaNN's recall@1 against exact."""
    start = time.perf_counter()
    index = NeighbourIndex.build(references)
    build_s = time.perf_counter() - start
    found, scann_qps = timed(lambda q: index.search(q, k=1)[0], queries)
    subset = queries[:exact_queries]
    truth, exact_qps = timed(lambda q: exact_neighbours(q, references, k=1)[0], subset)
    return {"build_s": build_s, "scann_qps": scann_qps, "exact_qps": exact_qps, "truth": truth,
            "recall1": float(np.mean(found[:exact_queries] == truth)), "exact_queries": len(subset)}


def measure_faiss(references: np.ndarray, queries: np.ndarray, truth: np.ndarray, target: float) -> dict:
    """FAISS on the same data: IndexFlatIP queries/s on the exact subset (and whether it agrees with ours),
    then IVF-Flat at the smallest power-of-two nprobe whose recall@1 on that subset reaches `target`."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count())
    subset = queries[:len(truth)]
    flat = faiss.IndexFlatIP(references.shape[1])
    flat.add(references)
    flat_found, flat_qps = timed(lambda q: flat.search(q, 1)[1], subset)
    lists = int(4 * math.sqrt(len(references)))
    start = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(references.shape[1]), references.shape[1], lists,
                             faiss.METRIC_INNER_PRODUCT)
    sample = references[np.random.default_rng(1).permutation(len(references))[:min(len(references), 250_000)]]
    ivf.train(sample)
    ivf.add(references)
    ivf_build_s = time.perf_counter() - start
    flat.reset()  # its copy of the references is no longer needed
    for nprobe in (2 ** p for p in range(int(math.log2(lists)) + 1)):
        ivf.nprobe = nprobe
        found, ivf_qps = timed(lambda q: ivf.search(q, 1)[1], queries)
        recall = float(np.mean(found[:len(truth)] == truth))
        if recall >= target:
            break
    return {"flat_qps": flat_qps, "flat_agrees": float(np.mean(flat_found == truth)), "ivf_lists": lists,
            "ivf_build_s": ivf_build_s, "nprobe": nprobe, "ivf_qps": ivf_qps, "ivf_recall1": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[74_000, 1_000_000], help="reference counts")
    parser.add_argument("--queries", type=int, default=11_702)
    parser.add_argument("--exact-queries", type=int, default=1_000, help="queries timed for exact search")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--spread", type=float, default=0.5, help="noise norm around unit cluster centres")
    args = parser.parse_args()
    if min(args.sizes) < 1_000 or args.queries < 1 or not 0 < args.exact_queries <= args.queries:
        parser.error("--sizes must be >= 1000 and 0 < --exact-queries <= --queries")
    try:
        import faiss  # noqa: F401
        with_faiss = True
    except ImportError:
        with_faiss = False
        print('note: faiss-cpu is not installed (pip install -e ".[bench]"): FAISS columns left out')
    rng = np.random.default_rng(0)
    print(f"{'references':>10s} {'ScaNN build':>11s} {'ScaNN q/s':>9s} {'recall@1':>8s} {'exact q/s':>9s} "
          + (f"{'FAISS flat q/s':>14s} {'exact/flat':>10s} {'IVF nprobe':>10s} {'IVF q/s':>8s} "
             f"{'IVF recall':>10s} {'ScaNN/IVF':>9s}" if with_faiss else ""), flush=True)
    results = {}
    for size in args.sizes:
        centres = l2_normalize(rng.standard_normal((max(100, size // 6), args.dim), dtype=np.float32))
        references = clustered(rng, size, centres, args.spread)
        queries = clustered(rng, args.queries, centres, args.spread)
        result = measure(references, queries, args.exact_queries)
        line = (f"{size:10d} {result['build_s']:10.1f}s {result['scann_qps']:9.0f} {result['recall1']:8.4f} "
                f"{result['exact_qps']:9.1f}")
        if with_faiss:
            result.update(measure_faiss(references, queries, result["truth"], result["recall1"]))
            line += (f" {result['flat_qps']:14.1f} {result['exact_qps'] / result['flat_qps']:9.2f}x "
                     f"{result['nprobe']:10d} {result['ivf_qps']:8.0f} {result['ivf_recall1']:10.4f} "
                     f"{result['scann_qps'] / result['ivf_qps']:8.2f}x")
        results[size] = result
        print(line, flush=True)
    largest = max(results)
    name, result = ("1m" if largest == 1_000_000 else largest), results[largest]
    if with_faiss:
        print(f"exact_vs_faiss_flat_{name}: {result['exact_qps'] / result['flat_qps']:.2f}x "
              f"(same top-1 as FAISS for {result['flat_agrees']:.1%} of the queries)")
        print(f"scann_vs_faiss_ivf_{name}: {result['scann_qps'] / result['ivf_qps']:.2f}x (recall@1 ScaNN "
              f"{result['recall1']:.4f}, FAISS IVF{result['ivf_lists']} {result['ivf_recall1']:.4f} at "
              f"nprobe {result['nprobe']})")
    print(f"scann_speedup_{name}: {result['scann_qps'] / result['exact_qps']:.1f}x")


if __name__ == "__main__":
    main()
