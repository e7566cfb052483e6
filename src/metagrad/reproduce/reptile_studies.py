"""The Reptile paper's studies of the inner loop on 5-shot 5-way Omniglot (Nichol et al. 2018, sections 6.2 and 6.3).

``run_gradients`` (section 6.2, Figure 3, hyper-parameters of Table 5 and the reference code's commands in the
openai/supervised-reptile README): four non-overlapping minibatches of 25 give the inner gradients g1..g4, and the
outer update is a linear combination of them: g1 (joint training), g2, g3, g4 (first-order MAML with 2-4 steps),
g1+g2, g1+g2+g3, g1+..+g4 (Reptile), the sums and their averages. Vanilla SGD in both loops (inner step 3e-3,
outer step 0.25 annealed linearly to 0), one task per outer step, a task's training data being exactly the
minibatches it uses (5 drawings per class per minibatch, as the code's ``--train-shots``); tested after 5 inner steps
on the 25 examples of 5-shot tasks. Output: learning curves (test accuracy along training) of every combination.

``run_overlap`` (section 6.3, Figure 4, hyper-parameters of Table 6): shared-tail first-order MAML (its final
minibatch drawn from the same 20 drawings per class as the earlier ones, so that it overlaps them once they are used
up), separate-tail first-order MAML (the final minibatch from 5 reserved drawings per class) and Reptile, with
minibatches drawn by cycling through the data or anew for every step (``inner_sampling``), swept over (a) the number
of inner iterations at batch 25, (b) the inner batch size at 4 iterations, (c) the outer step size at batch 100 and 4
iterations; outer step 1.0 annealed to 0, one task per outer step (the code's default, which Table 6 keeps). Output:
the final test accuracy of every setting.

First-order MAML here is the reference code's (``--foml``): its outer update is the final inner step's update with
the same outer step size as Reptile (``Reptile(combination=(0, .., 0, 1))``), so Adam's rescaling applies to both.
Section 6.3 does not name its inner optimizer; section 6 says Adam was used "throughout our experiments" apart from
6.2's stated simplification, and the reference code has only Adam besides ``--sgd``: we run Adam (beta1 = 0, step
3e-3, its state carried across tasks as the paper's code) and Table 6's test protocol, 5 steps on minibatches of 25;
each test task starts from the carried Adam state and leaves it as it was, as the code backed up and restored it.
Choices of ours, the paper being silent: the swept values, and the separate tail's 5 drawings per class. Every run
is a run directory under ``OUT`` (checkpoints: a rerun resumes; ``jobs`` runs at once in processes of one thread).
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from .. import checkpoint, files, losses
from ..algorithms import MetaLearner
from ..analysis.stats import format_ci, mean_ci95
from ..batch import Split, TaskBatch
from ..build import build_learner, build_outer, build_tasks, image_splits
from ..config import Config, load_config
from ..errors import CheckpointError, ConfigError, Interrupted, check_whole
from ..evaluate import held_out_tasks
from ..experiment import stored_config
from ..provenance import machine
from ..settings import check_seed
from ..tables import md_head, md_row
from ..tasks.fewshot import FewShotClassification
from ..train import Trainer

WAYS, TEST_SHOTS = 5, 5
DRAWINGS = 20  # drawings of an Omniglot character: the most a task can hold per class
BATCH = 25  # Table 5 / 6: inner batch (and test-time batch)
TAIL_SHOTS = 5  # separate tail: drawings per class held back for the final minibatch (ours; the code's --foml-tail)

# Section 6.2: name -> weights of g1..gk (the sums' averages are the code's meta-step / k)
COMBINATIONS: dict[str, tuple[float, ...]] = {
    "g1": (1.0,),
    "g2": (0.0, 1.0), "g1+g2": (1.0, 1.0), "avg(g1,g2)": (0.5, 0.5),
    "g3": (0.0, 0.0, 1.0), "g1+g2+g3": (1.0, 1.0, 1.0), "avg(g1..g3)": (1 / 3, 1 / 3, 1 / 3),
    "g4": (0.0, 0.0, 0.0, 1.0), "g1+..+g4": (1.0, 1.0, 1.0, 1.0), "avg(g1..g4)": (0.25, 0.25, 0.25, 0.25),
}
METHODS = ("reptile", "fomaml-shared", "fomaml-separate")  # section 6.3
SAMPLINGS = ("cycle", "replacement")
PANELS = {"4a": ("inner_steps", "inner iterations"), "4b": ("inner_batch_size", "inner batch size"),
          "4c": ("outer_lr", "outer step size")}

PAPER_GRADIENTS = [
    "using only the first gradient g1 is quite ineffective (it optimizes the expected loss over all tasks)",
    "two-step Reptile (g1+g2) is noticeably worse than two-step FOMAML (g2)",
    "all the methods improve as the number of minibatches increases",
    "the improvement is larger for the sum of all gradients (Reptile) than for the final gradient alone (FOMAML)",
]
PAPER_OVERLAP = [
    "shared-tail FOMAML (cycle) degrades once its final minibatch overlaps the earlier ones (4a: from 5 iterations; "
    "4b: batches above 25)",
    "with sampling with replacement, shared-tail FOMAML degrades more gradually",
    "separate-tail FOMAML and Reptile do not degrade as the inner iterations or batch size change",
    "4c: shared-tail FOMAML is poor for every outer step size",
]


@dataclass(frozen=True)
class Budget:
    """How much of the paper's protocol a study runs."""

    iterations: int  # outer iterations of every run
    eval_tasks: int  # test tasks of every evaluation (the same tasks for every run)
    curve_points: int  # evaluations along each run of the gradient study (its learning curves)
    sweeps: dict[str, tuple[float, ...]] = field(default_factory=dict)  # overlap study: panel -> swept values
    seed: int = 0


