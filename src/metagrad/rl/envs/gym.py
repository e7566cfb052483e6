"""gymnasium side of the meta-RL core: 2D navigation as a ``gymnasium.Env``, and ``GymTaskEnv``, which runs any
gymnasium environment whose task can be set (``unwrapped.sample_tasks`` / ``unwrapped.set_task``) for the engine.

Needs the ``rl`` extra (``pip install 'metagrad[rl]'``); the rest of metagrad imports without gymnasium.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, check_whole
from ...settings import check_seed
from .base import ResetSeeds, TaskEnv, as_space, check_actions, check_tasks

NAVIGATION_ID = "metagrad/Navigation2D-v0"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def require(module: str) -> Any:
    """Import an optional package of the ``rl`` extra (gymnasium, mujoco, metaworld), or stop with the install
    command (exit code 2 from the CLI)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        broken = "" if e.name == module else f" (importing it failed: {e})"
        raise ConfigError(f"this needs {module}{broken}; install the rl extra: pip install 'metagrad[rl]'") from None


def require_gymnasium() -> Any:
    """Import gymnasium, or stop with the install command (exit code 2 from the CLI)."""
    return require("gymnasium")


def register() -> None:
    """Register ``metagrad/Navigation2D-v0`` with gymnasium (idempotent)."""
    gym = require_gymnasium()
    if NAVIGATION_ID not in gym.registry:
        gym.register(NAVIGATION_ID, entry_point="metagrad.rl.envs.gym:Navigation2DEnv", max_episode_steps=100)


@functools.cache
def _navigation_env_class() -> type:
    gym = require_gymnasium()

    class Navigation2DEnv(gym.Env):
        """One 2D navigation episode (same dynamics as ``Navigation2D``); set the goal with ``set_task`` or
        ``reset(options={"task": goal})``. The 100-step limit comes from the registration's TimeLimit."""

        metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

        def __init__(self, goal_low: float = -0.5, goal_high: float = 0.5, reward: str = "distance",
                     max_speed: float = 0.1, goal_radius: float = 0.01):
            self.goal_low, self.goal_high, self.reward = goal_low, goal_high, reward
            self.max_speed, self.goal_radius = max_speed, goal_radius
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
            self.action_space = gym.spaces.Box(-max_speed, max_speed, (2,), np.float32)
            self.goal = np.zeros(2)
            self.pos = np.zeros(2)

        def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
            return rng.uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))

        def set_task(self, task: Any) -> None:
            self.goal = np.asarray(task, dtype=np.float64)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            super().reset(seed=seed)
            if options and "task" in options:
                self.set_task(options["task"])
            self.pos = np.zeros(2)
            return self.pos.astype(np.float32), {}

        def step(self, action: Any) -> Any:
            self.pos = self.pos + np.clip(np.asarray(action, dtype=np.float64), -self.max_speed, self.max_speed)
            sq = float(((self.pos - self.goal) ** 2).sum())
            reward = -sq if self.reward == "squared" else -np.sqrt(sq)
            return self.pos.astype(np.float32), reward, sq < self.goal_radius**2, False, {}

    return Navigation2DEnv


def __getattr__(name: str) -> Any:  # the class is built on first use so that importing this module needs no gym
    if name == "Navigation2DEnv":
        return _navigation_env_class()
    raise AttributeError(name)


