"""Building a meta-RL run from its config, and its training loop: ``last`` and ``best`` checkpoints (best = the
highest average post-adaptation return of a training meta-batch, as the MAML paper keeps), resume on the same
trajectory, ``metrics.jsonl``, a progress bar, a time budget, and Ctrl-C that saves before stopping."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import checkpoint
from ..distributed import Distributed
from ..errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged
from .config import RLConfig
from .envs import make_env
from .envs.locomotion import FAMILIES
from .metarl import MetaRL
from .policy import make_policy


def build(cfg: RLConfig) -> tuple[MetaRL, torch.optim.Optimizer | None]:
    """The learner (environment, policy initialized from ``cfg.seed``) and, for outer 'vpg' or 'ppo', its optimizer."""
    kwargs: dict[str, Any] = {"horizon": cfg.horizon}
    if cfg.env == "navigation2d":
        kwargs.update(goal_low=cfg.goal_range[0], goal_high=cfg.goal_range[1], reward=cfg.reward, oracle=cfg.oracle,
                      normalized_actions=cfg.normalized_actions)
    elif cfg.oracle:
        raise ConfigError(f"oracle=True (the goal as input) is defined for navigation2d only, not for '{cfg.env}'")
    elif not cfg.env.startswith("gym:"):
        kwargs["seed"] = cfg.seed  # the simulators' initial states (MuJoCo locomotion, Meta-World)
    for name, default in (("frame_skip", 0), ("observation", "auto")):
        value = getattr(cfg, name)
        if value != default:
            if cfg.env not in FAMILIES:
                raise ConfigError(f"{name} {value} is for the MuJoCo locomotion families, not '{cfg.env}'; "
                                  f"set it to {default}")
            kwargs[name] = value
    env = make_env(cfg.env, **kwargs)
    torch.manual_seed(cfg.seed)
    policy = make_policy(env.action_space, env.obs_dim, cfg.policy, cfg.hidden, cfg.activation, cfg.init_std)
    learner = MetaRL(policy, env, algo=cfg.algo, outer=cfg.outer, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                     episodes=cfg.episodes, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, baseline=cfg.baseline,
                     normalize_inner=cfg.normalize_inner, normalize_outer=cfg.normalize_outer, max_kl=cfg.max_kl,
                     cg_iters=cfg.cg_iters, cg_damping=cfg.cg_damping, backtrack=cfg.backtrack,
                     max_backtracks=cfg.max_backtracks, hvp=cfg.hvp, hvp_subsample=cfg.hvp_subsample,
                     score_baseline=cfg.score_baseline, emaml_weight=cfg.emaml_weight, ppo_epochs=cfg.ppo_epochs,
                     ppo_clip=cfg.ppo_clip, inner_kl_coef=cfg.inner_kl_coef, inner_kl_target=cfg.inner_kl_target)
    optimizer = None
    if cfg.outer in ("vpg", "ppo"):
        cls = torch.optim.Adam if cfg.outer_optimizer == "adam" else torch.optim.SGD
        optimizer = cls(policy.parameters(), lr=cfg.outer_lr)
    return learner, optimizer


def load_learner(run_dir: str | Path, name: str = "best") -> tuple[MetaRL, RLConfig, dict[str, Any]]:
    """A trained learner from a run directory's ``best`` (or ``last``) checkpoint, with its config and info."""
    state, info = checkpoint.load(Path(run_dir) / name)
    cfg = RLConfig.from_dict(info["config"])
    learner, _ = build(cfg)
    learner.load_state_dict(state["learner"])
    return learner, cfg, info


@dataclass
class RLFitResult:
    iteration: int
    seconds: float  # training time of the whole run, across resumes
    env_steps: int
    sample_seconds: float  # of ``seconds``, the time spent sampling episodes (environment + policy)
    best_return: float | None
    stopped: str  # "done", "time_budget" or "interrupted"


