"""Means with 95% confidence intervals, as the papers report them, and the one-sided Welch t-test
probability that one method beats another (trade-off paper, section 2 and appendix A, Figures 1-2)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean_ci95(values: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Mean and 95% half-width ``1.96 * std / sqrt(n)`` along ``dim`` (the MAML code's interval, with the sample
    (n - 1) standard deviation where its ``np.std`` divides by n: 0.08% wider at 600 tasks, and what Welch's test
    reads back; the normal approximation is accurate for the papers' 600 test tasks; over the 40 tasks of a
    locomotion test the t quantile, 2.02, would be 3% wider, over 10 tasks 15%)."""
    n = values.shape[dim]
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    v = values.double()
    return v.mean(dim), Z95 * v.std(dim, unbiased=True) / math.sqrt(n)


def format_ci(mean: float, half: float, digits: int = 2) -> str:
    """``0.67 ± 0.03``."""
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def sd_from_ci95(ci95: Any, n: Any) -> np.ndarray:
    """The sample standard deviation behind a ``mean_ci95`` half-width: ``ci95 * sqrt(n) / 1.96`` (exact
    inverse, so saved curves suffice for a t-test without the per-task values)."""
    return np.asarray(ci95, dtype=np.float64) * np.sqrt(np.asarray(n, dtype=np.float64)) / Z95


def welch_t(mean_a: Any, sd_a: Any, n_a: Any, mean_b: Any, sd_b: Any, n_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t statistic (mean_a - mean_b) / sqrt(sd_a^2/n_a + sd_b^2/n_b) and its Welch-Satterthwaite
    degrees of freedom, elementwise over broadcast arrays (sd: sample standard deviations, ddof = 1)."""
    ma, sa, na, mb, sb, nb = (np.asarray(v, dtype=np.float64) for v in (mean_a, sd_a, n_a, mean_b, sd_b, n_b))
    if np.any(na < 2) or np.any(nb < 2):
        raise ValueError("Welch's t-test needs at least 2 values per method")
    va, vb = sa**2 / na, sb**2 / nb
    se2 = va + vb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ma - mb) / np.sqrt(se2)
        df = se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return t, df


def welch_probability_from_stats(mean_a: Any, sd_a: Any, n_a: Any, mean_b: Any, sd_b: Any, n_b: Any,
                                 higher_is_better: bool = True) -> np.ndarray:
    """The probability that A is better than B by the one-sided Welch t-test: the Student-t CDF of Welch's t
    (= 1 - the p-value of H1 "A better"). 0.5 means no evidence either way; near 1, A is better; near 0, B.
    For losses pass ``higher_is_better=False``. With zero variance on both sides: 1, 0 or 0.5 by the means; NaN where
    an input is not finite or a standard deviation is negative (nothing to judge)."""
    from scipy import stats  # imported here: the CLI imports this module at start-up

    t, df = welch_t(mean_a, sd_a, n_a, mean_b, sd_b, n_b)
    if not higher_is_better:
        t = -t
    with np.errstate(invalid="ignore"):
        prob = stats.t.cdf(t, df)
    diff = np.asarray(mean_a, dtype=np.float64) - np.asarray(mean_b, dtype=np.float64)
    sign = np.sign(diff if higher_is_better else -diff)
    inputs = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (mean_a, sd_a, mean_b, sd_b)))
    judged = np.logical_and.reduce([np.isfinite(x) for x in inputs]) & (inputs[1] >= 0) & (inputs[3] >= 0)
    return np.where(judged, np.where(np.isfinite(t), prob, 0.5 + 0.5 * sign), np.nan)


def welch_probability(a: Any, b: Any, higher_is_better: bool = True, axis: int = -1) -> np.ndarray:
    """The one-sided Welch probability that A is better than B from the values themselves (e.g. per seed or
    per test task along ``axis``); equals scipy's ``ttest_ind(a, b, equal_var=False, alternative="less")``
    p-value when higher is better."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return welch_probability_from_stats(a.mean(axis), a.std(axis, ddof=1), a.shape[axis],
                                        b.mean(axis), b.std(axis, ddof=1), b.shape[axis], higher_is_better)


__all__ = ["Z95", "format_ci", "mean_ci95", "sd_from_ci95", "welch_probability", "welch_probability_from_stats",
           "welch_t"]
