"""Fully connected networks (the sinusoid regressors of both papers)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError, check_choice
from .layers import LayerNorm

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """``in -> hidden... -> out`` with the given activation between layers; ``MLP(1, [40, 40], 1)`` is MAML's.
    ``norm="layer"`` puts a layer norm before each hidden activation (``metagrad.models.LayerNorm``: exact under
    vmap, where torch's is not; docs/compatibility.md)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu",
                 norm: str | None = None):
        if norm not in (None, "layer"):
            raise ConfigError(f"unknown norm '{norm}'; choose None or 'layer'")
        check_choice("activation", activation, tuple(sorted(ACTIVATIONS)))
        if in_dim < 1 or out_dim < 1 or any(h < 1 for h in hidden):
            raise ConfigError(f"layer sizes must be positive, got {in_dim} -> {list(hidden)} -> {out_dim}")
        sizes = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if norm == "layer":
                    layers.append(LayerNorm(b))
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
