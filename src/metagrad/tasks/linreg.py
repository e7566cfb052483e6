"""Meta-linear regression tasks: the data model of the trade-off paper (section 4.4, eq. 13).

    y = theta_t^T x + eps,   eps ~ N(0, sigma_t^2),   x ~ N(0, Q_t),   Q_t = V diag(theta_t) V^T,
    theta_t ~ U([0, 2]^p),   sigma_t^2 ~ U([0, 2]),   V ~ U(SO(p)) (Haar).

V is drawn **once per distribution** (from ``rotation_seed``), not per task: in eq. (13) every task
quantity carries the task index (theta_t, sigma_t, Q_t) and V does not. Each task's input covariance
therefore has the same eigenvectors (the columns of V) and the task's own parameters as eigenvalues.
For p = 1, V = [[1]] and x ~ N(0, theta_t). The exact expectations of ``analysis.linreg_theory`` are
for this fixed-V family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..batch import Split, TaskBatch
from ..errors import ConfigError, check_range, check_whole


def haar_rotation(dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """A Haar-random rotation of SO(dim): QR of a Gaussian matrix with the signs of R's diagonal moved
    into Q (Mezzadri 2007), then one column flipped if needed so that det = +1."""
    g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


@dataclass(frozen=True)
class LinearRegression:
    """A distribution over linear-regression tasks (eq. 13); ``sample`` returns a ``TaskBatch`` with
    inputs ``[tasks, shots, dim]`` and targets ``[tasks, shots, 1]``."""

    dim: int = 1
    shots: int = 10
    query: int = 10
    theta_range: tuple[float, float] = (0.0, 2.0)
    noise_range: tuple[float, float] = (0.0, 2.0)
    rotation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "shots", "query", "rotation_seed"):
            check_whole(name, getattr(self, name))
        if self.dim < 1:
            raise ConfigError(f"dim {self.dim} must be at least 1 (the paper shows p = 1)")
        if self.shots < 1:
            raise ConfigError(f"shots {self.shots} must be at least 1")
        if self.query < 0:
            raise ConfigError(f"query {self.query} must be >= 0")
        lo, hi = check_range("theta_range", self.theta_range)
        if not 0 <= lo < hi:
            raise ConfigError(f"theta_range [{lo}, {hi}] must satisfy 0 <= low < high (theta_t are variances)")
        lo, hi = check_range("noise_range", self.noise_range)
        if not 0 <= lo <= hi:
            raise ConfigError(f"noise_range [{lo}, {hi}] must satisfy 0 <= low <= high (a variance range)")

    @property
    def input_dim(self) -> int:
        return self.dim

    def with_query(self, query: int) -> LinearRegression:
        """The same distribution with ``query`` query points per task (the held-out tasks of an evaluation)."""
        return dataclasses.replace(self, query=query)

    @cached_property
    def rotation(self) -> Tensor:
        """V, the shared eigenvectors of every task's input covariance (float64, ``[dim, dim]``)."""
        return haar_rotation(self.dim, torch.Generator().manual_seed(self.rotation_seed))

    def sample_params(self, num_tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Task parameters theta ``[num_tasks, dim]`` and noise variances sigma^2 ``[num_tasks]``."""
        u = torch.rand(num_tasks, self.dim + 1, generator=generator, dtype=torch.float64)
        (t0, t1), (s0, s1) = self.theta_range, self.noise_range
        return t0 + (t1 - t0) * u[:, :-1], s0 + (s1 - s0) * u[:, -1]

    def covariances(self, theta: Tensor) -> Tensor:
        """Q_t = V diag(theta_t) V^T for every task, ``[num_tasks, dim, dim]``."""
        v = self.rotation.to(theta.dtype)
        return (v * theta[:, None, :]) @ v.T

    def sample(self, num_tasks: int, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        """A meta-batch of ``num_tasks`` tasks with ``shots`` support points each (default: ``self.shots``)."""
        check_whole("num_tasks", num_tasks, 0)
        theta, sigma2 = self.sample_params(num_tasks, generator)
        return self.make(theta, sigma2, generator, shots)

    def make(self, theta: Tensor, sigma2: Tensor, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        """Support and query sets (float32) for the given task parameters."""
        k = self.shots if shots is None else shots
        check_whole("shots", k, 1)
        t, n = theta.shape[0], k + self.query
        z = torch.randn(t, n, self.dim, generator=generator, dtype=torch.float64)
        # x = V diag(sqrt(theta)) z has covariance V diag(theta) V^T
        x = (z * theta.sqrt()[:, None, :]) @ self.rotation.T
        eps = torch.randn(t, n, generator=generator, dtype=torch.float64) * sigma2.sqrt()[:, None]
        y = torch.einsum("tnp,tp->tn", x, theta) + eps
        x, y = x.float(), y.float()[..., None]
        return TaskBatch(Split(x[:, :k], y[:, :k]), Split(x[:, k:], y[:, k:]))
