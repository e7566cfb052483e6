"""Means with 95% confidence intervals, as the papers report them."""

from __future__ import annotations

import math

from torch import Tensor

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean_ci95(values: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and 95% half-width ``1.96 * std / sqrt(n)`` along ``dim`` (the MAML code's convention;
    the normal approximation is accurate for the papers' 600 test tasks)."""
    n = values.shape[dim]
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    v = values.double()
    return v.mean(dim), Z95 * v.std(dim, unbiased=True) / math.sqrt(n)


def format_ci(mean: float, half: float, digits: int = 2) -> str:
    """``0.67 ± 0.03``."""
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


__all__ = ["Z95", "format_ci", "mean_ci95"]
