"""Run a function over items on worker threads, results in the items' order."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

__all__ = ["ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[R]:
    """``map(fn, items)``, with up to ``concurrency`` calls running in worker threads.

    At most ``concurrency + 1`` results wait to be consumed, and ``items`` (any iterable, e.g. a
    generator producing large arrays) is drawn from only as calls are submitted, so memory stays
    bounded however many items there are.  Worth it where ``fn`` releases the GIL (ONNX Runtime, OpenCV, NumPy and
    scikit-image's watershed do).  An error in a call is raised here, in order; calls not yet
    started are then dropped.
    """
    if concurrency <= 1 or (isinstance(items, Sequence) and len(items) == 1):
        yield from map(fn, items)
        return
    pool = _pool(concurrency)
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > concurrency:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # an error or an abandoned generator: drop what has not started, wait for the rest
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()


@lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: no threads started and stopped per image (and no new
    allocator arenas for them), so memory stays flat over thousands of images."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"crossct-{workers}")


# A forked child has none of its parent's threads: it must not queue work to their pools.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.cache_clear)