FULL = Budget(iterations=40000, eval_tasks=1000, curve_points=20,
              sweeps={"4a": (2, 3, 4, 5, 6, 8), "4b": (5, 10, 15, 20, 25, 30, 40, 50, 100),
                      "4c": (0.1, 0.25, 0.5, 1.0, 2.0)})
# The defaults, measured on this machine (0.07 s per outer iteration of the gradient study, 0.04-0.17 s in the overlap
# study as the inner iterations and batch grow, 0.1 s per test task): the overlap study ~70 minutes on 2 cores
# (``jobs=2``); the gradient study the paper's 40K iterations, ~4 hours on 2 cores: its plain SGD learns slowly, and
# at 10,000 iterations (annealed to 0 there) g1, g2 and g1+g2 all tested at 28-30%, within each other's intervals.
DEFAULT_GRADIENTS = Budget(iterations=40000, eval_tasks=100, curve_points=10)
DEFAULT_OVERLAP = Budget(iterations=1500, eval_tasks=100, curve_points=1,
                         sweeps={"4a": (2, 3, 4, 5, 6, 8), "4b": (10, 25, 50, 100)})


class TrainingTasks:
    """Training tasks whose support set holds ``shots`` drawings per class (up to all 20 of an Omniglot character).

    The query set is one more drawing per class when one is left; with all 20 in the support set it repeats one of
    them per class. Reptile and shared-tail FOMAML train on the support set alone: the query set only feeds the
    logged loss (separate-tail runs use ``FewShotClassification`` itself, whose query set is the tail).
    """

    def __init__(self, images: Any, ways: int, shots: int, rotations: bool = True):
        self.whole = shots >= DRAWINGS
        self.base = FewShotClassification(images, ways, shots - 1 if self.whole else shots, 1, rotations=rotations)

    def sample(self, num_tasks: int, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        batch = self.base.sample(num_tasks, generator)
        if not self.whole:
            return batch
        support = Split(torch.cat([batch.support.x, batch.query.x], 1), torch.cat([batch.support.y, batch.query.y], 1))
        return TaskBatch(support, batch.query)


def base_config(data_root: str | None, budget: Budget, download: bool = False) -> Config:
    """What every run of both studies shares: 5-way Omniglot with Conv4, the paper's test protocol (5-shot tasks,
    minibatches of 25, non-transductive), one task per outer step, plain outer SGD annealed linearly to 0."""
    return load_config("omniglot-reptile").replace(
        data_root=data_root or "", download=download, ways=WAYS, meta_batch_size=1, outer_optimizer="sgd",
        outer_lr_schedule="linear",
        iterations=budget.iterations, seed=budget.seed, val_every=0, log_every=max(1, budget.iterations // 20),
        checkpoint_every=max(1, budget.iterations // 10), eval_shots=(TEST_SHOTS,), eval_query=1,
        eval_inner_batch_size=BATCH, eval_tasks=budget.eval_tasks, transductive=False)


def train_run(cfg: Config, tasks: Any, run_dir: Path, progress: bool,
              on_iteration: Callable[[Trainer, int], None] | None = None, time_budget: float = 0.0) -> Trainer:
    """Meta-train ``cfg`` on the training tasks ``tasks`` into ``run_dir``, continuing it if it has a checkpoint
    (which must come from the same config); stop with a checkpoint after ``time_budget`` minutes (0: no limit)."""
    if checkpoint.exists(run_dir / "last"):
        saved = stored_config(checkpoint.read_info(run_dir / "last")["config"])
        changed = cfg.resume_differences(saved)
        if changed:
            raise CheckpointError(f"{run_dir} was trained with another config (differs in: {', '.join(changed)}); "
                                  "choose another output folder")
    learner = build_learner(cfg)
    opt, sched = build_outer(cfg, learner)
    trainer = Trainer(learner, tasks, opt, scheduler=sched, iterations=cfg.iterations,
                      meta_batch_size=cfg.meta_batch_size, seed=cfg.seed, run_dir=run_dir, config=cfg.to_sections(),
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, val_every=0,
                      progress=progress, on_iteration=(lambda t, i, m: on_iteration(t, i)) if on_iteration else None,
                      time_budget=time_budget)
    fit = trainer.fit(resume="auto")
    if fit.stopped == "interrupted":
        raise Interrupted(f"interrupted at iteration {fit.iteration}; checkpoint saved in {run_dir}; run the same "
                          "command again to continue")
    return trainer


@torch.no_grad()
def test_accuracy(learner: MetaLearner, cfg: Config, batch: TaskBatch) -> tuple[float, float]:
    """Mean test accuracy after ``cfg.eval_steps`` inner steps on each task's support set (minibatches of
    ``eval_inner_batch_size``, from the carried inner state when the learner carries one), and its 95% half-width.

    The same adaptation as ``MetaLearner.adaptation_metrics``, but only the final parameters are tested: the curve
    over every step costs several times more at 50 steps in the non-transductive mode."""
    meta, buffers = learner.functional_inputs()
    start = learner.start_state(learner.inner)
    mb = learner.minibatch_indices(batch.num_tasks, batch.support.x.shape[1], cfg.eval_steps,
                                   cfg.eval_inner_batch_size, torch.Generator().manual_seed(cfg.eval_seed))
    correct = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        params = learner.adapt(meta, buffers, task.support, cfg.eval_steps, state=start,
                               minibatches=None if mb is None else mb[i])
        pred = learner.predict(params, buffers, task.support.x, task.query.x, cfg.transductive)
        correct.append(losses.accuracy(pred, task.query.y))
    mean, half = mean_ci95(torch.stack(correct))
    return float(mean), float(half)


def test_tasks(cfg: Config) -> TaskBatch:
    """The fixed 5-shot test tasks that every run of a study is tested on."""
    return held_out_tasks(build_tasks(cfg.replace(shots=TEST_SHOTS, query=1), "test"), cfg.eval_tasks, TEST_SHOTS,
                          cfg.eval_seed, query=cfg.eval_query)


# --------------------------------------------------------------------------- section 6.2
def gradients_config(base: Config, weights: tuple[float, ...]) -> Config:
    """One combination's run (Table 5): SGD inner step 3e-3 on minibatches of 25, outer step 0.25; its tasks
    hold exactly len(weights) minibatches (5 drawings per class each); 5 test-time steps."""
    k = len(weights)
    return base.replace(inner_optimizer="sgd", inner_lr=(3e-3,), inner_state="fresh", inner_steps=k,
                        inner_batch_size=BATCH, combination=weights, outer_lr=0.25, shots=min(5 * k, DRAWINGS - 1),
                        query=1, eval_steps=5)


def run_gradients(out: str | Path, full: bool = False, iterations: int | None = None, progress: bool = True,
                  data_root: str | None = None, jobs: int = 1, time_budget: float = 0.0, eval_tasks: int | None = None,
                  seed: int | None = None, download: bool = False) -> dict[str, Any]:
    """Section 6.2 (Figure 3): train every inner-gradient combination (``jobs`` at once, one process each), record
    its test accuracy along training, write ``reptile-gradients.json``, ``.md`` (the table, the paper's findings
    beside) and ``.png``. With ``time_budget`` (minutes) the runs stop then with checkpoints, the results say how
    far each got, and the same call continues them."""
    budget = _budget(DEFAULT_GRADIENTS, full, iterations, eval_tasks, seed)
    out = Path(out)
    base = base_config(data_root, budget, download)
    points = sorted({round(budget.iterations * j / budget.curve_points) for j in range(budget.curve_points + 1)})
    results: dict[str, Any] = {"study": "reptile-gradients", "budget": asdict(budget), "full": full,
                               "machine": machine(), "paper": PAPER_GRADIENTS, "runs": {}}
    deadline = _deadline(time_budget)
    work = [(name, weights, gradients_config(base, weights), out / "reptile-gradients" / _slug(name), points,
             progress and jobs == 1, deadline) for name, weights in COMBINATIONS.items()]
    for name, run in zip(COMBINATIONS, _map(_gradient_run, work, base, jobs), strict=True):
        if run is not None:
            results["runs"][name] = run
    results["complete"] = len(results["runs"]) == len(COMBINATIONS) and all(
        r["curve"][-1][0] == budget.iterations for r in results["runs"].values())
    results["findings"] = gradient_findings(results["runs"]) if results["complete"] else []
    return _write(out, "reptile-gradients", results, format_gradients(results), gradients_figure)


def _gradient_run(name: str, weights: tuple[float, ...], cfg: Config, run_dir: Path, points: list[int],
                  progress: bool, deadline: float | None = None) -> dict[str, Any] | None:
    """Train one combination into ``run_dir``, testing it at ``points`` (kept in ``curve.json``: a rerun resumes),
    until ``deadline`` (``time.time()``; None when past it before the run starts)."""
    minutes = _minutes_left(deadline)
    if minutes is not None and minutes <= 0:
        return None
    images, tests = _WORKER["images"], _WORKER["tests"]
    curve_file = run_dir / "curve.json"
    curve: dict[int, list[float]] = ({int(k): v for k, v in json.loads(curve_file.read_text()).items()}
                                     if curve_file.exists() else {})

    def record(trainer: Trainer, iteration: int) -> None:
        if iteration in points:
            curve[iteration] = list(test_accuracy(trainer.learner, cfg, tests))
            files.write_json(curve_file, curve)

    t0 = time.perf_counter()
    _say(f"reptile-gradients: {name} (weights {_weights(weights)}, {5 * len(weights)} drawings per class), "
         f"{cfg.iterations:,} iterations -> {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if 0 not in curve:  # the initialization's accuracy (the same for every combination: one seed)
        curve[0] = list(test_accuracy(build_learner(cfg), cfg, tests))
        files.write_json(curve_file, curve)
    trainer = train_run(cfg, TrainingTasks(images, WAYS, 5 * len(weights)), run_dir, progress, record, minutes or 0.0)
    if trainer.iteration not in curve:  # e.g. stopped by a time limit between the evaluation points
        curve[trainer.iteration] = list(test_accuracy(trainer.learner, cfg, tests))
        files.write_json(curve_file, curve)
    return {"weights": list(weights), "train_shots": 5 * len(weights),
            "curve": [[i, *curve[i]] for i in sorted(curve)], "final": list(curve[trainer.iteration]),
            "seconds": round(time.perf_counter() - t0, 1)}


def gradient_findings(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's findings of section 6.2, each checked on our final accuracies."""
    acc = {n: round(r["final"][0], 6) for n, r in runs.items()}  # equal counts of correct answers compare equal
    families = {"FOMAML (g2, g3, g4)": ["g2", "g3", "g4"],
                "sum (g1+g2, .., g1+..+g4)": ["g1+g2", "g1+g2+g3", "g1+..+g4"],
                "average": ["avg(g1,g2)", "avg(g1..g3)", "avg(g1..g4)"]}
    improving = {f: all(acc[a] < acc[b] for a, b in itertools.pairwise(ns)) for f, ns in families.items()}
    gain_sum, gain_last = acc["g1+..+g4"] - acc["g1+g2"], acc["g4"] - acc["g2"]
    others = [v for n, v in acc.items() if n != "g1"]
    return [
        {"paper": PAPER_GRADIENTS[0], "ours": f"g1 {_pct(acc['g1'])}; the others {_pct(min(others))}-"
                                             f"{_pct(max(others))}", "holds": acc["g1"] < min(others)},
        {"paper": PAPER_GRADIENTS[1], "ours": f"g1+g2 {_pct(acc['g1+g2'])}, g2 {_pct(acc['g2'])}",
         "holds": acc["g1+g2"] < acc["g2"]},
        {"paper": PAPER_GRADIENTS[2], "ours": "; ".join(
            f"{f}: {' < '.join(_pct(acc[n]) for n in ns) if improving[f] else ', '.join(_pct(acc[n]) for n in ns)}"
            for f, ns in families.items()), "holds": all(improving.values())},
        {"paper": PAPER_GRADIENTS[3], "ours": f"g1+g2 -> g1+..+g4: {gain_sum * 100:+.1f} points; g2 -> g4: "
                                             f"{gain_last * 100:+.1f} points", "holds": gain_sum > gain_last},
    ]


def format_gradients(r: dict[str, Any]) -> str:
    """Final test accuracy of every combination, and the paper's findings beside ours."""
    b = r["budget"]
    lines = [f"Reptile paper 6.2, inner-gradient combinations (Figure 3): 5-shot 5-way Omniglot, {b['iterations']:,} "
             f"outer iterations each, test accuracy (%) after 5 steps on {b['eval_tasks']} test tasks, mean ± 95% CI",
             "", "| combination | weights of g1..gk | training drawings per class | iterations | test accuracy |",
             "|---|---|---|---|---|"]
    for name, run in r["runs"].items():
        lines.append(f"| {name} | {_weights(run['weights'])} | {run['train_shots']} | {run['curve'][-1][0]:,} | "
                     f"{format_ci(100 * run['final'][0], 100 * run['final'][1])} |")
    return "\n".join([*lines, "", *_findings_table(r)])


def gradients_figure(r: dict[str, Any], path: Path) -> Path:
    """Learning curves: test accuracy along training, one line per combination (Figure 3)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = {1: "tab:gray", 2: "tab:blue", 3: "tab:green", 4: "tab:red"}
    for name, run in r["runs"].items():
        w = run["weights"]
        style = "--" if sum(1 for x in w if x) == 1 and len(w) > 1 else (":" if name.startswith("avg") else "-")
        its, means = [c[0] for c in run["curve"]], [100 * c[1] for c in run["curve"]]
        ax.plot(its, means, style, marker="o", ms=3, color=colors.get(len(w)), label=name)
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("inner-gradient combinations (5-shot 5-way Omniglot)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a study stopped before its first test has no lines yet
        ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


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
                seed: int | None = None, download: bool = False) -> dict[str, Any]:
    """Section 6.3 (Figure 4): shared-tail FOMAML, separate-tail FOMAML and Reptile, cycling or sampling with
    replacement, over the three sweeps (``jobs`` runs at once, one process each); write ``reptile-overlap.json``,
    ``.md`` and ``.png``. With ``time_budget`` (minutes) the runs stop then with checkpoints, the results hold the
    settings finished so far, and the same call continues."""
    budget = _budget(DEFAULT_OVERLAP, full, iterations, eval_tasks, seed)
    out = Path(out)
    base = base_config(data_root, budget, download)
    results: dict[str, Any] = {"study": "reptile-overlap", "budget": asdict(budget), "full": full,
                               "machine": machine(), "paper": PAPER_OVERLAP, "panels": {}}
    fixed = {"4a": {"batch": BATCH, "outer_lr": 1.0}, "4b": {"steps": 4, "outer_lr": 1.0},
             "4c": {"steps": 4, "batch": 100}}
    arg = {"4a": "steps", "4b": "batch", "4c": "outer_lr"}
    keys, work, deadline = [], [], _deadline(time_budget)
    for panel, values in budget.sweeps.items():
        for method, sampling, value in itertools.product(METHODS, SAMPLINGS, values):
            setting = {**fixed[panel], arg[panel]: int(value) if panel != "4c" else float(value)}
            keys.append((panel, f"{method}, {sampling}"))
            work.append((panel, method, sampling, value, overlap_config(base, method, sampling, **setting),
                         out / "reptile-overlap" / panel / f"{method}-{sampling}-{_slug(str(value))}",
                         progress and jobs == 1, deadline))
    points = _map(_overlap_run, work, base, jobs)
    results["complete"] = all(p is not None for p in points)
    for panel in budget.sweeps:
        runs: dict[str, list[dict[str, float]]] = {}
        for (p, run), point in zip(keys, points, strict=True):
            if p == panel and point is not None:
                runs.setdefault(run, []).append(point)
        key, label = PANELS[panel]
        results["panels"][panel] = {"parameter": key, "label": label, "fixed": fixed[panel], "runs": runs}
    results["findings"] = overlap_findings(results["panels"]) if results["complete"] else []
    return _write(out, "reptile-overlap", results, format_overlap(results), overlap_figure)


def _overlap_run(panel: str, method: str, sampling: str, value: float, cfg: Config, run_dir: Path,
                 progress: bool, deadline: float | None = None) -> dict[str, float] | None:
    """Train one setting into ``run_dir`` and test it; the test result is kept in ``test.json`` (a rerun of a
    finished run only reads it). None when ``deadline`` passes first (the run keeps its checkpoint)."""
    minutes = _minutes_left(deadline)
    if minutes is not None and minutes <= 0:
        return None
    _say(f"reptile-overlap {panel}: {method}, {sampling}, {PANELS[panel][1]} {value:g}, {cfg.iterations:,} "
         f"iterations -> {run_dir}")
    t0 = time.perf_counter()
    images = _WORKER["images"]
    train = (FewShotClassification(images, WAYS, cfg.shots, cfg.query, rotations=True)
             if method == "fomaml-separate" else TrainingTasks(images, WAYS, DRAWINGS))
    trainer = train_run(cfg, train, run_dir, progress, time_budget=minutes or 0.0)
    if trainer.iteration < cfg.iterations:
        return None
    test_file, key = run_dir / "test.json", {"iteration": trainer.iteration, "eval_tasks": cfg.eval_tasks,
                                            "eval_seed": cfg.eval_seed}
    saved = json.loads(test_file.read_text()) if test_file.exists() else {}
    if {k: saved.get(k) for k in key} == key:
        mean, ci = saved["mean"], saved["ci95"]
    else:
        mean, ci = test_accuracy(trainer.learner, cfg, _WORKER["tests"])
        files.write_json(test_file, {**key, "mean": mean, "ci95": ci})
    return {"value": value, "mean": mean, "ci95": ci, "seconds": round(time.perf_counter() - t0, 1)}


def overlap_findings(panels: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's findings of section 6.3, each checked on our final accuracies (where the sweeps allow)."""

    def drop(panel: str, run: str) -> float | None:
        """Mean accuracy where the data overlaps (4a: > 4 iterations, 4b: batch > 25) minus where it does not."""
        if panel not in panels:
            return None
        limit = 4 if panel == "4a" else BATCH
        pts = panels[panel]["runs"][run]
        lo = [p["mean"] for p in pts if p["value"] <= limit]
        hi = [p["mean"] for p in pts if p["value"] > limit]
        return sum(hi) / len(hi) - sum(lo) / len(lo) if lo and hi else None

    def describe(run: str) -> tuple[str, list[float]]:
        drops = {p: drop(p, run) for p in ("4a", "4b")}
        known = [d for d in drops.values() if d is not None]
        return ", ".join(f"{p} {100 * d:+.1f}" for p, d in drops.items() if d is not None) or "not swept", known

    found = []
    text, shared = describe("fomaml-shared, cycle")
    found.append({"paper": PAPER_OVERLAP[0], "ours": f"change once overlapping (points): {text}",
                  "holds": bool(shared) and all(d < 0 for d in shared)})
    text_r, shared_r = describe("fomaml-shared, replacement")
    found.append({"paper": PAPER_OVERLAP[1], "ours": f"cycle: {text}; replacement: {text_r}",
                  "holds": bool(shared and shared_r) and sum(shared_r) > sum(shared)})
    others = {run: describe(run) for run in ("fomaml-separate, cycle", "fomaml-separate, replacement",
                                             "reptile, cycle", "reptile, replacement")}
    found.append({"paper": PAPER_OVERLAP[2], "ours": "; ".join(f"{run}: {t}" for run, (t, _) in others.items()),
                  "holds": bool(shared) and all(min(d) > min(shared) for _, d in others.values() if d)})
    if "4c" in panels:
        best = {run: max(p["mean"] for p in pts) for run, pts in panels["4c"]["runs"].items()}
        shared_best = max(v for run, v in best.items() if run.startswith("fomaml-shared"))
        rest_best = min(v for run, v in best.items() if not run.startswith("fomaml-shared"))
        found.append({"paper": PAPER_OVERLAP[3], "ours": f"best over step sizes: shared-tail {_pct(shared_best)}, the "
                                                         f"others at least {_pct(rest_best)}",
                      "holds": shared_best < rest_best})
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
    return "\n".join([*lines, "", *_findings_table(r)])


def overlap_figure(r: dict[str, Any], path: Path) -> Path:
    """Final test accuracy against each swept setting, one panel per sweep (Figure 4)."""
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
    return _save(fig, path)


# --------------------------------------------------------------------------- helpers
_WORKER: dict[str, Any] = {}  # a study's training images and test tasks, once per process


def _load_data(base: Config, threads: int | None = None, stop: Any = None) -> None:
    """Load the training images and the fixed test tasks into ``_WORKER`` (a process pool's initializer); ``stop``:
    the pool's event that tells its workers to start no other run."""
    if threads is not None:
        torch.set_num_threads(threads)
    _WORKER["images"] = build_tasks(base, "train").images
    _WORKER["tests"] = test_tasks(base)
    _WORKER["stop"] = stop


def _deadline(time_budget: float) -> float | None:
    """``time.time()`` at which a study with ``time_budget`` minutes stops (None: no limit)."""
    if not time_budget >= 0:
        raise ConfigError(f"time_budget {time_budget} must be >= 0 minutes (0: no limit)")
    return time.time() + 60 * time_budget if time_budget else None


def _minutes_left(deadline: float | None) -> float | None:
    return None if deadline is None else (deadline - time.time()) / 60


def _call(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    """One run in a pool's worker; once any run is interrupted or fails, the others that had not started do not."""
    fn, args = job
    stop = _WORKER.get("stop")
    if stop is not None and stop.is_set():
        raise Interrupted("another run of the study stopped first")
    try:
        return fn(*args)
    except BaseException:
        if stop is not None:
            stop.set()
        raise


def _map(fn: Callable[..., Any], work: list[tuple[Any, ...]], base: Config, jobs: int) -> list[Any]:
    """``fn(*args)`` for every ``args`` in ``work``, in order: here, or ``jobs`` at a time in fresh processes of
    one thread each (the runs are independent; each keeps its own checkpoints). Ctrl-C reaches every process: the
    runs under way stop with checkpoints, no other starts, and the first error is raised here."""
    if jobs < 1:
        raise ConfigError(f"jobs {jobs} must be >= 1")
    if jobs == 1:
        _load_data(base)
        return [fn(*args) for args in work]
    if base.download:
        image_splits(base.family, base.data_root, True)  # fetched once, here, before the workers read the folder
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_load_data, initargs=(base, 1, stop))
    try:
        futures = [pool.submit(_call, (fn, args)) for args in work]
        wait(futures, return_when=FIRST_EXCEPTION)
        return [f.result() for f in futures]
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _budget(default: Budget, full: bool, iterations: int | None, eval_tasks: int | None = None,
            seed: int | None = None) -> Budget:
    """The paper's budget (``full``) or the default, with ``iterations`` outer iterations, ``eval_tasks`` test tasks
    and the ``seed`` of every run where given."""
    budget = FULL if full else default
    given = {k: v for k, v in (("iterations", iterations), ("eval_tasks", eval_tasks), ("seed", seed)) if v is not None}
    for name, low in (("iterations", 1), ("eval_tasks", 2)):
        if name in given:
            check_whole(name, given[name], low)
    if seed is not None:
        check_seed("seed", seed)
    return replace(budget, **given)


def _findings_table(r: dict[str, Any]) -> list[str]:
    if not r.get("complete", True):
        return ["Partial: the time budget ended the study before every run finished; the same command continues it "
                "(the paper's findings are checked once all runs are done)."]
    b = r["budget"]
    short = []
    if b["iterations"] < FULL.iterations:
        short.append(f"{b['iterations']:,} of the paper's {FULL.iterations:,} iterations")
    if b["eval_tasks"] < FULL.eval_tasks:
        short.append(f"{b['eval_tasks']:,} test tasks, not {FULL.eval_tasks:,}")
    note = f" ({'; '.join(short)}; `--full` runs the paper's budget)" if short and not r["full"] else ""
    lines = [f"The paper's findings{note}:", "", "| paper | ours | holds here |", "|---|---|---|"]
    for f in r["findings"]:
        lines.append(f"| {f['paper']} | {f['ours']} | {'yes' if f['holds'] else 'no'} |")
    return lines


def _write(out: Path, name: str, results: dict[str, Any], table: str,
           figure: Callable[[dict[str, Any], Path], Path]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / f"{name}.json", results)
    files.write_text(out / f"{name}.md", table + "\n")
    path = figure(results, out / f"{name}.png")
    print(table)
    print(f"\nresults: {out / (name + '.json')}\nfigure:  {path}")
    return results


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text.replace("+..+", "-to-").replace("+", "-"))


def _weights(weights: Sequence[float]) -> str:
    return ", ".join(f"{w:.3g}" for w in weights)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
