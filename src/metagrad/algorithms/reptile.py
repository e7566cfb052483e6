"""Reptile (Nichol et al. 2018): move the initialization towards the task-adapted weights.

The meta-gradient written into ``.grad`` is ``initial - mean(adapted)`` over the meta-batch, so an outer
``torch.optim.SGD(lr=epsilon)`` performs exactly ``phi <- phi + epsilon * mean(adapted - phi)`` (eq. 5),
and an outer Adam treats the difference as a gradient, as the paper describes. One task per meta-batch
is the serial algorithm, n tasks the batched one; the inner loop is SGD or Adam(beta1=0) on minibatches.

The paper's section 6.2 compares linear combinations of the inner steps' gradients g_1..g_k (each the gradient of
its own minibatch's loss at the parameters of its step): ``combination=(w_1, .., w_k)`` makes the outer update
``sum_i w_i * u_i`` with u_i = (parameters before step i) - (parameters after it), i.e. ``lr * g_i`` for an SGD inner
loop (Adam's rescaled step for Adam), so that all ones is Reptile's ``initial - adapted`` and the last unit vector
is the reference code's first-order MAML (its ``--foml``: the final step's update, applied with the same outer step
size). ``tail="separate"`` runs the final inner step on the query set, disjoint from the support set that the steps
before it use (the reference code's ``--foml-tail``; section 6.3's separate-tail FOMAML with ``combination`` (0, .., 0,
1)); ``tail="shared"`` (default) draws it like the others from the support set.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..batch import TaskBatch
from ..choices import TAILS
from ..errors import ConfigError, check_choice
from ..functional import Params
from .base import Meta, MetaLearner
from .trajectory import Trajectory, run_inner


class Reptile(MetaLearner):
    """Reptile; ``inner_batch_size`` examples per inner step (0: the whole support set).

    Args:
        combination: the weight of each inner step's update in the outer update, one per inner step (None: all
            ones, computed as ``initial - adapted``); e.g. ``(0, 1)`` two-step FOMAML, ``(0.5, 0.5)`` the average of
            two-step Reptile's steps.
        tail: where the final inner step's minibatch comes from: ``shared`` (the support set, like the others) or
            ``separate`` (the query set: the steps before it use the support set only).
    """

    DEFINING = (*MetaLearner.DEFINING, "tail", "combination")

    def __init__(self, *args: Any, combination: Sequence[float] | None = None, tail: str = "shared",
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if any(True for _ in self.inner.parameters()):
            raise ConfigError("Reptile cannot meta-learn inner step sizes (its update gives them no gradient); "
                              "set learn_inner_lr false or use MAML")
        if self.inner_steps < 1:
            raise ConfigError(f"inner_steps {self.inner_steps} must be >= 1 for Reptile")
        check_choice("tail", tail, TAILS)
        still = [n for n in self.trainable() if not self.adapts(n)]
        if still:
            warnings.warn(f"Reptile with adapt={list(self.adapt_prefixes)} never moves the parameters its inner loop "
                          f"does not adapt ({', '.join(still[:3])}{', ...' if len(still) > 3 else ''}): its direction "
                          "is 0 for them, so they get no update from it; to train them too (ANIL), use MAML or "
                          "first-order MAML, or freeze them (requires_grad=False) to silence this", stacklevel=2)
        self.tail = tail
        self.combination: tuple[float, ...] | None = None
        if combination is not None:
            if isinstance(combination, str | bytes) or not isinstance(combination, Sequence) or not all(
                    isinstance(w, numbers.Real) for w in combination):
                raise ConfigError(f"combination {combination!r} must be a sequence of numbers, one weight per inner "
                                  "step (e.g. (0, 1) for two-step FOMAML)")
            weights = tuple(float(w) for w in combination)
            if len(weights) != self.inner_steps:
                raise ConfigError(f"combination has {len(weights)} weight(s) but inner_steps is {self.inner_steps}; "
                                  "give one weight per inner step, e.g. [0, 1] for two-step FOMAML")
            if not all(math.isfinite(w) for w in weights):
                raise ConfigError(f"combination {list(weights)} must hold finite weights")
            self.combination = weights

    @property
    def minibatch_steps(self) -> int:
        return self.inner_steps - 1 if self.tail == "separate" else self.inner_steps

    def task_update(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None,
                    state: Any = None) -> tuple[tuple[Params, Tensor], Any]:
        """One task's inner loop: (the adapted parameters, or with ``combination`` the weighted sum of the steps'
        updates; the query loss after adaptation, for logs) and the inner rule's final state."""
        last = task.query if self.tail == "separate" else None
        loop = self.inner_loop(meta, buffers, task.support, self.inner_steps, minibatches=minibatches, state=state,
                               last=last)
        if self.combination is None:
            adapted, state = run_inner(loop)
            return (adapted, self.loss_at(adapted, buffers, *task.query)), state
        trajectory = Trajectory(loop)
        direction: Params = {}
        after: Params = meta["model"]
        for (before, after), w in zip(itertools.pairwise(trajectory), self.combination, strict=True):
            for n, p in before.items():
                step = w * (p - after[n])
                direction[n] = direction[n] + step if n in direction else step
        return (direction, self.loss_at(after, buffers, *task.query)), trajectory.state

    def combine_tasks(self, meta: Meta, outs: tuple[Params, Tensor]) -> tuple[Meta, Tensor]:
        """``initial - mean(adapted)`` (or the mean weighted update) over the tasks, and the mean query loss; exactly
        zero for parameters the inner loop does not adapt (a mean of copies differs from the copy by round-off, which
        an outer Adam would scale up to whole steps)."""
        out, query_loss = outs
        if self.combination is None:
            return {"model": {n: p - out[n].mean(0) if self.adapts(n) else torch.zeros_like(p)
                              for n, p in meta["model"].items()}, "inner": {}}, query_loss.mean()
        return {"model": {n: d.mean(0) for n, d in out.items()}, "inner": {}}, query_loss.mean()

    @torch.no_grad()
    def batch_gradient(self, meta: Meta, buffers: Params, batch: TaskBatch,
                       mb: Tensor | None) -> tuple[Meta, Tensor]:
        """``initial - mean(adapted)`` over the tasks, and the mean query loss after adaptation (for logs)."""
        if self.combination is None and self.tail == "shared":  # Reptile as always (one graph under compile)

            def one_task(task: TaskBatch, m: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
                adapted = self.adapt(meta, buffers, task.support, minibatches=m)
                return adapted, self.loss_at(adapted, buffers, *task.query)

            return self.combine_tasks(meta, self.map_tasks(one_task, batch, mb))
        return self.combine_tasks(meta, self.map_tasks(lambda t, m: self.task_update(meta, buffers, t, m)[0],
                                                       batch, mb))

    @torch.no_grad()
    def carried_task(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None,
                     state: Any) -> tuple[tuple[Params, Tensor], Any]:
        return self.task_update(meta, buffers, task, minibatches, state)

    def extra_repr(self) -> str:
        extra = f", combination={list(self.combination)}" if self.combination is not None else ""
        return (f"inner_steps={self.inner_steps}, tail={self.tail}, inner_sampling={self.inner_sampling}, "
                f"inner_state={self.inner_state}{extra}, batching={self.batching}")
