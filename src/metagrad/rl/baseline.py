"""The linear feature baseline of Duan et al. (2016, appendix): returns regressed on hand-made features of the
state and time, refitted for every task and every batch of trajectories (as both papers do)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import TrainingDiverged


def features(obs: Tensor, mask: Tensor) -> Tensor:
    """``[obs, obs^2, t, t^2, t^3, 1]`` (t = step / 100, observations clipped to [-10, 10]) for ``obs`` of shape
    ``[..., H, obs_dim]``; rows of invalid steps are zero."""
    o = obs.clamp(-10, 10)
    t = (torch.arange(obs.shape[-2], dtype=obs.dtype, device=obs.device) / 100.0)[:, None].expand(*obs.shape[:-1], 1)
    feats = torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], -1)
    return feats * mask[..., None]


def fit_predict(obs: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5, tries: int = 5,
                previous: bool = False) -> Tensor:
    """Fit one linear baseline per task and predict the returns of its steps.

    ``obs`` is ``[T, K, H, obs_dim]``, ``returns`` and ``mask`` ``[T, K, H]``: the least-squares fit uses every
    valid step of the task's K episodes (ridge ``reg``, multiplied by 10 while the solve fails, as rllab does),
    in float64. Returns ``[T, K, H]`` predictions (0 on invalid steps). ``previous``: each task's steps are
    predicted with the fit of the task before it (the first with the last's): rllab's order, which predicts a batch
    with the baseline fitted on the batch before (the MAML code fits each task's own first since its commit 87325bb).
    """
    x = features(obs.double(), mask.double())
    t = x.shape[0]
    xf = x.reshape(t, -1, x.shape[-1])
    y = (returns.double() * mask.double()).reshape(t, -1, 1)
    xtx, xty = xf.transpose(1, 2) @ xf, xf.transpose(1, 2) @ y
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype)
    weights = torch.zeros_like(xty)
    todo = torch.ones(t, dtype=torch.bool)
    for _ in range(tries):
        sol, info = torch.linalg.solve_ex(xtx[todo] + reg * eye, xty[todo])
        ok = (info == 0) & torch.isfinite(sol).all(-1).all(-1)
        idx = todo.nonzero().squeeze(1)
        weights[idx[ok]] = sol[ok]
        todo[idx[ok]] = False
        if not todo.any():
            break
        reg *= 10
    else:
        raise TrainingDiverged("the linear feature baseline could not be fitted (singular normal equations even "
                               f"with ridge {reg / 10:g}); observations are probably not finite")  # the last tried
    if previous:
        weights = weights.roll(1, dims=0)
    return (x @ weights[:, None]).squeeze(-1).to(returns.dtype) * mask
