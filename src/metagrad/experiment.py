"""A run on disk: train from a config into a run directory, load it back, evaluate it.

This is what ``metagrad train`` and ``metagrad eval`` do, and what the reproductions build on.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .algorithms import MetaLearner
from .build import build_learner, build_outer, build_tasks
from .config import IMAGE_FAMILIES, Config
from .errors import CheckpointError
from .evaluate import Curve, adaptation_curves, held_out_tasks, tune_step_size
from .functional import call
from .seeds import VAL_EVAL_SEED_OFFSET
from .tasks.base import Split
from .train import FitResult, Trainer


def make_trainer(cfg: Config, run_dir: str | Path | None, progress: bool = True, **kw: Any) -> Trainer:
    """Learner, outer optimizer and trainer for ``cfg``."""
    learner = build_learner(cfg)
    opt, sched = build_outer(cfg, learner)
    validation = build_tasks(cfg, "val") if cfg.family in IMAGE_FAMILIES else None
    return Trainer(learner, build_tasks(cfg), opt, scheduler=sched, validation=validation, iterations=cfg.iterations,
                   meta_batch_size=cfg.meta_batch_size, seed=cfg.seed, run_dir=run_dir,
                   config=cfg.to_sections(), log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                   val_every=cfg.val_every, val_tasks=cfg.val_tasks, time_budget=cfg.time_budget,
                   progress=progress, **kw)


def training_fields(cfg: Config) -> list[str]:
    """Fields a resumed run must share with its checkpoint (the rest, e.g. iterations, may change)."""
    free = {"time_budget", "log_every", "checkpoint_every", "val_every"}
    if cfg.outer_lr_schedule == "constant":
        free.add("iterations")
    return [f.name for f in fields(cfg) if f.metadata["section"] != "eval" and f.name not in free]


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          **kw: Any) -> tuple[Trainer, FitResult]:
    """Meta-train into ``run_dir`` (``config.toml``, ``metrics.jsonl``, ``last``/``best`` checkpoints)."""
    run_dir = Path(run_dir)
    trainer = make_trainer(cfg, run_dir, progress, **kw)
    if resume and checkpoint.exists(run_dir / "last"):
        saved = Config.from_sections(checkpoint.read_info(run_dir / "last")["config"])
        changed = [k for k in training_fields(cfg) if getattr(saved, k) != getattr(cfg, k)]
        if changed:
            raise CheckpointError(f"{run_dir} was trained with another config (differs in: {', '.join(changed)});"
                                  " resume with the same options or choose another --out")
    result = trainer.fit(resume=resume)
    if trainer.writes:
        (run_dir / "config.toml").write_text(cfg.to_toml())  # the config of the latest session, for reading
    return trainer, result


def load_run(run_dir: str | Path, which: str = "last") -> tuple[MetaLearner, Config, dict[str, Any]]:
    """The learner of a run directory (checkpoint ``last`` or ``best``), its config and checkpoint info."""
    stem = Path(run_dir) / which
    if not checkpoint.exists(stem):
        raise CheckpointError(f"no '{which}' checkpoint in {run_dir}; train first with `metagrad train --out "
                              f"{run_dir}`" + (" or use --checkpoint last" if which == "best" else ""))
    state, info = checkpoint.load(stem)
    cfg = Config.from_sections(info["config"]).validate()
    learner = build_learner(cfg)
    learner.load_state_dict(state["learner"])
    return learner, cfg, info


def evaluation_lrs(learner: MetaLearner, cfg: Config, shots: int) -> tuple[float, ...] | None:
    """Test-time step sizes for ``shots``: tuned on validation tasks, given, or the training ones (None)."""
    if cfg.learn_inner_lr:
        return None
    if cfg.tune_eval_lr:
        val = held_out_tasks(build_tasks(cfg, "val"), cfg.val_tasks, shots, cfg.eval_seed + VAL_EVAL_SEED_OFFSET,
                             query=cfg.eval_query)
        best, _ = tune_step_size(learner, val, cfg.eval_steps, cfg.eval_lr_grid, cfg.eval_inner_batch_size)
        return (best,)
    return tuple(cfg.eval_lr) or None


def evaluate(learner: MetaLearner, cfg: Config, shots: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """Adaptation curves on ``cfg.eval_tasks`` test tasks for every K in ``shots`` (default: eval_shots)."""
    tasks = build_tasks(cfg, "test")
    out: dict[int, dict[str, Any]] = {}
    for k in shots or list(cfg.eval_shots):
        lrs = evaluation_lrs(learner, cfg, k)
        inner = learner.inner.with_lr(lrs) if lrs else None
        batch = held_out_tasks(tasks, cfg.eval_tasks, k, cfg.eval_seed, query=cfg.eval_query)
        curves: dict[str, Curve] = adaptation_curves(learner, batch, cfg.eval_steps, inner=inner,
                                                     inner_batch_size=cfg.eval_inner_batch_size, seed=cfg.eval_seed,
                                                     transductive=cfg.transductive)
        lr_used = list(lrs) if lrs else (list(cfg.inner_lr) if not cfg.learn_inner_lr else "learned")
        out[k] = {"lr": lr_used, **{name: asdict(c) for name, c in curves.items()}}
    return out


@torch.no_grad()
def predictions(learner: MetaLearner, support: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                steps: list[int], lr: tuple[float, ...] | None = None) -> dict[int, torch.Tensor]:
    """The model's outputs on ``x`` after each number of adaptation ``steps`` on one task's support set."""
    inner = learner.inner.with_lr(lr) if lr else learner.inner
    meta, buffers = learner.meta_params(), learner.buffers()
    out = {}
    for s, params in enumerate(learner.inner_loop(meta, buffers, Split(*support), max(steps), inner=inner)):
        if s in steps:
            out[s] = call(learner.model, params, buffers, x)
    return out
