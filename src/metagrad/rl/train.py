"""Building a meta-RL run from its config, and its trainer on the shared run loop (``metagrad.loop``): one
meta-iteration per step, the ``best`` checkpoint (the highest average post-adaptation return of a training
meta-batch, as the MAML paper keeps), an environment-step budget with snapshots."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import checkpoint
from ..distributed import Distributed, Share
from ..errors import CheckpointError, ConfigError, EnvironmentFault, TrainingDiverged, check_memory
from ..loop import RunLoop, linear_to_zero
from ..seeds import process_episodes
from .config import RLConfig
from .envs import make_env
from .envs.locomotion import FAMILIES
from .metarl import MetaRL, check_shardable
from .policy import make_policy

REJECTIONS = 10  # TRPO steps rejected in a row before the trainer says the run is not moving


@dataclass
class GradNormRule:
    """The grad-norm schedule's trigger: fires when the mean outer gradient norm of the last ``window`` iterations
    passes ``growth`` times the lowest such mean since ``warmup`` iterations or the last firing (the norm grows before
    MAML-VPG's fall-back, docs/meta-rl.md). The trainer and ``docs/fallback_triggers.py`` share it."""

    growth: float
    window: int
    warmup: int
    norms: list[float] = field(default_factory=list)  # the last ``window`` norms since the last firing
    lowest: float | None = None  # the lowest of their means since warm-up or the last firing

    def fires(self, norm: float, done: int) -> bool:
        """Take the gradient norm of iteration ``done`` (1-based); True when the step is to be lowered, after which
        the rule starts afresh."""
        self.norms = [*self.norms, norm][-self.window:]
        if done <= self.warmup or len(self.norms) < self.window:
            return False
        mean = sum(self.norms) / self.window
        if self.lowest is not None and mean > self.growth * self.lowest:
            self.norms, self.lowest = [], None
            return True
        self.lowest = mean if self.lowest is None else min(self.lowest, mean)
        return False


def build(cfg: RLConfig) -> tuple[MetaRL, torch.optim.Optimizer | None]:
    """The learner (environment, policy initialized from ``cfg.seed``) and, for outer 'vpg' or 'ppo', its optimizer."""
    kwargs: dict[str, Any] = {"horizon": cfg.horizon}
    if cfg.env == "navigation2d":
        if cfg.env_workers != 1:
            raise ConfigError(f"env_workers {cfg.env_workers}: navigation2d steps all its episodes as one tensor, in "
                              "this process; set env_workers 1")
        kwargs.update(goal_low=cfg.goal_range[0], goal_high=cfg.goal_range[1], reward=cfg.reward, oracle=cfg.oracle,
                      normalized_actions=cfg.normalized_actions)
    else:
        kwargs["seed"] = cfg.seed  # the simulators' initial states (MuJoCo locomotion, Meta-World, gymnasium)
        if cfg.env_workers != 1:
            kwargs["workers"] = cfg.env_workers
    for name, default in (("frame_skip", 0), ("observation", "auto"), ("oracle", False), ("action_scale", 1.0),
                          ("physics", "auto")):
        if cfg.env == "navigation2d" and name == "oracle":
            continue
        value = getattr(cfg, name)
        if value != default:
            if cfg.env not in FAMILIES:
                where = "navigation2d and the MuJoCo locomotion families" if name == "oracle" else \
                    "the MuJoCo locomotion families"
                raise ConfigError(f"{name} {value} is for {where}, not '{cfg.env}'; set it to {default}")
            kwargs[name] = value
    env = make_env(cfg.env, **kwargs)
    torch.manual_seed(cfg.seed)
    policy = make_policy(env.action_space, env.obs_dim, cfg.policy, cfg.hidden, cfg.activation, cfg.init_std,
                         cfg.context)
    learner = MetaRL(policy, env, algo=cfg.algo, outer=cfg.outer, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                     episodes=cfg.episodes, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, baseline=cfg.baseline,
                     normalize_inner=cfg.normalize_inner, normalize_outer=cfg.normalize_outer, max_kl=cfg.max_kl,
                     cg_iters=cfg.cg_iters, cg_damping=cfg.cg_damping, backtrack=cfg.backtrack,
                     max_backtracks=cfg.max_backtracks, hvp=cfg.hvp, hvp_subsample=cfg.hvp_subsample,
                     curvature_chunk=cfg.curvature_chunk,
                     score_baseline=cfg.score_baseline, emaml_weight=cfg.emaml_weight, ppo_epochs=cfg.ppo_epochs,
                     ppo_clip=cfg.ppo_clip, inner_kl_coef=cfg.inner_kl_coef, inner_kl_target=cfg.inner_kl_target,
                     adapt=cfg.adapt or None, compile=cfg.compile, pack_episodes=cfg.pack_episodes,
                     loss_mean=cfg.loss_mean, discount_from=cfg.discount_from)
    optimizer = None
    if cfg.outer in ("vpg", "ppo"):
        cls = torch.optim.Adam if cfg.outer_optimizer == "adam" else torch.optim.SGD
        optimizer = cls(policy.parameters(), lr=cfg.outer_lr)
    return learner, optimizer


LEARNER_FIELDS = {**{name: name for name in ("algo", "outer", "episodes", "gamma", "gae_lambda", "baseline", "max_kl",
                                              "cg_iters", "cg_damping", "hvp_subsample", "loss_mean", "pack_episodes",
                                              "discount_from")},
                  "hvp": "hvp_mode"}  # the config's names and the learner's


def check_built_from(learner: MetaRL, cfg: RLConfig) -> None:
    """Stop with a ConfigError where the learner's settings are not the config's: the run records the config, so a
    learner built otherwise would train something its run directory misdescribes."""
    pairs = [(name, getattr(learner, attr), getattr(cfg, name)) for name, attr in LEARNER_FIELDS.items()]
    pairs += [("horizon", learner.env.horizon, cfg.horizon),
              ("inner_steps", learner.inner_steps, 0 if cfg.algo == "joint" else cfg.inner_steps)]
    differ = [f"{name} {mine!r} in the learner, {theirs!r} in the config" for name, mine, theirs in pairs
              if mine != theirs]
    if differ:
        raise ConfigError(f"the learner was not built from this config ({', '.join(differ)}); build both from one "
                          "config with metagrad.rl.train.build(cfg)")


@dataclass
class RLFitResult:
    iteration: int
    seconds: float  # training time of the whole run, across resumes
    env_steps: int
    sample_seconds: float  # of ``seconds``, the time spent sampling episodes (environment + policy)
    best_return: float | None
    stopped: str  # "done", "time_budget" or "interrupted"


class RLTrainer(RunLoop):
    """Meta-trains ``learner`` for ``cfg.iterations`` meta-iterations (or ``cfg.step_budget`` environment steps) into
    ``run_dir``.

    With ``distributed`` (under ``torchrun``), every process draws the same meta-batch of tasks, samples and
    differentiates its share of them (its episodes from its own generator), and the learner all-reduces
    gradients, curvature products and line-search values, so all processes take the same step; process 0 writes
    checkpoints, logs and progress. (SG-MRL's batch baseline and E-MAML's normalization use the process's tasks.)
    """

    def __init__(self, learner: MetaRL, optimizer: torch.optim.Optimizer | None, cfg: RLConfig,
                 run_dir: str | Path | None = None, progress: bool = True, distributed: Distributed | None = None):
        super().__init__(run_dir, iterations=cfg.iterations, time_budget=cfg.time_budget,
                         checkpoint_every=cfg.checkpoint_every, config=cfg.to_sections(), progress=progress,
                         distributed=distributed)
        check_built_from(learner, cfg)
        if distributed is not None:
            distributed.shard(cfg.meta_batch_size)  # too few tasks for the processes: refused before a file is written
            check_shardable(cfg.algo, cfg.score_baseline)
        self.learner, self.optimizer, self.cfg = learner, optimizer, cfg
        numbers = cfg.meta_batch_size * cfg.episodes * cfg.horizon * (2 * learner.env.obs_dim + 12)
        check_memory(4 * numbers * (learner.inner_steps + 1), f"meta_batch_size {cfg.meta_batch_size:,} x episodes "
                     f"{cfg.episodes:,} x horizon {cfg.horizon:,} (the episodes of one meta-iteration)",
                     "lower --meta-batch-size, --episodes or --horizon")
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups] if optimizer else []
        self.env_steps, self.sample_seconds = 0, 0.0
        self.best_return: float | None = None
        self.best_iteration = self.last_lowered = 0  # the plateau schedule's counters
        self.rejected = 0  # TRPO steps rejected in a row
        self.lr_scale = 1.0  # what the plateau and grad-norm schedules have multiplied the outer step by
        self.grad_rule = GradNormRule(cfg.outer_lr_growth, cfg.outer_lr_window, cfg.outer_lr_warmup)

    def resume_changes(self, info: dict[str, Any]) -> dict[str, Any]:
        from ..experiment import stored_config

        saved = stored_config(info["config"])
        if not isinstance(saved, RLConfig):
            raise CheckpointError(f"{self.run_dir} holds a supervised run, not a meta-RL one; choose another run_dir")
        checkpoint.check_layers(self.run_dir / "last", info.get("layers"), self.learner)
        return self.cfg.resume_changes(saved, self.run_dir)

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds: the learner, the optimizer (outer 'vpg', 'ppo') and the RNG state."""
        return {**checkpoint.training_state(self.learner, self.optimizer), "rng": self.generator.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        if "rng" not in state:  # a best or a snapshot copied over last (as a supervised run's best can be)
            raise CheckpointError(f"{self.run_dir} holds a policy's weights alone in its last checkpoint (a meta-RL "
                                  "best or snapshot: without the optimizer and random state a run goes on from), so "
                                  "the run cannot resume from it; evaluate it (metagrad eval), or start a new run "
                                  "(another --out)")
        # the optimizer's step sizes are set from cfg at every step
        checkpoint.restore_training(self.learner, self.optimizer, state, f"the checkpoint in {self.run_dir}")
        self.generator.set_state(state["rng"])

    def info(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "sample_seconds": self.sample_seconds, "best_return": self.best_return,
                "best_iteration": self.best_iteration, "last_lowered": self.last_lowered, "lr_scale": self.lr_scale,
                "grad_norms": self.grad_rule.norms, "lowest_grad_norm": self.grad_rule.lowest,
                "rejected": self.rejected, "layers": checkpoint.layers(self.learner)}

    def load_info(self, info: dict[str, Any]) -> None:
        self.env_steps, self.best_return = info["env_steps"], info["best_return"]
        self.sample_seconds = info.get("sample_seconds", 0.0)
        # checkpoints from before the plateau schedule: its patience counts from the resume
        self.best_iteration = info.get("best_iteration", self.iteration)
        self.last_lowered, self.lr_scale = info.get("last_lowered", 0), info.get("lr_scale", 1.0)
        self.grad_rule.norms, self.grad_rule.lowest = info.get("grad_norms", []), info.get("lowest_grad_norm")
        self.rejected = info.get("rejected", 0)
        # resumed with a larger step budget: the multiples of snapshot_steps that the stopping iteration passed beyond
        # the old budget were skipped then; the state restored is the one that passed them
        old_budget = info.get("config", {}).get("train", {}).get("step_budget", 0)
        if old_budget:
            self._snapshots(old_budget)

    best_resumes = False  # ``best`` holds the policy that earned the return, not the run's state

    def remembers_best(self) -> bool:
        return self.best_return is not None

    def forget_best(self) -> None:
        self.best_return = None

    def fit(self, resume: bool | str = False, changes: dict[str, Any] | None = None) -> RLFitResult:
        """Train (or continue with ``resume``) until done, a budget, or Ctrl-C; checkpoints on the way."""
        stopped, _, _ = self.run(resume, changes)
        return RLFitResult(self.iteration, self.elapsed, self.env_steps, self.sample_seconds, self.best_return,
                           stopped)

    def segment_info(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps}

    def budget_reached(self) -> bool:
        return bool(self.cfg.step_budget) and self.env_steps >= self.cfg.step_budget

    def make_bar(self) -> tqdm:
        budget = self.cfg.step_budget
        return tqdm(total=budget or self.cfg.iterations, initial=self.env_steps if budget else self.iteration,
                    disable=not self.progress, unit=" steps" if budget else "it", unit_scale=bool(budget),
                    dynamic_ncols=True, file=sys.stderr)

    def finish(self, stopped: str) -> None:
        if self.run_dir is not None and self.writes and not checkpoint.exists(self.run_dir / "best"):
            self.save("best")  # no iteration ran (the random baseline)

    def step(self) -> dict[str, float]:
        """Sample a meta-batch, keep the parameters if they are the best so far, take the outer step."""
        t0 = time.perf_counter()
        learner = self.learner
        tasks = learner.env.sample_tasks(self.cfg.meta_batch_size, self.generator)
        episodes, share = self.generator, None
        if self.dist is not None:  # this process's share of the tasks, its own episodes
            shard = self.dist.shard(len(tasks))
            share = Share(self.dist, (shard.stop - shard.start) / len(tasks))
            tasks = tasks[shard]
            episodes = process_episodes(self.cfg.seed, self.iteration, self.dist.rank)
        try:
            trajs, out = learner.sample(tasks, episodes)
        except EnvironmentFault as e:  # (a TrainingDiverged, whose remedy would blame the step sizes)
            raise EnvironmentFault(f"{e} (iteration {self.iteration + 1}); if only large actions make it fail, "
                                   f"{self._remedy()}") from None
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e} at iteration {self.iteration + 1}; {self._remedy()}") from None
        metrics = learner.sample_metrics(trajs, out)
        if share is not None:
            steps = metrics.pop("env_steps")
            metrics = share.group.reduce_metrics(metrics, share.fraction)
            metrics["env_steps"] = share.group.reduce_metrics({"s": steps}, 1.0)["s"]
        metrics["sample_seconds"] = time.perf_counter() - t0
        if not math.isfinite(metrics["return_post"]):
            raise TrainingDiverged(f"the average return is {metrics['return_post']} at iteration {self.iteration + 1}; "
                                   f"{self._remedy()}")
        if self.best_return is None or metrics["return_post"] > self.best_return:
            self.best_return, self.best_iteration = metrics["return_post"], self.iteration
            self.save("best", {"learner": learner.state_dict()})  # the parameters that earned it, before the update
        if self.optimizer is not None:
            metrics["outer_lr"] = self._set_outer_lr()
        metrics.update(learner.update(trajs, out, self.optimizer, share))
        self._watch_rejections(metrics.get("accepted"))
        self._schedule(metrics.get("grad_norm", 0.0))
        self.env_steps += int(metrics["env_steps"])
        self.sample_seconds += metrics["sample_seconds"]
        return metrics

    def _remedy(self) -> str:
        """What a divergence while sampling asks for: smaller step sizes, or, before any step, other settings."""
        if self.iteration == 0:  # no outer step yet: the inner one, or the starting policy itself
            start = f"the starting policy's own actions overflow: check init_std {self.cfg.init_std:g}"
            if not self.learner.inner_steps:
                return f"no step was taken yet, so {start}"
            inner = f"the inner step size (inner_lr {', '.join(f'{lr:g}' for lr in self.cfg.inner_lr)})"
            return f"lower {inner}, or, if {start}"
        return f"lower {self.step_sizes()}"

    def step_sizes(self, outer_lr: float | None = None) -> str:
        """The step sizes a divergence asks to lower, with their values (``outer_lr``: the one the diverged step
        took; else the one the next step takes)."""
        if self.optimizer is None:  # TRPO: no outer step size
            outer = f"the KL bound (max_kl {self.cfg.max_kl:g})"
        else:
            lr = self.base_lrs[0] * self._outer_scale() if outer_lr is None else outer_lr
            outer = f"the outer step size (outer_lr, now {lr:g})"
        return f"{outer} or the inner step size (inner_lr {', '.join(f'{lr:g}' for lr in self.cfg.inner_lr)})"

    def _watch_rejections(self, accepted: float | None) -> None:
        """Say once on stderr when TRPO's line search has rejected ``REJECTIONS`` steps in a row: the run is not
        moving (a KL bound too large for the line search, or a gradient of zero)."""
        self.rejected = 0 if accepted is None or accepted else self.rejected + 1
        if self.rejected == REJECTIONS and self.writes:
            print(f"metagrad: TRPO rejected the outer step in {REJECTIONS} iterations in a row (iteration "
                  f"{self.iteration + 1}): the policy is not moving; check max_kl {self.cfg.max_kl:g} (e.g. 0.01) "
                  "and that episodes carry a learning signal (horizon, episodes)", file=sys.stderr)

    def _set_outer_lr(self) -> float:
        """Set the optimizer's step sizes for this iteration from the config's (which a resume may have lowered) and
        the schedule; return the first."""
        scale = self._outer_scale()
        assert self.optimizer is not None
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * scale
        return self.optimizer.param_groups[0]["lr"]

    def _outer_scale(self) -> float:
        """This iteration's factor on the configured outer step sizes (the schedule's)."""
        if self.cfg.outer_lr_schedule == "linear":
            return linear_to_zero(self.iteration, self.cfg.iterations)
        return self.lr_scale

    def _schedule(self, grad_norm: float) -> None:
        """Lower the step for the next iterations when the schedule's rule fires. plateau: ``outer_lr_patience``
        iterations without a new best training return since the best or the last lowering. grad-norm:
        ``GradNormRule``."""
        cfg, done = self.cfg, self.iteration + 1
        plateau = (cfg.outer_lr_schedule == "plateau"
                   and done - max(self.best_iteration, self.last_lowered) >= cfg.outer_lr_patience)
        if plateau or (cfg.outer_lr_schedule == "grad-norm" and self.grad_rule.fires(grad_norm, done)):
            self.lr_scale *= cfg.outer_lr_factor
            self.last_lowered = done

    def after_step(self, metrics: dict[str, float], seconds: float, bar: tqdm) -> None:
        """The metrics line, snapshots and progress."""
        metrics["seconds"] = seconds
        self.log({"iteration": self.iteration, **{k: float(f"{v:.6g}") if k == "outer_lr" else round(v, 5)
                                                  for k, v in metrics.items()}})
        before = self.env_steps - int(metrics["env_steps"])
        self._snapshots(before)
        budget = self.cfg.step_budget
        bar.update(min(self.env_steps, budget) - min(before, budget) if budget else 1)
        bar.set_postfix(pre=f"{metrics['return_pre']:.1f}", post=f"{metrics['return_post']:.1f}", refresh=False)

    def _snapshots(self, before: int) -> None:
        """Save ``snapshot-<j>`` for every multiple j of ``snapshot_steps`` that the last iteration passed."""
        every = self.cfg.snapshot_steps
        if not every or self.run_dir is None:
            return
        for j in range(before // every + 1, self.env_steps // every + 1):
            if not self.cfg.step_budget or j * every <= self.cfg.step_budget:
                self.save(f"snapshot-{j:03d}", {"learner": self.learner.state_dict()})
