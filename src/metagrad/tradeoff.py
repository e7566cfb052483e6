"""The modeling-vs-optimization trade-off simulation (trade-off paper, section 4.4, Figure 3).

For every (M tasks, N points) of a grid and every step size alpha, draw ``datasets`` meta-training sets of
M tasks x 2N points from eq. (13), compute the DRS estimate (eq. 11) and the MAML estimate (eq. 12) on each,
and count how often MAML's has the lower *exact* expected loss (``analysis.linreg_theory``) before
adaptation and after one step of size alpha on N points of a new task (Theorem 5).

Vectorised through sufficient statistics: both estimators depend on a task's data only through
X^T X and X^T y of its two halves, and for Gaussian inputs X^T X ~ Wishart_p(Q_t, N) and
X^T eps | X^T X ~ N(0, sigma_t^2 X^T X). So each half is drawn in O(p^3) (Bartlett's decomposition,
X^T X = (L A)(L A)^T with L = V diag(sqrt(theta_t)), A lower-triangular with A_ii^2 ~ chi^2_{N-i},
A_ij ~ N(0, 1) below the diagonal; for N < p the N points themselves), whatever N is.
"""

from __future__ import annotations

import numbers
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import files
from .analysis import linreg_theory as lt
from .errors import ConfigError, check_memory, check_whole
from .provenance import stamped

DEFAULT_TASKS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_POINTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_ALPHAS = (0.1, 0.25, 0.5)  # within Theorem 5's 0 < alpha <= 1/lambda (lambda = 2 bounds ||Q_t||)
DEFAULT_DATASETS = 2000
CHUNK = 1_000_000  # datasets x tasks x p^2 numbers per vectorised block (about 8 MB per array)
WORKING_ARRAYS = 8  # float64 arrays of a block's size alive at once (support and query statistics, factors)


@dataclass
class TradeoffResult:
    """Fractions of datasets on which MAML's estimate has the lower expected loss, ``[alpha, M, N]``, before
    (``pre``) and after (``post``) adaptation; median expected losses of both estimates; the population
    optima's losses for reference."""

    dim: int
    tasks: list[int]
    points: list[int]
    alphas: list[float]
    datasets: int
    seed: int
    rotation: list[list[float]]
    pre: list  # [alpha][M][N]
    post: list
    median_loss: dict[str, list]  # drs_pre [M][N], drs_post / maml_pre / maml_post [alpha][M][N]
    reference: dict[str, Any]
    seconds: float
    singular: list | None = None  # [alpha][M][N]: datasets left out, their DRS or MAML system numerically singular

    def arrays(self) -> dict[str, np.ndarray]:
        """The grid and results as numpy arrays (what ``tradeoff.npz`` holds)."""
        out = {"tasks": np.array(self.tasks), "points": np.array(self.points), "alphas": np.array(self.alphas),
               "pre": np.array(self.pre), "post": np.array(self.post), "rotation": np.array(self.rotation)}
        out.update({f"median_{k}": np.array(v) for k, v in self.median_loss.items()})
        return out


def check_grid(tasks: Sequence[int], points: Sequence[int], alphas: Sequence[float], datasets: int, dim: int) -> None:
    """Stop with a ``ConfigError`` naming the bad value (before any work is done)."""
    check_whole("dim", dim, 1, "the paper's Figure 3 uses p = 1")
    check_whole("datasets", datasets, 1, "e.g. 1000")
    for name, grid in (("tasks", tasks), ("points", points), ("alphas", alphas)):
        if not grid:
            raise ConfigError(f"the {name} grid is empty; give comma-separated values")
    for m in tasks:
        check_whole("tasks (M)", m, 1)
    for n in points:
        check_whole("points (N)", n, 1)
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, numbers.Real):
            raise ConfigError(f"alpha {a!r} must be a number")
        if not a > 0:
            raise ConfigError(f"alpha {a} must be a positive step size (the paper's grid lies in (0, 1])")
        if a > 1:
            raise ConfigError(f"alpha {a} must lie in (0, 1] (the paper's grid lies in [0, 1]): beyond 1, the one-step "
                              "adaptation I - alpha Q amplifies directions of Q's eigenvalues (up to 2)")
    block = max(CHUNK, max(tasks) * dim * dim)  # numbers per array of one vectorised block (at least one dataset)
    check_memory(8 * WORKING_ARRAYS * block, f"tasks {max(tasks)} x dim {dim} (one dataset's p x p matrices)",
                 "lower --tasks or --dim")
    if not any(determined(m, n, dim) for m in tasks for n in points):
        raise ConfigError(f"no (M, N) of the grid can determine p = {dim} coordinates (MAML's system has rank at "
                          f"most M * min(N, p)); use M * min(N, p) >= {dim}")


