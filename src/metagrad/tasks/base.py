"""What a task family is: anything that samples meta-batches (``TaskBatch``, defined in the core)."""

from __future__ import annotations

from typing import Protocol

import torch

from ..batch import TaskBatch


class TaskDistribution(Protocol):
    """Anything that samples meta-batches: ``sample(num_tasks, generator, shots=None)``, and ``with_query(query)``:
    the same distribution with another number of query examples per task (evaluation)."""

    def sample(self, num_tasks: int, generator: torch.Generator, shots: int | None = None) -> TaskBatch: ...

    def with_query(self, query: int) -> TaskDistribution: ...
