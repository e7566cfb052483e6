"""Environments for meta-RL: vectorised task environments and the gymnasium bridge."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from ...errors import ConfigError, check_whole
from .base import Space, TaskEnv
from .navigation import Navigation2D

ENVS = {"navigation2d": Navigation2D}


def make_env(name: str, **kwargs: Any) -> TaskEnv:
    """A task environment by name: ``navigation2d``; a MuJoCo locomotion family (``cheetah-dir``, ``ant-vel``,
    ``hopper-rand-params``, ... see ``locomotion.FAMILIES``; ``horizon`` default 200, ``seed``); a Meta-World
    benchmark (``ml1-reach``, ``ml1-push``, ``ml10``, ``ml45``; ``split`` train/test, ``horizon`` default 150,
    ``seed``); these two kinds step their copies in ``workers`` processes where it is above 1 (``ProcessCopies``:
    the same episodes, on more cores); or ``gym:<id>`` (or ``gym:<module>:<id>``, importing the module first) for
    a registered gymnasium environment whose task can be set (``horizon``, at most the registration's
    ``max_episode_steps``; ``seed``)."""
    from .locomotion import FAMILIES
    from .metaworld import BENCHMARKS

    if name.startswith("gym:"):
        from .gym import GymTaskEnv, register, require_gymnasium

        gym = require_gymnasium()
        register()
        env_id = name[4:]
        module, _, bare = env_id.rpartition(":")
        if module:  # gymnasium's "module:id": importing the module registers the id
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"cannot import module '{module}' for gymnasium environment '{bare}' ({e}); put "
                                  "its folder on PYTHONPATH") from None
            env_id = bare
        if env_id not in gym.registry:
            close = difflib.get_close_matches(env_id, list(gym.registry), n=1)
            prefix = f"{module}:" if module else ""
            hint = f" (did you mean 'gym:{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown gymnasium environment '{env_id}'{hint}")
        if kwargs.get("workers", 1) != 1:
            raise ConfigError(f"env_workers {kwargs['workers']} steps the copies of the MuJoCo and Meta-World "
                              f"environments in worker processes; '{name}' steps its copies in this process: leave "
                              "env_workers 1")
        unknown = sorted(set(kwargs) - {"horizon", "seed", "workers"})
        if unknown:
            raise ConfigError(f"environment '{name}' takes no option {', '.join(unknown)}; it takes horizon, "
                              "seed (set the rest in the environment's registration)")
        horizon, seed = kwargs.get("horizon", 100), kwargs.get("seed", 0)
        check_whole("horizon", horizon, 1)
        limit = gym.spec(env_id).max_episode_steps
        if limit and horizon > limit:  # overriding it would run the registration's episodes longer than they are
            raise ConfigError(f"horizon {horizon} is longer than the episodes of '{name}' (its registration's "
                              f"max_episode_steps {limit}); give horizon {limit} or less, or register it with a "
                              "longer max_episode_steps")
        return GymTaskEnv(lambda: gym.make(env_id, max_episode_steps=horizon), horizon, seed)
    if name in FAMILIES or name in BENCHMARKS:
        allowed = (("horizon", "seed", "frame_skip", "observation", "oracle", "action_scale", "physics")
                   if name in FAMILIES
                   else ("horizon", "seed", "split"))
        unknown = sorted(set(kwargs) - {*allowed, "workers"})
        if unknown:
            raise ConfigError(f"environment '{name}' takes no option {', '.join(unknown)}; it takes "
                              f"{', '.join(allowed)}, workers")
        workers = kwargs.pop("workers", 1)
        if workers != 1:
            from .processes import ProcessCopies

            return ProcessCopies(name, workers, **kwargs)
        if name in FAMILIES:
            from .locomotion import MujocoTaskEnv

            return MujocoTaskEnv(name, **kwargs)
        from .metaworld import MetaWorldTaskEnv

        return MetaWorldTaskEnv(name, **kwargs)
    if name not in ENVS:
        names = [*ENVS, *FAMILIES, *BENCHMARKS]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown environment '{name}'{hint}; choose one of {', '.join(names)}, or gym:<id> for "
                          "a gymnasium environment whose task can be set")
    accepted = inspect.signature(ENVS[name]).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"environment '{name}' takes no option {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return ENVS[name](**kwargs)


__all__ = ["ENVS", "Navigation2D", "Space", "TaskEnv", "make_env"]
