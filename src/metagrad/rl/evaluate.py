"""Meta-test of a meta-RL policy: average return on held-out tasks after 0..k VPG steps, with 95% CIs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..analysis.stats import mean_ci95
from ..errors import ConfigError, TrainingDiverged, check_whole
from ..evaluate import say_if_at_edge
from ..inner import SGD, schedule_used, step_sizes
from ..seeds import VAL_SEED_OFFSET
from .metarl import MetaRL
from .sampler import Trajectories, rollout


def held_out_goals(learner: MetaRL, num_tasks: int, seed: int) -> torch.Tensor:
    """A fixed set of test tasks: the same ``seed`` gives every method the same tasks."""
    return learner.env.sample_tasks(num_tasks, torch.Generator().manual_seed(seed))


@torch.no_grad()
def adaptation_returns(learner: MetaRL, tasks: Tensor, steps: int, episodes: int = 40,
                       lr: float | Sequence[float] = (0.1, 0.05), generator: torch.Generator | None = None,
                       chunk: int = 50, keep_paths: int = 0) -> tuple[Tensor, list[Tensor]]:
    """Mean undiscounted return per task after 0..``steps`` VPG steps (each on ``episodes`` fresh episodes of
    the current policy): ``[T, steps + 1]``; with ``keep_paths`` also the positions of the first episodes of
    the first tasks after each step (``[keep_paths, H + 1, obs_dim]`` per step), for trajectory plots."""
    check_whole("steps", steps, 0)
    rule = SGD(lr)
    rows, paths = [], []
    for i in range(0, tasks.shape[0], chunk):
        part = tasks[i: i + chunk]
        params, per_task, cols = learner.meta_params(), False, []
        for s in range(steps + 1):
            tr = rollout(learner.env, learner.policy, params, part, episodes, generator, per_task)
            cols.append(tr.episode_returns.mean(1))
            if i == 0 and keep_paths:  # positions of the first episode (NaN once it has ended)
                valid = tr.mask[:keep_paths, 0, :, None].bool()
                paths.append(tr.obs[:keep_paths, 0].masked_fill(~valid, float("nan")))
            if s < steps:
                tr = learner.process(tr, learner.normalize_inner)
                params, per_task = learner.adapt_batch(params, tr, s, per_task, rule), True
        rows.append(torch.stack(cols, 1))
    return torch.cat(rows), paths


def return_curve(learner: MetaRL, num_tasks: int, steps: int, episodes: int, lr: float | Sequence[float], seed: int,
                 keep_paths: int = 0) -> tuple[dict[str, Any], list[torch.Tensor], torch.Tensor]:
    """Mean return per test task after 0..``steps`` steps (each on ``episodes`` fresh episodes): the mean over
    tasks with its 95% half-width, per step; plus the first episodes' positions when ``keep_paths``."""
    check_whole("steps", steps, 0)
    check_whole("num_tasks", num_tasks)
    lr = step_sizes(lr)
    if num_tasks < 2:
        raise ConfigError(f"num_tasks {num_tasks}: a return curve needs at least 2 test tasks for its 95% intervals")
    tasks = held_out_goals(learner, num_tasks, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    values, paths = adaptation_returns(learner, tasks, steps, episodes, lr, gen, keep_paths=keep_paths)
    mean, half = mean_ci95(values)
    curve = {"tasks": num_tasks, "episodes": episodes, "lr": schedule_used(lr, steps),
             "mean": [round(float(m), 4) for m in mean], "ci95": [round(float(h), 4) for h in half]}
    return curve, paths, tasks[:keep_paths]


def evaluate(learner: MetaRL, cfg: Any, keep_paths: int = 0) -> tuple[dict[str, Any], list[torch.Tensor],
                                                                   torch.Tensor]:
    """A run's test curve with its config's evaluation settings (``RLConfig``'s [eval] section): the step sizes
    given (none: the trained one), or the first one tuned on validation tasks (each then times ``eval_later`` after
    the first step: halved, as the MAML code's tests)."""
    lr = cfg.test_lr()
    if cfg.tune_eval_lr:  # on validation tasks: other goals of the family, or a benchmark's training split
        later = cfg.eval_later
        first = tune_step_size(learner, cfg.eval_lr_grid, cfg.eval_steps, cfg.eval_episodes, cfg.eval_seed, later=later)
        lr = [first, first * later]
    trained_on = learner.env
    learner.env = meta_test_env(trained_on)
    try:
        return return_curve(learner, cfg.eval_tasks, cfg.eval_steps, cfg.eval_episodes, lr, cfg.eval_seed,
                            keep_paths)
    finally:
        learner.env = trained_on


def meta_test_env(env: Any) -> Any:
    """Where a run is tested: a benchmark's meta-test split where it has one (Meta-World), else the family's own
    environment (its test tasks are other draws of the same distribution)."""
    split = getattr(env, "test_split", None)
    return split() if callable(split) else env


def tune_step_size(learner: MetaRL, grid: Sequence[float], steps: int, episodes: int, seed: int,
                   num_tasks: int = 40, later: float = 0.5, option: str = "--set eval_lr_grid=...") -> float:
    """The first test-time step size (times ``later`` after the first step: halved, as the MAML paper does) with the
    best mean return over 1..``steps`` steps on validation tasks: the papers' "manually tuned" step size of the
    baselines. A step size whose policy diverges (NaN actions or returns) is passed over, as the supervised tuning
    scores it infinitely bad. ``option``: how the command that runs the tuning sets ``grid``, named in the
    messages."""
    tasks = held_out_goals(learner, num_tasks, seed + VAL_SEED_OFFSET)
    best, best_lr, failed = -math.inf, None, ""
    for lr in grid:
        gen = torch.Generator().manual_seed(seed + VAL_SEED_OFFSET + 1)
        try:
            values, _ = adaptation_returns(learner, tasks, steps, episodes, (lr, lr * later), gen)
        except (ConfigError, TrainingDiverged) as e:  # its actions refused, or the simulator blew up (EnvironmentFault)
            failed = failed or f"{lr}: {e}"
            continue
        score = float(values[:, 1:].mean()) if steps else float(values.mean())
        if math.isfinite(score) and score > best:
            best, best_lr = score, lr
    if best_lr is None:
        raise ConfigError(f"every test-time step size of the grid {list(grid)} diverged on the validation tasks "
                          f"(first: {failed or 'a NaN return'}); give smaller step sizes ({option})")
    say_if_at_edge(best_lr, grid, option)
    return best_lr


def rllab_average(traj: Trajectories, envs: int = 40, batch: int = 4000) -> Tensor:
    """The MAML code's ``AverageReturn`` per task from ``traj`` (``[T, envs * m, H]``; episode ``j`` of environment
    ``i`` at index ``i * m + j``): rllab's VectorizedSampler runs ``envs`` environments side by side, each starting
    a new episode when one ends, stops at the first step at which its completed episodes hold ``batch`` steps and
    drops the unfinished ones, so short (successful) episodes weigh more than in a fixed-episode mean. Raises
    ``ValueError`` when ``m`` episodes per environment do not reach ``batch`` steps."""
    lengths, returns = traj.mask.sum(-1), traj.episode_returns
    t = lengths.shape[0]
    ends = lengths.view(t, envs, -1).cumsum(-1).reshape(t, -1)  # the step at which each episode completes
    order = ends.argsort(dim=-1, stable=True)
    done_steps = lengths.gather(1, order).cumsum(-1)
    if not bool((done_steps[:, -1] >= batch).all()):
        raise ValueError(f"{traj.mask.shape[1]} episodes per task do not reach {batch} steps; sample more")
    first = (done_steps >= batch).to(torch.int64).argmax(-1, keepdim=True)
    stop = ends.gather(1, order).gather(1, first)
    kept = (ends <= stop).to(returns.dtype)
    return (returns * kept).sum(-1) / kept.sum(-1)


@torch.no_grad()
def rllab_return_curve(learner: MetaRL, num_tasks: int, steps: int, lr: Sequence[float], seed: int, envs: int = 40,
                       batch: int = 4000) -> dict[str, Any]:
    """``return_curve`` with the MAML code's measurement (maml_examples/test_maml_point.py: VPG with batch_size
    4000 steps, 40 environments; see ``rllab_average``). Each step's update uses the first episode of every
    environment (``envs`` episodes, as ``return_curve``); the same tasks as ``return_curve`` for ``seed``."""
    tasks = held_out_goals(learner, num_tasks, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rule, cols = SGD(tuple(lr)), []
    params, per_task = learner.meta_params(), False
    for s in range(steps + 1):
        m = max(1, -(-batch // (envs * learner.env.horizon)))
        while True:  # more episodes per environment until the completed ones reach ``batch`` steps
            tr = rollout(learner.env, learner.policy, params, tasks, envs * m, gen, per_task)
            try:
                cols.append(rllab_average(tr, envs, batch))
                break
            except ValueError:
                m *= 2
        if s < steps:
            first = Trajectories(*(f[:, ::m] for f in tr))
            params, per_task = learner.adapt_batch(params, learner.process(first, learner.normalize_inner), s,
                                                   per_task, rule), True
    mean, half = mean_ci95(torch.stack(cols, 1))
    return {"tasks": num_tasks, "protocol": f"rllab: {envs} envs, {batch} steps per batch",
            "lr": schedule_used(lr, steps), "mean": [round(float(v), 4) for v in mean],
            "ci95": [round(float(h), 4) for h in half]}
