"""Figures of the meta-RL reproductions: return after k steps (MAML Figures 4, top, and 5), training curves, and
on 2D navigation trajectories before and after adaptation (MAML Figure 4, bottom). Drawn from saved results
(matplotlib Agg)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import torch
from matplotlib.ticker import SymmetricalLogLocator

from .. import curves
from ..plots import legend_outside, plt, save_figure

COLORS = {"maml-trpo": "tab:green", "fomaml-trpo": "tab:olive", "pretrained": "tab:blue", "random": "black",
          "oracle": "tab:red", "sgmrl": "tab:purple", "sgmrl-full": "tab:pink", "maml-vpg": "tab:cyan",
          "emaml": "tab:orange", "context": "tab:brown", "drs-ppo": "tab:blue", "drs-trpo": "tab:blue",
          "promp": "tab:green", "trpo-maml": "tab:green"}

SPARE = ("tab:gray", "darkgoldenrod", "navy", "teal", "crimson", "yellowgreen", "indigo", "salmon")


def colors_for(methods: list[str]) -> dict[str, str]:
    """Each method's colour in one figure: its own (``COLORS``: a family shares one, DRS blue, the meta-learners
    green, for the trade-off's pairs) unless a method before it took it, then a spare one, so no two lines match."""
    taken: dict[str, str] = {}
    spare = iter(c for c in (*SPARE, *(f"C{i}" for i in range(10))) if c not in COLORS.values())
    for m in methods:
        color = COLORS.get(m)
        taken[m] = color if color is not None and color not in taken.values() else next(spare)
    return taken


TITLES = {"cheetah-dir": "half-cheetah, forward/backward", "cheetah-vel": "half-cheetah, goal velocity",
          "ant-dir": "ant, forward/backward", "ant-vel": "ant, goal velocity", "swimmer-vel": "swimmer, goal velocity",
          "cheetah-rand-vel": "half-cheetah, goal velocity (maml_zoo)",
          "swimmer-rand-vel": "swimmer, |velocity - goal| (maml_zoo)"}


def navigation_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """Every figure that the methods in ``results`` allow (MAML Table 4's values beside its methods); returns their
    paths."""
    methods = results["methods"]
    paper = {m: v for m, v in results.get("paper", {}).get("maml_table4", {}).items() if m in methods}
    paper |= {m: [None, v] for m, v in results.get("paper", {}).get("sgmrl_table1", {}).items()
              if m in methods}  # the SG-MRL paper's Table 1: after one step
    paths = [return_curves(methods, out / "return_curves.png", paper=paper),
             *_training_figure(methods, out, "point robot, 2D navigation")]
    shown = [m for m in ("maml-trpo", "pretrained", "sgmrl", "maml-vpg")
             if m in methods and (out / m / "paths.pt").exists()]  # paths.pt is written before the method's result
    if shown:
        paths.append(trajectories({m: torch.load(out / m / "paths.pt") for m in shown},
                                  {m: methods[m]["label"] for m in shown}, out / "trajectories.png"))
    return paths


def locomotion_figures(results: dict[str, Any], out: Path, paper: dict[str, list[float | None]],
                       sources: dict[str, str] | None = None) -> list[Path]:
    """MAML Figure 5's panel for one task family (return after 0..k steps, ``paper``'s values beside: the MAML
    code's stored test returns, or the SG-MRL paper's after its inner steps; ``sources`` names each method's in the
    legend, "paper" where it names none) and the training curves."""
    methods, env = results["methods"], results["experiment"].removeprefix("locomotion-")
    return [return_curves(methods, out / "return_curves.png", TITLES.get(env, env), symlog=False, paper=paper,
                          sources=sources),
            *_training_figure(methods, out, TITLES.get(env, env))]


def _training_figure(methods: dict[str, Any], out: Path, task: str | None = None) -> list[Path]:
    """The training curves of the methods that logged any, titled with the ``task`` and their labels."""
    logs = {m: out / m / "metrics.jsonl" for m in methods if (out / m / "metrics.jsonl").exists()}
    if not logs:
        return []
    labels = {m: methods[m]["label"] for m in logs}
    title = f"{task}: {', '.join(labels.values())}" if task else None
    return [training_curves(logs, labels, out / "training_curves.png", title=title)]


