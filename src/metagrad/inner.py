"""Inner-loop update rules as pure functions of (params, grads, state).

A rule is an ``nn.Module`` so that meta-learned hyperparameters (Meta-SGD's per-parameter step sizes)
are ordinary parameters that the outer optimizer updates; ``step`` receives them functionally as
``hyper`` so that meta-gradients reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .functional import Params


def _key(name: str) -> str:
    """Parameter names contain dots, which ``nn.ParameterDict`` keys may not."""
    return name.replace(".", "__")


def _schedule(lr: float | Sequence[float]) -> tuple[float, ...]:
    lrs = (float(lr),) if isinstance(lr, int | float) else tuple(float(v) for v in lr)
    if not lrs:
        raise ConfigError("inner_lr is empty; give a step size such as 0.01, or one per inner step")
    for v in lrs:
        if not v >= 0:  # 0 is allowed at test time: "do not fine-tune" is a candidate when tuning
            raise ConfigError(f"inner_lr {v} must not be negative (e.g. 0.01)")
    return lrs


class InnerRule(nn.Module):
    """Interface of an inner-loop optimizer."""

    def init_state(self, params: Params) -> Any:
        """Optimizer state for a fresh adaptation (one per task)."""
        return None

    def step(self, params: Params, grads: Params, state: Any, step: int, hyper: Params) -> tuple[Params, Any]:
        """One update; ``hyper`` holds this rule's own parameters in functional form."""
        raise NotImplementedError

    def with_lr(self, lr: float | Sequence[float]) -> InnerRule:
        """The same rule with another (fixed) step-size schedule, e.g. a tuned one for evaluation."""
        raise NotImplementedError


class SGD(InnerRule):
    """Gradient descent with a fixed step size, a per-step schedule, or (``learn=True``) a meta-learned
    step size per parameter element as in Meta-SGD (the MAML paper's "step size may be meta-learned").

    A schedule shorter than the number of steps repeats its last value (e.g. ``[0.1, 0.05]``).
    """

    def __init__(self, lr: float | Sequence[float] = 0.01, learn: bool = False, params: Params | None = None):
        super().__init__()
        self.schedule = _schedule(lr)
        self.learn = learn
        if learn:
            if params is None:
                raise ConfigError("a learned inner step size needs the model's parameters to shape it")
            self.lr = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.full_like(p, self.schedule[0])) for n, p in params.items()}
            )

    def lr_at(self, step: int) -> float:
        return self.schedule[min(step, len(self.schedule) - 1)]

    def step(self, params: Params, grads: Params, state: Any, step: int, hyper: Params) -> tuple[Params, Any]:
        if self.learn:
            return {n: p - hyper["lr." + _key(n)] * grads[n] for n, p in params.items()}, state
        lr = self.lr_at(step)
        return {n: p - lr * grads[n] for n, p in params.items()}, state

    def with_lr(self, lr: float | Sequence[float]) -> SGD:
        if self.learn:
            raise ConfigError("this learner meta-learns its inner step sizes; do not override them at evaluation")
        return SGD(lr)

    def extra_repr(self) -> str:
        return f"lr={list(self.schedule)}, learn={self.learn}"


class Adam(InnerRule):
    """Adam for the inner loop; Reptile uses ``betas=(0, 0.999)``. State is fresh for every task."""

    def __init__(self, lr: float | Sequence[float] = 0.001, betas: tuple[float, float] = (0.0, 0.999),
                 eps: float = 1e-8):
        super().__init__()
        self.schedule = _schedule(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = eps

    def init_state(self, params: Params) -> tuple[Params, Params]:
        return ({n: torch.zeros_like(p) for n, p in params.items()},
                {n: torch.zeros_like(p) for n, p in params.items()})

    def step(self, params: Params, grads: Params, state: Any, step: int, hyper: Params) -> tuple[Params, Any]:
        b1, b2 = self.betas
        m, v = state
        t = step + 1
        lr = self.schedule[min(step, len(self.schedule) - 1)]
        m = {n: b1 * m[n] + (1 - b1) * grads[n] for n in params}
        v = {n: b2 * v[n] + (1 - b2) * grads[n] * grads[n] for n in params}
        c1, c2 = 1 - b1**t, 1 - b2**t
        new = {n: p - lr * (m[n] / c1) / ((v[n] / c2).sqrt() + self.eps) for n, p in params.items()}
        return new, (m, v)

    def with_lr(self, lr: float | Sequence[float]) -> Adam:
        return Adam(lr, self.betas, self.eps)

    def extra_repr(self) -> str:
        return f"lr={list(self.schedule)}, betas={self.betas}, eps={self.eps}"


def make_inner(name: str, lr: float | Sequence[float], learn: bool = False, params: Params | None = None) -> InnerRule:
    """Build an inner rule by name: ``sgd`` or ``adam`` (Adam with beta1 = 0, as in Reptile)."""
    if name == "sgd":
        return SGD(lr, learn=learn, params=params)
    if name == "adam":
        if learn:
            raise ConfigError("learn_inner_lr works with inner_optimizer 'sgd' only")
        return Adam(lr)
    raise ConfigError(f"unknown inner_optimizer '{name}'; choose 'sgd' or 'adam'")
