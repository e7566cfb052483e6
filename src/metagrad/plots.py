"""The papers' figures, drawn from saved results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import files

COLORS = {"maml": "tab:green", "pretrained": "tab:blue", "oracle": "tab:red", "reptile": "tab:purple",
          "fomaml": "tab:olive", "metasgd": "tab:cyan", "random": "tab:gray", "context": "tab:orange"}


def adaptation_curves(curves: Mapping[str, Mapping[int, Mapping[str, Any]]], path: str | Path,
                      metric: str = "loss", ylabel: str = "mean squared error", ways: int | None = None,
                      title: str | None = None) -> Path:
    """One panel per K: each method's query metric after 0..k steps with its 95% CI band (MAML Fig. 3/6); ``ways``
    (classification) named in the titles; ``title`` above the panels (what was trained, and how long: the panels
    of two methods or budgets looked alike).

    ``curves[method][K][metric]`` holds ``mean`` and ``ci95`` lists, as ``experiment.evaluate`` returns.
    """
    shots = sorted({k for per in curves.values() for k in per})
    fig, axes = plt.subplots(1, len(shots), figsize=(4.2 * len(shots) + 1.5, 3.4), squeeze=False)
    for ax, k in zip(axes[0], shots, strict=True):
        for method, per in curves.items():
            if k not in per:
                continue
            c = per[k][metric]
            steps = range(len(c["mean"]))
            lo = [m - h for m, h in zip(c["mean"], c["ci95"], strict=True)]
            hi = [m + h for m, h in zip(c["mean"], c["ci95"], strict=True)]
            color = COLORS.get(method)
            ax.plot(steps, c["mean"], marker="o", ms=3, label=method, color=color)
            ax.fill_between(steps, lo, hi, alpha=0.2, color=color)
        ax.set_title(f"{ways}-way {k}-shot" if ways else f"{k}-shot")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    # right of the last panel (inside the first it hid the pretrained curve), every method once
    legend_outside(axes[0][-1], handles=list(handles.values()), labels=list(handles))
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def regression_fits(panels: Sequence[Mapping[str, Any]], path: str | Path, columns: int = 3) -> Path:
    """Few-shot fits (MAML Fig. 2/7, Reptile Fig. 1): per panel the true function, the K points and the
    model's prediction after each number of steps. A panel holds ``title``, ``x``, ``y_true``,
    ``support_x``, ``support_y`` and ``predictions`` ({steps: y}); optionally ``color``, and ``shade``: the
    interval ``(lo, hi)`` the K points were drawn from, shaded (MAML Fig. 2 left: half of the input range)."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.5, 3.2 * rows), squeeze=False)
    styles = [":", "-.", "--", "-"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel.get("shade") is not None:
            ax.axvspan(*panel["shade"], color="tab:gray", alpha=0.12, lw=0, label="K points drawn here")
        ax.plot(panel["x"], panel["y_true"], color="tab:red", lw=2, label="ground truth")
        for i, (steps, y) in enumerate(sorted(panel["predictions"].items())):
            label = "pre-update" if steps == 0 else f"{steps} grad step{'s' if steps > 1 else ''}"
            ax.plot(panel["x"], y, styles[min(i, len(styles) - 1)], color=panel.get("color", "tab:green"),
                    alpha=0.45 + 0.55 * (i + 1) / len(panel["predictions"]), label=label)
        ax.scatter(panel["support_x"], panel["support_y"], marker="^", color="purple", zorder=5,
                   label="used for grad")
        ax.set_title(panel["title"], fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()  # one legend for all, right of the first row
    legend_outside(axes.flat[min(columns, len(panels)) - 1], handles=handles, labels=labels, fontsize=8)
    return save_figure(fig, path)


def legend_outside(ax: Any, **kw: Any) -> Any:
    """``ax``'s legend right of the axes, where it covers no data (inside, "best" still hid points and curves);
    ``save_figure``'s layout makes room for it."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


def save_figure(fig: plt.Figure, path: str | Path, tight: bool = True) -> Path:
    """Write ``fig`` in the format its suffix names (PNG without one), atomically; ``tight=False`` for figures with a
    shared colour bar (laid out by their caller, cropped to what was drawn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    try:  # atomically, as every results file: an interrupted write leaves the figure before it
        files.replace_atomically(path, lambda f: fig.savefig(f, format=path.suffix[1:] or "png", dpi=120,
                                                             bbox_inches=None if tight else "tight"))
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------- the trade-off paper's figures
PROBABILITY_LEVELS = [i / 10 for i in range(11)]


def tradeoff_contours(arrays: Mapping[str, Any], path: str | Path, dim: int = 1) -> Path:
    """Trade-off paper Figure 3: per alpha, filled contours over (M tasks, N points) of the fraction of
    datasets where MAML's estimate has the lower expected loss, before (top row) and after (bottom row)
    adaptation. ``arrays`` holds ``tasks``, ``points``, ``alphas``, ``pre`` and ``post`` ([alpha, M, N])."""
    import numpy as np

    tasks, points, alphas = (np.asarray(arrays[k]) for k in ("tasks", "points", "alphas"))
    cols = len(alphas)
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols + 0.8, 6.2), squeeze=False)
    for row, key in enumerate(("pre", "post")):
        for k, alpha in enumerate(alphas):
            ax = axes[row][k]
            frac = np.asarray(arrays[key])[k].T  # [N, M]
            cs = _probability_map(ax, tasks, points, frac)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_title(f"{key}, alpha = {alpha:g}", fontsize=10)
            ax.set_xlabel("M (tasks)")
            ax.set_ylabel("N (points)")
    fig.suptitle(f"p = {dim}: probability that the MAML estimate has lower expected loss than DRS", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cbar = fig.colorbar(cs, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    cbar.set_label("P(MAML better)")
    return save_figure(fig, path, tight=False)


def welch_contours(prob: Any, checkpoints: Sequence[Any], updates: Sequence[int], path: str | Path,
                   label_a: str = "A", label_b: str = "B", titles: Sequence[str] | None = None) -> Path:
    """Trade-off paper Figures 1-2: filled contours of the one-sided Welch probability that method A is better
    than method B over (meta-training checkpoint, number of test updates); ``prob`` is ``[panel, checkpoint,
    update]`` (one panel per support size, say) or ``[checkpoint, update]``."""
    import numpy as np

    prob = np.asarray(prob, dtype=float)
    if prob.ndim == 2:
        prob = prob[None]
    panels = prob.shape[0]
    fig, axes = plt.subplots(1, panels, figsize=(4.0 * panels + 0.8, 3.4), squeeze=False)
    y = np.arange(len(checkpoints))
    for k in range(panels):
        ax = axes[0][k]
        cs = _probability_map(ax, np.asarray(updates), y, prob[k])
        ax.set_yticks(y, [str(c) for c in checkpoints])
        ax.set_xlabel("number of test updates")
        ax.set_ylabel("meta-training checkpoint")
        if titles:
            ax.set_title(titles[k], fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    cbar = fig.colorbar(cs, ax=axes.ravel().tolist(), fraction=0.04, pad=0.02)
    cbar.set_label(f"P({label_a} better than {label_b})")
    cbar.set_ticks([0, 0.5, 1], labels=[f"0: {label_b}\nbetter", "0.5", f"1: {label_a}\nbetter"])
    return save_figure(fig, path, tight=False)


def _probability_map(ax: Any, x: Any, y: Any, z: Any) -> Any:
    """Filled contours of probabilities z[y, x] on [0, 1]; a colour grid where a side has a single value."""
    cmap = plt.get_cmap("RdBu_r")
    if len(x) >= 2 and len(y) >= 2:
        return ax.contourf(x, y, z, levels=PROBABILITY_LEVELS, cmap=cmap, vmin=0, vmax=1)
    return ax.pcolormesh(_edges(x), _edges(y), z, cmap=cmap, vmin=0, vmax=1)


def _edges(centers: Any) -> Any:
    """Cell edges around the given centers (midpoints; +-0.5 around a single center)."""
    import numpy as np

    c = np.asarray(centers, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
