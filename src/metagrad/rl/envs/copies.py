"""The shared stepping loop of simulator-backed task environments: one simulator instance per (task, episode) copy,
stepped in one Python loop with preallocated numpy buffers (no per-copy tensors, no gymnasium wrappers).

Subclasses (``MujocoTaskEnv``, ``MetaWorldTaskEnv``) say how to get a simulator for a copy and set its task
(``_prepare``), what to remember from each step (``_record``) and how a step's rewards follow (``_rewards``); one
may also replace the stepping loop itself (``_simulate``, as ``MujocoTaskEnv`` does for robots it steps in MuJoCo).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import check_whole
from ...settings import check_seed
from .base import ResetSeeds, TaskEnv, check_actions, check_tasks


class CopyTaskEnv(TaskEnv):
    """``tasks x episodes`` simulator copies stepped in a loop; the horizon is enforced here (``done`` on the
    step that reaches it), the simulator's own termination ends an episode earlier.

    Every ``reset`` seeds copy ``i`` with the ``i``-th number of ``SeedSequence([seed, s])``, ``s`` the number given
    to ``reseed`` (the sampler draws it from the run's generator, so a resumed run sees the same initial states) or,
    without one, the number of resets so far.
    """

    sampling_threads = 1

    def __init__(self, horizon: int, seed: int, obs_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                 action_scale: float = 1.0):
        check_whole("horizon", horizon, 1)
        check_seed("seed", seed)
        self.horizon, self.seed, self.obs_dim = int(horizon), int(seed), int(obs_dim)
        self._sim_dim = self.obs_dim  # the simulator's part of the observation (the rest: ``_task_features``)
        self._low = np.asarray(action_low, dtype=np.float64)
        self._high = np.asarray(action_high, dtype=np.float64)
        self._action_scale = float(action_scale)  # the simulator's action per unit of the policy's
        self.reset_seeds = ResetSeeds(seed)
        self._shape = (0, 0)
        self._copies: list[Any] = []  # the simulator of each copy in the current batch
        self._t = 0

    # -- what subclasses provide ------------------------------------------------------------------------------
    def _prepare(self, tasks: Tensor, episodes: int) -> list[Any]:
        """The simulator of each of the ``T * K`` copies (task-major), with its task set."""
        raise NotImplementedError

    def _record(self, i: int, info: dict[str, Any]) -> None:
        """Keep what ``_rewards`` needs from copy ``i``'s step."""

    def _rewards(self, env_rewards: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """This step's rewards of all copies (float64 ``[T * K]``; entries of copies that did not step are
        ignored). Default: the simulator's own reward."""
        return env_rewards

    def _reset_copy(self, env: Any, seed: int) -> Any:
        """Reset one simulator with ``seed``; its first observation."""
        return env.reset(seed=seed)[0]

    def _observer(self, env: Any) -> Callable[[np.ndarray], np.ndarray] | None:
        """``env``'s map from the simulator's observation to the learner's, called after each reset and step
        (``None``: the simulator's own)."""
        return None

    # -- the TaskEnv interface ----------------------------------------------------------------------------------
    def reset(self, tasks: Tensor, episodes: int, seeds: np.ndarray | None = None) -> Tensor:
        """``TaskEnv.reset``; copy ``i`` seeded by ``seeds[i]`` where given (a process's share of the seeds of a reset
        split over processes, ``ProcessCopies``), else by the next of ``reset_seeds``."""
        check_tasks(tasks, episodes)
        self._shape = (int(tasks.shape[0]), int(episodes))
        self._copies = self._prepare(tasks, episodes)
        observers = [self._observer(env) for env in self._copies]
        self._observers = observers if any(f is not None for f in observers) else None
        n = len(self._copies)
        self._obs = np.empty((n, self._sim_dim), dtype=np.float32)
        with self.reset_seeds.kept_on_error():
            seeds = self.reset_seeds.next(n) if seeds is None else seeds
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} seeds for {n} copies")
            for i, env in enumerate(self._copies):
                o = self._reset_copy(env, int(seeds[i]))
                self._obs[i] = o if self._observers is None else self._observers[i](o)
        self._env_rewards = np.zeros(n, dtype=np.float64)
        self._done = np.zeros(n, dtype=bool)
        self._alive = list(range(n))
        self._t = 0
        return self._observation()

    def reseed(self, seed: int) -> None:
        self.reset_seeds.reseed(seed)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self._copies:
            raise RuntimeError("call reset() before step()")
        check_actions(actions, self._shape, self.action_space)
        n = len(self._copies)
        act = actions.detach().reshape(n, -1).cpu().numpy().astype(np.float64) * self._action_scale
        act = np.clip(act, self._low, self._high)
        stepped = ~self._done
        self._simulate(act)
        done = self._done
        rewards = np.where(stepped, self._rewards(self._env_rewards, act), 0.0).astype(np.float32)
        self._t += 1
        if self._t >= self.horizon:
            done[:] = True
        self._alive = [i for i in self._alive if not done[i]]
        shape = self._shape
        return self._observation(), torch.from_numpy(rewards).view(shape), torch.from_numpy(done.copy()).view(shape)

    def _observation(self) -> Tensor:
        """The learner's observation ``[T, K, obs_dim]``: the simulators', then the task's features if any."""
        extra = self._task_features()
        obs = self._obs if extra is None else np.concatenate((self._obs, extra), 1)
        return torch.from_numpy(obs.copy() if extra is None else obs).view(*self._shape, -1)

    def _task_features(self) -> np.ndarray | None:
        """Numbers appended to every copy's observation (the oracle's goal, ``[T * K, d]``), or None."""
        return None

    def _simulate(self, act: np.ndarray) -> None:
        """One ``step`` of each alive copy's simulator with its (clipped) action: the learner's observation into
        ``_obs``, the simulator's reward into ``_env_rewards``, its termination into ``_done``, and ``_record`` of
        its ``info``. A subclass may replace this loop with one that skips the simulator's Python and gives the
        same numbers."""
        obs, env_rewards, done, copies, record = self._obs, self._env_rewards, self._done, self._copies, self._record
        observers = self._observers
        for i in self._alive:
            o, r, terminated, truncated, info = copies[i].step(act[i])
            obs[i] = o if observers is None else observers[i](o)
            env_rewards[i] = r
            record(i, info)
            if terminated or truncated:
                done[i] = True
