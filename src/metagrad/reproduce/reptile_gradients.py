"""The Reptile paper's study of the inner gradients, ``run_gradients`` (section 6.2, Figure 3, hyper-parameters of Table
5 and the reference code's commands in the openai/supervised-reptile README): four non-overlapping minibatches of 25
give the inner gradients g1..g4, and the outer update is a linear combination of them: g1 (joint training), g2, g3,
g4 (first-order MAML with 2-4 steps), g1+g2, g1+g2+g3, g1+..+g4 (Reptile), the sums and their averages. Vanilla SGD
in both loops (inner step 3e-3, outer step 0.25 annealed linearly to 0), one task per outer step, a task's training
data being exactly the minibatches it uses (5 drawings per class per minibatch, as the code's ``--train-shots``);
tested after 5 inner steps on the 25 examples of 5-shot tasks. Output: learning curves (test accuracy along training)
of every combination."""

from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import files
from ..analysis.stats import format_ci
from ..build import build_learner
from ..config import Config
from ..plots import plt, save_figure
from ..tables import md_head
from ..train import Trainer
from .reptile_studies import (
    BATCH,
    DRAWINGS,
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
    weights_label,
    write_study,
)

# Section 6.2: name -> weights of g1..gk (the sums' averages are the code's meta-step / k)
COMBINATIONS: dict[str, tuple[float, ...]] = {
    "g1": (1.0,),
    "g2": (0.0, 1.0), "g1+g2": (1.0, 1.0), "avg(g1,g2)": (0.5, 0.5),
    "g3": (0.0, 0.0, 1.0), "g1+g2+g3": (1.0, 1.0, 1.0), "avg(g1..g3)": (1 / 3, 1 / 3, 1 / 3),
    "g4": (0.0, 0.0, 0.0, 1.0), "g1+..+g4": (1.0, 1.0, 1.0, 1.0), "avg(g1..g4)": (0.25, 0.25, 0.25, 0.25),
}
PAPER_GRADIENTS = [
    "using only the first gradient g1 is quite ineffective (it optimizes the expected loss over all tasks)",
    "two-step Reptile (g1+g2) is noticeably worse than two-step FOMAML (g2)",
    "all the methods improve as the number of minibatches increases",
    "the improvement is larger for the sum of all gradients (Reptile) than for the final gradient alone (FOMAML)",
]
# The defaults, measured on this machine (0.07 s per outer iteration of the gradient study, 0.04-0.17 s in the overlap
# study as the inner iterations and batch grow, 0.1 s per test task): the overlap study ~70 minutes on 2 cores for
# 4a-b (``jobs=2``), ~40 more on one for 4c; the gradient study the paper's 40K iterations, ~4 hours on 2 cores:
# its plain SGD learns slowly, and at 10,000 iterations (annealed to 0 there) g1, g2 and g1+g2 all tested at 28-30%,
# within each other's intervals.
DEFAULT_GRADIENTS = Budget(iterations=40000, eval_tasks=100, curve_points=10)
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
    budget = study_budget(DEFAULT_GRADIENTS, full, iterations, eval_tasks, seed)
    out = Path(out)
    base = base_config(data_root, budget, download)
    points = sorted({round(budget.iterations * j / budget.curve_points) for j in range(budget.curve_points + 1)})
    results: dict[str, Any] = {"study": "reptile-gradients", "budget": asdict(budget), "full": full,
                               "paper": PAPER_GRADIENTS, "runs": {}}
    deadline = deadline_for(time_budget)
    work = [(name, weights, gradients_config(base, weights), out / "reptile-gradients" / slug(name), points,
             progress and jobs == 1, deadline) for name, weights in COMBINATIONS.items()]
    for name, run in zip(COMBINATIONS, map_runs(_gradient_run, work, base, jobs), strict=True):
        if run is not None:
            results["runs"][name] = run
    results["complete"] = len(results["runs"]) == len(COMBINATIONS) and all(
        r["curve"][-1][0] == budget.iterations for r in results["runs"].values())
    results["findings"] = gradient_findings(results["runs"]) if results["complete"] else []
    return write_study(out, "reptile-gradients", results, format_gradients(results), gradients_figure)


