"""Task threads: disjoint shards of a meta-batch differentiated at once, one Python thread each, torch's cores shared
out among them (on the CPU a small convolution uses one core better than a share of several).

The workers call private copies of the network (``functional.use_private_shells``); MKL's thread setting is
process-wide, so it is held at the workers' share while they run; glibc's malloc is asked to keep freed blocks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .functional import use_private_shells


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks under 32 MB for reuse instead of returning them to the system: task
    graphs of tens of MB are built and freed for every task, and faulting fresh pages in each time made the threaded
    per-task loop about 25% slower (measured on W2). Process-wide; ``METAGRAD_MALLOC=0`` leaves malloc alone; a
    no-op where there is no glibc."""
    if os.environ.get("METAGRAD_MALLOC", "1") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 1 << 30)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op threads held at ``n`` for the block (``None``: left as they are)."""
    total = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(total)


def in_threads(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the jobs at once, one thread each, torch's cores shared out among them; their results in order."""
    if len(jobs) == 1:
        return [jobs[0]()]
    each = max(1, torch.get_num_threads() // len(jobs))
    pool = task_pool(len(jobs), each)
    with torch_threads(each):  # partly process-wide (MKL's GEMMs): the workers' setting while they run
        return list(pool.map(_with_fresh_shells, jobs))


def _with_fresh_shells(job: Callable[[], Any]) -> Any:
    """``job()`` on copies of the modules made as they are now (``use_private_shells``)."""
    use_private_shells()
    return job()


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of the parent's threads


def task_pool(workers: int, threads_each: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads, each running torch's kernels on ``threads_each`` threads."""
    if (workers, threads_each) not in _POOLS:
        keep_freed_memory()

        def init() -> None:
            torch.set_num_threads(threads_each)
            use_private_shells()

        total = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, "metagrad-tasks", init)
        started = threading.Barrier(workers)  # every worker up (and initialized) before the caller goes on
        list(pool.map(lambda _: started.wait(), range(workers)))
        torch.set_num_threads(total)
        _POOLS[workers, threads_each] = pool
    return _POOLS[workers, threads_each]
