"""Environments for meta-RL: vectorised task environments and the gymnasium bridge."""

from __future__ import annotations

import difflib
from typing import Any

from ...errors import ConfigError
from .base import Space, TaskEnv
from .navigation import Navigation2D

ENVS = {"navigation2d": Navigation2D}


def make_env(name: str, **kwargs: Any) -> TaskEnv:
    """A task environment by name: ``navigation2d``, or ``gym:<id>`` for a registered gymnasium environment
    whose task can be set (``horizon`` then gives the episode length)."""
    if name.startswith("gym:"):
        from .gym import GymTaskEnv, register, require_gymnasium

        gym = require_gymnasium()
        register()
        env_id = name[4:]
        if env_id not in gym.registry:
            close = difflib.get_close_matches(env_id, list(gym.registry), n=1)
            hint = f" (did you mean 'gym:{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown gymnasium environment '{env_id}'{hint}")
        horizon = int(kwargs.get("horizon", 100))
        return GymTaskEnv(lambda: gym.make(env_id, max_episode_steps=horizon), horizon)
    if name not in ENVS:
        close = difflib.get_close_matches(name, list(ENVS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown environment '{name}'{hint}; choose one of {', '.join(ENVS)}, or gym:<id> for "
                          "a gymnasium environment whose task can be set")
    return ENVS[name](**kwargs)


__all__ = ["ENVS", "Navigation2D", "Space", "TaskEnv", "make_env"]