def determined(m: int, n: int, dim: int) -> bool:
    """Whether M tasks x N points can determine both estimates (eq. 12's system has rank <= M * min(N, p));
    other cells of the grid are left out (NaN)."""
    return m * min(n, dim) >= dim


def sample_statistics(rng: np.random.Generator, rotation: np.ndarray, theta: np.ndarray, sigma2: np.ndarray,
                      n: int) -> tuple[np.ndarray, np.ndarray]:
    """X^T X ``[..., p, p]`` and X^T y ``[..., p]`` of n fresh points of each task (``theta [..., p]``,
    ``sigma2 [...]``), drawn from their exact joint distribution (module docstring)."""
    p = theta.shape[-1]
    L = rotation * np.sqrt(theta)[..., None, :]  # L L^T = Q_t
    shape = theta.shape[:-1]
    if n >= p:
        A = np.tril(rng.standard_normal((*shape, p, p)), -1)
        diag = np.sqrt(rng.chisquare(n - np.arange(p), size=(*shape, p)))
        A[..., np.arange(p), np.arange(p)] = diag
        F = L @ A
        z = rng.standard_normal((*shape, p))
    else:  # the n points themselves: X^T = L Z^T
        F = L @ np.swapaxes(rng.standard_normal((*shape, n, p)), -1, -2)
        z = rng.standard_normal((*shape, n))
    W = F @ np.swapaxes(F, -1, -2)
    e = np.sqrt(sigma2)[..., None] * np.einsum("...ij,...j->...i", F, z)
    return W, np.einsum("...ij,...j->...i", W, theta) + e