class RLTrainer:
    """Meta-trains ``learner`` for ``cfg.iterations`` meta-iterations into ``run_dir``.

    With ``distributed`` (under ``torchrun``), every process draws the same meta-batch of tasks, samples and
    differentiates its share of them (its episodes from its own generator), and the learner all-reduces
    gradients, curvature products and line-search values, so all processes take the same step; process 0 writes
    checkpoints, logs and progress. (SG-MRL's batch baseline and E-MAML's normalization use the process's tasks.)
    """

    def __init__(self, learner: MetaRL, optimizer: torch.optim.Optimizer | None, cfg: RLConfig,
                 run_dir: str | Path | None = None, progress: bool = True, distributed: Distributed | None = None):
        self.learner, self.optimizer, self.cfg = learner, optimizer, cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = distributed
        self.writes = distributed is None or distributed.is_main
        self.progress = progress and self.writes
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.iteration, self.elapsed, self.env_steps, self.sample_seconds = 0, 0.0, 0, 0.0
        self.best_return: float | None = None
        self._stop = False

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds: the learner, the optimizer (outer 'vpg') and the RNG state."""
        return {"learner": self.learner.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "rng": self.generator.get_state()}

    def save(self, name: str, state: dict[str, Any] | None = None, iteration: int | None = None) -> None:
        """Write checkpoint ``run_dir/name`` (``state`` defaults to the full training state); process 0 only."""
        assert self.run_dir is not None
        if not self.writes:
            return
        checkpoint.save(self.run_dir / name, state or self.state(),
                        {"iteration": self.iteration if iteration is None else iteration, "elapsed": self.elapsed,
                         "env_steps": self.env_steps, "sample_seconds": self.sample_seconds,
                         "best_return": self.best_return,
                         "config": self.cfg.to_dict()})

    def restore(self) -> None:
        """Continue from ``run_dir/last``: parameters, optimizer, RNG, counters; later metric lines dropped."""
        assert self.run_dir is not None
        state, info = checkpoint.load(self.run_dir / "last")
        self.learner.load_state_dict(state["learner"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"])
        self.iteration, self.elapsed = info["iteration"], info["elapsed"]
        self.env_steps, self.best_return = info["env_steps"], info["best_return"]
        self.sample_seconds = info.get("sample_seconds", 0.0)
        path = self.run_dir / "metrics.jsonl"
        if path.exists() and self.writes:  # drop lines logged after the checkpoint (they will be logged again)
            keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["iteration"] <= self.iteration]
            path.write_text("".join(ln + "\n" for ln in keep))

    def fit(self, resume: bool = False) -> RLFitResult:
        """Train (or continue with ``resume``) until done, the time budget, or Ctrl-C; checkpoints on the way."""
        if self.run_dir is not None:
            if checkpoint.exists(self.run_dir / "last"):
                if not resume:
                    it = checkpoint.read_info(self.run_dir / "last")["iteration"]
                    raise CheckpointError(f"{self.run_dir} already holds a run (iteration {it}); resume it or "
                                          "choose another output folder")
                self.restore()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        stopped, start = "done", time.perf_counter()
        budget = self.cfg.step_budget
        bar = tqdm(total=budget or self.cfg.iterations, initial=self.env_steps if budget else self.iteration,
                   disable=not self.progress, unit=" steps" if budget else "it", unit_scale=bool(budget),
                   dynamic_ncols=True, file=sys.stderr)
        with self._sigint_saves():
            while self.iteration < self.cfg.iterations and not (budget and self.env_steps >= budget):
                before = self.env_steps
                metrics = self.step()
                self._snapshots(before)
                bar.update(min(self.env_steps, budget) - min(before, budget) if budget else 1)
                bar.set_postfix(pre=f"{metrics['return_pre']:.1f}", post=f"{metrics['return_post']:.1f}",
                                refresh=False)
                if self.run_dir is not None and (self.iteration % self.cfg.checkpoint_every == 0
                                                 or self.iteration == self.cfg.iterations
                                                 or (budget and self.env_steps >= budget)):
                    self.save("last")
                over_time = bool(self.cfg.time_budget) and time.perf_counter() - start > 60 * self.cfg.time_budget
                if self.dist is not None:  # every process stops at the same iteration
                    self._stop, over_time = self.dist.any(self._stop), self.dist.any(over_time)
                if self._stop:
                    stopped = "interrupted"
                    break
                if over_time:
                    stopped = "time_budget"
                    break
        bar.close()
        if self.run_dir is not None and self.writes:
            if stopped != "done" or not checkpoint.exists(self.run_dir / "last"):
                self.save("last")
            if not checkpoint.exists(self.run_dir / "best"):  # no iteration ran (the random baseline)
                self.save("best")
        return RLFitResult(self.iteration, self.elapsed, self.env_steps, self.sample_seconds, self.best_return,
                           stopped)

    def _snapshots(self, before: int) -> None:
        """Save ``snapshot-<j>`` for every multiple j of ``snapshot_steps`` that the last iteration passed."""
        every = self.cfg.snapshot_steps
        if not every or self.run_dir is None:
            return
        for j in range(before // every + 1, self.env_steps // every + 1):
            if not self.cfg.step_budget or j * every <= self.cfg.step_budget:
                self.save(f"snapshot-{j:03d}", {"learner": self.learner.state_dict()})

    def step(self) -> dict[str, float]:
        """Sample a meta-batch, keep the parameters if they are the best so far, take the outer step, log."""
        t0 = time.perf_counter()
        learner = self.learner
        tasks = learner.env.sample_tasks(self.cfg.meta_batch_size, self.generator)
        episodes = self.generator
        if self.dist is not None:  # this process's share of the tasks, its own episodes
            shard = self.dist.shard(len(tasks))
            tasks, learner.group, learner.share = tasks[shard], self.dist, (shard.stop - shard.start) / len(tasks)
            episodes = torch.Generator().manual_seed(hash((self.cfg.seed, self.iteration, self.dist.rank)) % 2**62)
        trajs, out = learner.sample(tasks, episodes)
        metrics = learner.sample_metrics(trajs, out)
        if self.dist is not None:
            steps = metrics.pop("env_steps")
            metrics = self.dist.reduce_metrics(metrics, learner.share)
            metrics["env_steps"] = self.dist.reduce_metrics({"s": steps}, 1.0)["s"]
        metrics["sample_seconds"] = time.perf_counter() - t0
        if not math.isfinite(metrics["return_post"]):
            raise TrainingDiverged(f"the average return is {metrics['return_post']} at iteration {self.iteration + 1}")
        if self.best_return is None or metrics["return_post"] > self.best_return:
            self.best_return = metrics["return_post"]
            if self.run_dir is not None:  # the parameters that earned this return, before the update
                self.save("best", {"learner": learner.state_dict()}, self.iteration)
        metrics.update(learner.update(trajs, out, self.optimizer))
        self.iteration += 1
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        self.env_steps += int(metrics["env_steps"])
        self.sample_seconds += metrics["sample_seconds"]
        metrics.update(seconds=seconds)
        if self.run_dir is not None and self.writes:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"iteration": self.iteration, **{k: round(v, 5) for k, v in metrics.items()}})
                        + "\n")
        return metrics

    @contextlib.contextmanager
    def _sigint_saves(self) -> Iterator[None]:
        """Ctrl-C stops after the current iteration, with a checkpoint; a second Ctrl-C aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: object) -> None:
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            print("\nmetagrad: stopping after this iteration and saving (Ctrl-C again to abort)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def train_run(cfg: RLConfig, run_dir: str | Path, progress: bool = True,
              group: Distributed | None = None) -> RLFitResult:
    """Train one run into ``run_dir``, or resume it there (a finished run returns at once); Ctrl-C stops with
    ``Interrupted`` after saving."""
    learner, optimizer = build(cfg)
    fit = RLTrainer(learner, optimizer, cfg, run_dir, progress, group).fit(resume=True)
    if fit.stopped == "interrupted":
        raise Interrupted(f"interrupted at iteration {fit.iteration} ({fit.env_steps:,} environment steps); "
                          f"checkpoint saved in {run_dir}; run the same command again to continue")
    return fit
