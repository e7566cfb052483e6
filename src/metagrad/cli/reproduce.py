"""``metagrad reproduce``: a paper's experiment, its runs and its table beside the paper's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MetagradError, flag

if TYPE_CHECKING:
    from ..reproduce.metarl import Experiment


def metarl_request(args: argparse.Namespace) -> tuple[Experiment, list[str], str, dict[str, Any]]:
    """`reproduce navigation|locomotion`'s arguments -> (experiment, methods, output folder, the --set overrides with
    --seed and --eval-tasks); also what the long-run index's test reads a row's command with."""
    from ..reproduce import locomotion, metarl, navigation

    for kv in args.set:
        if not kv.partition("=")[2]:
            raise MetagradError(f"--set takes KEY=VALUE, got '{kv}' (a value is missing; e.g. --set hidden=64,64)")
    keys = [kv.partition("=")[0] for kv in args.set]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice:
        raise MetagradError(f"--set {twice}= is given {keys.count(twice)} times "
                            f"({', '.join(kv for kv in args.set if kv.startswith(twice + '='))}); give it once")
    sets = dict(kv.split("=", 1) for kv in args.set)
    for name, value in (("seed", args.seed), ("eval_tasks", args.eval_tasks)):
        if value is not None and name in sets:
            raise MetagradError(f"{flag(name)} {value} and --set {name}={sets[name]}: give one of them")
    if args.batching is not None:
        raise MetagradError(f"--batching {args.batching} is for the supervised experiments; meta-RL batches its tasks "
                            "with vmap (leave --batching out)")
    if args.compile and "compile" in sets:
        raise MetagradError(f"--compile and --set compile={sets['compile']}: give one of them")
    sets.update({k: v for k, v in (("seed", args.seed), ("eval_tasks", args.eval_tasks),
                                   ("compile", "true" if args.compile else None)) if v is not None})
    if args.experiment == "navigation":
        experiment = navigation.NAVIGATION
    else:
        experiment = locomotion.experiment(args.env or locomotion.ENVS[0])
    out = args.out or f"results/{experiment.name}{'-full' if args.full else ''}"
    return experiment, metarl.parse_methods(args.algo), out, sets


def refuse_stray_options(args: argparse.Namespace) -> None:
    """An option given to an experiment that does not use it is an error, not silently ignored."""
    from ..reproduce import EXPERIMENTS, FEWSHOT

    rl, studies = ("navigation", "locomotion"), ("reptile-gradients", "reptile-overlap")
    scope = {"algo": (*FEWSHOT, *rl), "ways": FEWSHOT, "shots": FEWSHOT, "env": ("locomotion",), "set": rl,
             "redraw": rl,
             "data_root": (*FEWSHOT, *studies), "download": ("omniglot", *studies),
             "time_budget": (*FEWSHOT, *rl, *studies),
             "batching": (*FEWSHOT, *EXPERIMENTS)}
    for name, experiments in scope.items():
        value = getattr(args, name)
        if value not in (None, [], False) and args.experiment not in experiments:
            shown = f" {value}" if isinstance(value, str | int | float) and value is not True else ""
            raise MetagradError(f"--{name.replace('_', '-')}{shown} does not apply to {args.experiment} (it is for "
                                f"{', '.join(experiments)}); remove it (see `metagrad reproduce --help`)")


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Check the options that no experiment takes, then run the experiment asked for."""
    from ..reproduce import EXPERIMENTS

    check_reproduce_options(args)
    out = args.out or f"results/{args.experiment}{'-full' if args.full else ''}"
    if args.experiment in ("navigation", "locomotion"):
        reproduce_metarl(args)
    elif args.experiment in ("reptile-gradients", "reptile-overlap"):
        reproduce_reptile_study(args, out)
    elif args.experiment == "sinusoid-multitask":
        reproduce_multitask(args, out)
    elif args.experiment in EXPERIMENTS:
        from ..reproduce import sinusoid

        sinusoid.run(EXPERIMENTS[args.experiment], out, full=args.full, iterations=args.iterations,
                     overrides=engine_overrides(args), progress=not args.no_progress)
    else:
        reproduce_fewshot(args, out)
    return 0


