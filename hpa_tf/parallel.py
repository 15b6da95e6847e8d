"""Process-parallel map for the data tools (image generation, resizing, hashing, TFRecord writing)."""

from __future__ import annotations

import importlib
import itertools
import multiprocessing
import traceback
from collections.abc import Callable, Iterable, Iterator

from hpa_tf.errors import USER_ERRORS, HpaTfError

# How long a stopping pool waits for one result of the work already under way before it gives up and
# terminates the workers (a worker that died, e.g. killed for memory, never answers).
_DRAIN_TIMEOUT_S = 600.0

_stop = None  # in a worker process: the pool's stop event (set by the parent when the map fails)


class WorkerTraceback(Exception):
    """The traceback text of an exception raised in a worker process: the cause of its re-raise."""


class _Failure:
    """An exception of a worker as plain, always picklable data: its type's name and those of its bases,
    its message and its traceback text (the exception itself may not survive pickling: imagecodecs'
    errors, for one, cannot be rebuilt from their args)."""

    def __init__(self, error: Exception):
        self.types = [(c.__module__, c.__qualname__) for c in type(error).__mro__]
        self.message = str(error)
        self.traceback = "".join(traceback.format_exception(error))
        self.user = isinstance(error, USER_ERRORS)

    def error(self) -> Exception:
        """The exception to raise in the parent: a user-facing error as its own class (or the nearest
        base that can be rebuilt from the message), anything else (a bug) as a RuntimeError that holds
        the worker's traceback."""
        if self.user:
            for module, name in self.types:
                cls = _find_class(module, name)
                if cls is not None and issubclass(cls, USER_ERRORS):
                    try:
                        error = cls(self.message)
                    except Exception:  # noqa: BLE001 - an __init__ that wants more: try its base
                        continue
                    error.__cause__ = WorkerTraceback(self.traceback)
                    return error
            return HpaTfError(self.message)
        module, name = self.types[0]
        kind = name if module == "builtins" else f"{module}.{name}"
        return RuntimeError(f"{kind} in a worker process: {self.message}\n\n"
                            f"worker traceback:\n{self.traceback}")


def _find_class(module: str, qualname: str) -> type | None:
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001 - a class the parent cannot import: try the next base
        return None
    return found if isinstance(found, type) else None


def _start_worker(stop) -> None:
    global _stop
    _stop = stop


class _Guarded:
    """fn over one chunk of items in a worker. An exception comes back as a _Failure (ending the chunk)
    instead of being pickled by the pool: one that does not unpickle kills the pool's result thread and
    the map waits forever. Once the parent asked the pool to stop, the rest of the chunk is skipped."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, chunk: list) -> list:
        results = []
        for item in chunk:
            if _stop is not None and _stop.is_set():
                break
            try:
                results.append(self.fn(item))
            except Exception as error:  # noqa: BLE001 - handed to the parent, which re-raises it
                results.append(_Failure(error))
                break
        return results


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, max(1, size))):
        yield chunk


def _drain(results) -> None:
    """Wait for the chunks under way to finish (the others skip their items), so that no worker is killed
    in the middle of writing a file; give up on one that takes longer than _DRAIN_TIMEOUT_S."""
    while True:
        try:
            results.next(timeout=_DRAIN_TIMEOUT_S)  # every call takes one chunk's result, or ends
        except (StopIteration, multiprocessing.TimeoutError):
            return
        except Exception:  # noqa: BLE001, S112 - a chunk the pool could not send back: it is done too
            continue


def imap(fn: Callable, items: Iterable, workers: int, chunksize: int = 8, ordered: bool = False) -> Iterator:
    """Yield fn(item) for every item, in completion order (or item order when `ordered`); a 'spawn' pool
    when workers > 1, given `chunksize` items at a time.

    Spawn (not fork) keeps it safe in processes that already loaded TensorFlow. Ordered results are asked
    for a window at a time, so results that wait for a slow earlier item never pile up in memory.

    An exception in a worker is raised here: a user-facing error (hpa_tf.errors.USER_ERRORS) as its own
    class, any other as a RuntimeError holding the worker's traceback. When the map fails or its consumer
    stops early, the workers skip what is left and finish the item they are working on (so no file is
    left half-written) before the pool is terminated; a KeyboardInterrupt terminates it at once."""
    if workers <= 1:
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    call = _Guarded(fn)
    with context.Pool(workers, initializer=_start_worker, initargs=(stop,)) as pool:
        if ordered:  # chunksize=1: the pool's own iterators (with next(timeout)), over our chunks
            window = workers * 8
            batches = (pool.imap(call, list(_chunks(window_items, chunksize)))
                       for window_items in _chunks(items, window))
        else:
            batches = iter([pool.imap_unordered(call, _chunks(items, chunksize))])
        for results in batches:
            try:
                for chunk in results:
                    for result in chunk:
                        if isinstance(result, _Failure):
                            raise result.error()
                        yield result
            except (Exception, GeneratorExit):
                stop.set()
                _drain(results)
                raise
