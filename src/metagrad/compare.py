"""Compare two methods from saved evaluations: the one-sided Welch t-test probability that A beats B over
(meta-training checkpoint x number of test updates), as the trade-off paper's Figures 1 and 2.

An evaluation is an ``eval.json`` (``metagrad eval``) or a ``results.json`` (``metagrad reproduce``, one
method of it); a folder stands for every evaluation in it, one per checkpoint, ordered by iteration. The test
needs each method's mean, standard deviation and count per (K, step): the saved curves hold the mean, the 95%
half-width 1.96 sd / sqrt(n) and n, which give the standard deviation back exactly, so no per-task values are
stored. n is the number of test tasks (the paper's n is 5 training seeds); both methods are evaluated on the
same test tasks, and for such paired samples the unpaired Welch test is conservative.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .analysis.stats import sd_from_ci95, welch_probability_from_stats
from .choices import IMAGE_FAMILIES
from .errors import MetagradError
from .provenance import stamped
from .settings import read_toml
from .tables import k_columns, md_head, md_row

HIGHER_IS_BETTER = {"loss": False, "accuracy": True, "return": True, "reward": True}


@dataclass
class Evaluation:
    """One method's adaptation curves at one checkpoint: ``curves[K][metric]`` with mean, ci95, tasks."""

    source: str
    label: str
    iteration: int | None
    curves: dict[str, dict[str, Any]]
    protocol: dict[str, Any] = field(default_factory=dict)  # the test settings stored with it (``PROTOCOL``)


# test settings that change what a curve measures: two evaluations compared must share the ones both record (other
# test tasks, eval_seed, leave the comparison an unpaired one, as Welch's test takes it)
PROTOCOL = ("task", "eval_query", "eval_inner_batch_size", "transductive", "horizon",
            "amplitude", "phase", "x_range", "grid", "dim")  # the last five: a sinusoid's or linreg's distribution


def _flat(settings: Any) -> dict[str, Any]:
    """A stored config's values, flat or by sections, as one dict."""
    flat: dict[str, Any] = {}
    if isinstance(settings, dict):
        for key, value in settings.items():
            flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def task_of(settings: Any) -> str | None:
    """What a config's runs are tested on, for telling two evaluations apart: the meta-RL environment, or the task
    family (with its N-way for images); None where the config names neither."""
    flat = _flat(settings)
    if isinstance(flat.get("env"), str):
        return flat["env"]
    family = flat.get("family")
    if not isinstance(family, str):
        return None
    return f"{family} {flat['ways']}-way" if family in IMAGE_FAMILIES and "ways" in flat else family


def _task_beside(path: Path) -> str | None:
    """The task of an eval.json that does not record it (written before 2026-12-06): its run's config.toml's, when
    the file lies in its run's folder."""
    config = path.parent / "config.toml"
    try:
        return task_of(read_toml(config)) if config.is_file() else None
    except MetagradError:
        return None


def _protocol(settings: Any, **known: Any) -> dict[str, Any]:
    """The ``PROTOCOL`` values of a stored config (flat or sectioned), with ``known`` ones over them."""
    flat = {**_flat(settings), "task": task_of(settings)}
    return {k: v for k, v in {**flat, **known}.items() if k in PROTOCOL and v is not None}


