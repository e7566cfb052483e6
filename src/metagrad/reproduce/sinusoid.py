"""Sinusoid regression: the MAML paper (5.1, Figures 2, 3, 6, Table 2; the context-vector baseline of appendix C.2)
and the Reptile paper (4, Figure 1).

Each method is trained from its preset into ``OUT/<method>`` (an interrupted reproduction resumes
there), evaluated on the same fixed test tasks, and reported beside the paper's numbers; figures and
``results.json`` go to ``OUT``. The MAML paper's Figure 2 (left) adapts on K points from one half of the input range
only: its figure, and the MSE on the other half over the test tasks, go there too.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import files, plots
from ..algorithms import MetaLearner
from ..analysis.stats import format_ci
from ..batch import TaskBatch
from ..build import build_tasks
from ..config import Config, load_config
from ..evaluate import adaptation_curves
from ..experiment import continue_run, evaluate, predictions
from ..provenance import stamped
from ..seeds import HALF_RANGE_SEED_OFFSET
from ..tables import k_columns, md_head, md_row


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    preset: str
    trained: bool = True


@dataclass(frozen=True)
class Experiment:
    """A paper's sinusoid study: its methods, the reported numbers, what the tables show."""

    name: str
    title: str
    methods: tuple[Method, ...]
    demo_iterations: int
    table_shots: int
    table_steps: tuple[int, ...]
    paper: dict[str, dict[int, float]]
    paper_note: str
    fit_steps: tuple[int, ...]
    half_range: tuple[float, float] | None = None  # K points from this part of x_range only (MAML Figure 2, left)