def return_curves(methods: dict[str, Any], path: Path, title: str = "point robot, 2D navigation",
                  symlog: bool = True, paper: dict[str, list[float | None]] | None = None,
                  sources: dict[str, str] | None = None) -> Path:
    """Average return after 0..k gradient steps with 95% CI bands, one line per method; ``paper``'s values per
    method as open markers (None: no value at that step), labelled with ``sources``' name for them ("paper"). The
    legend stands right of the axes (inside it hid curves), and the limits follow the data (symlog's own reached
    +1 above returns that are all negative)."""
    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    color = colors_for(list(methods))
    for m, r in methods.items():
        c = r["curve"]
        steps = range(len(c["mean"]))
        lo = [a - b for a, b in zip(c["mean"], c["ci95"], strict=True)]
        hi = [a + b for a, b in zip(c["mean"], c["ci95"], strict=True)]
        ax.plot(steps, c["mean"], marker="o", ms=3, label=r["label"], color=color[m],
                ls="--" if m == "oracle" else "-")  # the oracle dashed, as the paper's Figures 4 and 5
        ax.fill_between(steps, lo, hi, alpha=0.2, color=color[m])
        if m in (paper or {}):
            values = [float("nan") if v is None else v for v in paper[m]]
            ax.plot(range(len(values)), values, ls=":", marker="o", mfc="none", color=color[m],
                    label=f"{r['label']} ({(sources or {}).get(m, 'paper')})")
    ax.set_xticks(range(max(len(v) for v in [*(r["curve"]["mean"] for r in methods.values()),
                                              *(paper or {}).values()])))  # the paper's steps too
    sizes = [abs(v) for r in methods.values() for v in r["curve"]["mean"]]
    symlog = symlog and max(sizes) > 20 * max(min(sizes), 1.0)  # within a factor 20 decade ticks leave one label
    if symlog:
        drawn = [v for r in methods.values() for a, b in zip(r["curve"]["mean"], r["curve"]["ci95"], strict=True)
                 for v in (a, a - b, a + b)] + [v for row in (paper or {}).values() for v in row if v is not None]
        drawn = [v for v in drawn if math.isfinite(v)]  # (a diverged task's NaN or inf is drawn as a gap; its mean
        # stays within the limits where it is finite)
        linthresh = linear_threshold(drawn)
        ax.set_yscale("symlog", linthresh=linthresh)
        if drawn:
            ax.set_ylim(*data_limits(ax, min(drawn), max(drawn)))
        # ticks at 1, 2 and 5 of each decade, as plain numbers, where the limits hold one or two decades a side
        sizes = [abs(v) for v in drawn if abs(v) >= linthresh]
        wide = bool(sizes) and max(sizes) > 300 * min(sizes)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=linthresh, base=10,
                                                         subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return" + (" (symlog scale)" if symlog else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=7)
    return save_figure(fig, path)


def linear_threshold(values: list[float], decades: int = 3) -> float:
    """The symlog axis's linear range: the decade of the smallest nonzero ``|value|`` below 1 (no more than
    ``decades`` under the largest), else 1: returns within (-1, 1) had no tick between them and 0."""
    sizes = [abs(v) for v in values if v != 0]
    if not sizes or min(sizes) >= 1:
        return 1.0
    return 10.0 ** max(math.floor(math.log10(min(sizes))), math.floor(math.log10(max(sizes))) - decades)


def data_limits(ax: Any, low: float, high: float, margin: float = 0.05) -> tuple[float, float]:
    """y limits from ``low`` to ``high`` with ``margin`` of the span on each side, measured on the axis's scale (a
    symlog axis's autoscale rounds out to whole decades: +1 above negative returns)."""
    scale = ax.yaxis.get_transform()
    a, b = (float(v) for v in scale.transform([[low], [high]]).ravel())
    pad = margin * (b - a) if b > a else 0.5
    lo, hi = (float(v) for v in scale.inverted().transform([[a - pad], [b + pad]]).ravel())
    return lo, hi


def training_curves(logs: dict[str, Path], labels: dict[str, str], path: Path, title: str | None = None) -> Path:
    """Average return of each training meta-batch before (dashed) and after (solid) adaptation; ``title`` names
    what was trained (the task and methods: every run's figure had the same title)."""
    fig, ax = plt.subplots(figsize=(8.0, 3.8))
    colors = colors_for(list(logs))
    for m, log in logs.items():
        run, color = curves.load(str(log)), colors[m]
        post, pre = run.series("return_post"), run.series("return_pre")
        adapts = list(post[1]) != list(pre[1])  # joint training and the oracle take no inner step
        ax.plot(*post, color=color, lw=1, label=f"{labels[m]}, after" if adapts else labels[m])
        if adapts:
            ax.plot(*pre, color=color, lw=0.8, ls="--", alpha=0.6)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # a short run: no ticks at iteration 1.2
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return (training tasks)")
    head = "meta-training (dashed: before adaptation)"
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in (title, head) if line), fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=7)
    return save_figure(fig, path)