class GymTaskEnv(TaskEnv):
    """Any gymnasium environment with settable tasks, as a ``TaskEnv``: one copy per (task, episode), stepped in
    a loop (the general path; vectorised environments such as ``Navigation2D`` are much faster).

    ``make`` builds one environment (e.g. ``lambda: gymnasium.make(id)``); its ``unwrapped`` must have
    ``sample_tasks(n, rng) -> array`` and ``set_task(task)``. Every ``reset`` seeds copy ``i`` with the ``i``-th
    number of ``SeedSequence([seed, s])``, ``s`` the number given to ``reseed`` (the sampler draws it from the run's
    generator) or the number of resets so far: each batch of episodes starts from fresh random states. The copies
    must not share state (a class-level mutable attribute that ``set_task`` writes would give every copy the last
    task's): metagrad cannot see that from outside.
    """

    sampling_threads = 1

    def __init__(self, make: Callable[[], Any], horizon: int, seed: int = 0):
        gym = require_gymnasium()
        check_whole("horizon", horizon, 1)
        check_seed("seed", seed)
        self.make, self.horizon, self.seed = make, int(horizon), int(seed)
        self.reset_seeds = ResetSeeds(seed)
        try:
            probe = make()
        except gym.error.DependencyNotInstalled as e:  # e.g. Box2D or MuJoCo for gymnasium's own families
            raise ConfigError(f"the environment needs a package that is not installed: {e}") from None
        for method in ("sample_tasks", "set_task"):
            if not hasattr(probe.unwrapped, method):
                raise ConfigError(f"{probe.unwrapped.__class__.__name__} has no {method}(); meta-RL needs an "
                                  "environment whose task can be sampled and set")
        space = probe.action_space
        self.action_space = as_space(space)
        if isinstance(space, gym.spaces.Discrete):  # the policy's actions 0..n-1, the space's start..start+n-1
            self._start = int(space.start)
        else:  # a Box: actions clipped to its bounds, as the MuJoCo families do
            self._low, self._high = space.low, space.high
        if probe.observation_space.shape is None:  # Dict, Tuple: no one array to flatten
            raise ConfigError(f"observation space {type(probe.observation_space).__name__} of "
                              f"{type(probe.unwrapped).__name__} is not supported: the policy reads one array; "
                              "flatten it (gymnasium.wrappers.FlattenObservation in the registration, or in the "
                              "environment)")
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self._envs: list[Any] = [probe]
        self._shape = (0, 0)
        self._done: np.ndarray | None = None
        self._last: np.ndarray | None = None

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        check_whole("num_tasks", num_tasks, 0)
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        env = self._envs[0].unwrapped
        name = type(env).__name__
        try:
            drawn = env.sample_tasks(num_tasks, np.random.default_rng(seed))
        except TypeError as e:
            raise ConfigError(f"{name}.sample_tasks(n, rng) failed ({e}); metagrad calls it with the number of tasks "
                              "and a numpy Generator to draw them from") from None
        try:
            tasks = np.asarray(drawn, dtype=np.float64)  # float32 rounds integer task ids above 2**24
        except (TypeError, ValueError):
            raise ConfigError(f"{name}.sample_tasks returned {type(drawn).__name__} of "
                              f"{type(drawn[0]).__name__ if len(drawn) else 'nothing'}: tasks must be numbers, an "
                              "array [n, task_dim]; flatten dict tasks in sample_tasks and rebuild them in set_task"
                              ) from None
        tasks = tasks.reshape(num_tasks, -1) if tasks.ndim == 1 and len(tasks) == num_tasks else tasks
        if tasks.ndim != 2 or tasks.shape[0] != num_tasks:
            raise ConfigError(f"{name}.sample_tasks({num_tasks}, rng) returned shape {list(tasks.shape)}; it must "
                              f"return [{num_tasks}, task_dim]")
        return torch.from_numpy(tasks)

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        check_tasks(tasks, episodes)
        n = tasks.shape[0] * episodes
        while len(self._envs) < n:
            self._envs.append(self.make())
        self._shape = (tasks.shape[0], episodes)
        obs = []
        with self.reset_seeds.kept_on_error():
            seeds = self.reset_seeds.next(n)
            for i in range(n):
                env = self._envs[i]
                env.unwrapped.set_task(tasks[i // episodes].numpy())
                o, _ = env.reset(seed=int(seeds[i]))
                obs.append(self._observation(o, "reset"))
        self._done = np.zeros(n, dtype=bool)
        self._last = np.stack(obs)
        return torch.from_numpy(self._last.copy()).view(*self._shape, -1)

    def reseed(self, seed: int) -> None:
        self.reset_seeds.reseed(seed)

    def _observation(self, o: Any, where: str) -> np.ndarray:
        """One copy's observation, flat, of the size its observation space declares (the policy's input size)."""
        flat = np.asarray(o, dtype=np.float32).ravel()  # (under the caller's errstate: overflow is said below)
        if flat.size != self.obs_dim:
            raise ConfigError(f"{type(self._envs[0].unwrapped).__name__}.{where} returned an observation of "
                              f"{flat.size} numbers, and its observation_space "
                              f"{self._envs[0].observation_space} declares {self.obs_dim}; make them agree")
        if not np.isfinite(flat).all() and np.isfinite(np.asarray(o, dtype=np.float64)).all():
            raise ConfigError(f"{type(self._envs[0].unwrapped).__name__}.{where} returned an observation beyond "
                              f"float32's range (largest {np.abs(np.asarray(o, dtype=np.float64)).max():.3g}): the "
                              "policy reads float32; scale the observations down")
        return flat

    def _reward(self, r: Any) -> float:
        """One copy's reward as a float32-sized number, or a ConfigError naming what the step returned instead."""
        if type(r) in (float, int, np.float64, np.float32) and -FLOAT32_MAX <= r <= FLOAT32_MAX:
            return r  # the common case, at once (NaN fails the bounds: the sampler names it)
        name = type(self._envs[0].unwrapped).__name__
        try:
            value = None if r is None else np.asarray(r, dtype=np.float64)  # (None would read as NaN)
        except (TypeError, ValueError):
            value = None
        if value is None or value.size != 1:
            what = type(r).__name__ if value is None else f"{type(r).__name__} of shape {list(value.shape)}"
            raise ConfigError(f"{name}.step returned a reward of {what}; it must return one number per step (a "
                              "float; a task that arrived as an array in set_task may need float(task[0]))")
        reward = float(value.reshape(()))
        if math.isfinite(reward) and abs(reward) > FLOAT32_MAX:
            raise ConfigError(f"{name}.step returned a reward of {reward:.3g}, beyond float32's range (3.4e38) in "
                              "which the returns are computed; scale the rewards down")
        return reward

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self._done is None or self._last is None:
            raise RuntimeError("call reset() before step()")
        check_actions(actions, self._shape, self.action_space)
        flat = actions.reshape(self._shape[0] * self._shape[1], *actions.shape[2:]).detach().cpu().numpy()
        rewards = np.zeros(len(flat), dtype=np.float32)
        with np.errstate(over="ignore"):  # an observation beyond float32's range: said as such (_observation)
            for i, a in enumerate(flat):
                if self._done[i]:
                    continue
                a = int(a) + self._start if self.action_space.kind == "discrete" else np.clip(a, self._low,
                                                                                              self._high)
                o, r, terminated, truncated, _ = self._envs[i].step(a)
                self._last[i] = self._observation(o, "step")
                rewards[i] = self._reward(r)
                self._done[i] = terminated or truncated
        shape = self._shape
        return (torch.from_numpy(self._last.copy()).view(*shape, -1), torch.from_numpy(rewards).view(shape),
                torch.from_numpy(self._done.copy()).view(shape))


with contextlib.suppress(ConfigError):  # importing this module registers the environment when gymnasium is there:
    register()  # gymnasium.make("metagrad.rl.envs.gym:metagrad/Navigation2D-v0")
