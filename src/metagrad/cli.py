"""The ``metagrad`` command: ``train``, ``eval`` and ``reproduce``.

User errors (bad values, missing files, diverged runs) print one line and exit with code 2;
Ctrl-C during training saves a checkpoint and exits with code 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .analysis.stats import format_ci
from .config import SECTIONS, add_config_arguments, load_config, overrides_from_args, preset_names
from .errors import Interrupted, MetagradError

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="metagrad", description="Gradient-based meta-learning: MAML, first-order MAML, Reptile, "
                    "joint training; paper reproductions.")
    parser.add_argument("--version", action="version", version=f"metagrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="meta-train from a config file", description="Meta-train from a config "
                       f"file or preset ({', '.join(preset_names())}); any config value can be overridden below.")
    p.add_argument("--config", default="sinusoid-maml", help="config file or preset name (default: sinusoid-maml)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p, SECTIONS)

    p = sub.add_parser("eval", help="adaptation curves of a trained run on held-out tasks",
                       description="Evaluate a run directory: query loss after 0..eval-steps adaptation steps on "
                       "test tasks, mean ± 95%% CI; writes eval.json into the run directory.")
    p.add_argument("run", help="run directory written by `metagrad train`")
    p.add_argument("--checkpoint", default="last", choices=("last", "best"), help="which checkpoint (default: last)")
    add_config_arguments(p, ("eval",))

    from .reproduce import EXPERIMENTS, FEWSHOT

    p = sub.add_parser("reproduce", help="reproduce a paper's experiment", description="Train the paper's methods, "
                       "evaluate them on the same test tasks, print the paper's numbers beside ours, draw figures.")
    p.add_argument("experiment", choices=[*sorted(EXPERIMENTS), *FEWSHOT], help="which experiment")
    p.add_argument("--full", action="store_true", help="the paper's full budget (e.g. 70,000 meta-iterations)")
    p.add_argument("--iterations", type=int, help="meta-iterations for every trained method (overrides --full)")
    p.add_argument("--out", help="results folder (default: results/<experiment>[-full])")
    p.add_argument("--seed", type=int, help="training seed of every method (default: 0)")
    p.add_argument("--eval-tasks", type=int, help="test tasks (default: 600)")
    p.add_argument("--batching", choices=("auto", "vmap", "loop"), help="task batching (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    images = p.add_argument_group("few-shot classification (omniglot, miniimagenet)")
    images.add_argument("--algo", default="maml", choices=("maml", "fomaml", "reptile"), help="algorithm")
    images.add_argument("--ways", type=int, default=5, help="classes per task, N (default: 5)")
    images.add_argument("--shots", type=int, default=1, help="examples per class, K (default: 1)")
    images.add_argument("--time-budget", type=float, help="minutes of training before testing the best checkpoint "
                        "(default: 30; 0 or --full: no limit); rerun the same command to continue")
    images.add_argument("--data-root", help="dataset folder (default: $METAGRAD_DATA/<dataset>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "reproduce": cmd_reproduce}[args.command](args)
    except Interrupted as e:
        print(f"metagrad {args.command}: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MetagradError as e:
        print(f"metagrad {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"metagrad {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_train(args: argparse.Namespace) -> int:
    from .experiment import train

    cfg = load_config(args.config)
    cfg = cfg.replace(**overrides_from_args(args))
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    _, result = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    rate = f"{result.iterations_per_second:.1f} it/s"
    if result.stopped == "interrupted":
        print(f"interrupted at iteration {result.iteration}; checkpoint saved in {out}; continue with: "
              f"metagrad train --config {args.config} --out {out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.stopped == "time_budget":
        print(f"time budget reached at iteration {result.iteration} ({rate}); continue with --resume", file=sys.stderr)
        return 0
    best = f", best validation loss {result.best_val:.4f}" if result.best_val is not None else ""
    print(f"trained {result.iteration} iterations in {result.seconds:.1f} s ({rate}){best}; run: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .experiment import evaluate, load_run

    learner, cfg, info = load_run(args.run, args.checkpoint)
    cfg = cfg.replace(**overrides_from_args(args))
    results = evaluate(learner, cfg)
    print(f"{args.run} ({args.checkpoint} checkpoint, iteration {info['iteration']}): query loss, "
          f"{cfg.eval_tasks} test tasks, mean ± 95% CI")
    for k, r in results.items():
        c = r["loss"]
        row = "  ".join(f"{s}: {format_ci(c['mean'][s], c['ci95'][s], 3)}" for s in range(len(c["mean"])))
        print(f"  K={k} (step size {r['lr']})  {row}")
    path = Path(args.run) / "eval.json"
    payload: dict[str, Any] = {"checkpoint": args.checkpoint, "iteration": info["iteration"],
                               "eval": cfg.to_sections()["eval"], "curves": {str(k): v for k, v in results.items()}}
    path.write_text(json.dumps(payload, indent=1))
    print(f"written: {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import EXPERIMENTS, fewshot, sinusoid

    if args.iterations is not None and args.iterations < 0:
        raise MetagradError(f"--iterations {args.iterations} must be >= 0")
    overrides = {k: v for k, v in (("seed", args.seed), ("eval_tasks", args.eval_tasks),
                                   ("batching", args.batching)) if v is not None}
    out = args.out or f"results/{args.experiment}{'-full' if args.full else ''}"
    if args.experiment in EXPERIMENTS:
        sinusoid.run(EXPERIMENTS[args.experiment], out, full=args.full, iterations=args.iterations,
                     overrides=overrides, progress=not args.no_progress)
        return 0
    if args.data_root:
        overrides["data_root"] = args.data_root
    fewshot.run(args.experiment, args.algo, args.ways, args.shots, out, full=args.full, iterations=args.iterations,
                time_budget=args.time_budget, overrides=overrides, progress=not args.no_progress)
    return 0