def load_evaluations(path: str | Path, method: str | None = None) -> list[Evaluation]:
    """The evaluations in a JSON file, or in every evaluation JSON of a folder (ordered by iteration)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        found = [e for f in files for e in _read(f, method, strict=False)]
        if not found:
            raise MetagradError(f"no evaluation results (eval.json or results.json) in {path}; "
                                f"run `metagrad eval {path}` first")
        found.sort(key=lambda e: (e.iteration is None, e.iteration or 0, e.source))
        for first, second in itertools.pairwise(found):
            if first.iteration == second.iteration:
                raise MetagradError(f"{path} holds two evaluations of iteration {first.iteration} "
                                    f"({Path(first.source).name}, {Path(second.source).name}); a folder stands for one "
                                    "run's checkpoints: give the files themselves, or one folder per method")
        return found
    if not path.exists():
        raise MetagradError(f"evaluation results '{path}' not found; give an eval.json, a results.json or a folder")
    return _read(path, method, strict=True)


def _read(path: Path, method: str | None, strict: bool) -> list[Evaluation]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if strict:
            raise MetagradError(f"{path}: not valid JSON ({e})") from None
        return []
    if not isinstance(data, dict):
        data = {}
    if isinstance(data.get("curves"), dict):
        if method is not None and strict:
            raise MetagradError(f"{path} is one evaluation (an eval.json): --method-a/--method-b '{method}' apply to "
                                "a results.json with several methods; leave them out")
        return [Evaluation(str(path), path.parent.name or path.stem, data.get("iteration"), data["curves"],
                           _protocol({"task": data.get("task_settings"), "eval": data.get("eval")},
                                     task=data.get("task") or _task_beside(path)))]
    if isinstance(data.get("modes"), dict) and "shots" in data:  # a few-shot reproduction: a mode is its method
        modes = data["modes"]
        name = method or next(iter(modes))
        if name not in modes or not isinstance(modes[name], dict) or not isinstance(modes[name].get("curves"), dict):
            raise MetagradError(f"{path} has no batch-norm mode '{name}' with curves; it holds {', '.join(modes)} "
                                "(choose one with --method-a / --method-b)")
        label = f"{data.get('algo', path.stem)} ({name})"
        return [Evaluation(str(path), label, data.get("checkpoint_iteration"),
                           {str(data["shots"]): modes[name]["curves"]},
                           _protocol(data.get("config"), transductive=name == "transductive"))]
    if isinstance(data.get("methods"), dict):
        methods = data["methods"]
        if method is None and len(methods) > 1:
            raise MetagradError(f"{path} holds several methods ({', '.join(methods)}); choose one with "
                                "--method-a / --method-b")
        name = method or next(iter(methods))
        if name not in methods:
            raise MetagradError(f"{path} has no method '{name}'; it holds {', '.join(methods)}")
        r = methods[name]
        curves, iteration = (r.get("curves"), r.get("iterations")) if isinstance(r, dict) else (None, None)
        if isinstance(r, dict) and isinstance(r.get("curve"), dict) and "episodes" in r["curve"]:
            curves = {str(r["curve"]["episodes"]): {"return": r["curve"]}}  # a meta-RL reproduction's one curve,
            iteration = r.get("best_iteration", iteration)  # of its best checkpoint
        if not isinstance(curves, dict):
            raise MetagradError(f"{path}: method '{name}' has no curves; was its evaluation interrupted?")
        return [Evaluation(str(path), r.get("label", name), iteration, curves, _protocol(r.get("config")))]
    if strict:
        raise MetagradError(f"{path} is not an evaluation result (no 'curves', 'methods' or 'modes'); give the "
                            "eval.json of `metagrad eval` or the results file of `metagrad reproduce`")
    return []


def _metrics(e: Evaluation) -> set[str]:
    """The metrics an evaluation holds (loss, accuracy; return for meta-RL)."""
    return {m for curves in e.curves.values() if isinstance(curves, dict) for m in curves}


def welch_grid(a: list[Evaluation], b: list[Evaluation], metric: str | None = "loss",
               shots: list[str] | None = None, higher_is_better: bool | None = None) -> dict[str, Any]:
    """P(A better than B) by the one-sided Welch t-test, ``prob[K][checkpoint][step]``, for the support sizes
    both sides evaluated (or ``shots``) and the steps they share; ``metric`` None: loss, or return where every
    evaluation holds returns and no loss (meta-RL). A side that records no task is named on stderr
    (``say_unknown_tasks``)."""
    grid = grid_of(a, b, metric, shots, higher_is_better)
    say_unknown_tasks(a + b)
    return grid


def grid_of(a: list[Evaluation], b: list[Evaluation], metric: str | None, shots: list[str] | None,
            higher_is_better: bool | None) -> dict[str, Any]:
    """``welch_grid`` without the line on sides of unknown tasks (``run`` says it once its own checks pass too)."""
    kinds = {e.source: "meta-RL" if "return" in _metrics(e) else "supervised" for e in a + b}
    if len(set(kinds.values())) > 1:
        rl, sup = (next(s for s, k in kinds.items() if k == kind) for kind in ("meta-RL", "supervised"))
        raise MetagradError(f"{rl} is a meta-RL evaluation (returns) and {sup} a supervised one (losses); compare "
                            "evaluations of the same kind of run")
    if metric is None:
        held = set().union(*(_metrics(e) for e in a + b))
        metric = "return" if "return" in held and "loss" not in held else "loss"
    if len(a) != len(b):
        raise MetagradError(f"A has {len(a)} evaluation(s) and B has {len(b)}; compare the same number of "
                            "checkpoints (one evaluation file each)")
    higher = HIGHER_IS_BETTER.get(metric, True) if higher_is_better is None else higher_is_better
    check_protocols(a + b)
    for e in a + b:
        odd = [k for k in e.curves if not str(k).isdigit()]
        if odd:
            raise MetagradError(f"{e.source}: curve key '{odd[0]}' is not a number of examples or episodes (K); is it "
                                "an evaluation file?")
    common = set.intersection(*(set(e.curves) for e in a + b))
    ks = sorted(common, key=int) if shots is None else [str(k) for k in shots]
    for k in ks:
        if k not in common:
            raise MetagradError(f"support size K={k} is not in every evaluation (they share: "
                                f"{', '.join(sorted(common, key=int)) or 'none'})")
    if not ks:
        if metric == "return":
            raise MetagradError("the two sides share no number of episodes per step K (they hold "
                                f"{' and '.join(sorted({k for e in a + b for k in e.curves}, key=int))}); evaluate "
                                "them with the same --eval-episodes")
        raise MetagradError("the two sides share no support size K; evaluate them with the same --eval-shots")
    for e in a + b:
        for k in ks:
            if not isinstance(e.curves[k], dict):
                raise MetagradError(f"{e.source}: K={k} holds no metrics (a {type(e.curves[k]).__name__}); evaluate "
                                    "it again with `metagrad eval`")
            if metric not in e.curves[k]:
                raise MetagradError(f"{e.source} has no metric '{metric}' for K={k} (it has "
                                    f"{', '.join(m for m in e.curves[k] if isinstance(e.curves[k][m], dict))})")
            check_curve(e.curves[k][metric], f"{e.source}: K={k} '{metric}'")
    lengths = {len(e.curves[k][metric]["mean"]) for e in a + b for k in ks}
    steps = min(lengths)
    if len(lengths) > 1:
        print(f"metagrad compare: the evaluations hold {' and '.join(str(n - 1) for n in sorted(lengths))} test "
              f"steps; compared over the {steps - 1} all hold", file=sys.stderr)
    prob = np.zeros((len(ks), len(a), steps))
    for i, k in enumerate(ks):
        for j, (ea, eb) in enumerate(zip(a, b, strict=True)):
            ca, cb = ea.curves[k][metric], eb.curves[k][metric]
            prob[i, j] = welch_probability_from_stats(
                np.array(ca["mean"][:steps]), sd_from_ci95(ca["ci95"][:steps], ca["tasks"]), ca["tasks"],
                np.array(cb["mean"][:steps]), sd_from_ci95(cb["ci95"][:steps], cb["tasks"]), cb["tasks"],
                higher_is_better=higher)
    checkpoints = [_checkpoint_label(ea, eb) for ea, eb in zip(a, b, strict=True)]
    return {"metric": metric, "higher_is_better": higher, "shots": [int(k) for k in ks], "steps": steps,
            "checkpoints": checkpoints, "label_a": a[0].label, "label_b": b[0].label,
            "sources_a": [e.source for e in a], "sources_b": [e.source for e in b], "probability": prob.tolist()}


def check_protocols(evaluations: list[Evaluation]) -> None:
    """Refuse evaluations tested under different settings of ``PROTOCOL`` (where both record it): their curves
    measure different things (a transductive accuracy against a non-transductive one, 5 query points against 100)."""
    first = evaluations[0]
    for e in evaluations[1:]:
        differ = [k for k in PROTOCOL if k in first.protocol and k in e.protocol and first.protocol[k] != e.protocol[k]]
        if "task" in differ:
            raise MetagradError(f"{first.source} and {e.source} are evaluations of different tasks "
                                f"({first.protocol['task']} against {e.protocol['task']}); compare runs of one task")
        if differ:
            what = ", ".join(f"{k} {first.protocol[k]} against {e.protocol[k]}" for k in differ)
            raise MetagradError(f"{first.source} and {e.source} were tested under different settings ({what}); "
                                "evaluate them the same way (metagrad eval with the same --set values) to compare")


def say_unknown_tasks(evaluations: list[Evaluation]) -> None:
    """Name, on stderr, each side that records no task (older files, a results.json copied away from its run):
    ``check_protocols`` cannot tell whether it is the other side's."""
    for source in [e.source for e in evaluations if "task" not in e.protocol]:
        print(f"metagrad compare: {source} does not say which task it evaluates (it records none, nor does a "
              "config.toml beside it); make sure both sides are of one task", file=sys.stderr)