def trajectories(saved: dict[str, Any], labels: dict[str, str], path: Path, after: int = 3) -> Path:
    """Per method, one held-out goal: a sampled episode before adaptation and after ``after`` steps."""
    fig, axes = plt.subplots(1, len(saved), figsize=(3.8 * len(saved), 3.6), squeeze=False)
    for ax, (m, s) in zip(axes[0], saved.items(), strict=True):
        goal = s["goals"][0]
        steps = min(after, len(s["paths"]) - 1)
        for k, style in ((0, dict(color="tab:blue", alpha=0.5, ls="--")), (steps, dict(color="tab:blue"))):
            pos = s["paths"][k][0][:, :2]
            ax.plot(pos[:, 0], pos[:, 1], label="pre-update" if k == 0 else f"{k} steps", **style)
        ax.scatter([float(goal[0])], [float(goal[1])], marker="*", s=150, color="tab:red", zorder=5,
                   label="goal position")
        ax.set_title(labels[m], fontsize=10)
        ax.set_xlabel("x position")
        ax.set_ylabel("y position")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def step_count(n: float) -> str:
    """A number of environment steps as a tick label: 1G, 336M, 2.25M, 150k, 20."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale * 0.9995:  # 999,600 rounds to 1M, not 1e+03k
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def tradeoff_rl_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """The trade-off paper's Figure 1 or 2 panel (P(DRS better) over snapshot x test updates, Welch t-test across
    seeds), and the mean return of both methods against the environment steps, before and after adaptation."""
    import numpy as np

    from ..plots import welch_contours

    label_a, label_b = results["labels"]
    steps = [step_count(s) for s in results["checkpoint_steps"]]
    prob = np.asarray(results["p_drs_better"])
    title = study_title(results)
    contour = welch_contours(prob, steps, list(range(prob.shape[1])), out / "welch.png", label_a, label_b,
                             titles=[title])
    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    for method, label, color in zip(results["returns"], results["labels"], ("tab:blue", "tab:green"), strict=True):
        c = np.asarray(results["returns"][method])  # [seeds, snapshots, updates + 1]
        at = np.asarray(results["env_steps"][method]).mean(0)  # where the snapshots were taken (past each multiple)
        for t, style in ((0, "--"), (c.shape[2] - 1, "-")):
            mean, sd = c[:, :, t].mean(0), c[:, :, t].std(0, ddof=1)
            ax.plot(at, mean, style, color=color, marker="o", ms=3,
                    label=f"{label}, {t} test update{'s' if t != 1 else ''}")
            ax.fill_between(at, mean - sd, mean + sd, color=color, alpha=0.12)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: step_count(x)))
    ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    ax.set_xlabel("environment steps of meta-training (mean over seeds)")
    ax.set_ylabel("average return (± sd over seeds)")
    ax.set_title(title, fontsize=10)
    legend_outside(ax, fontsize=7, handlelength=4.5)  # long enough to show the dashes around the marker
    return [contour, save_figure(fig, out / "returns.png")]


def study_title(results: dict[str, Any]) -> str:
    """A trade-off study's environment and pair, and the options of a study not run as the kept panels
    (``settings`` and ``test_step`` are stored only when not at their defaults)."""
    study, (label_a, label_b) = results["study"], results["labels"]
    notes = []
    if study.get("settings", "metagrad") != "metagrad":
        notes.append(f"--settings {study['settings']}" + (" (as ProMP's code)" if study["settings"] == "promp" else ""))
    test_step = study.get("test_step", "drs-tuned")
    if test_step == "tuned":
        notes.append("--test-step tuned (each method's step tuned)")
    elif test_step == "fixed":
        notes.append(f"--test-step fixed (both at {study['inner_lr']:g})")
    elif test_step != "drs-tuned":
        notes.append(f"--test-step {test_step}")
    return "\n".join([f"{study['env']}: {label_a} vs {label_b}", *notes])
