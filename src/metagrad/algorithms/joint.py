"""Joint training / DRS: one model trained on the pooled tasks, fine-tuned at evaluation.

This is the "pretrained on all tasks" baseline of the MAML paper and the DRS of the trade-off paper:
its outer loss is the task loss on support and query together at the initial parameters (no inner
loop). At test time it adapts with the same inner rule as the meta-learners, with its own step size
(the reproduction tunes it on validation tasks, as the MAML paper's "automatically tuned step size").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..batch import TaskBatch
from ..errors import ConfigError
from ..functional import Params
from .base import Meta, MetaLearner


class JointTraining(MetaLearner):
    """DRS / joint training; ``inner`` is only used when adapting at evaluation."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("inner_steps", 0)
        if kwargs.get("inner_state", "fresh") != "fresh":
            raise ConfigError(f"inner_state {kwargs['inner_state']!r}: joint training has no inner loop whose state "
                              "could be carried; leave inner_state out")
        if kwargs.get("inner_batch_size", 0):
            raise ConfigError(f"inner_batch_size {kwargs['inner_batch_size']}: joint training takes no inner step in "
                              "training, so it would never be used; leave it out (evaluation's minibatches are "
                              "adaptation_curves(..., inner_batch_size=...))")
        super().__init__(*args, **kwargs)
        if any(True for _ in self.inner.parameters()):
            raise ConfigError("joint training cannot meta-learn inner step sizes (its loss never takes an inner step, "
                              "so they get no gradient); use a fixed mg.SGD(lr), or MAML")

    def task_objective(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None) -> Tensor:
        x = torch.cat([task.support.x, task.query.x])
        y = torch.cat([task.support.y, task.query.y])
        return self.loss_at(meta["model"], buffers, x, y)
