"""A simulator-backed task environment stepped in several worker processes (``make_env(..., workers=N)``).

The sampler's loop over the ``tasks x episodes`` copies runs in one Python thread: threads gain nothing there (the
GIL changes hands at every copy), processes do. Each worker holds its own environment of the same name and options
and steps a contiguous share of the tasks; the main process keeps one more for what is not stepping (task sampling,
spaces, the stream of reset seeds), so every copy gets the seed the one-process environment would give it: the same
episodes, to the bit. The workers are spawned (no fork of a process running OpenMP), so a script that makes them
must do so under ``if __name__ == "__main__":``, as any script that spawns processes.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, MetagradError, check_whole
from .base import TaskEnv, check_actions, check_tasks
from .copies import CopyTaskEnv


def _serve(conn: Any, name: str, kwargs: dict[str, Any]) -> None:
    """A worker: build the environment, then answer ``reset``/``step`` commands with numpy arrays until ``close``."""
    from . import make_env

    torch.set_num_threads(1)
    env = make_env(name, **kwargs)
    while True:
        command, *args = conn.recv()
        if command == "close":
            return
        try:
            if command == "reset":
                tasks, episodes, seeds = args
                out: Any = env.reset(torch.from_numpy(tasks), episodes, seeds).numpy()
            else:
                out = tuple(t.numpy() for t in env.step(torch.from_numpy(args[0])))
            conn.send(("ok", out))
        except Exception as e:  # the worker's error, raised again in the caller's process
            conn.send(("error", f"{type(e).__name__}: {e}"))


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
        for _ in range(workers):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_serve, args=(theirs, name, kwargs), daemon=True)
            proc.start()
            self._conns.append(mine)
            self._procs.append(proc)
        self._shares: list[tuple[int, int]] = []

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
            for conn, (a, b) in zip(self._conns, self._shares, strict=False):
                conn.send(("reset", values[a:b], episodes, seeds[a * episodes:b * episodes]))
            self._shape = (int(tasks.shape[0]), int(episodes))
            return torch.from_numpy(np.concatenate(self._answers()))

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self._shares:
            raise RuntimeError("call reset() before step()")
        check_actions(actions, self._shape, self.action_space)
        values = actions.detach().cpu().numpy()
        for conn, (a, b) in zip(self._conns, self._shares, strict=False):
            conn.send(("step", values[a:b]))
        parts = self._answers()
        return tuple(torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in range(3))  # type: ignore

    def _answers(self) -> list[Any]:
        """Each busy worker's answer, in order; a worker's error stops here with its message, a worker that died
        with its exit code."""
        try:
            answers = [conn.recv() for conn, _ in zip(self._conns, self._shares, strict=False)]
        except (EOFError, OSError):
            codes = [proc.exitcode for proc in self._procs]
            raise MetagradError(f"an environment worker stopped (exit codes {codes}); workers are spawned processes "
                                "that import the main script again: start them under `if __name__ == '__main__':`"
                                ) from None
        for status, value in answers:
            if status == "error":
                raise MetagradError(f"an environment worker failed: {value}")
        return [value for _, value in answers]

    def close(self) -> None:
        """Stop the workers."""
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive():
                conn.send(("close",))
                proc.join(timeout=10)
        self._conns, self._procs = [], []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the daemon workers end with the process
            self.close()
