"""The Reptile paper's study of overlapping inner minibatches, ``run_overlap`` (section 6.3, Figure 4, hyper-parameters
of Table 6): shared-tail first-order MAML (its final minibatch drawn from the same 20 drawings per class as the
earlier ones, so that it overlaps them once they are used up), separate-tail first-order MAML (the final minibatch
from 5 reserved drawings per class) and Reptile, with minibatches drawn by cycling through the data or anew for every
step (``inner_sampling``), swept over (a) the number of inner iterations at batch 25, (b) the inner batch size at 4
iterations, (c) the outer step size at batch 100 and 4 iterations; outer step 1.0 annealed to 0, one task per outer
step (the code's default, which Table 6 keeps). Output: the final test accuracy of every setting.

First-order MAML here is the reference code's (``--foml``): its outer update is the final inner step's update with the
same outer step size as Reptile (``Reptile(combination=(0, .., 0, 1))``), so Adam's rescaling applies to both. Section
6.3 does not name its inner optimizer; section 6 says Adam was used "throughout our experiments" apart from 6.2's stated
simplification, and the reference code has only Adam besides ``--sgd``: we run Adam (beta1 = 0, step 3e-3, its state
carried across tasks as the paper's code) and Table 6's test protocol, 5 steps on minibatches of 25; each test task
starts from the carried Adam state and leaves it as it was, as the code backed up and restored it. Choices of ours, the
paper being silent: the swept values, and the separate tail's 5 drawings per class."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import files
from ..analysis.stats import format_ci
from ..config import Config
from ..errors import ConfigError
from ..plots import plt, save_figure
from ..tables import md_head, md_row
from ..tasks.fewshot import FewShotClassification
from .reptile_studies import (
    BATCH,
    DRAWINGS,
    FULL,
    WAYS,
    WORKER,
    Budget,
    TrainingTasks,
    base_config,
    deadline_for,
    findings_table,
    map_runs,
    minutes_left,
    noise,
    pct,
    say,
    slug,
    study_budget,
    test_accuracy,
    train_run,
    verdict,
    write_study,
)

TAIL_SHOTS = 5  # separate tail: drawings per class held back for the final minibatch (ours; the code's --foml-tail)
METHODS = ("reptile", "fomaml-shared", "fomaml-separate")  # section 6.3
SAMPLINGS = ("cycle", "replacement")
PANELS = {"4a": ("inner_steps", "inner iterations"), "4b": ("inner_batch_size", "inner batch size"),
          "4c": ("outer_lr", "outer step size")}
PAPER_OVERLAP = [
    "shared-tail FOMAML (cycle) degrades once its final minibatch overlaps the earlier ones (4a: from 5 iterations; "
    "4b: batches above 25)",
    "with sampling with replacement, shared-tail FOMAML degrades more gradually",
    "separate-tail FOMAML and Reptile do not degrade as the inner iterations or batch size change",
    "4c: shared-tail FOMAML is poor for every outer step size",
]
DEFAULT_OVERLAP = Budget(iterations=1500, eval_tasks=100, curve_points=1,
                         sweeps={"4a": (2, 3, 4, 5, 6, 8), "4b": (10, 25, 50, 100), "4c": (0.25, 1.0, 2.0)})
# --------------------------------------------------------------------------- section 6.3
def overlap_config(base: Config, method: str, sampling: str, steps: int = 4, batch: int = BATCH,
                   outer_lr: float = 1.0) -> Config:
    """One setting of Figure 4 (Table 6): Adam (beta1 = 0, step 3e-3, state carried) for ``steps`` inner
    iterations on minibatches of ``batch``; FOMAML's outer update is the final step's (the code's --foml)."""
    separate = method == "fomaml-separate"
    return base.replace(
        inner_optimizer="adam", inner_lr=(3e-3,), inner_state="carried", inner_steps=steps, inner_batch_size=batch,
        inner_sampling=sampling, outer_lr=outer_lr, eval_steps=5,
        combination=() if method == "reptile" else (0.0,) * (steps - 1) + (1.0,),
        tail="separate" if separate else "shared", shots=DRAWINGS - TAIL_SHOTS if separate else DRAWINGS - 1,
        query=TAIL_SHOTS if separate else 1)


def run_overlap(out: str | Path, full: bool = False, iterations: int | None = None, progress: bool = True,
                data_root: str | None = None, jobs: int = 1, time_budget: float = 0.0, eval_tasks: int | None = None,
                seed: int | None = None, download: bool = False, panels: Sequence[str] | None = None
                ) -> dict[str, Any]:
    """Section 6.3 (Figure 4): shared-tail FOMAML, separate-tail FOMAML and Reptile, cycling or sampling with
    replacement, over the three sweeps (``jobs`` runs at once, one process each); write ``reptile-overlap.json``,
    ``.md`` and ``.png``. With ``time_budget`` (minutes) the runs stop then with checkpoints, the results hold the
    settings finished so far, and the same call continues. ``panels`` (e.g. ``["4c"]``) runs only those sweeps; a
    later call with more finds the finished runs' results in their folders. In 4c (batches of 100) every inner step
    takes the whole support set, so the sampling does not enter training: it runs cycling only."""
    budget = study_budget(DEFAULT_OVERLAP, full, iterations, eval_tasks, seed)
    if panels is not None:
        unknown = [p for p in panels if p not in PANELS]
        if unknown or not panels:
            raise ConfigError(f"panels {list(panels)}: choose among {', '.join(PANELS)} (e.g. --panels 4c)")
        lacking = [p for p in panels if p not in budget.sweeps]
        if lacking:
            raise ConfigError(f"panels {list(panels)}: this budget sweeps only {', '.join(budget.sweeps)}")
        budget = replace(budget, sweeps={p: v for p, v in budget.sweeps.items() if p in panels})
    out = Path(out)
    base = base_config(data_root, budget, download)
    results: dict[str, Any] = {"study": "reptile-overlap", "budget": asdict(budget), "full": full,
                               "paper": PAPER_OVERLAP, "panels": {}}
    fixed = {"4a": {"batch": BATCH, "outer_lr": 1.0}, "4b": {"steps": 4, "outer_lr": 1.0},
             "4c": {"steps": 4, "batch": 100}}
    arg = {"4a": "steps", "4b": "batch", "4c": "outer_lr"}
    keys, work, deadline = [], [], deadline_for(time_budget)
    for panel, values in budget.sweeps.items():
        for method, sampling, value in itertools.product(METHODS, SAMPLINGS if panel != "4c" else ("cycle",), values):
            setting = {**fixed[panel], arg[panel]: int(value) if panel != "4c" else float(value)}
            keys.append((panel, f"{method}, {sampling}"))
            work.append((panel, method, sampling, value, overlap_config(base, method, sampling, **setting),
                         out / "reptile-overlap" / panel / f"{method}-{sampling}-{slug(str(value))}",
                         progress and jobs == 1, deadline))
    points = map_runs(_overlap_run, work, base, jobs)
    results["complete"] = all(p is not None for p in points)
    for panel in budget.sweeps:
        runs: dict[str, list[dict[str, float]]] = {}
        for (p, run), point in zip(keys, points, strict=True):
            if p == panel and point is not None:
                runs.setdefault(run, []).append(point)
        key, label = PANELS[panel]
        results["panels"][panel] = {"parameter": key, "label": label, "fixed": fixed[panel], "runs": runs}
    if panels is not None:
        keep_other_panels(results, out / "reptile-overlap.json")
    results["findings"] = overlap_findings(results["panels"]) if results["complete"] else []
    return write_study(out, "reptile-overlap", results, format_overlap(results), overlap_figure)


def keep_other_panels(results: dict[str, Any], saved: Path) -> None:
    """Into a ``--panels`` call's ``results``, the other panels of a finished study saved at ``saved`` with the same
    budget (iterations, test tasks, seed, ``--full``), so that running 4c after 4a-b keeps both."""
    before = files.read_json(saved)  # (a damaged one is written again, with this call's panels)
    if before is None:
        return
    budget = {k: v for k, v in results["budget"].items() if k != "sweeps"}
    if not before.get("complete") or before.get("full") != results["full"] or budget != {
            k: v for k, v in before["budget"].items() if k != "sweeps"}:
        return
    for panel in PANELS:
        if panel in before["panels"] and panel not in results["panels"]:
            results["panels"][panel] = before["panels"][panel]
            results["budget"]["sweeps"][panel] = before["budget"]["sweeps"][panel]
    for key, table in (("panels", results), ("sweeps", results["budget"])):  # in the figure's order
        table[key] = {p: table[key][p] for p in PANELS if p in table[key]}


def _overlap_run(panel: str, method: str, sampling: str, value: float, cfg: Config, run_dir: Path,
                 progress: bool, deadline: float | None = None) -> dict[str, float] | None:
    """Train one setting into ``run_dir`` and test it; the test result is kept in ``test.json`` (a rerun of a
    finished run only reads it). None when ``deadline`` passes first (the run keeps its checkpoint)."""
    minutes = minutes_left(deadline)
    if minutes is not None and minutes <= 0:
        return None
    say(f"reptile-overlap {panel}: {method}, {sampling}, {PANELS[panel][1]} {value:g}, {cfg.iterations:,} "
         f"iterations -> {run_dir}")
    images = WORKER["images"]
    train = (FewShotClassification(images, WAYS, cfg.shots, cfg.query, rotations=True)
             if method == "fomaml-separate" else TrainingTasks(images, WAYS, DRAWINGS))
    trainer = train_run(cfg, train, run_dir, progress, "reptile-overlap", time_budget=minutes or 0.0)
    if trainer.iteration < cfg.iterations:
        return None
    test_file, key = run_dir / "test.json", {"iteration": trainer.iteration, "eval_tasks": cfg.eval_tasks,
                                            "eval_seed": cfg.eval_seed}
    saved = files.read_json(test_file) or {}  # (a damaged one is tested again)
    if {k: saved.get(k) for k in key} == key:
        mean, ci = saved["mean"], saved["ci95"]
    else:
        mean, ci = test_accuracy(trainer.learner, cfg, WORKER["tests"])
        files.write_json(test_file, {**key, "mean": mean, "ci95": ci})
    return {"value": value, "mean": mean, "ci95": ci, "seconds": round(trainer.elapsed, 1)}  # training, across resumes


def overlap_findings(panels: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's findings of section 6.3, each checked on our final accuracies and their intervals (where the sweeps
    allow)."""

    def split(panel: str, run: str) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        """``run``'s settings in ``panel`` whose minibatches do not overlap (4a: <= 4 iterations of 25, 4b: batches
        up to 25) and those whose minibatches do (none where the panel was not swept)."""
        limit = 4 if panel == "4a" else BATCH
        pts = panels[panel]["runs"][run] if panel in panels else []
        return [p for p in pts if p["value"] <= limit], [p for p in pts if p["value"] > limit]

    def mean(pts: list[dict[str, float]]) -> tuple[float, float]:
        """The settings' mean accuracy and its 95% half-width."""
        return sum(p["mean"] for p in pts) / len(pts), noise(*(p["ci95"] for p in pts)) / len(pts)

    def drops(run: str) -> dict[str, tuple[float, float]]:
        """Per panel swept: mean accuracy where the minibatches overlap minus where they do not, and its noise."""
        out = {}
        for panel in ("4a", "4b"):
            lo, hi = split(panel, run)
            if lo and hi:
                (a, ha), (b, hb) = mean(lo), mean(hi)
                out[panel] = (b - a, noise(ha, hb))
        return out

    def describe(d: dict[str, tuple[float, float]]) -> str:
        return ", ".join(f"{p} {100 * x:+.1f}" for p, (x, _) in d.items()) or "not swept"

    def degraded(run: str) -> list[str]:
        """The overlapping settings of ``run`` clearly below its non-overlapping ones' mean."""
        below = []
        for panel in ("4a", "4b"):
            lo, hi = split(panel, run)
            if lo:
                base, h = mean(lo)
                below += [f"{run} at {PANELS[panel][1]} {p['value']:g} {100 * (p['mean'] - base):+.1f}" for p in hi
                          if base - p["mean"] > noise(h, p["ci95"])]
        return below

    found = []
    if "4a" in panels or "4b" in panels:
        shared, shared_r = drops("fomaml-shared, cycle"), drops("fomaml-shared, replacement")
        gaps = {p: (shared_r[p][0] - shared[p][0], noise(shared_r[p][1], shared[p][1])) for p in shared
                if p in shared_r}
        others = {run: drops(run) for run in ("fomaml-separate, cycle", "fomaml-separate, replacement",
                                              "reptile, cycle", "reptile, replacement")}
        found += [
            {"paper": PAPER_OVERLAP[0], "ours": f"change once overlapping (points): {describe(shared)}",
             "holds": bool(shared) and all(d < 0 for d, _ in shared.values()),
             "unclear": [f"{p} {100 * d:+.1f} of ± {100 * h:.1f}" for p, (d, h) in shared.items() if -d <= h]},
            {"paper": PAPER_OVERLAP[1], "ours": f"cycle: {describe(shared)}; replacement: {describe(shared_r)}",
             "holds": bool(gaps) and sum(g for g, _ in gaps.values()) > 0,
             "unclear": [f"{p}: {100 * g:+.1f} of ± {100 * h:.1f}" for p, (g, h) in gaps.items() if abs(g) <= h],
             "against": [f"{p}: replacement degrades more, {100 * g:+.1f} of ± {100 * h:.1f}"
                         for p, (g, h) in gaps.items() if g < -h]},
            {"paper": PAPER_OVERLAP[2], "ours": "; ".join(f"{run}: {describe(d)}" for run, d in others.items()),
             "holds": bool(shared) and all(min(x for x, _ in d.values()) > min(x for x, _ in shared.values())
                                           for d in others.values() if d),
             "against": [w for run in others for w in degraded(run)]},
        ]
        if not shared:  # e.g. 4a swept only where the minibatches overlap
            for f in found:
                f["unchecked"] = True
    if "4c" in panels:
        best = {run: max(pts, key=lambda p: p["mean"]) for run, pts in panels["4c"]["runs"].items()}
        shared_run = max((r for r in best if r.startswith("fomaml-shared")), key=lambda r: best[r]["mean"])
        rest_run = min((r for r in best if not r.startswith("fomaml-shared")), key=lambda r: best[r]["mean"])
        shared_best, rest_best = best[shared_run], best[rest_run]
        gap, h = rest_best["mean"] - shared_best["mean"], noise(rest_best["ci95"], shared_best["ci95"])
        found.append({"paper": PAPER_OVERLAP[3], "ours": f"best over step sizes: shared-tail {pct(shared_best['mean'])}"
                                                         f", the others at least {pct(rest_best['mean'])}",
                      "holds": gap > 0, "unclear": [f"{100 * gap:+.1f} of ± {100 * h:.1f}"] if gap <= h else []})
    for f in found:
        judged = verdict(f["holds"], f.pop("unclear", ()), f.pop("against", ()))
        unchecked = "not checked: the sweeps need settings on both sides of the overlap"
        f["verdict"] = unchecked if f.pop("unchecked", False) else judged
    return found


