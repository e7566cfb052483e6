"""The papers' figures, drawn from saved results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"maml": "tab:green", "pretrained": "tab:blue", "oracle": "tab:red", "reptile": "tab:purple",
          "fomaml": "tab:olive", "metasgd": "tab:cyan", "random": "tab:gray"}


def adaptation_curves(curves: Mapping[str, Mapping[int, Mapping[str, Any]]], path: str | Path,
                      metric: str = "loss", ylabel: str = "mean squared error") -> Path:
    """One panel per K: each method's query metric after 0..k steps with its 95% CI band (MAML Fig. 3/6).

    ``curves[method][K][metric]`` holds ``mean`` and ``ci95`` lists, as ``experiment.evaluate`` returns.
    """
    shots = sorted({k for per in curves.values() for k in per})
    fig, axes = plt.subplots(1, len(shots), figsize=(4.2 * len(shots), 3.4), squeeze=False)
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
        ax.set_title(f"{k}-shot")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    return _save(fig, path)


def regression_fits(panels: Sequence[Mapping[str, Any]], path: str | Path, columns: int = 3) -> Path:
    """Few-shot fits (MAML Fig. 2/7, Reptile Fig. 1): per panel the true function, the K points and the
    model's prediction after each number of steps. A panel holds ``title``, ``x``, ``y_true``,
    ``support_x``, ``support_y`` and ``predictions`` ({steps: y})."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    styles = [":", "-.", "--", "-"]
    for ax, panel in zip(axes.flat, panels, strict=False):
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
    axes.flat[0].legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
