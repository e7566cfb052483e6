"""Normalisation layers whose second derivatives are exact under ``torch.func.vmap``, drop-in for torch's.

torch's own ``nn.BatchNorm*`` and ``nn.LayerNorm`` (with learned affine parameters) give wrong second-order
meta-gradients under vmap (docs/compatibility.md). Under vmap these are written from primitives whose batching rules
are exact; outside vmap (the per-task loop) they call torch's fused kernel, which is exact there and faster. Both
agree with each other and with finite differences (tests/test_compatibility.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..batching import under_vmap


def batched() -> bool:
    """Whether to take the vmap-exact form: under vmap, or while compiling (where the check itself cannot run)."""
    return torch.compiler.is_compiling() or under_vmap()


class TaskBatchNorm(nn.Module):
    """Batch normalisation over every dimension but the channels (dim 1), with the statistics of the batch it is
    given and no running averages: statistics never leak between the tasks of a meta-batch or from one task to
    the next."""

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        if not batched():
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - x.mean(dims, keepdim=True)
        scale = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + self.eps) * self.weight.view(shape)
        return torch.addcmul(self.bias.view(shape), centred, scale)  # few full-size ops: they dominate 2nd order


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same arguments, parameters and state dict) with exact second derivatives under vmap: there
    torch's kernel normalises without the affine parameters and they are applied apart (that kernel is exact)."""

    def forward(self, x: Tensor) -> Tensor:
        if not batched() or self.weight is None:
            return super().forward(x)
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return y * self.weight if self.bias is None else torch.addcmul(self.bias, y, self.weight)
