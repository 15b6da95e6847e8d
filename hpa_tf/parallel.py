"""Process-parallel map for the data tools (image generation, resizing, hashing)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator


def imap_unordered(fn: Callable, items: Iterable, workers: int, chunksize: int = 8) -> Iterator:
    """Yield fn(item) for every item, in completion order; a 'spawn' pool when workers > 1.

    Spawn (not fork) keeps it safe in processes that already loaded TensorFlow; the pool is terminated
    when the iteration ends or fails."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(fn, items, chunksize=chunksize)
