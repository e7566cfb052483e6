"""Reptile (Nichol et al. 2018): move the initialization towards the task-adapted weights.

The meta-gradient written into ``.grad`` is ``initial - mean(adapted)`` over the meta-batch, so an outer
``torch.optim.SGD(lr=epsilon)`` performs exactly ``phi <- phi + epsilon * mean(adapted - phi)`` (eq. 5),
and an outer Adam treats the difference as a gradient, as the paper describes. One task per meta-batch
is the serial algorithm, n tasks the batched one; the inner loop is SGD or Adam(beta1=0) on minibatches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..batch import TaskBatch
from ..errors import ConfigError
from ..functional import Params
from .base import Meta, MetaLearner


class Reptile(MetaLearner):
    """Reptile; ``inner_batch_size`` examples per inner step (0: the whole support set)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if any(True for _ in self.inner.parameters()):
            raise ConfigError("Reptile cannot meta-learn inner step sizes (its update gives them no gradient); "
                              "set learn_inner_lr false or use MAML")
        if self.inner_steps < 1:
            raise ConfigError(f"inner_steps {self.inner_steps} must be >= 1 for Reptile")

    @torch.no_grad()
    def batch_gradient(self, meta: Meta, buffers: Params, batch: TaskBatch,
                       mb: Tensor | None) -> tuple[Meta, Tensor]:
        """``initial - mean(adapted)`` over the tasks, and the mean query loss after adaptation (for logs)."""

        def one_task(task: TaskBatch, m: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
            adapted = self.adapt(meta, buffers, task.support, minibatches=m)
            return adapted, self.loss_at(adapted, buffers, *task.query)

        adapted, query_loss = self.map_tasks(one_task, batch, mb)
        return {"model": {n: p - adapted[n].mean(0) for n, p in meta["model"].items()}, "inner": {}}, query_loss.mean()
