"""The reproduction protocol of the meta-RL papers, shared by 2D navigation and locomotion: each method is
meta-trained from its preset (``configs/<method>-navigation.toml``) with the experiment's settings into
``OUT/<method>`` (a rerun resumes there), its best checkpoint is evaluated on the same held-out tasks, the results
are merged into ``OUT/results.json`` and printed beside the papers' numbers (the experiment's table).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import files
from ..distributed import Distributed
from ..errors import ConfigError
from ..experiment import continue_run, load_run
from ..provenance import stamped
from ..rl.config import RLConfig, method_names, preset
from ..rl.evaluate import evaluate, rllab_return_curve
from ..rl.metarl import packable, steps_mean_applies
from ..rl.train import RLFitResult, build

DEMO_ITERATIONS, FULL_ITERATIONS = 100, 500
ALIASES = {"trpo-maml"}  # another paper's name for a method here: not trained twice by --algo all
LABELS = {"maml-trpo": "MAML-TRPO", "fomaml-trpo": "first-order MAML-TRPO", "pretrained": "pretrained (joint)",
          "random": "random init", "oracle": "oracle (goal as input)", "sgmrl": "SG-MRL (first order)",
          "sgmrl-full": "SG-MRL (full)", "maml-vpg": "MAML (VPG)", "emaml": "E-MAML (VPG)", "promp": "ProMP",
          "trpo-maml": "TRPO-MAML", "drs-ppo": "DRS+PPO", "drs-trpo": "DRS+TRPO",
          "context": "context vector"}
RESULTS_FIX = ("restore it, or delete it and run the command again with every method it held (their runs are kept "
               "and tested again)")


@dataclass(frozen=True)
class Experiment:
    """A meta-RL reproduction: its name, the config changes every method gets, the papers' numbers (stored in
    ``results.json``) and the table that prints ours beside them."""

    name: str
    table: Callable[[dict[str, Any]], str]
    paper: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    rllab_methods: tuple[str, ...] = ()  # also measured as the MAML code measured them (rllab's sampler)
    method_base: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method, over ``base``
    figures: Callable[[dict[str, Any], Path], list[Path]] | None = None  # (results, OUT) -> the figures drawn

    def settings(self, method: str) -> dict[str, Any]:
        """The config changes ``method`` gets here: ``base``, then its own ``method_base``."""
        return {**self.base, **self.method_base.get(method, {})}


def parse_methods(text: str | None) -> list[str]:
    """``maml-trpo,pretrained`` -> the methods, checked against the presets (``all`` for every one)."""
    given = ("maml-trpo" if text is None else text).replace(" ", "").split(",")
    names = [m for m in given if m]
    if not names:
        raise ConfigError("--algo is empty; give methods such as maml-trpo,pretrained")
    if len(names) < len(given):
        raise ConfigError(f"--algo {text}: an empty entry between commas; give methods such as maml-trpo,pretrained")
    if names == ["all"]:
        return [m for m in method_names() if m not in ALIASES]
    for m in names:
        preset(m)  # raises with a suggestion
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise ConfigError(f"--algo names {', '.join(twice)} twice; each method trains once")
    return names


def method_config(method: str, full: bool, iterations: int | None, time_budget: float | None,
                  overrides: dict[str, Any], base: dict[str, Any] | None = None) -> RLConfig:
    """A method's preset with the experiment's settings (``base``), the budget and the user's overrides applied.
    A base's ``pack_episodes=True`` and ``loss_mean='steps'`` mean "where it applies": the methods that read whole
    episodes keep the padded layout, SG-MRL its slot means, unless the user's overrides say otherwise."""
    cfg = preset(method)
    for key, option in (("iterations", "--iterations"), ("time_budget", "--time-budget")):
        if key in overrides:
            raise ConfigError(f"--set {key}={overrides[key]}: give the budget as {option} (it applies to every "
                              "trained method; random init trains none)")
    for key in ("algo", "outer"):
        if key in overrides and overrides[key] != getattr(cfg, key):
            raise ConfigError(f"--set {key}={overrides[key]} would make --algo {method} another method ({key} "
                              f"'{getattr(cfg, key)}' in its preset) under {method}'s label; choose the method with "
                              f"--algo ({', '.join(method_names())})")
    env = (base or {}).get("env", cfg.env)
    if overrides.get("env", env) != env:
        raise ConfigError(f"--set env={overrides['env']} would train another environment than '{env}' beside its "
                          "paper's numbers; choose the environment with --env (locomotion) or the experiment")
    changes = {**(base or {}), **overrides}
    if "eval_lr" in overrides and "tune_eval_lr" not in overrides:
        changes["tune_eval_lr"] = False  # the step sizes given are the ones to test with (as `metagrad eval`)
    if method != "random":
        changes["iterations"] = iterations if iterations is not None else (FULL_ITERATIONS if full else
                                                                           DEMO_ITERATIONS)
    if time_budget is not None:
        changes["time_budget"] = time_budget
    pack = "pack_episodes" not in overrides and changes.pop("pack_episodes", False)
    if "loss_mean" not in overrides and not steps_mean_applies(changes.get("algo", cfg.algo)):
        changes.pop("loss_mean", None)
    cfg = cfg.replace(**changes)
    return cfg.replace(pack_episodes=packable(cfg.algo, cfg.hvp_subsample)) if pack else cfg


