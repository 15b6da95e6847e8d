"""Process-parallel map for the data tools (image generation, resizing, hashing, TFRecord writing)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator


def imap(fn: Callable, items: Iterable, workers: int, chunksize: int = 8, ordered: bool = False) -> Iterator:
    """Yield fn(item) for every item, in completion order (or item order when `ordered`); a 'spawn' pool
    when workers > 1.

    Spawn (not fork) keeps it safe in processes that already loaded TensorFlow; the pool is terminated
    when the iteration ends or fails. Ordered results are asked for a window at a time, so results that
    wait for a slow earlier item never pile up in memory."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        if not ordered:
            yield from pool.imap_unordered(fn, items, chunksize=chunksize)
            return
        items, window = list(items), workers * 8
        for start in range(0, len(items), window):
            yield from pool.imap(fn, items[start:start + window], chunksize=chunksize)
