"""Could a rule have lowered MAML-VPG's outer step at its peak? Replay candidate triggers on kept constant-step logs.

    python docs/fallback_triggers.py RUN [RUN ...] [--names A,B,...] [--out FILE] [--figure PNG]

A run with a constant outer step is the same run as one with a trigger up to the trigger's first firing (same seed,
same episodes), so each rule's first firing can be read off the constant-step log. For each rule and run: the
iteration it fires at and the training return after adaptation there (mean of the 10 iterations before), against the
run's peak (the highest such 10-iteration mean). A rule is good when it fires after the peak and before the fall-back,
where the return is still near the peak; `kept` is the worst run's return at the firing over its peak. Rules:

- ``plateau P``: the ``outer_lr_schedule=plateau`` rule, P iterations without a new best training return;
- ``plateau P, mean W``: the same on the W-iteration moving mean of the return;
- ``grad-norm k, mean W``: the W-iteration mean of the outer gradient norm above k times its lowest value seen after
  iteration 50 (the norm grows before every fall-back on these logs).

``--figure`` draws each run's return and gradient norm (10-iteration means) with where the default grad-norm rule
(3x, mean 10) and the plateau rule (patience 20) first fire. Used in docs/meta-rl.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from metagrad.rl.train import GradNormRule

Rule = Callable[[list[dict]], int | None]  # the index of the first firing, None if it never fires


def moving_mean(values: Sequence[float], window: int, i: int) -> float:
    """The mean of ``values[i - window + 1 : i + 1]`` (fewer at the start)."""
    part = values[max(0, i - window + 1): i + 1]
    return sum(part) / len(part)


def plateau(patience: int, window: int = 1) -> Rule:
    """Fire once ``patience`` iterations pass without a new best of the return's ``window``-iteration mean."""
    def rule(rows: list[dict]) -> int | None:
        returns = [r["return_post"] for r in rows]
        best, best_at = float("-inf"), 0
        for i in range(len(rows)):
            mean = moving_mean(returns, window, i)
            if mean > best:
                best, best_at = mean, i
            elif i - best_at >= patience:
                return i
        return None
    return rule


def grad_norm(factor: float, window: int, warmup: int = 50) -> Rule:
    """The trainer's grad-norm rule (``GradNormRule``): the gradient norm's ``window``-iteration mean passing
    ``factor`` times its lowest after ``warmup``."""
    def rule(rows: list[dict]) -> int | None:
        trigger = GradNormRule(factor, window, warmup)
        return next((i for i, r in enumerate(rows) if trigger.fires(r["grad_norm"], i + 1)), None)
    return rule


def rules() -> dict[str, Rule]:
    """The rules compared, by name."""
    out: dict[str, Rule] = {}
    for patience in (10, 20, 30, 50):
        for window in (1, 5, 10, 20):
            out[f"plateau {patience}" + (f", mean {window}" if window > 1 else "")] = plateau(patience, window)
    for window in (5, 10, 20):
        for factor in (2.0, 2.5, 3.0):
            out[f"grad-norm {factor:g}, mean {window}"] = grad_norm(factor, window)
    return out


def read(run: Path) -> list[dict]:
    """The logged iterations of a run's MAML learner (``RUN/metrics.jsonl`` or ``RUN/maml-vpg/metrics.jsonl``)."""
    path = run / "metrics.jsonl" if (run / "metrics.jsonl").exists() else run / "maml-vpg" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if "return_post" in r and "grad_norm" in r]


def table(runs: dict[str, list[dict]]) -> list[str]:
    """One markdown row per rule: where it fires in each run and what it keeps there."""
    names = list(runs)
    peaks = {n: max(moving_mean([r["return_post"] for r in rows], 10, i) for i in range(len(rows)))
             for n, rows in runs.items()}
    best = {n: max(rows, key=lambda r: r["return_post"])["iteration"] for n, rows in runs.items()}
    lines = ["| rule | " + " | ".join(f"{n} (best {best[n]}, peak {peaks[n]:.0f})" for n in names) + " | kept |",
             "|---|" + "---|" * len(names) + "---|"]
    for name, rule in rules().items():
        cells, kept = [], []
        for n, rows in runs.items():
            i = rule(rows)
            if i is None:
                cells.append("never")
                continue
            level = moving_mean([r["return_post"] for r in rows], 10, i)
            cells.append(f"{rows[i]['iteration']}: {level:.0f}")
            kept.append(level / peaks[n])
        worst = f"{min(kept):.0%}" if len(kept) == len(names) else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst} |")
    return lines


def figure(runs: dict[str, list[dict]], path: Path) -> None:
    """Per run, the training return after adaptation and the outer gradient norm (10-iteration means), and where
    the default grad-norm rule and the plateau rule (patience 20) first fire."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5), sharex="col", squeeze=False)
    marks = {"grad-norm 3, mean 10": (grad_norm(3.0, 10), "tab:red"), "plateau 20": (plateau(20), "tab:gray")}
    for col, (name, rows) in enumerate(runs.items()):
        its = [r["iteration"] for r in rows]
        for row, key in enumerate(("return_post", "grad_norm")):
            values = [r[key] for r in rows]
            ax = axes[row][col]
            ax.plot(its, [moving_mean(values, 10, i) for i in range(len(rows))], color="tab:blue", lw=1)
            for label, (rule, color) in marks.items():
                i = rule(rows)
                if i is not None:
                    ax.axvline(its[i], color=color, ls="--", lw=1, label=label)
            if key == "grad_norm":
                ax.set_yscale("log")
                ax.set_xlabel("iteration")
        axes[0][col].set_title(name, fontsize=9)
    axes[0][0].set_ylabel("return after adaptation")
    axes[1][0].set_ylabel("outer gradient norm")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="kept constant-step MAML-VPG run directories")
    parser.add_argument("--names", help="the runs' column names, comma-separated (default: their folders' names)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--figure", type=Path, help="also draw the runs' curves and firings into this PNG")
    args = parser.parse_args()
    names = args.names.split(",") if args.names else [run.name for run in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"--names gives {len(names)} names for {len(args.runs)} runs")
    runs = {name: read(run) for name, run in zip(names, args.runs, strict=True)}
    text = "\n".join(table(runs)) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.figure:
        figure(runs, args.figure)


if __name__ == "__main__":
    main()
