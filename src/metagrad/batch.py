"""A meta-batch of tasks (support and query sets with a leading task dimension), and how work is shared out over
processes and task threads: the engine's data types, below the task families that produce them."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from .errors import ConfigError

NAMES = ("support.x", "support.y", "query.x", "query.y")


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

    def check(self, support: bool = True, query: bool = True) -> None:
        """Raise ``ConfigError`` unless every tensor is ``[tasks, examples, ...]`` with the same tasks (at least
        one), each split's inputs and targets the same examples, and the splits asked for non-empty; ``TypeError``
        unless both splits are ``Split``s of tensors."""
        s, q = self.support, self.query
        if not (isinstance(s, Split) and isinstance(q, Split)):
            raise TypeError(f"a TaskBatch holds two Splits, TaskBatch(Split(x, y), Split(x, y)), not "
                            f"({type(s).__name__}, {type(q).__name__})")
        if not (isinstance(s.x, Tensor) and isinstance(s.y, Tensor) and isinstance(q.x, Tensor)
                and isinstance(q.y, Tensor)):
            name, t = next((n, t) for n, t in zip(NAMES, (*s, *q), strict=True) if not isinstance(t, Tensor))
            raise TypeError(f"TaskBatch {name} must be a torch tensor, not {type(t).__name__}; convert it with "
                            "torch.as_tensor(...)")
        sx, sy, qx, qy = s.x.shape, s.y.shape, q.x.shape, q.y.shape
        if min(len(sx), len(qx)) < 3:
            raise ConfigError(f"a TaskBatch holds inputs [tasks, examples, features...], got support.x {list(sx)} "
                              f"and query.x {list(qx)}; for one task add the task dimension (x[None] and y[None], or "
                              "batch.slice(i, i + 1) rather than batch.task(i)), for one number per example the "
                              "feature dimension (x[..., None])")
        if min(len(sx), len(sy), len(qx), len(qy)) < 2 or not sx[0] == sy[0] == qx[0] == qy[0]:
            got = ", ".join(f"{k} {list(v)}" for k, v in zip(NAMES, (sx, sy, qx, qy), strict=True))
            raise ConfigError(f"a TaskBatch holds tensors [tasks, examples, ...] with the same number of tasks; got "
                              f"{got}")
        if sx[0] < 1:
            raise ConfigError("the TaskBatch holds no tasks; give at least one")
        for split, x, y, wanted in (("support", sx[1], sy[1], support), ("query", qx[1], qy[1], query)):
            if x != y:
                raise ConfigError(f"the {split} set has {x} inputs but {y} targets per task")
            if wanted and x < 1:
                raise ConfigError(f"the {split} set is empty (0 examples per task); give at least one")

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