def check_reproduce_options(args: argparse.Namespace) -> None:
    """Options given to an experiment that does not take them, each refused naming the one that does."""
    refuse_stray_options(args)
    if args.iterations is not None and args.iterations < 0:
        raise MetagradError(f"--iterations {args.iterations} must be >= 0")
    if args.panels is not None and args.experiment != "reptile-overlap":
        raise MetagradError(f"--panels {args.panels}: only for reptile-overlap (its sweeps 4a, 4b, 4c)")
    if args.jobs < 1 or (args.jobs != 1 and not args.experiment.startswith("reptile-")):
        raise MetagradError(f"--jobs {args.jobs}: takes a number >= 1, and only for reptile-gradients and "
                            "reptile-overlap (other experiments: --threads in `metagrad train`, torchrun)")
    if args.device is not None and (args.experiment in ("navigation", "locomotion", "sinusoid-multitask")
                                    or args.experiment.startswith("reptile-")):
        raise MetagradError(f"--device {args.device}: the sinusoid and few-shot reproductions train on a device; "
                            f"{args.experiment} runs on the CPU (leave --device out)")
    if args.compile and (args.experiment == "sinusoid-multitask" or args.experiment.startswith("reptile-")):
        raise MetagradError(f"--compile: {args.experiment} trains with plain autograd, not a learner's meta-gradient "
                            "(leave --compile out)")


def engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The supervised config values given as `reproduce` options."""
    return {k: v for k, v in (("seed", args.seed), ("eval_tasks", args.eval_tasks), ("batching", args.batching),
                              ("device", args.device), ("compile", args.compile or None)) if v is not None}


def reproduce_metarl(args: argparse.Namespace) -> None:
    """`reproduce navigation|locomotion`: train and test the methods asked for, or only redraw their results."""
    from ..reproduce import metarl

    experiment, methods, out, sets = metarl_request(args)
    training = [name for name, given in (("--iterations", args.iterations is not None), ("--full", args.full),
                                         ("--time-budget", args.time_budget is not None), ("--compile", args.compile),
                                         ("--set", bool(sets))) if given]
    if args.redraw and (training or args.algo):
        raise MetagradError(f"--redraw draws the stored results again and trains nothing: "
                            f"{(training or ['--algo'])[0]} would be ignored; leave it out")
    if methods == ["random"] and training[:1] and training[0] != "--set":
        raise MetagradError(f"{training[0]}: random init trains nothing; leave it out (or add a trained method)")
    if args.redraw:
        metarl.report(experiment, Path(out))
        return
    metarl.run(experiment, methods, out, full=args.full, iterations=args.iterations, time_budget=args.time_budget,
               overrides=sets, progress=not args.no_progress)


def reproduce_reptile_study(args: argparse.Namespace, out: str) -> None:
    """The Reptile paper's Figure 3 (`reptile-gradients`) or Figure 4 (`reptile-overlap`)."""
    from ..reproduce import reptile_gradients, reptile_overlap

    kw = dict(full=args.full, iterations=args.iterations, progress=not args.no_progress, data_root=args.data_root,
              jobs=args.jobs, time_budget=args.time_budget or 0.0, eval_tasks=args.eval_tasks, seed=args.seed,
              download=args.download)
    if args.experiment == "reptile-gradients":
        reptile_gradients.run_gradients(out, **kw)
    else:
        panels = None if args.panels is None else tuple(p.strip() for p in args.panels.split(",") if p.strip())
        reptile_overlap.run_overlap(out, panels=panels, **kw)


def reproduce_multitask(args: argparse.Namespace, out: str) -> None:
    """The MAML paper's appendix C.1: parameter averaging; --iterations is each regressor's Adam steps."""
    from ..reproduce import multitask

    setting = multitask.Setting(**({} if args.full else {"models": 100}),
                                **({"eval_tasks": args.eval_tasks} if args.eval_tasks is not None else {}),
                                **({"seed": args.seed} if args.seed is not None else {}))
    if args.iterations is not None:
        if args.iterations < 1:
            raise MetagradError(f"--iterations {args.iterations}: sinusoid-multitask trains each regressor for "
                                "that many Adam steps; give at least 1")
        setting = multitask.Setting(**{**setting.__dict__, "steps": args.iterations})
    multitask.run(out, setting, progress=not args.no_progress)


def reproduce_fewshot(args: argparse.Namespace, out: str) -> None:
    """`reproduce omniglot|miniimagenet`: one N-way K-shot setting of one algorithm."""
    from ..reproduce import fewshot

    overrides = engine_overrides(args)
    if args.data_root:
        overrides["data_root"] = args.data_root
    if args.download:
        overrides["download"] = True
    algo = args.algo or "maml"
    if algo not in fewshot.ALGOS or (algo in fewshot.OMNIGLOT_ONLY and args.experiment != "omniglot"):
        extra = " (or maml-nonconv, context or anil on omniglot)" if args.experiment == "omniglot" else ""
        raise MetagradError(f"--algo '{algo}' does not apply to {args.experiment}; choose maml, fomaml or "
                            f"reptile{extra}")
    ways, shots = 5 if args.ways is None else args.ways, 1 if args.shots is None else args.shots
    fewshot.run(args.experiment, algo, ways, shots, out, full=args.full, iterations=args.iterations,
                time_budget=args.time_budget, overrides=overrides, progress=not args.no_progress)