def method_configs(experiment: Experiment, methods: list[str], full: bool = False, iterations: int | None = None,
                   time_budget: float | None = None, overrides: dict[str, Any] | None = None) -> list[RLConfig]:
    """The config each of ``methods`` trains with in ``experiment`` (what ``run`` builds and resumes); a ``--set``
    that none of them uses (``RLConfig.APPLIES``) is an error, not stored and ignored."""
    cfgs = [method_config(m, full, iterations, time_budget, overrides or {}, experiment.settings(m)) for m in methods]
    for key in overrides or {}:
        if not any(cfg.applies(key) for cfg in cfgs):
            cfgs[0].check_applies([key], lambda name: f"--set {name}",
                                  f", and no method run here ({', '.join(methods)}) has it")
    return cfgs


def run(experiment: Experiment, methods: list[str], out: str | Path, full: bool = False, iterations: int | None = None,
        time_budget: float | None = None, overrides: dict[str, Any] | None = None, progress: bool = True,
        figures: bool = True) -> dict[str, Any]:
    """Train and evaluate ``methods``; merge into ``OUT/results.json``; print the tables; draw the figures.
    ``experiment`` gives the environment settings, the papers' numbers and the table."""
    out = Path(out)
    path = out / "results.json"
    configs = method_configs(experiment, methods, full, iterations, time_budget, overrides)
    if path.exists():  # before any training: another experiment's folder, or other test tasks, refused now
        results = files.read_json(path, fix=RESULTS_FIX)
        check_experiment(path, results, experiment)
        for m, cfg in zip(methods, configs, strict=True):
            check_same_tests(path, results, m, cfg.to_dict())
    for cfg in configs:  # environment, policy and algorithm of every method checked before anything is written
        build(cfg)
    out.mkdir(parents=True, exist_ok=True)
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
        r = run_method(m, cfg, out / m, progress, fits.get(m), experiment.rllab_methods)
        _merge(path, m, r, experiment)  # re-read: another command may have added methods meanwhile
        speed = (f" ({r['seconds_per_iteration']} s/it, {r['env_steps_per_second']} env steps/s)"
                 if r["seconds_per_iteration"] else "")
        print(f"    {r['iterations']} iterations in {r['train_seconds']:.0f} s{speed}; evaluated in "
              f"{r['eval_seconds']:.0f} s", file=sys.stderr, flush=True)
    return report(experiment, out, figures)  # with what other commands added


