"""2D navigation: the MAML paper (5.3, Figure 4, appendix Table 4) and the SG-MRL paper (5, Table 1).

Each method is meta-trained from its preset (``configs/<method>-navigation.toml``) into ``OUT/<method>`` (a rerun
resumes there), its best checkpoint is evaluated on the same held-out goals (return after 0..4 VPG steps of 40
episodes, step size 0.1 then 0.05), and the results are printed beside the papers' numbers; ``results.json``
accumulates every method run into ``OUT``, and the figures are redrawn from it.

MAML-TRPO is also measured as the MAML code measured Table 4 (``rllab_return_curve``: maml_examples/
test_maml_point.py runs VPG with a batch of 4000 steps over 40 environments and averages the completed
episodes, which weighs short, successful ones more); the fixed-episode curve stays the main one.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint
from ..analysis.stats import format_ci
from ..distributed import Distributed
from ..errors import ConfigError
from ..experiment import continue_run, load_run
from ..rl.config import RLConfig, method_names, preset
from ..rl.evaluate import evaluate, rllab_return_curve
from ..rl.train import RLFitResult, build

DEMO_ITERATIONS, FULL_ITERATIONS = 100, 500
LABELS = {"maml-trpo": "MAML-TRPO", "fomaml-trpo": "first-order MAML-TRPO", "pretrained": "pretrained (joint)",
          "random": "random init", "oracle": "oracle (goal as input)", "sgmrl": "SG-MRL (first order)",
          "sgmrl-full": "SG-MRL (full)", "maml-vpg": "MAML (VPG)", "emaml": "E-MAML (VPG)", "promp": "ProMP",
          "trpo-maml": "TRPO-MAML", "drs-ppo": "DRS+PPO", "drs-trpo": "DRS+TRPO"}
MAML_TABLE4 = {"maml-trpo": [-40.41, -11.68, -3.33, -3.23]}
SGMRL_TABLE1 = {"sgmrl": -16.901, "maml-vpg": -17.767, "emaml": -17.803}
MAML_METHODS = ("maml-trpo", "fomaml-trpo", "pretrained", "random", "oracle")
SGMRL_METHODS = ("sgmrl", "sgmrl-full", "maml-vpg", "emaml")


def parse_methods(text: str | None) -> list[str]:
    """``maml-trpo,pretrained`` -> the methods, checked against the presets (``all`` for every one)."""
    names = [m for m in (text or "maml-trpo").replace(" ", "").split(",") if m]
    if names == ["all"]:
        return method_names()
    for m in names:
        preset(m)  # raises with a suggestion
    if not names:
        raise ConfigError("--algo is empty; give methods such as maml-trpo,pretrained")
    return names


def method_config(method: str, full: bool, iterations: int | None, time_budget: float | None,
                  overrides: dict[str, Any], base: dict[str, Any] | None = None) -> RLConfig:
    """A method's preset with the experiment's settings (``base``), the budget and the user's overrides applied."""
    cfg = preset(method)
    changes = {**(base or {}), **overrides}
    if method != "random":
        changes["iterations"] = iterations if iterations is not None else (FULL_ITERATIONS if full else
                                                                           DEMO_ITERATIONS)
    if time_budget is not None:
        changes["time_budget"] = time_budget
    return cfg.replace(**changes)


def run(methods: list[str], out: str | Path, full: bool = False, iterations: int | None = None,
        time_budget: float | None = None, overrides: dict[str, Any] | None = None, progress: bool = True,
        figures: bool = True, experiment: Experiment | None = None) -> dict[str, Any]:
    """Train and evaluate ``methods``; merge into ``OUT/results.json``; print the tables; draw the figures.
    ``experiment`` (default: 2D navigation) gives the environment settings, the papers' numbers and the table."""
    experiment = experiment or NAVIGATION
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    configs = [method_config(m, full, iterations, time_budget, overrides or {}, experiment.base) for m in methods]
    for cfg in configs:  # environment, policy and algorithm of every method checked before anything runs
        build(cfg)
    fits: dict[str, RLFitResult] = {}
    group = Distributed.from_env()  # under torchrun: every method trains on all processes, then process 0 evaluates
    if group is not None:
        finished = False
        try:
            for m, cfg in zip(methods, configs, strict=True):
                if group.is_main:
                    print(f"{LABELS[m]}: meta-training on {group.world} processes -> {out / m}", file=sys.stderr)
                fits[m] = continue_run(cfg, out / m, progress, distributed=group)[1]
            finished = True
        finally:
            group.close(finished)
        if not group.is_main:
            return {}
    for i, (m, cfg) in enumerate(zip(methods, configs, strict=True), 1):
        print(f"[{i}/{len(methods)}] {LABELS[m]}: " + (f"meta-training {cfg.iterations} iterations x "
              f"{cfg.meta_batch_size} tasks -> {out / m}" if cfg.iterations else "no training"),
              file=sys.stderr, flush=True)
        r = run_method(m, cfg, out / m, progress, fits.get(m))
        _merge(path, m, r, experiment)  # re-read: another command may have added methods meanwhile
        print(f"    {r['iterations']} iterations in {r['train_seconds']:.0f} s ({r['seconds_per_iteration']} s/it, "
              f"{r['env_steps_per_second']} env steps/s); evaluated in {r['eval_seconds']:.0f} s",
              file=sys.stderr, flush=True)
    results = json.loads(path.read_text())  # with what other commands added
    table = experiment.table(results)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if figures and experiment.name == "navigation":
        from ..rl import plots

        for f in plots.navigation_figures(results, out):
            print("figure:  " + str(f))
    print("results: " + str(path))
    return results


