"""Sinusoid regression tasks: y = a sin(x + b) (Reptile's form; MAML's phase is b - the same family).

Two variants:

- MAML 5.1: a ~ U[0.1, 5], b ~ U[0, pi], support and query x ~ U[-5, 5].
- Reptile 4, as its reference script (the sine-wave demo) runs it: b ~ U[0, 2 pi]; the support set is a fixed grid
  of 50 equally spaced points of [-5, 5] (the task's "training data", minibatched by Reptile's inner loop) and the
  loss is the squared error on that grid (eq. 8, whose integral the paper computes on those 50 points; its text
  samples the training points from U[-5, 5] instead). With ``grid > 0`` the support set is ``shots`` points drawn
  from the grid (all of them for Reptile's training, K for evaluation) and the query set is the whole grid. The K
  points are distinct; the script draws its test points with replacement (10 of 50: a repeat in 62% of its tasks).

``oracle=True`` appends the amplitude and phase to every input (the MAML paper's oracle baseline).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..batch import Split, TaskBatch
from ..errors import ConfigError, check_range, check_whole


@dataclass(frozen=True)
class Sinusoid:
    """A distribution over sine-wave regression tasks; ``sample`` returns a ``TaskBatch``."""

    shots: int = 10
    query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    grid: int = 0
    oracle: bool = False

    def __post_init__(self) -> None:
        for name in ("shots", "query", "grid"):
            check_whole(name, getattr(self, name))
        if self.shots < 1:
            raise ConfigError(f"shots {self.shots} must be at least 1 (the paper uses 10)")
        if self.query < 0:
            raise ConfigError(f"query {self.query} must be >= 0")
        if self.grid < 0:
            raise ConfigError(f"grid {self.grid} must be >= 0 (0: x ~ U(x_range); 50 in the Reptile paper)")
        if self.grid and self.shots > self.grid:
            raise ConfigError(f"shots {self.shots} exceeds grid {self.grid}: sample at most grid points")
        for name in ("amplitude", "phase", "x_range"):
            check_range(name, getattr(self, name))

    @property
    def input_dim(self) -> int:
        return 3 if self.oracle else 1

    def with_query(self, query: int) -> Sinusoid:
        """The same distribution with ``query`` query points per task."""
        return dataclasses.replace(self, query=query)

    def sample_params(self, num_tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Amplitudes and phases, each of shape ``[num_tasks]``."""
        u = torch.rand(2, num_tasks, generator=generator)
        (a0, a1), (b0, b1) = self.amplitude, self.phase
        return a0 + (a1 - a0) * u[0], b0 + (b1 - b0) * u[1]

    def sample(self, num_tasks: int, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        """A meta-batch of ``num_tasks`` tasks with ``shots`` support points each (default: ``self.shots``)."""
        check_whole("num_tasks", num_tasks, 0)
        amp, phase = self.sample_params(num_tasks, generator)
        return self.make(amp, phase, generator, shots)

    def make(self, amp: Tensor, phase: Tensor, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        """Support and query sets for the given task parameters."""
        k = self.shots if shots is None else shots
        check_whole("shots", k, 1)
        t = amp.shape[0]
        lo, hi = self.x_range
        if self.grid:
            if k > self.grid:
                raise ConfigError(f"shots {k} exceeds grid {self.grid}")
            grid = torch.linspace(lo, hi, self.grid).expand(t, -1)
            pick = torch.rand(t, self.grid, generator=generator).argsort(dim=1)[:, :k]
            xs, xq = grid.gather(1, pick), grid
        else:
            x = lo + (hi - lo) * torch.rand(t, k + self.query, generator=generator)
            xs, xq = x[:, :k], x[:, k:]
        return TaskBatch(self._split(xs, amp, phase), self._split(xq, amp, phase))

    def _split(self, x: Tensor, amp: Tensor, phase: Tensor) -> Split:
        y = amp[:, None] * torch.sin(x + phase[:, None])
        inputs = x[..., None]
        if self.oracle:
            n = x.shape[1]
            inputs = torch.stack([x, amp[:, None].expand(-1, n), phase[:, None].expand(-1, n)], dim=-1)
        return Split(inputs, y[..., None])
