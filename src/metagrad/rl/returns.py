"""Discounted returns and generalized advantage estimation over ``[..., H]`` reward arrays, as matrix products
(one matmul for all tasks and episodes instead of a Python loop over time)."""

from __future__ import annotations

import torch
from torch import Tensor


def discount_matrix(horizon: int, factor: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``M[s, t] = factor**(s - t)`` for ``s >= t``, else 0, so that ``(x @ M)[t] = sum_{s>=t} factor**(s-t) x[s]``."""
    idx = torch.arange(horizon)
    power = (idx[:, None] - idx[None, :]).to(torch.float64)
    m = torch.where(power >= 0, torch.tensor(float(factor), dtype=torch.float64) ** power.clamp(min=0), 0.0)
    return m.to(dtype)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``R_t = sum_{s>=t} gamma^(s-t) r_s`` over the valid steps (``mask``) of each episode."""
    return (rewards * mask) @ discount_matrix(rewards.shape[-1], gamma, rewards.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates (Schulman et al. 2016): ``A_t = sum_{s>=t} (gamma lam)^(s-t) delta_s``
    with ``delta_s = r_s + gamma V_{s+1} - V_s``; the value after an episode's last step is 0. ``lam = 1``
    gives ``A_t = R_t - V_t`` (the papers' setting)."""
    v = values * mask
    next_v = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], -1)
    deltas = (rewards + gamma * next_v - v) * mask
    return deltas @ discount_matrix(rewards.shape[-1], gamma * lam, rewards.dtype)


def normalize(x: Tensor, mask: Tensor, dims: tuple[int, ...], eps: float = 1e-8) -> Tensor:
    """``(x - mean) / std`` over the valid entries along ``dims`` (per task), zero elsewhere. Entries equal up to
    round-off give 0 (their std is the mean's rounding error, which would make every one of them about +-1)."""
    n = mask.sum(dims, keepdim=True).clamp(min=1)
    mean = (x * mask).sum(dims, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(dims, keepdim=True) / n
    std = var.sqrt()
    flat = std <= 1e-5 * mean.abs()
    return torch.where(flat, 0.0, (x - mean) / (std + eps)) * mask