def _gradient_run(name: str, weights: tuple[float, ...], cfg: Config, run_dir: Path, points: list[int],
                  progress: bool, deadline: float | None = None) -> dict[str, Any] | None:
    """Train one combination into ``run_dir``, testing it at ``points`` (kept in ``curve.json``: a rerun resumes),
    until ``deadline`` (``time.time()``; None when past it before the run starts)."""
    minutes = minutes_left(deadline)
    if minutes is not None and minutes <= 0:
        return None
    images, tests = WORKER["images"], WORKER["tests"]
    curve_file = run_dir / "curve.json"
    kept = files.read_json(curve_file, fix=f"restore it, or delete {run_dir} and run the command again to train this "
                                         "run anew (recorded as it trains)") or {}
    curve: dict[int, list[float]] = {int(k): v for k, v in kept.items()}

    def record(trainer: Trainer, iteration: int) -> None:
        if iteration in points:
            curve[iteration] = list(test_accuracy(trainer.learner, cfg, tests))
            files.write_json(curve_file, curve)

    say(f"reptile-gradients: {name} (weights {weights_label(weights)}, {5 * len(weights)} drawings per class), "
         f"{cfg.iterations:,} iterations -> {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if 0 not in curve:  # the initialization's accuracy (the same for every combination: one seed)
        curve[0] = list(test_accuracy(build_learner(cfg), cfg, tests))
        files.write_json(curve_file, curve)
    trainer = train_run(cfg, TrainingTasks(images, WAYS, 5 * len(weights)), run_dir, progress, "reptile-gradients",
                        record, minutes or 0.0)
    if trainer.iteration not in curve:  # e.g. stopped by a time limit between the evaluation points
        curve[trainer.iteration] = list(test_accuracy(trainer.learner, cfg, tests))
        files.write_json(curve_file, curve)
    return {"weights": list(weights), "train_shots": 5 * len(weights),
            "curve": [[i, *curve[i]] for i in sorted(curve)], "final": list(curve[trainer.iteration]),
            "seconds": round(trainer.elapsed, 1)}  # training, across resumes


def gradient_findings(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's findings of section 6.2, each checked on our final accuracies and their intervals."""
    acc = {n: round(r["final"][0], 6) for n, r in runs.items()}  # equal counts of correct answers compare equal
    half = {n: r["final"][1] for n, r in runs.items()}

    def within(lower: str, higher: str) -> list[str]:
        """``lower -> higher (+x)`` when ``higher`` is above ``lower`` by less than the noise of the difference."""
        gap = acc[higher] - acc[lower]
        return [f"{lower} -> {higher} {100 * gap:+.1f}"] if gap <= noise(half[lower], half[higher]) else []

    families = {"FOMAML (g2, g3, g4)": ["g2", "g3", "g4"],
                "sum (g1+g2, .., g1+..+g4)": ["g1+g2", "g1+g2+g3", "g1+..+g4"],
                "average": ["avg(g1,g2)", "avg(g1..g3)", "avg(g1..g4)"]}
    improving = {f: all(acc[a] < acc[b] for a, b in itertools.pairwise(ns)) for f, ns in families.items()}
    gain_sum, gain_last = acc["g1+..+g4"] - acc["g1+g2"], acc["g4"] - acc["g2"]
    gains_noise = noise(*(half[n] for n in ("g1+..+g4", "g1+g2", "g4", "g2")))
    others = sorted((n for n in acc if n != "g1"), key=acc.__getitem__)
    lowest = others[0]
    found = [
        {"paper": PAPER_GRADIENTS[0], "ours": f"g1 {pct(acc['g1'])}; the others {pct(acc[lowest])}-"
                                             f"{pct(acc[others[-1]])}", "holds": acc["g1"] < acc[lowest],
         "unclear": within("g1", lowest)},
        {"paper": PAPER_GRADIENTS[1], "ours": f"g1+g2 {pct(acc['g1+g2'])}, g2 {pct(acc['g2'])}",
         "holds": acc["g1+g2"] < acc["g2"], "unclear": within("g1+g2", "g2")},
        {"paper": PAPER_GRADIENTS[2], "ours": "; ".join(
            f"{f}: {' < '.join(pct(acc[n]) for n in ns) if improving[f] else ', '.join(pct(acc[n]) for n in ns)}"
            for f, ns in families.items()), "holds": all(improving.values()),
         "unclear": [w for ns in families.values() for a, b in itertools.pairwise(ns) for w in within(a, b)]},
        {"paper": PAPER_GRADIENTS[3], "ours": f"g1+g2 -> g1+..+g4: {gain_sum * 100:+.1f} points; g2 -> g4: "
                                             f"{gain_last * 100:+.1f} points", "holds": gain_sum > gain_last,
         "unclear": [] if gain_sum - gain_last > gains_noise else [f"gains differ by {100 * (gain_sum - gain_last):.1f}"
                                                                     f" of ± {100 * gains_noise:.1f}"]},
    ]
    for f in found:
        f["verdict"] = verdict(f["holds"], f.pop("unclear"))
    return found


def format_gradients(r: dict[str, Any]) -> str:
    """Final test accuracy of every combination, and the paper's findings beside ours."""
    b = r["budget"]
    lines = [f"Reptile paper 6.2, inner-gradient combinations (Figure 3): 5-shot 5-way Omniglot, {b['iterations']:,} "
             f"outer iterations each, test accuracy (%) after 5 steps on {b['eval_tasks']} test tasks, mean ± 95% CI",
             "", *md_head(["combination", "weights of g1..gk", "training drawings per class", "iterations",
                           "test accuracy"])]
    for name, run in r["runs"].items():
        lines.append(f"| {name} | {weights_label(run['weights'])} | {run['train_shots']} | {run['curve'][-1][0]:,} | "
                     f"{format_ci(100 * run['final'][0], 100 * run['final'][1])} |")
    return "\n".join([*lines, "", *findings_table(r)])


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
    return save_figure(fig, path)
