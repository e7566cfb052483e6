"""A simulator-backed task environment stepped in several worker processes (``make_env(..., workers=N)``).

The sampler's loop over the ``tasks x episodes`` copies runs in one Python thread: threads gain nothing there (the
GIL changes hands at every copy), processes do. Each worker holds its own environment of the same name and options
and steps a contiguous share of the tasks; the main process keeps one more for what is not stepping (task sampling,
spaces, the stream of reset seeds), so every copy gets the seed the one-process environment would give it: the same
episodes, to the bit. The workers are spawned (no fork of a process running OpenMP), so a script that makes them
must do so under ``if __name__ == "__main__":``, as any script that spawns processes.

Ctrl-C and SIGTERM reach a terminal's or a scheduler's whole process group: the main process acts on them (the run
stops after its iteration and saves), so the workers ignore them, from birth (spawned with both blocked), and end at
``close``, when the main process's end of the pipe closes (kill -9), or by SIGKILL after ``close`` waits in vain.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import signal
import time
import weakref
from collections.abc import Iterator
from multiprocessing import resource_tracker
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, MetagradError, WorkerLost, check_whole
from ...files import STOP_SIGNALS
from .base import TaskEnv, check_actions, check_tasks
from .copies import CopyTaskEnv


def _serve(conn: Any, name: str, kwargs: dict[str, Any]) -> None:
    """A worker: build the environment, then answer ``reset``/``step`` commands with numpy arrays until ``close`` or
    until the main process is gone; stop signals are the main process's (module docstring)."""
    from . import make_env

    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # (those that came while blocked are dropped)
    torch.set_num_threads(1)
    env = make_env(name, **kwargs)
    while True:
        try:
            command, *args = conn.recv()
        except (EOFError, OSError):  # the main process ended without close (kill -9)
            return
        if command == "close":
            return
        try:
            if command == "reset":
                tasks, episodes, seeds = args
                answer: Any = ("ok", env.reset(torch.from_numpy(tasks), episodes, seeds).numpy())
            else:
                answer = ("ok", tuple(t.numpy() for t in env.step(torch.from_numpy(args[0]))))
        except Exception as e:  # the worker's error, raised again in the caller's process
            answer = ("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(answer)
        except OSError:  # the main process ended while this one stepped
            return


class ProcessCopies(TaskEnv):
    """``make_env(name, **kwargs)`` with its copies stepped in ``workers`` processes, each a contiguous share of the
    tasks of every ``reset``; equal to the one-process environment, episode for episode. ``close`` (or the end of
    the process) stops the workers."""

    sampling_threads = 1

    def __init__(self, name: str, workers: int, **kwargs: Any):
        from . import make_env

        check_whole("workers", workers, 2, "1: the environment in this process")
        self.local = make_env(name, **kwargs)
        if not isinstance(self.local, CopyTaskEnv):
            raise ConfigError(f"workers {workers}: environment '{name}' is not stepped copy by copy (the MuJoCo "
                              "locomotion families and Meta-World are); use workers 1")
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs OpenMP
        self._conns, self._procs = [], []
        self._answered = False
        with _stop_signals_blocked():
            for _ in range(workers):
                mine, theirs = context.Pipe()
                proc = context.Process(target=_serve, args=(theirs, name, kwargs), daemon=True)
                proc.start()
                self._conns.append(mine)
                self._procs.append(proc)
        self._shares: list[tuple[int, int]] = []
        closing = weakref.WeakMethod(self.close)  # before multiprocessing's exit hook, whose SIGTERM workers ignore
        self._at_exit = lambda: (close := closing()) is not None and close()
        atexit.register(self._at_exit)

    def __getattr__(self, attr: str) -> Any:
        """What the environment offers besides stepping (``obs_dim``, ``action_space``, ``horizon``, ``task_dim``,
        ``param_factors``, ...)."""
        if attr == "local":
            raise AttributeError(attr)
        return getattr(self.local, attr)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        return self.local.sample_tasks(num_tasks, generator)

    def reseed(self, seed: int) -> None:
        self.local.reseed(seed)

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        check_tasks(tasks, episodes)
        with self.local.reset_seeds.kept_on_error():  # a reset the workers refuse uses no seeds, as in one process
            seeds = self.local.reset_seeds.next(int(tasks.shape[0]) * int(episodes))
            bounds = np.linspace(0, tasks.shape[0], len(self._conns) + 1).round().astype(int)
            self._shares = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
            values = tasks.detach().cpu().numpy()
            self._shape = (int(tasks.shape[0]), int(episodes))
            answers = self._ask([("reset", values[a:b], episodes, seeds[a * episodes:b * episodes])
                                 for a, b in self._shares])
            return torch.from_numpy(np.concatenate(answers))

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self._shares:
            raise RuntimeError("call reset() before step()")
        check_actions(actions, self._shape, self.action_space)
        values = actions.detach().cpu().numpy()
        parts = self._ask([("step", values[a:b]) for a, b in self._shares])
        return tuple(torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(3))  # type: ignore

    def _ask(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each busy worker's answer to its command, in order; a worker's error stops here with its message, a
        worker that died with how it ended."""
        try:
            for conn, command in zip(self._conns, commands, strict=False):
                conn.send(command)
            answers = [conn.recv() for conn, _ in zip(self._conns, commands, strict=False)]
        except (EOFError, OSError):
            raise self._lost() from None
        self._answered = True
        for status, value in answers:
            if status == "error":
                raise MetagradError(f"an environment worker failed: {value}")
        return [value for _, value in answers]

    def _lost(self) -> MetagradError:
        """The error for a worker that is gone: killed mid-run (``WorkerLost``: the run resumes), or dead before its
        first answer (most often a script that spawns without ``if __name__ == "__main__":``)."""
        ended = multiprocessing.connection.wait([proc.sentinel for proc in self._procs], timeout=2)
        codes = {i: proc.join() or proc.exitcode for i, proc in enumerate(self._procs) if proc.sentinel in ended}
        ends = ", ".join(f"worker {i + 1} of {len(self._procs)} {_ending(code)}" for i, code in codes.items())
        ends = ends or "a broken pipe, the workers still running"
        if self._answered or any(code < 0 for code in codes.values()):  # (a signal: not the script's import)
            return WorkerLost(f"an environment worker stopped in the middle of the run ({ends})")
        return MetagradError(f"an environment worker stopped before its first answer ({ends}); workers "
                             "are spawned processes that import the main script again: start them under "
                             "`if __name__ == '__main__':`")

    def close(self) -> None:
        """Stop the workers: each is told to end, and killed if they have not within 10 s (busy in a step)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):  # (a worker already gone)
                conn.send(("close",))
        deadline = time.monotonic() + 10
        for proc in self._procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._conns, self._procs = [], []
        atexit.unregister(self._at_exit)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the daemon workers end with the process
            self.close()


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back in this thread while workers are spawned: each inherits the mask, so none lands
    before it ignores them (there is no mask on Windows)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    resource_tracker.ensure_running()  # started inside the first spawn instead, it unblocks both in this thread
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _ending(code: int) -> str:
    """How a worker ended, in words: "killed by SIGKILL", "with exit code 1"."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"with exit code {code}"
