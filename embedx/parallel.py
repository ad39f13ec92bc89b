"""Work fitted side by side on threads: the folds of a probe, permutation batches, neighbour queries.

Why threads and not processes: liblinear (the SVM solver) and numpy release the GIL, so the folds of one
probe run truly in parallel (1.6x measured on 2 cores for a 5-class probe at 20k rows; up to the number of
folds on more cores), while the latents, hundreds of MB at a million rows, are shared instead of copied
into worker processes. BLAS is held to one thread while the folds run, so k folds do not start k times
the cores' BLAS threads. Each fold's fit is seeded on its own, so the results do not depend on the order
in which the threads finish: they are returned in the folds' order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count(n_tasks: int) -> int:
    """Threads for n_tasks fits: one per core, at most one per task; EMBEDX_PROBE_THREADS overrides."""
    wanted = os.environ.get("EMBEDX_PROBE_THREADS")
    cores = int(wanted) if wanted and wanted.isdigit() and int(wanted) > 0 else (os.cpu_count() or 1)
    return max(1, min(cores, n_tasks))


def map_in_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(item) for item in items], run on a thread pool, results in the items' order."""
    items = list(items)
    workers = worker_count(len(items))
    if workers == 1:
        return [fn(item) for item in items]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=workers,
                                                         thread_name_prefix="embedx-fold") as pool:
        return list(pool.map(fn, items))
