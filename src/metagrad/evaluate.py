"""Adaptation curves on held-out tasks: query metrics after 0..k inner steps, with 95% confidence intervals."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .algorithms import MetaLearner
from .analysis.stats import mean_ci95
from .batch import TaskBatch
from .errors import ConfigError
from .inner import InnerRule
from .settings import check_seed

DIVERGED = 10.0  # a task diverged when its loss is not finite, or above 10x its own pre-update loss and
# above the mean pre-update loss of all tasks (so that a near-zero loss that grows a little does not count)


@dataclass
class Curve:
    """One metric after 0..steps adaptation steps over ``tasks`` test tasks: mean and 95% half-width, median (torch's:
    the lower middle value of an even count), and (for losses) how many tasks diverged at each step and the mean over
    the others. ``shots``: the support examples per task (N x K for N-way K-shot images; the curves of a results file
    are keyed by K itself)."""

    metric: str
    shots: int
    tasks: int
    mean: list[float]
    ci95: list[float]
    median: list[float]
    diverged: list[int]
    mean_converged: list[float]

    def at(self, step: int) -> tuple[float, float]:
        """The mean and 95% half-width after ``step`` adaptation steps (0: before adapting)."""
        if not 0 <= step < len(self.mean):
            raise ConfigError(f"step {step} is outside this curve's steps 0..{len(self.mean) - 1}")
        return self.mean[step], self.ci95[step]


def held_out_tasks(tasks: Any, num_tasks: int, shots: int, seed: int, query: int | None = None) -> TaskBatch:
    """A fixed set of test tasks: the same ``seed`` gives every method the same tasks."""
    if not hasattr(tasks, "sample"):
        raise TypeError(f"held_out_tasks samples from a task distribution (e.g. mg.tasks.Sinusoid()), not a "
                        f"{type(tasks).__name__}; a TaskBatch is already a set of tasks: give it to adaptation_curves")
    check_seed("seed", seed)
    if query is not None:
        tasks = tasks.with_query(query)
    return tasks.sample(num_tasks, torch.Generator().manual_seed(seed), shots=shots)


def adaptation_curves(learner: MetaLearner, batch: TaskBatch, steps: int, inner: InnerRule | None = None,
                      inner_batch_size: int = 0, seed: int = 0, transductive: bool = True) -> dict[str, Curve]:
    """Every metric of ``learner`` (loss, and accuracy for classifiers) after 0..steps adaptation steps."""
    if not hasattr(learner, "adaptation_metrics"):
        raise TypeError(f"adaptation_curves takes a learner (e.g. mg.MAML(model)), not a {type(learner).__name__}")
    check_seed("seed", seed)
    if isinstance(batch, TaskBatch) and batch.num_tasks < 2:
        raise ConfigError(f"adaptation curves need at least 2 test tasks for their 95% intervals, got "
                          f"{batch.num_tasks}; give more, e.g. held_out_tasks(tasks, 100, shots, seed)")
    values = learner.adaptation_metrics(batch, steps, inner=inner, inner_batch_size=inner_batch_size,
                                        generator=torch.Generator().manual_seed(seed), transductive=transductive)
    shots = batch.support.x.shape[1]
    out = {}
    for name, v in values.items():
        mean, half = mean_ci95(v, dim=0)
        bad = torch.zeros_like(v, dtype=torch.bool)
        if name == "loss":
            bad = ~torch.isfinite(v) | ((v > DIVERGED * v[:, :1]) & (v > v[:, 0].mean()))
        converged = [float(v[~bad[:, s], s].double().mean()) for s in range(v.shape[1])]
        out[name] = Curve(name, shots, v.shape[0], mean.tolist(), half.tolist(), v.median(dim=0).values.tolist(),
                          bad.sum(0).tolist(), converged)
    return out


def tune_step_size(learner: MetaLearner, batch: TaskBatch, steps: int, grid: Sequence[float],
                   inner_batch_size: int = 0, transductive: bool = True,
                   seed: int = 0) -> tuple[float, dict[float, float]]:
    """The test-time step size from ``grid`` with the lowest query loss averaged over steps 1..steps on
    ``batch`` (validation tasks, never the test tasks), scored as the test will run (``transductive`` batch norm or
    not; every candidate on the same minibatches, drawn from ``seed``); returns it and the loss of every candidate."""
    if isinstance(grid, str | bytes) or not isinstance(grid, Iterable) or not (grid := list(grid)):
        raise ConfigError(f"grid {grid!r} must hold the step sizes to try, e.g. [0.001, 0.01, 0.1]")
    scores = {}
    for lr in grid:
        loss = learner.adaptation_metrics(batch, steps, inner=learner.inner.with_lr(lr),
                                          inner_batch_size=inner_batch_size, transductive=transductive,
                                          generator=torch.Generator().manual_seed(seed))["loss"]
        score = loss[:, 1:].mean() if steps > 0 else loss.mean()
        scores[float(lr)] = float(score) if torch.isfinite(score) else float("inf")
    best = min(scores, key=scores.__getitem__)
    say_if_at_edge(best, grid)
    return best, scores


def say_if_at_edge(best: float, grid: Sequence[float], option: str = "--set eval_lr_grid=...") -> None:
    """Say on stderr when the tuned step size is the grid's largest: a larger one may do better. ``option``: how the
    command that runs the tuning sets the grid."""
    if len(set(grid)) > 1 and best == max(grid):
        print(f"metagrad: the tuned test-time step size {best:g} is the largest of the grid {list(grid)}; a larger one "
              f"may do better: widen the grid ({option}) to see", file=sys.stderr)