def check_curve(curve: Any, where: str) -> None:
    """Stop with a message naming ``where`` unless ``curve`` holds lists ``mean`` and ``ci95`` of numbers, of one
    length, and ``tasks`` >= 2 (what Welch's test reads)."""
    redo = "; evaluate it again with `metagrad eval`"
    if not isinstance(curve, dict):
        raise MetagradError(f"{where} is not a curve (a {type(curve).__name__}, not mean, ci95, tasks){redo}")
    missing = [key for key in ("mean", "ci95", "tasks") if key not in curve]
    if missing:
        raise MetagradError(f"{where} has no {', '.join(missing)}{redo}")
    mean, ci95, tasks = curve["mean"], curve["ci95"], curve["tasks"]

    def numbers(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                       for v in x)

    if not (numbers(mean) and numbers(ci95) and len(mean) == len(ci95)):
        raise MetagradError(f"{where}: mean and ci95 must be lists of numbers of one length{redo}")
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 2:
        raise MetagradError(f"{where}: tasks {tasks!r} must be a whole number >= 2 (Welch's test needs two values per "
                            f"method){redo}")


def format_grid(grid: dict[str, Any]) -> str:
    """The probabilities as one table per K: rows checkpoints, columns test updates."""
    lines = []
    for i, k in enumerate(grid["shots"]):
        what = (f"the test return, K = {k} episodes per step" if grid["metric"] == "return" else
                f"the query {grid['metric']}, K = {k}")
        lines.append(f"P({grid['label_a']} better than {grid['label_b']}), one-sided Welch t-test on {what} "
                     f"({'higher' if grid['higher_is_better'] else 'lower'} is better)")
        lines += md_head(["checkpoint", *k_columns(range(grid["steps"]))])
        for label, row in zip(grid["checkpoints"], grid["probability"][i], strict=True):
            lines.append(md_row([label, *(f"{p:.3f}" for p in row)]))
        lines.append("")
    return "\n".join(lines).rstrip()


