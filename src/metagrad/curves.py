"""Training curves of several runs in one figure, read from their ``metrics.jsonl`` (``metagrad curves``).

Any run this library writes (``train``, ``reproduce``, meta-RL or supervised) logs one JSON line per logged
iteration; this draws chosen numbers of those lines against the iteration, one colour per run, so that runs with
different seeds, settings or libraries can be read side by side.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import MetagradError
from .plots import legend_outside, plt, save_figure
from .tables import md_head, md_row

DEFAULT_METRICS = (("return_post", "return_pre"), ("meta_loss",))
STYLES = ("-", "--", ":", "-.")
# axis and legend names of the logged keys that have a readable one (others are shown as logged)
METRIC_LABELS = {"return_post": "training return after the inner step(s)",
                 "return_pre": "training return before adaptation", "meta_loss": "meta-loss",
                 "grad_norm": "outer gradient norm", "outer_lr": "outer step size", "env_steps": "environment steps",
                 "val_accuracy": "validation accuracy", "val_loss": "validation loss"}


def metric_label(metric: str) -> str:
    """A logged key as the figure names it: ``METRIC_LABELS``' name where it has one (the raw "return_post" was the
    y-axis label), else the key."""
    return METRIC_LABELS.get(metric, metric)


@dataclass
class Run:
    """One run's logged rows and the name it is drawn under."""

    label: str
    path: Path
    rows: list[dict]

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """The iterations and values of every row that logged ``metric`` (resume notes and the like are skipped)."""
        rows = [r for r in self.rows if isinstance(r.get(metric), int | float)
                and isinstance(r.get("iteration"), int | float)]
        return [int(r["iteration"]) for r in rows], [float(r[metric]) for r in rows]

    def metrics(self) -> list[str]:
        """Every numeric quantity this run logged."""
        names = {k for r in self.rows for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        return sorted(names - {"iteration"})


def split_spec(spec: str) -> tuple[str, str]:
    """``PATH`` or ``PATH=LABEL`` as the path and the label ('' for none). A path may hold '=' (a sweep's
    ``lr=0.01``): the longest part before an '=' that exists is the path; if none does, the first '=' splits."""
    cuts = [i for i, c in enumerate(spec) if c == "="]
    for i in [len(spec), *reversed(cuts)]:
        if Path(spec[:i]).exists():
            return spec[:i], spec[i + 1:]
    where, _, label = spec.partition("=")
    return where, label


def load(spec: str) -> Run:
    """``PATH`` or ``PATH=LABEL``: a ``metrics.jsonl`` file, or a run folder that holds one."""
    where, label = split_spec(spec)
    path = Path(where)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        if path.parent.is_dir() and any(path.parent.glob("*.safetensors")):
            raise MetagradError(f"{path.parent} is a run that has logged nothing yet (no metrics.jsonl); plot it once "
                                "it has trained some iterations")
        raise MetagradError(f"no metrics log at {path}: give a run folder that holds metrics.jsonl, or the file")
    rows = []
    text = path.read_text()
    if text.endswith("\0"):  # a crash can leave the file's last block zero-filled past its last line
        text = text.rstrip("\0")
        print(f"metagrad curves: {path} ends in zero bytes (a crash mid-write); plotted without them", file=sys.stderr)
    if not text.strip():
        raise MetagradError(f"{path} is empty: its run has logged nothing yet; plot it once it has trained some "
                            "iterations")
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and rows and line.startswith("{") and not text.endswith("\n"):  # torn by a kill
                # mid-write (train --resume repairs it)
                print(f"metagrad curves: {path}, line {n} is cut short (a run killed while writing it); plotted "
                      "without it", file=sys.stderr)
                break
            raise MetagradError(f"{path}, line {n}: not JSON ({e.msg}); is it a metrics.jsonl?") from None
        if not isinstance(row, dict):
            raise MetagradError(f"{path}, line {n}: a {type(row).__name__}, not an object of logged numbers; is it a "
                                "metrics.jsonl?")
        rows.append(row)
    name = path.parent.name if path.parent.name not in ("", ".") else path.stem
    return Run(label or name, path, rows)


def run_specs(spec: str) -> list[tuple[str, Path | None]]:
    """A reproduction's folder (``results/long/locomotion-ant-dir``: a run per method in its subfolders, at any
    depth) as one spec per run, labelled by its path inside the folder (after ``LABEL/`` when the spec has one),
    with the folder that held it; any other spec as it is, with None."""
    where, label = split_spec(spec)
    if not where.strip():
        raise MetagradError(f"'{spec}' names no run: give PATH or PATH=LABEL (a run folder, its metrics.jsonl, or a "
                            "reproduction's folder)")
    path = Path(where)
    if path.is_dir() and not (path / "metrics.jsonl").is_file():
        runs = sorted(p.parent for p in path.rglob("metrics.jsonl"))  # method/, seed-N/method/, method/seed-N/
        if runs:
            named = [(run, run.relative_to(path).as_posix()) for run in runs]
            return [(f"{run}={label}/{name}" if label else f"{run}={name}", None if label else path)
                    for run, name in named]
    return [(spec, None)]


def load_all(specs: Sequence[str]) -> list[Run]:
    """Every run of ``specs`` (a reproduction's folder gives all its runs); runs not named by the user whose labels
    coincide (``maml-trpo`` of two seeds' folders, say) get the folder above them too, so that the figure tells
    them apart."""
    expanded = [one for spec in specs for one in run_specs(spec)]
    runs = [load(spec) for spec, _ in expanded]
    labels = [run.label for run in runs]
    for (spec, folder), run in zip(expanded, runs, strict=True):
        unnamed = not split_spec(spec)[1] or folder is not None
        if unnamed and labels.count(run.label) > 1:
            above = folder.name if folder is not None else run.path.parent.resolve().parent.name
            run.label = f"{above}/{run.label}"
    seen: dict[str, Path] = {}
    for run in runs:
        if run.label in seen:
            raise MetagradError(f"two runs are labelled '{run.label}' ({seen[run.label]} and {run.path}); give each "
                                "its own label (PATH=LABEL)")
        seen[run.label] = run.path
    return runs


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start); window 1 returns the values."""
    if window < 1:
        raise MetagradError(f"--smooth {window}: the window must be 1 or more points")
    return [finite_mean(values[max(0, i + 1 - window):i + 1]) for i in range(len(values))]


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (a NaN logged once does not blank the curve after it); NaN if there are none."""
    kept = [v for v in values if math.isfinite(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def choose_metrics(runs: Sequence[Run], metrics: Sequence[str] | None) -> list[str]:
    """The metrics asked for, each logged by at least one run; by default the runs' returns or meta-loss."""
    logged = {m for r in runs for m in r.metrics()}
    if not metrics:
        groups = {r.label: next((g for g in DEFAULT_METRICS if g[0] in r.metrics()), None) for r in runs}
        if len({g for g in groups.values() if g}) > 1:
            kinds = ", ".join(f"{label}: {g[0]}" for label, g in groups.items() if g)
            raise MetagradError(f"these runs log different default metrics ({kinds}); draw them apart or choose "
                                "one with --metric")
        for group in DEFAULT_METRICS:
            if group[0] in logged:
                return [m for m in group if m in logged]
        raise MetagradError(f"none of the default metrics in these logs; choose with --metric among: "
                            f"{', '.join(sorted(logged)) or 'nothing numeric'}")
    missing = [m for m in metrics if m not in logged]
    if missing:
        raise MetagradError(f"--metric {missing[0]}: no run logged it; these did: {', '.join(sorted(logged))}")
    if len(metrics) > len(STYLES):
        raise MetagradError(f"--metric: at most {len(STYLES)} metrics in one figure, got {len(metrics)}")
    return list(metrics)


def tail_mean(values: Sequence[float], last: int) -> float:
    """Mean of the finite values among the last ``last`` (NaN when there are none)."""
    return finite_mean(values[-last:])


def draw(runs: Sequence[Run], metrics: Sequence[str], path: str | Path, window: int = 1,
         title: str | None = None) -> Path:
    """One line per run and metric (the metric by line style, the run by colour), smoothed over ``window``; the
    legend right of the axes, where it hides no curve."""
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for metric, style in zip(metrics, STYLES, strict=False):
            its, values = run.series(metric)
            if its:
                ax.plot(its, smooth(values, window), ls=style, color=color, lw=1.2,
                        label=f"{run.label}: {metric_label(metric)}" if len(metrics) > 1 else run.label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric_label(metrics[0]) if len(metrics) == 1 else ", ".join(map(metric_label, metrics)))
    suffix = f" (trailing mean of {window})" if window > 1 else ""
    ax.set_title(textwrap.fill((title or "training curves") + suffix, 90), fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=7)
    return save_figure(fig, path)


def summary(runs: Sequence[Run], metrics: Sequence[str], last: int = 10) -> str:
    """A markdown table: each run's last iteration and the mean of each metric over its last ``last`` rows."""
    head = ["run", "last iteration", *[f"{m}, mean of last {last}" for m in metrics]]
    lines = md_head(head)
    for run in runs:
        its = [int(r["iteration"]) for r in run.rows if isinstance(r.get("iteration"), int | float)]
        cells = [run.label, str(max(its)) if its else "-"]
        for metric in metrics:
            values = run.series(metric)[1]
            mean = tail_mean(values, last)
            few = f" (of {len(values)})" if 0 < len(values) < last else ""
            cells.append("-" if math.isnan(mean) else f"{mean:.4g}{few}")
        lines.append(md_row(cells))
    return "\n".join(lines)
