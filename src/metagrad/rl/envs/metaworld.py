"""Meta-World benchmarks (ML1-Reach, ML1-Push, ML10, ML45; the trade-off paper) through Meta-World's classic API.

A task is an integer index into the benchmark's task list of the chosen split (``train`` or ``test``: the
benchmark's own split, never mixed), so task tensors are ``[n, 1]`` int64. The gymnasium id
"Meta-World/ML1-train" is not used: it serves the test split.

Episodes last ``horizon`` steps (150 as in the trade-off paper; Meta-World's own limit is 500) and end only then:
Meta-World never terminates on success, and neither do we (``success`` records whether an episode succeeded).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, check_choice, check_whole
from ...settings import check_seed
from .base import Space
from .copies import CopyTaskEnv
from .gym import require

BENCHMARKS = {"ml1-reach": ("ML1", "reach-v3"), "ml1-push": ("ML1", "push-v3"), "ml10": ("ML10", None),
              "ml45": ("ML45", None)}
SPLITS = ("train", "test")


@functools.cache
def benchmark(name: str, seed: int = 0) -> Any:
    """The Meta-World benchmark object (built once per process: ML45 takes about 25 s)."""
    check_choice("Meta-World benchmark", name, tuple(BENCHMARKS))
    metaworld = require("metaworld")
    cls, env_name = BENCHMARKS[name]
    args = (env_name,) if env_name else ()
    return getattr(metaworld, cls)(*args, seed=seed)


class MetaWorldTaskEnv(CopyTaskEnv):
    """A Meta-World benchmark as a ``TaskEnv``: ``sample_tasks`` draws task indices of ``split`` (distinct ones
    while there are enough), ``reset`` gives every copy an environment of its task's class (reused across resets)."""

    def __init__(self, name: str, split: str = "train", horizon: int = 150, seed: int = 0,
                 benchmark_seed: int = 0):
        if split not in SPLITS:
            raise ConfigError(f"unknown Meta-World split '{split}'; choose train or test")
        check_whole("horizon", horizon, 1)
        check_seed("seed", seed)
        self.name, self.split, self.benchmark_seed = name, split, benchmark_seed
        self.benchmark = benchmark(name, benchmark_seed)
        self.classes = self.benchmark.train_classes if split == "train" else self.benchmark.test_classes
        self.tasks = self.benchmark.train_tasks if split == "train" else self.benchmark.test_tasks
        self._pool: dict[str, list[Any]] = {}
        probe = self._acquire(self.tasks[0].env_name, 0)
        space = probe.action_space
        super().__init__(horizon, seed, int(np.prod(probe.observation_space.shape)), space.low, space.high)
        self.action_space = Space("box", tuple(space.shape), float(space.low.min()), float(space.high.max()))
        self.success = torch.zeros(0, 0, dtype=torch.bool)
        self._success = np.zeros(0, dtype=bool)

    def test_split(self) -> MetaWorldTaskEnv:
        """The same benchmark's meta-test tasks (held-out classes for ML10/ML45, held-out goals for ML1)."""
        if self.split == "test":
            return self
        return MetaWorldTaskEnv(self.name, "test", self.horizon, self.seed, self.benchmark_seed)

    def _acquire(self, env_name: str, k: int) -> Any:
        """The ``k``-th cached environment of class ``env_name`` (made on first use)."""
        pool = self._pool.setdefault(env_name, [])
        while len(pool) <= k:
            pool.append(self.classes[env_name]())
        return pool[k]

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        check_whole("num_tasks", num_tasks, 0)
        n = len(self.tasks)
        if num_tasks <= n:
            idx = torch.randperm(n, generator=generator)[:num_tasks]
        else:
            idx = torch.randint(n, (num_tasks,), generator=generator)
        return idx.view(-1, 1)

    def _prepare(self, tasks: Tensor, episodes: int) -> list[Any]:
        if tasks.ndim != 2 or tasks.shape[1] != 1:
            raise ConfigError(f"Meta-World tasks are [T, 1] task indices, got shape {list(tasks.shape)}")
        if not bool((tasks == tasks.round()).all()):
            raise ConfigError(f"Meta-World task indices are whole numbers, got {tasks.reshape(-1).tolist()[:5]}")
        idx = tasks.detach().cpu().reshape(-1).long().tolist()
        bad = [i for i in idx if not 0 <= i < len(self.tasks)]
        if bad:
            raise ConfigError(f"task index {bad[0]} is outside the {len(self.tasks)} {self.split} tasks of "
                              f"{self.name}")
        used: dict[str, int] = {}
        copies = []
        for i in idx:
            task = self.tasks[i]
            for _ in range(episodes):
                env = self._acquire(task.env_name, used.get(task.env_name, 0))
                used[task.env_name] = used.get(task.env_name, 0) + 1
                env.set_task(task)
                env.max_path_length = max(env.max_path_length, self.horizon)  # Meta-World raises past its limit
                copies.append(env)
        self._success = np.zeros(len(copies), dtype=bool)
        return copies

    def _reset_copy(self, env: Any, seed: int) -> Any:
        env.seed(seed)  # Meta-World's documented seeding (its reset() ignores the seed argument)
        return env.reset()[0]

    def _record(self, i: int, info: dict[str, Any]) -> None:
        if info.get("success"):
            self._success[i] = True

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = super().step(actions)
        self.success = torch.from_numpy(self._success.copy()).view(self._shape)
        return out
