"""The process's worker threads: the tiles of a network call (net_onnx) and the parts of the larger array
work around it (imaging.enlarge_bicubic, allocation.tile_features) run on them, one pool per process.

ONNX Runtime and numpy's array loops let go of Python's lock, so the threads run at once; each part's result
is what it would be alone, so the output never depends on the thread count. No torch, no model.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Iterable, TypeVar

MAX_THREADS = 8  # each running tile holds its own activations
T = TypeVar("T")


def threads() -> int:
    """Threads at once: $ODP_THREADS, else one per core this process may use (at most MAX_THREADS)."""
    value = os.environ.get("ODP_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


@lru_cache(maxsize=1)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """(`pid`: a forked child starts its own pool, its parent's threads being gone.)"""
    return ThreadPoolExecutor(workers, thread_name_prefix="odp")


def pool() -> ThreadPoolExecutor:
    return _pool(threads(), os.getpid())


def run_all(fn: Callable[..., T], parts: Iterable) -> list[T]:
    """[fn(part) for part in parts], in order, the parts side by side. Never call it from inside fn (the
    pool's threads would wait on themselves)."""
    parts = list(parts)
    if len(parts) < 2 or threads() < 2:
        return [fn(p) for p in parts]
    return list(pool().map(fn, parts))


def bands(n: int) -> list[slice]:
    """n items cut into one contiguous slice per thread (fewer where n is small)."""
    k = max(1, min(threads(), n))
    edges = [n * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:])]