def run(path_a: str | Path, path_b: str | Path, out: str | Path, metric: str | None = None,
        shots: list[str] | None = None, higher_is_better: bool | None = None, method_a: str | None = None,
        method_b: str | None = None, label_a: str | None = None,
        label_b: str | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Load both sides, compute the Welch grid, write ``compare.json`` and ``compare.png`` into ``out``."""
    from . import plots

    a, b = load_evaluations(path_a, method_a), load_evaluations(path_b, method_b)
    if [(e.source, e.label) for e in a] == [(e.source, e.label) for e in b]:
        raise MetagradError(f"A and B are the same evaluations ({path_a}); give the other method's as B")
    grid = grid_of(a, b, metric, shots, higher_is_better)
    if [e.curves for e in a] == [e.curves for e in b]:
        raise MetagradError(f"{path_a} and {path_b} hold the same curves (a copy of one evaluation?); give the other "
                            "method's as B")
    if grid["label_a"] == grid["label_b"]:  # e.g. seed-0/.../results.json and seed-1/.../results.json
        grid["label_a"], grid["label_b"] = distinct_names(Path(a[0].source), Path(b[0].source))
    grid["label_a"], grid["label_b"] = label_a or grid["label_a"], label_b or grid["label_b"]
    say_unknown_tasks(a + b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "compare.json", stamped(grid))
    fig = plots.welch_contours(grid["probability"], grid["checkpoints"], list(range(grid["steps"])),
                               out / "compare.png", grid["label_a"], grid["label_b"],
                               titles=[f"K = {k}" for k in grid["shots"]])
    return grid, [out / "compare.json", fig]


def distinct_names(a: Path, b: Path) -> tuple[str, str]:
    """The shortest trailing parts of two paths that tell them apart (``seed-0/maml-vpg``), without a shared file
    name (``eval.json``, ``results.json``) or suffix."""
    pa, pb = [*a.parent.parts, a.stem], [*b.parent.parts, b.stem]
    if pa[-1] == pb[-1]:
        pa, pb = pa[:-1] or pa, pb[:-1] or pb
    for n in range(1, max(len(pa), len(pb)) + 1):
        if pa[-n:] != pb[-n:]:
            return "/".join(pa[-n:]), "/".join(pb[-n:])
    return str(a), str(b)


def _checkpoint_label(a: Evaluation, b: Evaluation) -> str:
    if a.iteration == b.iteration:
        return str(a.iteration)
    return f"{a.iteration}/{b.iteration}"
