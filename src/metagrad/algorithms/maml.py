"""MAML (Finn et al. 2017): differentiate the query loss through the inner loop.

Second-order through any number of inner steps; ``first_order=True`` treats the inner gradients as
constants (FOMAML), so the meta-gradient is the query-loss gradient at the adapted parameters. With
``SGD(lr, learn=True)`` the per-parameter step sizes are meta-learned too (Meta-SGD).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..functional import Params
from ..tasks.base import TaskBatch
from .base import Meta, MetaLearner


class MAML(MetaLearner):
    """Model-agnostic meta-learning; see ``MetaLearner`` for the shared arguments."""

    def __init__(self, *args: Any, first_order: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.first_order = first_order

    def task_objective(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None) -> Tensor:
        adapted = self.adapt(meta, buffers, task.support, first_order=self.first_order, minibatches=minibatches)
        return self.loss_at(adapted, buffers, *task.query)

    def extra_repr(self) -> str:
        return f"inner_steps={self.inner_steps}, first_order={self.first_order}, batching={self.batching}"


def FOMAML(*args: Any, **kwargs: Any) -> MAML:
    """First-order MAML."""
    return MAML(*args, first_order=True, **kwargs)
