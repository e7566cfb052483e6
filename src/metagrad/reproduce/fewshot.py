"""Few-shot classification: Omniglot and MiniImagenet with MAML, first-order MAML and Reptile
(MAML paper 5.2, Table 1; Reptile paper 6.1, Tables 1 and 2), and on Omniglot the MAML paper's non-convolutional
network (Table 1) and context-vector baseline (appendix C.2, Table 3), and ANIL (the inner loop adapts the head
alone; Raghu et al. 2020, whose Omniglot numbers are 20-way).

``run`` meta-trains one (dataset, algorithm, N-way, K-shot) setting from the paper's preset into
``OUT/<setting>`` (resumable), keeps the best checkpoint by validation accuracy, tests it on 600 tasks in
both batch-norm modes, and prints the accuracy beside the paper's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .. import checkpoint, files, plots
from ..analysis.stats import format_ci
from ..build import build_tasks
from ..config import Config, load_config
from ..errors import ConfigError, check_choice
from ..experiment import continue_run, evaluate, load_run
from ..provenance import stamped
from ..settings import preset_names
from ..tables import md_head
from ..tasks.images import OMNIGLOT_DRAWINGS

ALGOS = ("maml", "fomaml", "reptile", "maml-nonconv", "context", "anil")
OMNIGLOT_ONLY = ("maml-nonconv", "context", "anil")  # MAML's fully connected network, its context vector; ANIL
DEFAULT_MINUTES = 30.0  # the default budget; --full runs the paper's iterations whatever the time

# The papers' test accuracies (%), mean and their ± (95% half-width; Reptile's: intervals from the standard deviation
# over its 3 seeds); first-order MAML's are the Reptile paper's Table 2 (the MAML code; MAML's has MiniImagenet only):
# (dataset, algo, transductive) -> {(N, K): ...}.
PAPER: dict[tuple[str, str, bool], dict[tuple[int, int], tuple[float, float]]] = {
    ("omniglot", "maml", True): {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)},
    ("omniglot", "maml-nonconv", True): {(5, 1): (89.7, 1.1), (5, 5): (97.5, 0.6)},  # MAML Table 1, "no conv"
    ("omniglot", "context", True): {(5, 1): (94.9, 0.9), (5, 5): (97.7, 0.3)},  # MAML Table 3 (appendix C.2)
    ("omniglot", "anil", True): {(20, 1): (96.2, 0.5), (20, 5): (98.0, 0.3)},  # ANIL paper (20-way only)
    ("omniglot", "fomaml", True): {(5, 1): (98.3, 0.5), (5, 5): (99.2, 0.2), (20, 1): (89.4, 0.5),
                                   (20, 5): (97.9, 0.1)},
    ("omniglot", "reptile", False): {(5, 1): (95.39, 0.09), (5, 5): (98.90, 0.10), (20, 1): (88.14, 0.15),
                                     (20, 5): (96.65, 0.33)},
    ("omniglot", "reptile", True): {(5, 1): (97.68, 0.04), (5, 5): (99.48, 0.06), (20, 1): (89.43, 0.14),
                                    (20, 5): (97.12, 0.32)},
    ("miniimagenet", "maml", True): {(5, 1): (48.70, 1.84), (5, 5): (63.11, 0.92)},
    ("miniimagenet", "fomaml", True): {(5, 1): (48.07, 1.75), (5, 5): (63.15, 0.91)},
    ("miniimagenet", "reptile", False): {(5, 1): (47.07, 0.26), (5, 5): (62.74, 0.37)},
    ("miniimagenet", "reptile", True): {(5, 1): (49.97, 0.32), (5, 5): (65.99, 0.58)},
}


def setting_config(dataset: str, algo: str, ways: int, shots: int) -> Config:
    """The paper's configuration for one setting: the preset, with N and K set as the paper did."""
    check_choice("algo", algo, ALGOS)
    name = f"{dataset}-{algo}" + ("-20way" if ways >= 20 and f"{dataset}-{algo}-20way" in preset_names() else "")
    cfg = load_config(name)
    changes: dict[str, Any] = {"ways": ways, "eval_shots": (shots,)}
    if algo == "reptile":  # trains on its own number of shots; tests with 5-example batches (15 for 5-shot mini)
        if dataset == "miniimagenet" and shots == 5:
            changes["eval_inner_batch_size"] = 15
    else:  # MAML's code: K support and K query images per class (15 query for MiniImagenet training)
        if dataset == "omniglot" and 2 * shots > OMNIGLOT_DRAWINGS:
            raise ConfigError(f"--shots {shots}: the MAML paper's Omniglot setting draws K support and K query "
                              f"images of each character's {OMNIGLOT_DRAWINGS}; use --shots "
                              f"{OMNIGLOT_DRAWINGS // 2} or fewer")
        changes.update(shots=shots, eval_query=shots)
        if dataset == "omniglot":
            changes["query"] = shots
        if dataset == "miniimagenet" and shots == 5:
            changes["meta_batch_size"] = 2
    cfg = cfg.replace(**changes)  # checks the values first
    if ways != 5 and not name.endswith("-20way") and dataset == "omniglot":
        print(f"metagrad: {dataset}-{algo} has no {ways}-way preset; its 5-way settings (inner steps, step sizes, "
              f"meta-batch) train {ways}-way tasks", file=sys.stderr)
    return cfg


def paper_steps(cfg: Config, algo: str) -> int:
    """The number of test-time steps the paper reports (3 for 5-way MAML, 5 for 20-way, 10 on
    MiniImagenet, 50 for Reptile)."""
    if algo == "reptile":
        return 50
    if cfg.family == "miniimagenet":
        return 10
    return 5 if cfg.ways >= 20 else 3


