"""``metagrad tradeoff``, ``compare``, ``curves`` and ``status``: the studies and the views of runs."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..errors import MetagradError, flag


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from .. import tradeoff

    if args.study == "rl":
        return _tradeoff_rl(args)

    tradeoff.check_grid(args.tasks, args.points, args.alphas, args.datasets, args.dim)
    if args.rotation_seed is not None and args.dim == 1:
        raise MetagradError(f"--rotation-seed {args.rotation_seed} draws the rotation V for p > 1; at --dim 1 "
                            "there is none: remove it")
    result, figures = tradeoff.run(args.out, progress=not args.no_progress, tasks=args.tasks, points=args.points,
                                   alphas=args.alphas, datasets=args.datasets, dim=args.dim, seed=args.seed,
                                   rotation_seed=args.rotation_seed or 0)
    print(tradeoff.summary(result))
    print(f"results: {Path(args.out) / 'tradeoff.json'} (and tradeoff.npz)")
    for f in figures:
        print(f"figure:  {f}")
    return 0


def _tradeoff_rl(args: argparse.Namespace) -> int:
    from .. import tradeoff_rl as rl_tradeoff

    sizes = {n: getattr(args, n) for n in ("budget", "checkpoints", "meta_batch_size", "episodes", "test_tasks",
                                           "test_episodes", "horizon") if getattr(args, n) is not None}
    grid = {"lr_grid": tuple(args.lr_grid)} if args.lr_grid else {}
    if args.paper:
        if sizes:
            name, value = next(iter(sizes.items()))
            raise MetagradError(f"--paper sets the paper's budget and sizes; {flag(name)} {value} would be ignored: "
                                "leave it out, or drop --paper")
        study = replace(rl_tradeoff.paper_study(args.env, args.pair, args.seeds, args.settings), compile=args.compile,
                        test_step=args.test_step, **grid)
    else:
        study = rl_tradeoff.Study(env=args.env, pair=args.pair, seeds=args.seeds, compile=args.compile,
                                  settings=args.settings, test_step=args.test_step, **sizes, **grid)
    out = Path(args.out or f"results/tradeoff-rl-{args.env}-{args.pair}")
    results = rl_tradeoff.run(study, out, progress=not args.no_progress)
    if not results:  # a process other than 0 of a distributed run: process 0 evaluates and reports
        return 0
    print(rl_tradeoff.format_table(results))
    print(f"results: {out / 'tradeoff_rl.json'}")
    for f in results["figures"]:
        print(f"figure:  {f}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .. import compare

    grid, paths = compare.run(args.results_a, args.results_b, args.out, metric=args.metric, shots=args.shots,
                              higher_is_better=args.higher_is_better, method_a=args.method_a,
                              method_b=args.method_b, label_a=args.label_a, label_b=args.label_b)
    print(compare.format_grid(grid))
    for p in paths:
        print(f"written: {p}")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from .. import curves

    if args.last < 1:
        raise MetagradError(f"--last {args.last}: give 1 or more points")
    out = figure_path(args.out)
    runs = curves.load_all(args.runs)
    metrics = curves.choose_metrics(runs, args.metric)
    path = curves.draw(runs, metrics, out, window=args.smooth, title=args.title)
    print(curves.summary(runs, metrics, last=args.last))
    print(f"figure:  {path}")
    return 0


def figure_path(out: str) -> Path:
    """``--out`` of a figure: a file in a format matplotlib writes (PNG when the name has no suffix)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(out)
    if path.is_dir():
        raise MetagradError(f"--out {out} is a folder; give a file name, e.g. {path / 'curves.png'}")
    if not path.suffix:
        return path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise MetagradError(f"--out {out}: matplotlib cannot write '{path.suffix}'; end the name in one of "
                            f"{', '.join('.' + f for f in sorted(formats))}")
    return path


def cmd_status(args: argparse.Namespace) -> int:
    from ..files import write_text
    from ..reproduce import longruns

    folder = Path(args.folder)
    if not folder.is_dir():
        raise MetagradError(f"{folder} is not a folder of long runs; run `metagrad status` in the repository's root "
                            "(it reads results/long) or give the folder that holds them")
    if not any((folder / row.folder).is_dir() for row in longruns.ROWS):
        raise MetagradError(f"{folder} holds none of the long runs (folders such as {longruns.ROWS[0].folder}); give "
                            "the folder that holds them (results/long), not a run directory")
    text = longruns.index(folder)
    write_text(folder / "INDEX.md", text)
    print(text)
    print(f"written: {folder / 'INDEX.md'}")
    return 0
