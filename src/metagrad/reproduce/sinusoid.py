"""Sinusoid regression: the MAML paper (5.1, Figures 2, 3, 6, Table 2) and the Reptile paper (4, Figure 1).

Each method is trained from its preset into ``OUT/<method>`` (an interrupted reproduction resumes
there), evaluated on the same fixed test tasks, and reported beside the paper's numbers; figures and
``results.json`` go to ``OUT``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import plots
from ..analysis.stats import format_ci
from ..build import build_tasks
from ..config import Config, load_config
from ..experiment import continue_run, evaluate, predictions
from ..loop import machine


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


MAML_PAPER = Experiment(
    name="sinusoid",
    title="Sinusoid regression (MAML paper, section 5.1)",
    methods=(Method("maml", "MAML", "sinusoid-maml"),
             Method("pretrained", "pretrained", "sinusoid-pretrained"),
             Method("oracle", "oracle", "sinusoid-oracle")),
    demo_iterations=20000,
    table_shots=5,
    table_steps=(0, 1, 5, 10),
    paper={"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}},
    paper_note="paper: MAML appendix Table 2 (5-shot MSE; the oracle is only plotted)",
    fit_steps=(0, 1, 10),
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"experiment": exp.name, "title": exp.title, "full_budget": full,
                               "machine": machine(), "methods": {}, "paper": _paper_json(exp)}
    learners, configs = {}, {}
    for i, m in enumerate(exp.methods, 1):
        cfg = _method_config(exp, m, full, iterations, overrides or {})
        configs[m.name] = cfg
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
            "curves": {str(k): v for k, v in curves.items()}}
        if m.trained:
            print(f"    trained in {fit.seconds:.0f} s ({fit.iteration / max(fit.seconds, 1e-9):.0f} it/s); "
                  f"evaluated in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = format_table(exp, results)
    (out / "table.md").write_text(table + "\n")
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
    header = "| method | " + " | ".join(f"k = {s}" for s in exp.table_steps) + " |"
    lines += [header, "|" + "---|" * (len(exp.table_steps) + 1)]
    for name, r in results["methods"].items():
        c = r["curves"][str(exp.table_shots)]["loss"]
        lines.append(f"| {r['label']} | " + " | ".join(format_ci(c["mean"][s], c["ci95"][s]) for s in exp.table_steps)
                     + " |")
        if name in exp.paper:
            lines.append(f"| {r['label']} (paper) | " + " | ".join(
                f"{exp.paper[name][s]:.2f}" if s in exp.paper[name] else "-" for s in exp.table_steps) + " |")
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
    return paths


def _fit_panel(exp: Experiment, name: str, result: dict[str, Any], learner: Any, cfg: Config,
               index: int) -> dict[str, Any]:
    """One test task (the same for every method): its K points and the method's fit after some steps."""
    tasks = build_tasks(cfg)
    gen = torch.Generator().manual_seed(cfg.eval_seed + 1 + index)
    amp, phase = tasks.sample_params(1, gen)
    batch = tasks.make(amp, phase, gen, exp.table_shots)
    x = torch.linspace(*cfg.x_range, 200)
    support = (batch.support.x[0], batch.support.y[0])
    lr = result["curves"][str(exp.table_shots)]["lr"]
    preds = predictions(learner, support, x[:, None], list(exp.fit_steps), None if lr == "learned" else tuple(lr))
    return {"title": f"{result['label']}, K={exp.table_shots}", "x": x.numpy(),
            "y_true": (amp[0] * torch.sin(x + phase[0])).numpy(),
            "support_x": support[0][:, 0].numpy(), "support_y": support[1][:, 0].numpy(),
            "predictions": {s: p[:, 0].numpy() for s, p in preds.items()},
            "color": plots.COLORS.get(name, "tab:green")}


def _paper_json(exp: Experiment) -> dict[str, Any]:
    return {"shots": exp.table_shots, "note": exp.paper_note,
            "loss": {m: {str(s): v for s, v in per.items()} for m, per in exp.paper.items()}}