def run(dataset: str, algo: str, ways: int, shots: int, out: str | Path, full: bool = False,
        iterations: int | None = None, time_budget: float | None = None, overrides: dict[str, Any] | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train, test in both batch-norm modes, print the table, write ``results.json`` and a figure."""
    cfg = setting_config(dataset, algo, ways, shots).replace(**(overrides or {}))
    if iterations is not None:
        cfg = cfg.replace(iterations=iterations)
    budget = time_budget if time_budget is not None else (0.0 if full or iterations is not None else DEFAULT_MINUTES)
    cfg = cfg.replace(time_budget=budget)
    name = f"{dataset}-{algo}-{ways}w{shots}s"
    out = Path(out)
    run_dir = out / name
    build_tasks(cfg, "train")  # a missing or wrong dataset is said before the training line, not after it
    limit = f", stopping after {budget:g} min" if budget else ""
    print(f"{name}: meta-training up to {cfg.iterations:,} iterations x {cfg.meta_batch_size} tasks{limit} -> "
          f"{run_dir}", file=sys.stderr, flush=True)
    _, fit = continue_run(cfg, run_dir, progress=progress)
    which = "best" if checkpoint.exists(run_dir / "best") else "last"
    learner, _, info = load_run(run_dir, which, data_root=cfg.data_root)  # the images given now, wherever trained
    steps = paper_steps(cfg, algo)
    results: dict[str, Any] = {
        "setting": name, "dataset": dataset, "algo": algo, "ways": ways, "shots": shots, "config": cfg.to_sections(),
        "trained_iterations": fit.iteration, "train_seconds": round(fit.seconds, 1),
        "seconds_per_iteration": round(fit.seconds / max(fit.iteration, 1), 4),
        "sampling_seconds": round(fit.sampling_seconds, 1), "stopped": fit.stopped,
        "checkpoint": which, "checkpoint_iteration": info["iteration"], "paper_steps": steps, "modes": {}}
    for transductive in (True, False):
        t0 = time.perf_counter()
        curves = evaluate(learner, cfg.replace(transductive=transductive))[shots]
        mode = "transductive" if transductive else "non-transductive"
        results["modes"][mode] = {"curves": curves, "eval_seconds": round(time.perf_counter() - t0, 1),
                                  "paper": PAPER.get((dataset, algo, transductive), {}).get((ways, shots))}
    results = stamped(results)
    files.write_json(out / f"{name}.json", results)
    table = format_table(results)
    files.write_text(out / f"{name}.md", table + "\n")
    print(table)
    fig = figure(results, out / f"{name}.png")
    print(f"\nresults: {out / (name + '.json')}\nfigure:  {fig}")
    return results


METHOD_NAMES = {"maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile", "anil": "ANIL",
                "maml-nonconv": "non-convolutional MAML", "context": "context vector"}


def figure(results: dict[str, Any], path: str | Path) -> Path:
    """The test accuracy after 0..k steps in both batch-norm modes, from ``run``'s results (its JSON file: the kept
    figures are redrawn from it), titled with the method and the meta-iterations done of the budget (the figures of
    different methods and budgets looked alike)."""
    curves = {mode: {results["shots"]: r["curves"]} for mode, r in results["modes"].items()}
    budget = results["config"]["train"]["iterations"]
    dataset = {"omniglot": "Omniglot", "miniimagenet": "MiniImagenet"}.get(results["dataset"], results["dataset"])
    title = (f"{dataset}, {METHOD_NAMES.get(results['algo'], results['algo'])}\n"
             f"{results['trained_iterations']:,} of {budget:,} meta-iterations\n"
             f"tested: {results['checkpoint']} checkpoint (iteration {results['checkpoint_iteration']:,})")
    return plots.adaptation_curves(curves, path, metric="accuracy", ylabel="test accuracy (fraction)",
                                   ways=results["ways"], title=title)


def format_table(r: dict[str, Any]) -> str:
    """Accuracy after the paper's number of steps, both batch-norm modes, beside the paper's."""
    steps = r["paper_steps"]
    per_it = r["seconds_per_iteration"]
    share = 100 * r["sampling_seconds"] / max(r["train_seconds"], 1e-9)
    tasks = next(iter(r["modes"].values()))["curves"]["accuracy"]["tasks"]
    lines = [f"{r['dataset']} {r['ways']}-way {r['shots']}-shot, {r['algo']}: {r['trained_iterations']:,} "
             f"meta-iterations in {r['train_seconds'] / 60:.1f} min ({per_it:.3f} s each, {share:.1f}% of it "
             f"sampling tasks); {r['checkpoint']} checkpoint (iteration {r['checkpoint_iteration']:,})",
             f"test accuracy (%) after {steps} adaptation steps, {tasks} test tasks, mean ± 95% CI", "",
             *md_head(["batch norm", "ours", "paper"])]
    for mode, m in r["modes"].items():
        c = m["curves"]["accuracy"]
        paper = f"{m['paper'][0]:.2f} ± {m['paper'][1]:.2f}" if m["paper"] else "-"
        lines.append(f"| {mode} | {format_ci(100 * c['mean'][steps], 100 * c['ci95'][steps])} | {paper} |")
    if r["algo"] == "reptile":
        lines += ["", "The paper's ± is a confidence interval from the standard deviation over its 3 training seeds, "
                      "not over tasks."]
    return "\n".join(lines)
