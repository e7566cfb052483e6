"""A meta-batch of tasks (support and query sets with a leading task dimension), and how work is shared out over
processes and task threads: the engine's data types, below the task families that produce them."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor


def partition(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of ``n`` items whose sizes differ by at most one (the larger ones last): how a
    meta-batch's tasks are shared out over processes and over task threads."""
    bounds = [n * w // parts for w in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


class Split(NamedTuple):
    """Inputs and targets of one split; shapes ``[tasks, examples, ...]`` (or without ``tasks`` for one task)."""

    x: Tensor
    y: Tensor


class TaskBatch(NamedTuple):
    """Support (adaptation) and query (evaluation) sets of a meta-batch. A NamedTuple so that
    ``torch.func.vmap`` maps over every leaf at once."""

    support: Split
    query: Split

    @property
    def num_tasks(self) -> int:
        return self.support.x.shape[0]

    def task(self, i: int) -> TaskBatch:
        """The i-th task, without the task dimension."""
        return TaskBatch(Split(self.support.x[i], self.support.y[i]), Split(self.query.x[i], self.query.y[i]))

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop``, keeping the task dimension."""
        return TaskBatch(Split(self.support.x[start:stop], self.support.y[start:stop]),
                         Split(self.query.x[start:stop], self.query.y[start:stop]))

    @property
    def device(self) -> torch.device:
        return self.support.x.device

    def to(self, target: torch.dtype | torch.device | str) -> TaskBatch:
        """Cast floating-point inputs and targets to a dtype (e.g. float64 for gradient checks), or move every
        tensor to a device (integer labels stay integers)."""
        def cast(t: Tensor) -> Tensor:
            if isinstance(target, torch.dtype):
                return t.to(target) if t.is_floating_point() else t
            return t.to(target)
        return TaskBatch(Split(cast(self.support.x), cast(self.support.y)),
                         Split(cast(self.query.x), cast(self.query.y)))