def report(experiment: Experiment, out: Path, figures: bool = True) -> dict[str, Any]:
    """Print the table and draw the figures from ``OUT/results.json``, its papers' numbers refreshed from
    ``experiment`` (what ``reproduce --redraw`` runs alone: nothing trained or evaluated)."""
    path = out / "results.json"
    if not path.exists():
        raise ConfigError(f"no results.json in {out}: run the reproduction first (the same command without --redraw)")
    with files.locked(path):
        results = files.read_json(path, fix=RESULTS_FIX)
        check_experiment(path, results, experiment)
        if results.get("paper") != experiment.paper:
            results["paper"] = experiment.paper
            files.write_json(path, results)
    table = experiment.table(results)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if figures and experiment.figures is not None:
        for f in experiment.figures(results, out):
            print("figure:  " + str(f))
    print("results: " + str(path))
    return results


def check_experiment(path: Path, results: dict[str, Any], experiment: Experiment) -> None:
    """A results file holds one experiment's methods: another's is refused, not relabelled or mixed in."""
    if results.get("experiment") != experiment.name:
        raise ConfigError(f"{path} holds experiment '{results.get('experiment')}', not '{experiment.name}'; "
                          "choose it with --env (locomotion) or the experiment, or give another --out")


# what makes two methods' test numbers comparable: the same test tasks and episodes per step (metagrad compare's
# Welch test and the table put them side by side)
SAME_TESTS = ("eval_seed", "eval_tasks", "eval_episodes")


def check_same_tests(path: Path, results: dict[str, Any], method: str, config: dict[str, Any]) -> None:
    """Refuse a method tested on other tasks or episodes than the other methods in ``results`` (the table and
    ``metagrad compare`` would set their numbers side by side); its own earlier result may differ."""
    ours = {k: config.get(k) for k in SAME_TESTS}
    for other, r in results.get("methods", {}).items():
        theirs = {k: r.get("config", {}).get(k) for k in SAME_TESTS}
        differ = [k for k in SAME_TESTS if ours[k] != theirs[k]]
        if other != method and differ:
            diff = ", ".join(f"{k} {ours[k]} (theirs {theirs[k]})" for k in differ)
            same = " ".join(f"--set {k}={theirs[k]}" for k in differ)
            raise ConfigError(f"{path} holds {other} tested on other tasks or episodes; {method} would be tested "
                              f"with {diff}: test it as {other} ({same}) or give another --out")


def _merge(path: Path, method: str, result: dict[str, Any], experiment: Experiment) -> dict[str, Any]:
    """Add one method's result to ``results.json`` (keeping the others', also those another command adds at the
    same moment) and write it atomically."""
    with files.locked(path):
        results: dict[str, Any] = {"methods": {}}
        if path.exists():
            results = files.read_json(path, fix=RESULTS_FIX)
            check_experiment(path, results, experiment)
            check_same_tests(path, results, method, result.get("config", {}))
        results.update(stamped({"experiment": experiment.name, "paper": experiment.paper}))
        results["methods"][method] = result
        files.write_json(path, results)
    return results


def run_method(method: str, cfg: RLConfig, run_dir: Path, progress: bool, fit: RLFitResult | None = None,
               rllab_methods: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train (or resume) one method unless ``fit`` says it was trained, then evaluate its best checkpoint on the
    held-out goals."""
    fit = fit or continue_run(cfg, run_dir, progress)[1]
    best, _, info = load_run(run_dir, "best")
    t0 = time.perf_counter()
    curve, paths, goals = evaluate(best, cfg, keep_paths=3)
    lr = curve["lr"]
    files.replace_atomically(run_dir / "paths.pt", lambda f: torch.save({"paths": paths, "goals": goals}, f))
    extra = {}
    if method in rllab_methods:  # also as the MAML code measured Table 4 (rllab's sampler: short episodes weigh more)
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
