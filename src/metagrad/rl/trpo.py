"""Trust-region steps (Schulman et al. 2015) on flat parameter vectors: conjugate gradient on Hessian-vector
products of the KL, the step scaled to the KL bound, and a backtracking line search that accepts a step only
if the KL bound holds and the surrogate improves (otherwise the parameters stay where they were)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional import Params


def flatten(tree: Mapping[str, Tensor]) -> Tensor:
    """The leaves of a parameter dict as one vector (in key order)."""
    return torch.cat([v.reshape(-1) for v in tree.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    """Split ``vector`` back into a dict shaped like ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i: i + v.numel()].view_as(v)
        i += v.numel()
    return out


def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10) -> Tensor:
    """Approximately solve ``H x = b`` with ``iters`` conjugate-gradient iterations (H given by ``hvp``)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        hp = hvp(p)
        alpha = rr / (p @ hp)
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class StepInfo:
    """How a trust-region step went: accepted or not, after how many halvings, the KL and surrogate change."""

    accepted: bool
    backtracks: int
    kl: float
    improvement: float
    expected_improvement: float


def trust_region_step(x0: Tensor, evaluate: Callable[[Tensor], tuple[float, float]], grad: Tensor,
                      hvp: Callable[[Tensor], Tensor], max_kl: float = 0.01, cg_iters: int = 10,
                      backtrack: float = 0.8, max_backtracks: int = 15) -> tuple[Tensor, StepInfo]:
    """One TRPO step that maximizes the surrogate from ``x0`` subject to ``KL(x) <= max_kl``.

    ``evaluate(x)`` returns ``(surrogate, kl)``; ``grad`` is the surrogate's gradient at ``x0`` and ``hvp`` the
    KL Hessian(-vector product) there (damping included). The natural-gradient direction ``s = H^-1 g`` is
    scaled to the bound (``sqrt(2 max_kl / s'Hs)``) and shrunk by ``backtrack`` until both the bound and a strict
    improvement hold; if none does, ``x0`` is kept.
    """
    direction = conjugate_gradient(hvp, grad, cg_iters)
    shs = float(direction @ hvp(direction))
    if not (math.isfinite(shs) and shs > 0):
        return x0, StepInfo(False, 0, 0.0, 0.0, 0.0)
    step = math.sqrt(2 * max_kl / shs) * direction
    expected = float(grad @ step)
    old, _ = evaluate(x0)
    scale = 1.0
    for i in range(max_backtracks):
        x = x0 + scale * step
        new, d = evaluate(x)
        if math.isfinite(new) and math.isfinite(d) and d <= max_kl and new > old:
            return x, StepInfo(True, i, d, new - old, expected * scale)
        scale *= backtrack
    return x0, StepInfo(False, max_backtracks, 0.0, 0.0, expected)
