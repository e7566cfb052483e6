"""Tiny environments with exactly computable objectives, for the meta-RL gradient tests."""

from __future__ import annotations

import torch
from torch import Tensor

from metagrad.rl.envs.base import Space, TaskEnv


class OneStepBandit(TaskEnv):
    """One step, observation [1]; a task is a reward vector over ``n`` discrete actions, or, continuous
    (``n = 0``), a target g with reward -(a - g)^2."""

    def __init__(self, n: int = 2):
        self.n, self.obs_dim, self.horizon = n, 1, 1
        self.action_space = Space("discrete", n=n) if n else Space("box", (1,))
        self._tasks: Tensor | None = None

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        return torch.rand(num_tasks, max(self.n, 1), generator=generator)

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        self._tasks = tasks[:, None].expand(-1, episodes, -1)
        return torch.ones(tasks.shape[0], episodes, 1, dtype=tasks.dtype)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        assert self._tasks is not None
        if self.n:
            reward = torch.gather(self._tasks, -1, actions.long()[..., None])[..., 0]
        else:
            reward = -((actions[..., 0] - self._tasks[..., 0]) ** 2)
        obs = torch.ones(*reward.shape, 1, dtype=self._tasks.dtype)
        return obs, reward, torch.ones_like(reward, dtype=torch.bool)


class RepeatedBandit(OneStepBandit):
    """``OneStepBandit`` (discrete) played ``horizon`` times an episode: the same observation and rewards each step."""

    def __init__(self, n: int = 2, horizon: int = 2):
        super().__init__(n)
        self.horizon, self.t = horizon, 0

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        self.t = 0
        return super().reset(tasks, episodes)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        obs, reward, _ = super().step(actions)
        self.t += 1
        return obs, reward, torch.full_like(reward, self.t >= self.horizon, dtype=torch.bool)


class EndsThenBreaks(TaskEnv):
    """Episode 0 of every task ends at its first step; after that the environment returns ``bad`` rewards and
    observations for it (a simulator stepped past its end), which the sampler must ignore. Reward 1 per step."""

    obs_dim, action_space, horizon = 2, Space("box", (2,)), 4

    def __init__(self, bad: float = float("nan")):
        self.bad, self.t, self.shape = bad, 0, (0, 0)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        return torch.zeros(num_tasks, 1)

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        self.t, self.shape = 0, (tasks.shape[0], episodes)
        return torch.zeros(*self.shape, 2)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.t += 1
        done = torch.zeros(self.shape, dtype=torch.bool)
        done[:, 0] = True
        done |= self.t >= self.horizon
        reward, obs = torch.ones(self.shape), torch.full((*self.shape, 2), float(self.t))
        if self.t > 1:
            reward[:, 0], obs[:, 0] = self.bad, self.bad
        return obs, reward, done


def spd_matrix(d: int, ridge: float, generator: torch.Generator) -> Tensor:
    """A random symmetric positive definite ``d x d`` float64 matrix, ``M M^T / d + ridge I`` (a trust-region
    problem's curvature)."""
    m = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return m @ m.T / d + ridge * torch.eye(d, dtype=torch.float64)
