"""The task threads' settings that their speed rests on: torch's cores shared out among the workers while they run
(and restored after), each job on its own thread, and glibc's malloc asked to keep freed blocks."""

from __future__ import annotations

import threading

import torch

from metagrad import threads


def test_workers_get_their_share_of_the_threads_and_the_count_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        barrier = threading.Barrier(2)  # both jobs running at once, or this waits forever (timeout below)

        def job() -> tuple[int, int]:
            barrier.wait(timeout=30)
            return torch.get_num_threads(), threading.get_ident()

        (n1, t1), (n2, t2) = threads.in_threads([job, job])
        assert (n1, n2) == (2, 2) and t1 != t2
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_torch_threads_holds_the_count_for_its_block_and_restores_it_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with threads.torch_threads(None):
            assert torch.get_num_threads() == 3
        try:
            with threads.torch_threads(1):
                assert torch.get_num_threads() == 1
                raise KeyError("inside")
        except KeyError:
            pass
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_malloc_keeps_freed_blocks_unless_told_not_to(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(threads.ctypes, "CDLL", lambda name: libc)
    monkeypatch.delenv("METAGRAD_MALLOC", raising=False)
    threads.keep_freed_memory()
    assert sorted(libc.calls) == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD 32 MB, M_TRIM_THRESHOLD 1 GB
    libc.calls.clear()
    monkeypatch.setenv("METAGRAD_MALLOC", "0")
    threads.keep_freed_memory()
    assert libc.calls == []


def test_a_new_task_pool_sets_malloc_up(monkeypatch):
    called = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: called.append(True))
    monkeypatch.setattr(threads, "_POOLS", {})
    pool = threads.task_pool(2, 1)
    assert called == [True] and threads.task_pool(2, 1) is pool and called == [True]
    pool.shutdown()