def format_overlap(r: dict[str, Any]) -> str:
    """Final test accuracy of every setting of the three sweeps, and the paper's findings beside ours."""
    b = r["budget"]
    lines = [f"Reptile paper 6.3, overlap between inner-loop minibatches (Figure 4): 5-shot 5-way Omniglot, "
             f"{b['iterations']:,} outer iterations each, test accuracy (%) after 5 steps on {b['eval_tasks']} test "
             "tasks, mean ± 95% CI"]
    for panel, p in r["panels"].items():
        values = b["sweeps"][panel]
        fixed = ", ".join(f"{k} {v:g}" for k, v in p["fixed"].items())
        lines += ["", f"Figure {panel}: {p['label']} swept ({fixed})", "",
                  *md_head(["method", *(f"{v:g}" for v in values)])]
        for run, pts in p["runs"].items():
            got = {q["value"]: q for q in pts}
            lines.append(md_row([run, *(format_ci(100 * got[v]["mean"], 100 * got[v]["ci95"]) if v in got else "-"
                                        for v in values)]))
    return "\n".join([*lines, "", *findings_table(r)])


def overlap_figure(r: dict[str, Any], path: Path) -> Path:
    """Final test accuracy against each swept setting, one panel per sweep (Figure 4), titled with the budget (the
    figure did not say its runs had a small part of the paper's iterations)."""
    panels = r["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colors = {"reptile": "tab:purple", "fomaml-shared": "tab:red", "fomaml-separate": "tab:blue"}
    for ax, (panel, p) in zip(axes[0], panels.items(), strict=True):
        for run, pts in p["runs"].items():
            method, sampling = run.split(", ")
            ax.errorbar([q["value"] for q in pts], [100 * q["mean"] for q in pts],
                        yerr=[100 * q["ci95"] for q in pts], marker="o", ms=3, capsize=2, color=colors[method],
                        linestyle="-" if sampling == "cycle" else "--", label=run)
        ax.set_xticks(list(r["budget"]["sweeps"][panel]))
        ax.set_ylim(0, 100)
        ax.set_xlabel(p["label"])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Figure {panel}")
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    b = r["budget"]
    fig.suptitle(f"Reptile paper Figure 4, 5-shot 5-way Omniglot: {b['iterations']:,} outer iterations per setting"
                 + ("" if b["iterations"] >= FULL.iterations else f" (the paper's: {FULL.iterations:,})")
                 + f", {b['eval_tasks']:,} test tasks", fontsize=10)
    return save_figure(fig, path)
