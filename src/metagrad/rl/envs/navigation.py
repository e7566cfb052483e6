"""2D navigation (MAML paper 5.3; SG-MRL paper 5): a point agent moves to a goal, all episodes in one tensor.

Observation: the position (plus the goal for the oracle). Action: a velocity, each component clipped to
[-0.1, 0.1]. Reward after each step: minus the distance to the goal (``reward="distance"``, what both papers'
code computes and what the MAML paper's Table 4 needs) or minus its square (``"squared"``, the papers' text).
An episode ends within ``goal_radius`` (0.01) of the goal or after ``horizon`` (100) steps.

``normalized_actions=True`` is rllab's ``normalize()`` wrapper, which the MAML code trains with: the policy acts in
[-1, 1] and the environment takes ``max_speed`` times that (so a policy's initial standard deviation of 1 is 0.1 in
the environment's units, not ten times the clip). It changes the policy's parametrization, not the task.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError, check_choice, check_whole
from .base import Space, TaskEnv, check_actions, check_tasks

REWARDS = ("distance", "squared")


class Navigation2D(TaskEnv):
    """Goals uniform in ``[goal_low, goal_high]^2``; every episode starts at ``start`` (the origin).

    ``oracle=True`` appends the goal to the observation (the papers' oracle baseline).
    """

    def __init__(self, goal_low: float = -0.5, goal_high: float = 0.5, horizon: int = 100,
                 reward: str = "distance", max_speed: float = 0.1, goal_radius: float = 0.01,
                 start: tuple[float, float] = (0.0, 0.0), oracle: bool = False, normalized_actions: bool = False):
        check_whole("horizon", horizon, 1)  # the papers: 100 steps
        check_choice("reward", reward, tuple(REWARDS))
        if not goal_low < goal_high:
            raise ConfigError(f"goal range [{goal_low}, {goal_high}] must have low < high, e.g. [-0.5, 0.5]")
        if not max_speed > 0:
            raise ConfigError(f"max_speed {max_speed} must be positive (the papers use 0.1)")
        self.goal_low, self.goal_high, self.horizon = float(goal_low), float(goal_high), int(horizon)
        self.reward, self.max_speed, self.goal_radius = reward, float(max_speed), float(goal_radius)
        self.start = torch.tensor(start, dtype=torch.float32)
        self.oracle = oracle
        self.obs_dim = 4 if oracle else 2
        self.normalized_actions = normalized_actions
        bound = 1.0 if normalized_actions else self.max_speed
        self.action_space = Space("box", (2,), -bound, bound)
        self._pos: Tensor | None = None
        self._goals: Tensor | None = None
        self._done: Tensor | None = None
        self._t = 0

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        check_whole("num_tasks", num_tasks, 0)
        u = torch.rand(num_tasks, 2, generator=generator)
        return self.goal_low + (self.goal_high - self.goal_low) * u

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        check_tasks(tasks, episodes, 2)
        self._goals = tasks[:, None, :].expand(-1, episodes, -1)
        self._pos = self.start.to(tasks).expand(tasks.shape[0], episodes, 2).clone()
        self._done = torch.zeros(tasks.shape[0], episodes, dtype=torch.bool)
        self._t = 0
        return self._observe()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._pos is None or self._goals is None or self._done is None:
            raise RuntimeError("call reset() before step()")
        check_actions(actions, tuple(self._done.shape), self.action_space)
        velocity = actions * self.max_speed if self.normalized_actions else actions
        self._pos = self._pos + velocity.clamp(-self.max_speed, self.max_speed)
        sq = ((self._pos - self._goals) ** 2).sum(-1)
        reward = -sq if self.reward == "squared" else -sq.sqrt()
        self._t += 1
        # once done, always done; "within 0.01 of the goal" read as a circle (pytorch-maml-rl's check is the square
        # |dx|, |dy| < 0.01 around it: a few episodes run on here where it stops)
        self._done = self._done | (sq < self.goal_radius**2) | (self._t >= self.horizon)
        return self._observe(), reward, self._done.clone()

    def _observe(self) -> Tensor:
        assert self._pos is not None and self._goals is not None
        return torch.cat([self._pos, self._goals], -1) if self.oracle else self._pos.clone()
