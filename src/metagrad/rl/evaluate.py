"""Meta-test of a meta-RL policy: average return on held-out tasks after 0..k VPG steps, with 95% CIs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..analysis.stats import mean_ci95
from .metarl import MetaRL

VAL_SEED_OFFSET = 1_000_003  # step-size tuning uses its own tasks, never the test ones


def held_out_goals(learner: MetaRL, num_tasks: int, seed: int) -> torch.Tensor:
    """A fixed set of test tasks: the same ``seed`` gives every method the same tasks."""
    return learner.env.sample_tasks(num_tasks, torch.Generator().manual_seed(seed))


def return_curve(learner: MetaRL, num_tasks: int, steps: int, episodes: int, lr: Sequence[float], seed: int,
                 keep_paths: int = 0) -> tuple[dict[str, Any], list[torch.Tensor], torch.Tensor]:
    """Mean return per test task after 0..``steps`` steps (each on ``episodes`` fresh episodes): the mean over
    tasks with its 95% half-width, per step; plus the first episodes' positions when ``keep_paths``."""
    tasks = held_out_goals(learner, num_tasks, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    values, paths = learner.adaptation_returns(tasks, steps, episodes, tuple(lr), gen, keep_paths=keep_paths)
    mean, half = mean_ci95(values)
    curve = {"tasks": num_tasks, "episodes": episodes, "lr": list(lr), "mean": [round(float(m), 4) for m in mean],
             "ci95": [round(float(h), 4) for h in half]}
    return curve, paths, tasks[:keep_paths]


def tune_step_size(learner: MetaRL, grid: Sequence[float], steps: int, episodes: int, seed: int,
                   num_tasks: int = 40, later: float = 0.5) -> float:
    """The first test-time step size (times ``later`` after the first step: halved, as the MAML paper does) with the
    best mean return over 1..``steps`` steps on validation tasks: the papers' "manually tuned" step size of the
    baselines."""
    tasks = held_out_goals(learner, num_tasks, seed + VAL_SEED_OFFSET)
    best, best_lr = None, grid[0]
    for lr in grid:
        gen = torch.Generator().manual_seed(seed + VAL_SEED_OFFSET + 1)
        values, _ = learner.adaptation_returns(tasks, steps, episodes, (lr, lr * later), gen)
        score = float(values[:, 1:].mean()) if steps else float(values.mean())
        if best is None or score > best:
            best, best_lr = score, lr
    return best_lr