MAML_PAPER = Experiment(
    name="sinusoid",
    title="Sinusoid regression (MAML paper, section 5.1)",
    methods=(Method("maml", "MAML", "sinusoid-maml"),
             Method("pretrained", "pretrained", "sinusoid-pretrained"),
             Method("oracle", "oracle", "sinusoid-oracle"),
             Method("context", "context vector", "sinusoid-context")),
    demo_iterations=20000,
    table_shots=5,
    table_steps=(0, 1, 5, 10),
    paper={"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}},
    paper_note="paper: MAML appendix Table 2 (5-shot MSE; the oracle is only plotted; the context vector, appendix "
               "C.2, is reported on Omniglot and RL only)",
    fit_steps=(0, 1, 10),
    half_range=(-5.0, 0.0),
)

REPTILE_PAPER = Experiment(
    name="sinusoid-reptile",
    title="Sine-wave regression, Reptile's variant (Reptile paper, section 4)",
    methods=(Method("reptile", "Reptile", "sinusoid-reptile"),
             Method("maml", "MAML", "sinusoid-reptile-maml"),
             Method("random", "random init", "sinusoid-reptile", trained=False)),
    demo_iterations=10000,
    table_shots=10,
    table_steps=(0, 1, 8, 32),
    paper={},
    paper_note="paper: Figure 1 only (no numbers reported); loss = MSE on the 50-point grid",
    fit_steps=(0, 1, 32),
)

EXPERIMENTS = {e.name: e for e in (MAML_PAPER, REPTILE_PAPER)}


def run(exp: Experiment, out: str | Path, full: bool = False, iterations: int | None = None,
        overrides: dict[str, Any] | None = None, progress: bool = True, figures: int = 3) -> dict[str, Any]:
    """Train, evaluate, print the table, write ``results.json`` and the figures into ``out``."""
    configs = {m.name: _method_config(exp, m, full, iterations, overrides or {}) for m in exp.methods}  # all checked
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"experiment": exp.name, "title": exp.title, "full_budget": full,
                               "methods": {}, "paper": _paper_json(exp)}
    learners = {}
    for i, m in enumerate(exp.methods, 1):
        cfg = configs[m.name]
        print(f"[{i}/{len(exp.methods)}] {m.label}: " + (
            f"meta-training {cfg.iterations:,} iterations x {cfg.meta_batch_size} tasks -> {out / m.name}"
            if m.trained else "no training (random initialization)"), file=sys.stderr, flush=True)
        trainer, fit = continue_run(cfg, out / m.name, progress=progress)
        learners[m.name] = trainer.learner
        t0 = time.perf_counter()
        curves = evaluate(trainer.learner, cfg)
        results["methods"][m.name] = {
            "label": m.label, "preset": m.preset, "iterations": fit.iteration, "meta_batch_size": cfg.meta_batch_size,
            "train_seconds": round(fit.seconds, 2),
            "iterations_per_second": round(fit.iteration / fit.seconds, 1) if fit.seconds > 0 else None,
            "eval_seconds": round(time.perf_counter() - t0, 2),
            "curves": {str(k): v for k, v in curves.items()}, "config": cfg.to_sections()}
        if m.trained:
            print(f"    trained in {fit.seconds:.0f} s ({fit.iteration / max(fit.seconds, 1e-9):.0f} it/s); "
                  f"evaluated in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if exp.half_range is not None:
        results["half_range"] = half_range_results(exp, results, learners, configs)
    results = stamped(results)
    files.write_json(out / "results.json", results)
    table = format_table(exp, results)
    files.write_text(out / "table.md", table + "\n")
    print(table)
    figs = _figures(exp, results, learners, configs, out, figures)
    print("\nresults: " + str(out / "results.json"))
    for f in figs:
        print("figure:  " + str(f))
    return results


def format_table(exp: Experiment, results: dict[str, Any]) -> str:
    """The paper's table with ours beside it: query loss after each step count, mean ± 95% CI."""
    any_method = next(iter(results["methods"].values()))
    n_tasks = any_method["curves"][str(exp.table_shots)]["loss"]["tasks"]
    budget = ", ".join(f"{r['label']} {r['iterations']:,} it" for r in results["methods"].values()
                       if r["iterations"])
    lines = [f"{exp.title}", f"{exp.table_shots}-shot query MSE after k gradient steps, {n_tasks} test tasks, "
             f"mean ± 95% CI ({budget})", ""]
    lines += md_head(["method", *k_columns(exp.table_steps)])
    for name, r in results["methods"].items():
        c = r["curves"][str(exp.table_shots)]["loss"]
        lines.append(md_row([r["label"], *(format_ci(c["mean"][s], c["ci95"][s]) for s in exp.table_steps)]))
        if name in exp.paper:
            paper = exp.paper[name]
            lines.append(md_row([f"{r['label']} (paper)",
                                 *(f"{paper[s]:.2f}" if s in paper else "-" for s in exp.table_steps)]))
    lines += ["", exp.paper_note]
    for r in results["methods"].values():
        c = r["curves"][str(exp.table_shots)]["loss"]
        for s in exp.table_steps:
            if c["diverged"][s]:
                lines.append(f"{r['label']}, k = {s}: {c['diverged'][s]} of {n_tasks} tasks diverged (loss above 10x "
                             "its own and the average pre-update loss); mean of the others "
                             f"{c['mean_converged'][s]:.2f}, median of all {c['median'][s]:.2f}")
    other = [k for k in any_method["curves"] if k != str(exp.table_shots)]
    last = exp.table_steps[-1]
    for k in other:
        means = [(r["label"], r["curves"][k]["loss"]["mean"]) for r in results["methods"].values()]
        lines.append(f"{k}-shot, k = 0 / 1 / {last}: " + "; ".join(
            f"{label} {m[0]:.2f} / {m[1]:.2f} / {m[last]:.2f}" for label, m in means))
    lrs = "; ".join(f"{r['label']} {r['curves'][str(exp.table_shots)]['lr']}" for r in results["methods"].values())
    lines.append(f"test-time step sizes ({exp.table_shots}-shot): {lrs}")
    if "half_range" in results:
        h = results["half_range"]
        steps = " / ".join(str(s) for s in exp.fit_steps)
        lines.append(f"{h['shots']} points from x in {h['seen']} only (Figure 2, left), MSE on the unseen half "
                     f"{h['unseen']} after k = {steps} steps, {h['tasks']} tasks: " + "; ".join(
                         f"{r['label']} " + " / ".join(format_ci(r["loss"]["mean"][s], r["loss"]["ci95"][s])
                                                       for s in exp.fit_steps)
                         for r in h["methods"].values()))
    return "\n".join(lines)


def _method_config(exp: Experiment, m: Method, full: bool, iterations: int | None,
                   overrides: dict[str, Any]) -> Config:
    cfg = load_config(m.preset)
    changes = dict(overrides)
    if not m.trained:
        changes["iterations"] = 0
    elif iterations is not None:
        changes["iterations"] = iterations
    elif not full:
        changes["iterations"] = min(exp.demo_iterations, cfg.iterations)
    return cfg.replace(**changes)


def _figures(exp: Experiment, results: dict[str, Any], learners: dict[str, Any], configs: dict[str, Config],
             out: Path, num_tasks: int) -> list[Path]:
    curves = {name: {int(k): v for k, v in r["curves"].items()} for name, r in results["methods"].items()}
    paths = [plots.adaptation_curves(curves, out / "adaptation_curves.png")]
    panels = []
    shown = [name for name in learners if not configs[name].oracle]
    for t in range(num_tasks):
        for name in shown:
            panels.append(_fit_panel(exp, name, results["methods"][name], learners[name], configs[name], t))
    if panels:
        paths.append(plots.regression_fits(panels, out / "fits.png", columns=len(shown)))
    if exp.half_range is not None and shown:
        seen = exp.half_range
        half = []
        for name in shown:
            cfg = configs[name]
            batch, amp, phase = half_range_tasks(cfg, seen, 1, exp.table_shots, _half_figure_seed(cfg))
            panel = _panel(exp, name, results["methods"][name], learners[name], cfg, batch, amp, phase)
            half.append({**panel, "title": f"{panel['title']} from [{seen[0]:g}, {seen[1]:g}]", "shade": seen})
        paths.append(plots.regression_fits(half, out / "sinusoid_half_range.png", columns=len(half)))
    return paths


def _fit_panel(exp: Experiment, name: str, result: dict[str, Any], learner: Any, cfg: Config,
               index: int) -> dict[str, Any]:
    """One test task (the same for every method): its K points and the method's fit after some steps."""
    tasks = build_tasks(cfg)
    gen = torch.Generator().manual_seed(cfg.eval_seed + 1 + index)
    amp, phase = tasks.sample_params(1, gen)
    batch = tasks.make(amp, phase, gen, exp.table_shots)
    return _panel(exp, name, result, learner, cfg, batch, amp, phase)


def _panel(exp: Experiment, name: str, result: dict[str, Any], learner: Any, cfg: Config, batch: TaskBatch,
           amp: torch.Tensor, phase: torch.Tensor) -> dict[str, Any]:
    """The first task of ``batch`` (amplitude ``amp[0]``, phase ``phase[0]``): its K points, the true curve over
    the whole input range and the method's fit after each of ``exp.fit_steps``."""
    x = torch.linspace(*cfg.x_range, 200)
    support = (batch.support.x[0], batch.support.y[0])
    lr = result["curves"][str(exp.table_shots)]["lr"]
    preds = predictions(learner, support, x[:, None], list(exp.fit_steps), None if lr == "learned" else tuple(lr))
    return {"title": f"{result['label']}, K={exp.table_shots}", "x": x.numpy(),
            "y_true": (amp[0] * torch.sin(x + phase[0])).numpy(),
            "support_x": support[0][:, 0].numpy(), "support_y": support[1][:, 0].numpy(),
            "predictions": {s: p[:, 0].numpy() for s, p in preds.items()},
            "color": plots.COLORS.get(name, "tab:green")}


def unseen_range(x_range: tuple[float, ...], seen: tuple[float, float]) -> tuple[float, float]:
    """The rest of ``x_range`` beside ``seen``, which must start or end where ``x_range`` does."""
    lo, hi = x_range
    if seen[0] == lo and lo <= seen[1] < hi:
        return seen[1], hi
    if seen[1] == hi and lo < seen[0] <= hi:
        return lo, seen[0]
    raise ValueError(f"the seen part {list(seen)} must be one end of the input range {list(x_range)}")


def half_range_tasks(cfg: Config, seen: tuple[float, float], num_tasks: int, shots: int,
                     seed: int) -> tuple[TaskBatch, torch.Tensor, torch.Tensor]:
    """Test tasks of ``cfg``'s sinusoid family whose ``shots`` support points lie in ``seen`` (half the input range)
    and whose ``cfg.eval_query`` query points lie in the other half; with their amplitudes and phases."""
    tasks = build_tasks(cfg)
    gen = torch.Generator().manual_seed(seed)
    amp, phase = tasks.sample_params(num_tasks, gen)
    support = replace(tasks, x_range=tuple(seen), query=0).make(amp, phase, gen, shots).support
    query = replace(tasks, x_range=unseen_range(cfg.x_range, seen), query=0).make(amp, phase, gen,
                                                                                  cfg.eval_query).support
    return TaskBatch(support, query), amp, phase


def _half_figure_seed(cfg: Config) -> int:
    """The seed of the one task drawn in the half-range figure (not among the tasks of its numbers)."""
    return cfg.eval_seed + HALF_RANGE_SEED_OFFSET + 1


def half_range_results(exp: Experiment, results: dict[str, Any], learners: dict[str, MetaLearner],
                       configs: dict[str, Config]) -> dict[str, Any]:
    """MAML Figure 2 (left) in numbers: each method adapted on ``exp.table_shots`` points drawn from
    ``exp.half_range`` only, with its test-time step size, and its query MSE on the other half after 0..k steps
    (k the last of ``exp.fit_steps``), over ``eval_tasks`` tasks that are the same for every method."""
    assert exp.half_range is not None
    seen, steps = exp.half_range, max(exp.fit_steps)
    out: dict[str, Any] = {}
    for name, learner in learners.items():
        cfg = configs[name]
        batch, _, _ = half_range_tasks(cfg, seen, cfg.eval_tasks, exp.table_shots,
                                       cfg.eval_seed + HALF_RANGE_SEED_OFFSET)
        lr = results["methods"][name]["curves"][str(exp.table_shots)]["lr"]
        inner = None if lr == "learned" else learner.inner.with_lr(tuple(lr))
        curve = adaptation_curves(learner, batch, steps, inner=inner, seed=cfg.eval_seed)["loss"]
        out[name] = {"label": results["methods"][name]["label"], "lr": lr, "loss": asdict(curve)}
    first = configs[next(iter(learners))]
    batch, amp, phase = half_range_tasks(first, seen, 1, exp.table_shots, _half_figure_seed(first))
    figure = {"amplitude": float(amp[0]), "phase": float(phase[0]), "support_x": batch.support.x[0, :, 0].tolist()}
    return {"seen": list(seen), "unseen": list(unseen_range(first.x_range, seen)), "shots": exp.table_shots,
            "steps": steps, "tasks": first.eval_tasks, "query": first.eval_query, "methods": out,
            "figure": figure}


def _paper_json(exp: Experiment) -> dict[str, Any]:
    return {"shots": exp.table_shots, "note": exp.paper_note,
            "loss": {m: {str(s): v for s, v in per.items()} for m, per in exp.paper.items()}}
