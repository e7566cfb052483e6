"""What the meta-RL engine needs from an environment: a batch of tasks, each run as several episodes at once.

A ``TaskEnv`` steps ``tasks x episodes`` copies of an environment together; observations are ``[T, K, obs_dim]``
tensors, actions ``[T, K, ...]``. Any gymnasium environment whose task can be set works through
``GymTaskEnv`` (a loop over copies); ``Navigation2D`` is written as one tensor operation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, TrainingDiverged, check_whole


@dataclass(frozen=True)
class Space:
    """An action space: ``box`` (``shape``, ``low``, ``high``) or ``discrete`` (``n`` actions)."""

    kind: str
    shape: tuple[int, ...] = ()
    low: float = -float("inf")
    high: float = float("inf")
    n: int = 0

    def describe(self) -> str:
        """The space in words, for error messages."""
        if self.kind == "discrete":
            return f"a discrete action space of {self.n} actions"
        return f"a continuous action space of shape {list(self.shape)} in [{self.low:g}, {self.high:g}]"


def as_space(space: object) -> Space:
    """``space`` as metagrad's ``Space``: one already, or a gymnasium ``Box`` or ``Discrete`` (read for what a policy
    needs: the action shape and bounds, or the number of actions)."""
    if isinstance(space, Space):
        return space
    kinds = {c.__name__ for c in type(space).__mro__}
    if "Discrete" in kinds and hasattr(space, "n"):
        return Space("discrete", n=int(space.n))
    if "Box" in kinds and np.issubdtype(getattr(space, "dtype", np.float32), np.integer):
        raise ConfigError(f"action space {space} holds integers, and metagrad's continuous policies act in real "
                          "numbers (they would be passed as such); use a Discrete space, or a float Box rounded in "
                          "the environment's step")
    if "Box" in kinds and all(hasattr(space, a) for a in ("shape", "low", "high")):
        return Space("box", tuple(space.shape), float(np.min(space.low)), float(np.max(space.high)))
    raise ConfigError(f"action space {space!r} is not supported; give env.action_space of a metagrad environment, or "
                      "a gymnasium Box or Discrete")


def check_tasks(tasks: Tensor, episodes: int, task_dim: int | None = None) -> None:
    """``reset``'s input: tasks ``[T, task_dim]`` (T >= 1) of finite numbers and a whole number of episodes >= 1."""
    if not isinstance(tasks, Tensor) or tasks.ndim != 2 or tasks.shape[0] < 1 or (
            task_dim is not None and tasks.shape[1] != task_dim):
        shape = list(tasks.shape) if isinstance(tasks, Tensor) else type(tasks).__name__
        dim = "task_dim" if task_dim is None else task_dim
        raise ConfigError(f"tasks {shape} must be a tensor [tasks, {dim}] with at least one task "
                          "(env.sample_tasks(n, generator) draws them)")
    if tasks.is_floating_point() and not bool(torch.isfinite(tasks).all()):
        raise ConfigError("tasks hold NaN or infinite values")
    check_whole("episodes", episodes, 1)


def check_actions(actions: Tensor, batch: tuple[int, int], space: Space) -> None:
    """``step``'s input: actions ``[T, K, *action shape]`` (a discrete space: ``[T, K]`` whole numbers in [0, n)) of
    finite numbers; a wrong shape would otherwise be broadcast over the joints or tasks without a word."""
    want = [*batch, *space.shape] if space.kind == "box" else list(batch)
    if list(actions.shape) != want:
        raise ConfigError(f"actions {list(actions.shape)} must be {want} ([tasks, episodes, *action shape]) for "
                          f"{space.describe()}")
    if actions.is_floating_point() and not bool(torch.isfinite(actions).all()):
        raise TrainingDiverged("actions hold NaN or infinite values: the policy has diverged")
    if space.kind == "discrete" and not bool(((actions == actions.round()) & (actions >= 0) & (actions < space.n))
                                             .all()):
        raise ConfigError(f"discrete actions must be whole numbers in [0, {space.n})")


class ResetSeeds:
    """The seeds of successive resets' copies: copy ``i`` gets the ``i``-th number of ``SeedSequence([seed, s])``,
    ``s`` the number last given to ``reseed`` (the sampler draws it from the run's generator, so a resumed run sees
    the same initial states) or, without one, the count of resets so far."""

    def __init__(self, seed: int):
        self.seed, self.resets, self._given = int(seed), 0, None

    def reseed(self, stream: int) -> None:
        self._given = int(stream)

    def next(self, n: int) -> np.ndarray:
        """The next reset's ``n`` seeds, moving on to the reset after."""
        stream = self.resets if self._given is None else self._given
        self.resets, self._given = self.resets + 1, None
        return np.random.SeedSequence([self.seed, stream]).generate_state(n)

    @contextlib.contextmanager
    def kept_on_error(self) -> Iterator[None]:
        """The stream put back where it was if the block raises: a reset that fails uses no seeds."""
        state = self.resets, self._given
        try:
            yield
        except BaseException:
            self.resets, self._given = state
            raise


class TaskEnv:
    """A batch of tasks (e.g. goals), each with several episodes run side by side.

    Subclasses set ``obs_dim``, ``action_space`` and ``horizon`` and implement ``sample_tasks``, ``reset`` and
    ``step``. ``step`` returns ``(obs, reward, done)`` with ``reward``/``done`` of shape ``[T, K]``; ``done``
    marks the episode's last step (goal reached, or the horizon); steps after it are ignored by the sampler.
    """

    obs_dim: int
    action_space: Space
    horizon: int
    # torch threads for the sampler's policy passes between steps (None: as set): environments stepped copy by copy
    # in Python take 1, since the passes on their small batches gain nothing from more, and idle threads spin on the
    # cores that simulator workers need (benchmarks/sampler_workers.py)
    sampling_threads: int | None = None

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """``[num_tasks, task_dim]`` task parameters drawn from the task distribution."""
        raise NotImplementedError

    def reset(self, tasks: Tensor, episodes: int) -> Tensor:
        """Start ``episodes`` episodes of every task; the first observations ``[T, K, obs_dim]``."""
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Seed the next ``reset``'s random initial states (the sampler draws ``seed`` from its generator, so a
        resumed run sees the same states). Deterministic environments ignore it."""

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Apply ``actions`` to every running episode: ``(obs, reward, done)``."""
        raise NotImplementedError