def simulate(tasks: Sequence[int] = DEFAULT_TASKS, points: Sequence[int] = DEFAULT_POINTS,
             alphas: Sequence[float] = DEFAULT_ALPHAS, datasets: int = DEFAULT_DATASETS, dim: int = 1,
             seed: int = 0, rotation_seed: int = 0, progress: bool = True) -> TradeoffResult:
    """The Figure 3 study over the (M, N) grid for each alpha (module docstring); deterministic given ``seed``."""
    from .tasks.linreg import LinearRegression

    check_grid(tasks, points, alphas, datasets, dim)
    check_whole("seed", seed, 0)
    check_whole("rotation_seed", rotation_seed, 0)
    family = LinearRegression(dim=dim, rotation_seed=rotation_seed)
    V = family.rotation.numpy()
    (t0, t1), (s0, s1) = family.theta_range, family.noise_range
    pre_loss = lt.expected_loss_exact(V, 0.0, theta_range=family.theta_range, noise_range=family.noise_range)
    nA, nM, nN = len(alphas), len(tasks), len(points)
    pre, post = np.full((nA, nM, nN), np.nan), np.full((nA, nM, nN), np.nan)
    singular = np.zeros((nA, nM, nN), dtype=int)
    med = {"drs_pre": np.full((nM, nN), np.nan),
           **{k: np.full((nA, nM, nN), np.nan) for k in ("drs_post", "maml_pre", "maml_post")}}
    start = time.perf_counter()
    bar = tqdm(total=nM * nN, desc="M x N grid", unit="cell", disable=not progress, file=sys.stderr)
    for i, m in enumerate(tasks):
        for j, n in enumerate(points):
            if not determined(m, n, dim):
                bar.update()
                continue
            rng = np.random.default_rng([seed, m, n])  # each cell reproducible on its own
            post_loss = [lt.expected_loss_exact(V, a, n, family.theta_range, family.noise_range) for a in alphas]
            drs, maml = [], []
            step = max(1, CHUNK // (m * dim * dim))
            for d0 in range(0, datasets, step):
                d = min(step, datasets - d0)
                theta = t0 + (t1 - t0) * rng.random((d, m, dim))
                sigma2 = s0 + (s1 - s0) * rng.random((d, m))
                Ws, bs = sample_statistics(rng, V, theta, sigma2, n)
                Wq, bq = sample_statistics(rng, V, theta, sigma2, n)
                # a dataset whose system is numerically singular (possible where M * min(N, p) is near p) is
                # left out of the cell and counted, not allowed to stop the study
                drs.append(lt.drs_from_statistics(Ws + Wq, bs + bq, singular="nan"))
                maml.append(np.stack([lt.maml_from_statistics(Ws, bs, Wq, bq, a, n, singular="nan")
                                      for a in alphas]))
            th_drs, th_maml = np.concatenate(drs), np.concatenate(maml, axis=1)  # [D, p], [alpha, D, p]
            drs_pre = pre_loss(th_drs)
            med["drs_pre"][i, j] = np.nanmedian(drs_pre) if np.isfinite(drs_pre).any() else np.nan
            for k, loss in enumerate(post_loss):
                maml_pre = pre_loss(th_maml[k])
                drs_post, maml_post = loss(th_drs), loss(th_maml[k])
                ok = np.isfinite(drs_pre) & np.isfinite(maml_pre)
                singular[k, i, j] = int((~ok).sum())
                if not ok.any():
                    continue
                pre[k, i, j] = (maml_pre[ok] < drs_pre[ok]).mean()
                post[k, i, j] = (maml_post[ok] < drs_post[ok]).mean()
                med["maml_pre"][k, i, j] = np.median(maml_pre[ok])
                med["drs_post"][k, i, j] = np.median(drs_post[ok])
                med["maml_post"][k, i, j] = np.median(maml_post[ok])
            bar.update()
    bar.close()
    return TradeoffResult(dim=dim, tasks=list(tasks), points=list(points), alphas=[float(a) for a in alphas],
                          datasets=datasets, seed=seed, rotation=V.tolist(), pre=pre.tolist(), post=post.tolist(),
                          median_loss={k: v.tolist() for k, v in med.items()},
                          reference=reference_losses(V, alphas, points, family.theta_range, family.noise_range),
                          seconds=round(time.perf_counter() - start, 2), singular=singular.tolist())


def reference_losses(V: np.ndarray, alphas: Sequence[float], points: Sequence[int],
                     theta_range: tuple[float, float] = (0.0, 2.0),
                     noise_range: tuple[float, float] = (0.0, 2.0)) -> dict[str, Any]:
    """The population optima theta*_drs, theta*_maml(alpha) and their expected losses before adaptation and
    after one step on N points (Theorem 5): what the estimates approach as M and N grow."""
    pre = lt.expected_loss_exact(V, 0.0, theta_range=theta_range, noise_range=noise_range)
    drs = pre.minimiser()
    out: dict[str, Any] = {"theta_drs": drs.tolist(), "pre_drs": float(pre(drs)), "alphas": {}}
    for a in alphas:
        maml = lt.exact_optimum(V, a, theta_range)
        posts = [lt.expected_loss_exact(V, a, n, theta_range, noise_range) for n in points]
        out["alphas"][str(float(a))] = {
            "theta_maml": maml.tolist(), "pre_maml": float(pre(maml)),
            "post_drs": [float(loss(drs)) for loss in posts], "post_maml": [float(loss(maml)) for loss in posts],
            "post_best": [loss.minimum for loss in posts]}
    return out


def run(out: str | Path, progress: bool = True, **settings: Any) -> tuple[TradeoffResult, list[Path]]:
    """Simulate, then write ``tradeoff.json``, ``tradeoff.npz`` and the Figure 3 contour plots into ``out``."""
    from . import plots

    result = simulate(progress=progress, **settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "tradeoff.json", stamped(asdict(result)))
    np.savez(out / "tradeoff.npz", **result.arrays())
    figures = [plots.tradeoff_contours(result.arrays(), out / "figure3.png", dim=result.dim)]
    return result, figures


def summary(result: TradeoffResult) -> str:
    """A few lines: the fraction at the grid's corners for every alpha, and the population optima."""
    a = result.arrays()
    ref = result.reference
    skipped = int(np.isnan(a["pre"][0]).sum())
    dropped = np.array(result.singular or 0)
    lines = [f"p = {result.dim}, {result.datasets} datasets per cell, {len(result.tasks)} x {len(result.points)} "
             f"(M x N) grid, {result.seconds:.1f} s"
             + (f" ({skipped} cells with M * min(N, p) < p left out: nan)" if skipped else "")
             + (f"; {int(dropped.max())} datasets at most in a cell left out, their system numerically singular "
                f"({int(dropped.sum())} over the grid and step sizes)" if dropped.any() else ""),
             f"theta*_drs = {np.round(ref['theta_drs'], 4).tolist()} (expected loss before adaptation "
             f"{ref['pre_drs']:.4f})",
             "fraction of datasets where MAML's estimate has the lower expected loss (pre / post adaptation):"]
    m, n = len(result.tasks), len(result.points)
    corners = list(dict.fromkeys([(0, 0), (0, n - 1), (m - 1, 0), (m - 1, n - 1)]))  # each corner once
    for k, alpha in enumerate(result.alphas):
        r = ref["alphas"][str(alpha)]
        cells = ", ".join(f"M={result.tasks[i]} N={result.points[j]}: {a['pre'][k, i, j]:.2f} / "
                          f"{a['post'][k, i, j]:.2f}" for i, j in corners)
        lines.append(f"  alpha = {alpha}: {cells}; theta*_maml = {np.round(r['theta_maml'], 4).tolist()}")
    return "\n".join(lines)
