"""From a ``Config`` to the objects of a run: tasks, model, learner, outer optimizer."""

from __future__ import annotations

import torch
from torch import nn

from . import losses
from .algorithms import MAML, JointTraining, MetaLearner, Reptile
from .config import Config
from .functional import params_of
from .inner import make_inner
from .models import MLP
from .tasks import LinearRegression, Sinusoid


def build_tasks(cfg: Config) -> Sinusoid | LinearRegression:
    """The task distribution of the config."""
    if cfg.family == "linreg":
        return LinearRegression(dim=cfg.dim, shots=cfg.shots, query=cfg.query)
    return Sinusoid(shots=cfg.shots, query=cfg.query, amplitude=tuple(cfg.amplitude), phase=tuple(cfg.phase),
                    x_range=tuple(cfg.x_range), grid=cfg.grid, oracle=cfg.oracle)


def build_model(cfg: Config, input_dim: int, output_dim: int = 1) -> nn.Module:
    """The network of the config: an MLP, or ``y = theta^T x`` (linear, no bias) for meta-linear regression."""
    if cfg.model == "linear":
        return nn.Linear(input_dim, output_dim, bias=False)
    return MLP(input_dim, cfg.hidden, output_dim, cfg.activation)


def build_learner(cfg: Config) -> MetaLearner:
    """The learner, with its model initialised from ``cfg.seed`` (the global RNG is left untouched)."""
    tasks = build_tasks(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tasks.input_dim)
    inner = make_inner(cfg.inner_optimizer, cfg.inner_lr, learn=cfg.learn_inner_lr, params=params_of(model))
    # linreg: the paper's risk 1/2 (y - theta^T x)^2 (eq. 9), so that inner_lr is the paper's alpha (eq. 12)
    loss_fn = losses.half_mse if cfg.family == "linreg" else losses.mse
    kw = dict(loss_fn=loss_fn, inner=inner, inner_steps=cfg.inner_steps,
              inner_batch_size=cfg.inner_batch_size, batching=cfg.batching)
    if cfg.algo in ("maml", "fomaml"):
        return MAML(model, first_order=cfg.algo == "fomaml", **kw)
    if cfg.algo == "reptile":
        return Reptile(model, **kw)
    kw["inner_steps"] = 0
    return JointTraining(model, **kw)


def build_outer(cfg: Config, learner: MetaLearner
                ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimizer over all meta-parameters, and the step-size schedule (linear: annealed to 0)."""
    params = list(learner.parameters())
    if cfg.outer_optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.outer_lr)
    else:
        opt = torch.optim.SGD(params, lr=cfg.outer_lr)
    if cfg.outer_lr_schedule == "linear":
        total = max(cfg.iterations, 1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: max(0.0, 1.0 - it / total))
    return opt, None