def _merge(path: Path, method: str, result: dict[str, Any], experiment: Experiment) -> dict[str, Any]:
    """Add one method's result to ``results.json`` (keeping the others') and write it atomically."""
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"methods": {}}
    results.update(experiment=experiment.name, machine=_machine(), paper=experiment.paper)
    results["methods"][method] = result
    checkpoint.write_json(path, results)
    return results


def run_method(method: str, cfg: RLConfig, run_dir: Path, progress: bool,
               fit: RLFitResult | None = None) -> dict[str, Any]:
    """Train (or resume) one method unless ``fit`` says it was trained, then evaluate its best checkpoint on the
    held-out goals."""
    fit = fit or continue_run(cfg, run_dir, progress)[1]
    best, _, info = load_run(run_dir, "best")
    t0 = time.perf_counter()
    curve, paths, goals = evaluate(best, cfg, keep_paths=3)
    lr = curve["lr"]
    torch.save({"paths": paths, "goals": goals}, run_dir / "paths.pt")
    extra = {}
    if method in MAML_TABLE4:  # also as the MAML code measured Table 4 (rllab's sampler: short episodes weigh more)
        extra["curve_rllab"] = rllab_return_curve(best, cfg.eval_tasks, cfg.eval_steps, lr, cfg.eval_seed)
    per_it = fit.seconds / fit.iteration if fit.iteration else None
    return {"label": LABELS[method], "config": cfg.to_dict(), "iterations": fit.iteration,
            "best_iteration": info["iteration"], "best_train_return": fit.best_return,
            "train_seconds": round(fit.seconds, 2), "stopped": fit.stopped,
            "seconds_per_iteration": round(per_it, 3) if per_it else None,
            "env_steps": fit.env_steps,
            "env_steps_per_second": round(fit.env_steps / fit.seconds) if fit.seconds else None,
            "sampling_steps_per_second": round(fit.env_steps / fit.sample_seconds) if fit.sample_seconds else None,
            "sampling_share": round(fit.sample_seconds / fit.seconds, 3) if fit.seconds else None,
            "eval_seconds": round(time.perf_counter() - t0, 2), "curve": curve, **extra}


def format_table(results: dict[str, Any]) -> str:
    """The papers' tables with ours beside: average return after k steps on the held-out goals, mean ± 95% CI."""
    methods = results["methods"]
    lines = ["2D navigation: average return after k VPG steps on held-out goals (episodes per step and step sizes "
             "below), mean ± 95% CI over goals", ""]
    maml = [m for m in MAML_METHODS if m in methods]
    if maml:
        steps = len(methods[maml[0]]["curve"]["mean"])
        lines += ["MAML paper (appendix Table 4; Figure 4)", "",
                  "| method | iterations | " + " | ".join(f"k = {s}" for s in range(steps)) + " |",
                  "|" + "---|" * (steps + 2)]
        for m in maml:
            r = methods[m]
            lines.append(f"| {r['label']} | {r['iterations']} | " + " | ".join(
                format_ci(a, b) for a, b in zip(r["curve"]["mean"], r["curve"]["ci95"], strict=True)) + " |")
            if "curve_rllab" in r:
                c = r["curve_rllab"]
                lines.append(f"| {r['label']} (the MAML code's measurement) | {r['iterations']} | " + " | ".join(
                    format_ci(a, b) for a, b in zip(c["mean"], c["ci95"], strict=True)) + " |")
            if m in MAML_TABLE4:
                paper = MAML_TABLE4[m] + [None] * (steps - len(MAML_TABLE4[m]))
                lines.append(f"| {r['label']} (paper) | 500 max | " + " | ".join(
                    f"{v:.2f}" if v is not None else "-" for v in paper[:steps]) + " |")
        lines.append("")
    sg = [m for m in SGMRL_METHODS if m in methods]
    if sg:
        lines += ["SG-MRL paper (Table 1: meta-test reward after 1 step)", "", "| method | iterations | k = 0 | "
                  "k = 1 | paper, k = 1 |", "|---|---|---|---|---|"]
        for m in sg:
            r = methods[m]
            c = r["curve"]
            ours = [format_ci(c["mean"][k], c["ci95"][k]) if len(c["mean"]) > k else "-" for k in (0, 1)]
            paper = f"{SGMRL_TABLE1[m]:.2f}" if m in SGMRL_TABLE1 else "-"
            lines.append(f"| {r['label']} | {r['iterations']} | {ours[0]} | {ours[1]} | {paper} |")
        lines.append("")
    for r in methods.values():
        c = r["curve"]
        lines.append(f"{r['label']}: {c['tasks']} goals x {c['episodes']} episodes per step, test step sizes "
                     f"{c['lr']}; best checkpoint at iteration "
                     f"{r['best_iteration']}; " + (f"{r['seconds_per_iteration']} s per meta-iteration, "
                                                   f"{r['env_steps_per_second']:,} env steps/s overall, "
                                                   f"{r.get('sampling_steps_per_second') or 0:,} while sampling"
                                                   if r["seconds_per_iteration"] else "untrained"))
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform()}


@dataclass(frozen=True)
class Experiment:
    """A meta-RL reproduction: its name, the config changes every method gets, the papers' numbers (stored in
    ``results.json``) and the table that prints ours beside them."""

    name: str
    table: Callable[[dict[str, Any]], str]
    paper: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)


NAVIGATION = Experiment("navigation", format_table, {"maml_table4": MAML_TABLE4, "sgmrl_table1": SGMRL_TABLE1})
