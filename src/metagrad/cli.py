"""The ``metagrad`` command: ``train``, ``eval``, ``reproduce``, ``tradeoff``, ``compare``, ``curves`` and ``status``.

User errors (bad values, missing files, diverged runs) print one line and exit with code 2;
Ctrl-C during training saves a checkpoint and exits with code 130 (`metagrad train` after SIGTERM: 143).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import shlex
import signal
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .analysis.stats import format_ci
from .config import IMAGE_FAMILIES, SECTIONS, Config, load_config
from .errors import ConfigError, Interrupted, MetagradError
from .rl.config import RLConfig
from .settings import check_seed, preset_names

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .reproduce.metarl import Experiment

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
DEFAULT_CONFIG = "sinusoid-maml"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump); a value that starts with '-' and a digit (``--inner-lr
    -0.1,0.05``, ``--alphas -1e-3``) is a value, not an option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="metagrad", description="Gradient-based meta-learning: MAML, first-order MAML, Reptile, "
                    "joint training; paper reproductions.")
    parser.add_argument("--version", action="version", version=f"metagrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="meta-train from a config file", description="Meta-train from a config "
                       f"file or preset ({', '.join(preset_names())}); supervised presets have [task] and [model] "
                       "sections, meta-RL ones [env] and [policy]. Any config value can be overridden below.")
    p.add_argument("--config", help="config file or preset name (default: sinusoid-maml; with --resume, the run's "
                   "own)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    Config.add_arguments(p, SECTIONS)
    RLConfig.add_arguments(p, title="meta-RL [{section}] options (override the config file)")
    _say_which_kind(p)

    p = sub.add_parser("eval", help="adaptation curves of a trained run on held-out tasks",
                       description="Evaluate a run directory: query loss (meta-RL: return) after 0..eval-steps "
                       "adaptation steps on test tasks, mean ± 95% CI; writes eval.json into the run directory. An "
                       "option left out takes the run's own value (the built-in defaults below are the supervised "
                       "config's).")
    p.add_argument("run", help="run directory written by `metagrad train`")
    p.add_argument("--checkpoint", default="last", type=checkpoint_name,
                   help="which checkpoint: last (default), best, or a meta-RL step budget's snapshot-NNN")
    p.add_argument("--output", help="where to write the results (default: RUN/eval.json); e.g. one file per "
                   "checkpoint in a folder, for `metagrad compare`")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the data loaders')")
    Config.add_arguments(p, ("eval",))
    RLConfig.add_arguments(p, ("eval",), title="meta-RL [{section}] options")

    from .reproduce import EXPERIMENTS, FEWSHOT

    p = sub.add_parser("reproduce", help="reproduce a paper's experiment", description="Train the paper's methods, "
                       "evaluate them on the same test tasks, print the paper's numbers beside ours, draw figures.")
    p.add_argument("experiment", choices=[*sorted(EXPERIMENTS), "sinusoid-multitask", *FEWSHOT, "reptile-gradients",
                                          "reptile-overlap", "navigation", "locomotion"],
                   help="which experiment")
    p.add_argument("--full", action="store_true", help="the paper's full budget (e.g. 70,000 meta-iterations)")
    p.add_argument("--iterations", type=int, help="meta-iterations for every trained method (overrides --full)")
    p.add_argument("--out", help="results folder (default: results/<experiment>[-full])")
    p.add_argument("--seed", type=seed, help="training seed of every method (default: 0)")
    p.add_argument("--eval-tasks", type=int, help="test tasks (default: the experiment's, e.g. 600 sinusoid tasks, "
                   "the meta-RL presets' eval_tasks)")
    p.add_argument("--batching", choices=("auto", "vmap", "loop"), help="task batching (default: auto)")
    p.add_argument("--device", help="where the sinusoid and few-shot methods train: cpu (default), cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the meta-gradient (the sinusoid, few-shot "
                   "and meta-RL methods; for navigation and locomotion the same as --set compile=true): pays for the "
                   "sinusoid MLP and the meta-RL policies on the CPU, and for the convolutions on a GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    images = p.add_argument_group("few-shot classification (omniglot, miniimagenet)")
    images.add_argument("--algo", help="algorithm: maml (default), fomaml, reptile, maml-nonconv (Omniglot, the MAML "
                        "paper's fully connected network), context (Omniglot, the MAML paper's context-vector "
                        "baseline), anil (Omniglot, the inner loop adapts the head alone); for navigation and "
                        "locomotion, comma-separated methods: maml-trpo (default), fomaml-trpo, pretrained, random, "
                        "oracle, sgmrl, sgmrl-full, maml-vpg, emaml, promp, drs-ppo, drs-trpo, context, or all")
    images.add_argument("--ways", type=int, help="classes per task, N (default: 5)")
    images.add_argument("--shots", type=int, help="examples per class, K (default: 1)")
    images.add_argument("--time-budget", type=float, help="minutes of training before testing the best checkpoint "
                        "(few-shot default: 30, 0 or --full: no limit; navigation: per method, the Reptile "
                        "studies: for the whole study, default none); rerun the same command to continue")
    images.add_argument("--data-root", help="dataset folder (default: $METAGRAD_DATA/<dataset>)")
    images.add_argument("--download", action="store_true", help="Omniglot: fetch the official zip files into the "
                        "dataset folder when they are missing")
    nav = p.add_argument_group("meta-RL (navigation, locomotion)")
    nav.add_argument("--env", help="locomotion task family: cheetah-dir (default), cheetah-vel, ant-dir, ant-vel, "
                     "swimmer-vel (the MAML paper's); cheetah-rand-vel, swimmer-rand-vel (maml_zoo's, the SG-MRL "
                     "paper's Table 2 with cheetah-dir)")
    nav.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a meta-RL config "
                     "value of every method, e.g. --set hidden=64,64 --set reward=squared (repeatable)")
    nav.add_argument("--redraw", action="store_true", help="print the table and draw the figures again from "
                     "OUT/results.json with the papers' numbers as they are now; trains and evaluates nothing")
    studies = p.add_argument_group("Reptile's studies (reptile-gradients, reptile-overlap)")
    studies.add_argument("--jobs", type=int, default=1, help="runs at once, one process of one thread each "
                         "(default: 1; 2 uses both cores of a 2-core machine)")
    _add_tradeoff_parsers(sub)
    _add_curves_parser(sub)
    p = sub.add_parser("status", help="where the long paper runs stand (results/long)", description="For every "
                       "long paper run kept in the repository: its budget, how much of it is done, the wall time and "
                       "sessions so far, and the command that continues it. Writes FOLDER/INDEX.md.")
    p.add_argument("folder", nargs="?", default="results/long", help="where the long runs live (default: %(default)s)")
    return parser


RL_STUDY = ("Train DRS and the meta-learner (--pair ppo: DRS+PPO vs ProMP; trpo: DRS+TRPO vs TRPO-MAML) for several "
            "seeds on the same number of environment steps, inner-loop rollouts included, with snapshots at evenly "
            "spaced budgets; evaluate each snapshot after 0..5 policy-gradient updates on meta-test tasks; the "
            "one-sided Welch t-test across seeds gives P(DRS better) per snapshot and update. Writes tradeoff_rl.json, "
            "welch.png and returns.png; resumes where it stopped.")


def seed(text: str) -> int:
    """A seed option: an integer from 0 to 2**63 - 1 (what torch's and numpy's generators both take)."""
    try:
        check_seed("seed", value := int(text))
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer from 0 to 2**63 - 1") from e
    return value


def csv(kind: type) -> Any:
    """An argparse type: a comma-separated list of ``kind`` (spaces ignored)."""
    def parse(text: str) -> list:
        parts = text.replace(" ", "").split(",")
        if "" in parts[:-1] or not parts[0]:  # one trailing comma is harmless; an empty entry inside is a typo
            raise argparse.ArgumentTypeError(f"'{text}' has an empty entry; give numbers separated by single commas")
        try:
            return [kind(v) for v in parts if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of "
                                             f"{'integers' if kind is int else 'numbers'}") from None
    return parse


def _add_tradeoff_parsers(sub: Any) -> None:
    """``tradeoff`` (trade-off paper, Figure 3) and ``compare`` (its Figures 1-2: Welch t-test contours)."""
    from . import tradeoff

    def join(values: tuple) -> str:
        return ",".join(map(str, values))

    top = sub.add_parser("tradeoff", help="modeling-vs-optimization trade-off: DRS vs MAML (trade-off paper)",
                         description="The trade-off paper's studies: `linreg` (section 4, Figure 3) and `rl` "
                         "(section 2, Figures 1-2).")
    studies = top.add_subparsers(dest="study", required=True, metavar="STUDY")
    p = studies.add_parser("linreg", help="meta-linear regression (section 4, Figure 3)",
                           description="Meta-linear regression (trade-off paper, section 4): over a grid of M tasks x "
                           "N points and for each step size alpha, the fraction of sampled datasets on which MAML's "
                           "estimate (eq. 12) has lower exact expected loss than DRS's (eq. 11), before and after one "
                           "adaptation step on N points (Theorem 5). Writes tradeoff.json, tradeoff.npz, figure3.png.")
    p.add_argument("--dim", type=int, default=1, help="input dimension p (default: 1, the paper's Figure 3)")
    p.add_argument("--alphas", type=csv(float), default=list(tradeoff.DEFAULT_ALPHAS), metavar="A,B,...",
                   help=f"step sizes alpha (default: {join(tradeoff.DEFAULT_ALPHAS)})")
    p.add_argument("--tasks", type=csv(int), default=list(tradeoff.DEFAULT_TASKS), metavar="M1,M2,...",
                   help=f"numbers of tasks M (default: {join(tradeoff.DEFAULT_TASKS)})")
    p.add_argument("--points", type=csv(int), default=list(tradeoff.DEFAULT_POINTS), metavar="N1,N2,...",
                   help=f"points per task and per half, N (default: {join(tradeoff.DEFAULT_POINTS)})")
    p.add_argument("--datasets", type=int, default=tradeoff.DEFAULT_DATASETS,
                   help=f"datasets drawn per (M, N) cell (default: {tradeoff.DEFAULT_DATASETS})")
    p.add_argument("--seed", type=seed, default=0, help="seed of the datasets (default: 0)")
    p.add_argument("--rotation-seed", type=seed, default=0, help="seed of the rotation V for p > 1 (default: 0)")
    p.add_argument("--out", default="results/tradeoff-linreg", help="results folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    from .tradeoff_rl import Study

    d = Study()
    p = studies.add_parser("rl", help="DRS vs MAML in meta-RL on equal simulator-step budgets (section 2, Figs 1-2)",
                           description=RL_STUDY)
    p.add_argument("--env", default=d.env, help="task family, e.g. hopper-rand-params, walker-rand-params, "
                   "cheetah-rand-vel, walker-rand-vel, ml1-push, ml1-reach, ml10, ml45, navigation2d "
                   "(default: %(default)s)")
    p.add_argument("--pair", choices=("ppo", "trpo"), default=d.pair, help="ppo: DRS+PPO vs ProMP; trpo: DRS+TRPO vs "
                   "TRPO-MAML (default: %(default)s)")
    p.add_argument("--budget", type=int, default=d.budget, help="environment steps per run (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=d.seeds, help="training seeds per method (default: %(default)s)")
    p.add_argument("--checkpoints", type=int, default=d.checkpoints, help="snapshots, evenly spaced over the budget "
                   "(default: %(default)s)")
    p.add_argument("--meta-batch-size", type=int, default=d.meta_batch_size, help="tasks per iteration "
                   "(default: %(default)s; the paper: 40)")
    p.add_argument("--episodes", type=int, default=d.episodes, help="episodes per task and step (default: "
                   "%(default)s; the paper: 20)")
    p.add_argument("--test-tasks", type=int, default=d.test_tasks, help="meta-test tasks (default: %(default)s)")
    p.add_argument("--test-episodes", type=int, default=d.test_episodes, help="episodes per test update (default: "
                   "%(default)s)")
    p.add_argument("--horizon", type=int, default=0, help="steps per episode (default: the paper's, 200 for "
                   "locomotion, 150 for Meta-World)")
    p.add_argument("--paper", action="store_true", help="the paper's budget: 21 snapshots 100 iterations of 40 tasks "
                   "x 20 episodes x 200 steps apart (days on 2 cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the outer steps (about a minute once per "
                   "run, then each update up to 2x faster; the same results)")
    p.add_argument("--settings", choices=("metagrad", "promp"), default=d.settings, help="metagrad (default; the "
                   "kept panels') or promp: as ProMP's code, the policy acting in normalize()'s units (a tenth of the "
                   "simulator's; locomotion), each task's losses over its valid steps, a fixed inner KL coefficient")
    p.add_argument("--out", help="results folder (default: results/tradeoff-rl-ENV-PAIR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("compare", help="P(A better than B) by the one-sided Welch t-test over checkpoints x test "
                       "updates", description="Compare two methods from saved evaluations (eval.json of `metagrad "
                       "eval`, results.json of `metagrad reproduce`, or a folder of them, one per checkpoint): the "
                       "one-sided Welch t-test probability that A beats B after each number of test updates, as the "
                       "trade-off paper's Figures 1-2. Writes compare.json and compare.png.")
    p.add_argument("results_a", metavar="RESULTS_A", help="method A: eval.json, results.json or a folder of them")
    p.add_argument("results_b", metavar="RESULTS_B", help="method B: the same kind, as many checkpoints as A")
    p.add_argument("--metric", help="which curve (default: loss, or return for meta-RL evaluations; lower is better "
                   "for losses)")
    p.add_argument("--shots", type=csv(int), metavar="K1,K2,...", help="support sizes (default: all shared)")
    p.add_argument("--higher-is-better", action=argparse.BooleanOptionalAction, default=None,
                   help="direction of the metric (default: lower for loss, higher otherwise)")
    p.add_argument("--method-a", help="method of RESULTS_A when it is a results.json with several")
    p.add_argument("--method-b", help="method of RESULTS_B when it is a results.json with several")
    p.add_argument("--label-a", help="name of A in the table and figure (default: its folder's name)")
    p.add_argument("--label-b", help="name of B")
    p.add_argument("--out", default="compare", help="folder for compare.json and compare.png (default: compare)")


def _add_curves_parser(sub: Any) -> None:
    """``curves``: the logged numbers of several runs in one figure."""
    p = sub.add_parser("curves", help="training curves of several runs in one figure", description="Draw the "
                       "numbers logged in runs' metrics.jsonl against the iteration, one colour per run (the "
                       "metric by line style), and print each run's last iteration and recent means.")
    p.add_argument("runs", nargs="+", metavar="RUN[=LABEL]", help="a run folder holding metrics.jsonl, or the file; "
                   "=LABEL names it in the figure (default: its folder's name)")
    p.add_argument("--metric", type=csv(str), metavar="M1,M2", help="logged numbers to draw (default: "
                   "return_post and return_pre for meta-RL runs, meta_loss for supervised ones)")
    p.add_argument("--smooth", type=int, default=1, metavar="N", help="trailing mean over N logged points (default 1)")
    p.add_argument("--last", type=int, default=10, metavar="N", help="the printed means are over the last N points")
    p.add_argument("--title", help="the figure's title")
    p.add_argument("--out", default="curves.png", help="the figure's path (default: curves.png)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with bars_off(getattr(args, "no_progress", False)):
        return run_command(args)


@contextlib.contextmanager
def bars_off(quiet: bool) -> Iterator[None]:
    """tqdm's ``TQDM_DISABLE`` while a command runs with --no-progress: it reaches the bars the command does not
    draw itself (the data loaders' decoding), and ends with the command."""
    before = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if quiet and before is None:
            del os.environ["TQDM_DISABLE"]
        elif quiet:
            os.environ["TQDM_DISABLE"] = before


def run_command(args: argparse.Namespace) -> int:
    """The command's function; a known failure ends as one line on stderr and an exit code."""
    try:
        return {"train": cmd_train, "eval": cmd_eval, "reproduce": cmd_reproduce, "tradeoff": cmd_tradeoff,
                "compare": cmd_compare, "curves": cmd_curves, "status": cmd_status}[args.command](args)
    except Interrupted as e:
        print(f"metagrad {args.command}: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MetagradError as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # exiting with this line: torchrun's SIGTERM must not cut it
        print(f"metagrad {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full or read-only disk, an unwritable folder: the file and the reason, in one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"metagrad {args.command}: error: cannot write or read{where}: {e.strerror or e}; {os_fix(e)}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"metagrad {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as e:  # torch's allocation failures (its OutOfMemoryError is a RuntimeError too)
        wanted = out_of_memory(e)
        if wanted is None:
            raise
        print(f"metagrad {args.command}: error: out of memory{wanted}; lower the sizes that set it (shots, query, "
              "hidden, meta_batch_size, inner_steps, eval_query or task_chunk)", file=sys.stderr)
        return EXIT_USAGE


def out_of_memory(e: RuntimeError) -> str | None:
    """For torch's failure to allocate: how much it asked for (e.g. " (asked for 32.0 GB at once)"); else None."""
    text = str(e)
    if type(e).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    return f" (asked for {int(asked[1]) / 1e9:,.1f} GB at once)" if asked else ""


def os_fix(e: OSError) -> str:
    """What to do about a failed read or write: the fix its cause calls for."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space, or choose another folder"
    if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "a file stands where a folder is needed, or a folder where a file is: choose another path"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write to"
    return "check the path, free space, or choose another folder"


def _say_which_kind(parser: argparse.ArgumentParser) -> None:
    """In ``train --help``, mark the supervised options a meta-RL config refuses, and give the meta-RL default of a
    shared option where it differs (``--checkpoint-every``: 2000 supervised, 10 meta-RL)."""
    supervised, rl = {f.name for f in fields(Config)}, {f.name for f in fields(RLConfig)}
    for action in parser._actions:
        if action.dest in supervised - rl:
            action.help += "; supervised configs only"
        elif action.dest in supervised & rl:
            ours, theirs = Config.shown_default(action.dest), RLConfig.shown_default(action.dest)
            if theirs != ours:
                action.help = action.help.replace(f"(built-in default: {ours})",
                                                  f"(built-in default: {ours}; meta-RL: {theirs})")


def config_overrides(args: argparse.Namespace, cfg: Config | RLConfig) -> dict[str, Any]:
    """The config values given as options; one that only the other kind of config has is an error, not ignored."""
    own = type(cfg).overrides(args)
    other = (RLConfig if isinstance(cfg, Config) else Config).overrides(args)
    stray = sorted(set(other) - set(own))
    if stray:
        kind = "supervised" if isinstance(cfg, Config) else "meta-RL"
        raise MetagradError(f"{flag(stray[0])} does not apply to a {kind} config; remove it (see `metagrad "
                            f"{getattr(args, 'command', None) or 'train'} --help`)")
    return own


def flag(name: str) -> str:
    """A config field's command-line option: ``inner_lr`` -> ``--inner-lr``."""
    return "--" + name.replace("_", "-")


def resume_hint(args: argparse.Namespace) -> str:
    """The command that continues this run: the user's own options, with --resume."""
    words = [w for w in args.argv if w != "--resume"]
    if "--out" not in words and not any(w.startswith("--out=") for w in words):
        words += ["--out", str(args.out_dir)]
    return "metagrad " + " ".join(shlex.quote(w) for w in [*words, "--resume"])


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import Distributed
    from .experiment import saved_config, train

    out = args.out_dir = Path(args.out or Path("runs") / Path(args.config or DEFAULT_CONFIG).stem)
    own = saved_config(out) if args.resume and args.config is None else None
    cfg = own or load_config(args.config or DEFAULT_CONFIG)
    given = config_overrides(args, cfg)
    cfg = cfg.replace(**given)
    cfg.check_applies(given, flag)
    group = Distributed.from_env()  # under torchrun: this process's share of every meta-batch
    finished = False
    try:
        trainer, result = train(cfg, out, resume=args.resume, progress=not args.no_progress, distributed=group)
        finished = True
    finally:
        if group is not None:
            group.close(finished)
    if group is not None and not group.is_main:
        return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0
    if result.stopped == "interrupted":
        print(f"interrupted at iteration {result.iteration}; checkpoint saved in {out}; continue with: "
              f"{resume_hint(args)}", file=sys.stderr)
        return 128 + signal.SIGTERM if trainer.stop_signal == signal.SIGTERM else EXIT_INTERRUPTED
    if result.stopped == "time_budget":
        print(f"time budget reached at iteration {result.iteration}; continue with: {resume_hint(args)}",
              file=sys.stderr)
        return 0
    procs = f" on {group.world} processes" if group is not None else ""
    if args.resume and result.iteration >= cfg.iterations and trainer.session_iterations == 0:
        where = "past" if result.iteration > cfg.iterations else "at"
        print(f"{out} is at iteration {result.iteration}, {where} --iterations {cfg.iterations}: nothing trained "
              "(its files unchanged); give more iterations to continue it")
        return 0
    if isinstance(cfg, Config):
        best = f", best validation {result.best_val:.4f}" if result.best_val is not None else ""
        print(f"trained {result.iteration} iterations in {result.seconds:.1f} s "
              f"({result.iterations_per_second:.1f} it/s){procs}{best}; run: {out}")
    else:
        best = f", best training return {result.best_return:.2f}" if result.best_return is not None else ""
        print(f"trained {result.iteration} iterations ({result.env_steps:,} environment steps) in "
              f"{result.seconds:.1f} s{procs}{best}; run: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .experiment import evaluate, load_run

    learner, cfg, info = load_run(args.run, args.checkpoint)
    overrides = config_overrides(args, cfg)
    given = set(overrides)
    if "eval_lr" in overrides and cfg.tune_eval_lr and "tune_eval_lr" not in overrides:
        overrides["tune_eval_lr"] = False  # the step sizes given are the ones to test with, not a tuned one
    cfg = cfg.replace(**overrides)
    cfg.check_applies(given, flag)
    path = Path(args.output) if args.output else Path(args.run) / "eval.json"
    if path.is_dir():
        raise MetagradError(f"--output {path} is a folder; give a file name, e.g. {path / 'eval.json'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=path.parent).close()  # writable: found before the evaluation's work, not after
    head = f"{args.run} ({args.checkpoint} checkpoint, iteration {info['iteration']})"
    if isinstance(cfg, Config):
        results = evaluate(learner, cfg)
        mode = "" if cfg.family not in IMAGE_FAMILIES else (", transductive" if cfg.transductive else
                                                             ", non-transductive")
        print(f"{head}: query metrics after k steps, {cfg.eval_tasks} test tasks{mode}, mean ± 95% CI")
        for k, r in results.items():
            for metric in ("loss", "accuracy"):
                if metric in r:
                    print(f"  K={k} {metric} (step size {r['lr']})  {_row(r[metric], 3)}")
        curves = {str(k): v for k, v in results.items()}
    else:
        from .rl.evaluate import evaluate as evaluate_rl

        curve, _, _ = evaluate_rl(learner, cfg)
        print(f"{head}: average return after k policy-gradient steps, {cfg.eval_tasks} test tasks x "
              f"{cfg.eval_episodes} episodes per step, mean ± 95% CI")
        print(f"  return (step sizes {curve['lr']})  {_row(curve, 2)}")
        curves = {str(cfg.eval_episodes): {"lr": curve["lr"], "return": curve}}
    payload: dict[str, Any] = {"checkpoint": args.checkpoint, "iteration": info["iteration"],
                               "eval": cfg.to_sections()["eval"], "curves": curves}
    path.write_text(json.dumps(payload, indent=1))
    print(f"written: {path}")
    if not all(math.isfinite(m) for m in _means(curves)):
        print("metagrad eval: warning: the adapted models diverged (nan or inf above); lower --eval-lr",
              file=sys.stderr)
    return 0


def _means(tree: Any) -> Iterator[float]:
    """Every mean in a tree of evaluation curves."""
    if isinstance(tree, dict):
        yield from tree.get("mean", [])
        for value in tree.values():
            yield from _means(value)


def _row(curve: dict[str, Any], digits: int) -> str:
    return "  ".join(f"{s}: {format_ci(curve['mean'][s], curve['ci95'][s], digits)}" for s in range(len(curve["mean"])))


def checkpoint_name(text: str) -> str:
    """``--checkpoint``: last, best or snapshot-NNN."""
    if text in ("last", "best") or re.fullmatch(r"snapshot-\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is no checkpoint; choose last, best or snapshot-NNN (e.g. "
                                     "snapshot-003)")


def metarl_request(args: argparse.Namespace) -> tuple[Experiment, list[str], str, dict[str, Any]]:
    """`reproduce navigation|locomotion`'s arguments -> (experiment, methods, output folder, the --set overrides with
    --seed and --eval-tasks); also what the long-run index's test reads a row's command with."""
    from .reproduce import locomotion, metarl, navigation

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
    from .reproduce import EXPERIMENTS, FEWSHOT

    rl, studies = ("navigation", "locomotion"), ("reptile-gradients", "reptile-overlap")
    scope = {"algo": (*FEWSHOT, *rl), "ways": FEWSHOT, "shots": FEWSHOT, "env": ("locomotion",), "set": rl,
             "redraw": rl,
             "data_root": (*FEWSHOT, *studies), "download": (*FEWSHOT, *studies),
             "time_budget": (*FEWSHOT, *rl, *studies),
             "batching": (*FEWSHOT, *EXPERIMENTS)}
    for name, experiments in scope.items():
        value = getattr(args, name)
        if value not in (None, [], False) and args.experiment not in experiments:
            shown = f" {value}" if isinstance(value, str | int | float) and value is not True else ""
            raise MetagradError(f"--{name.replace('_', '-')}{shown} does not apply to {args.experiment} (it is for "
                                f"{', '.join(experiments)}); remove it (see `metagrad reproduce --help`)")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import EXPERIMENTS, fewshot, sinusoid

    refuse_stray_options(args)
    if args.iterations is not None and args.iterations < 0:
        raise MetagradError(f"--iterations {args.iterations} must be >= 0")
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
    if args.experiment in ("navigation", "locomotion"):
        from .reproduce import metarl

        experiment, methods, out, sets = metarl_request(args)
        if args.redraw:
            metarl.report(experiment, Path(out))
            return 0
        metarl.run(experiment, methods, out, full=args.full, iterations=args.iterations, time_budget=args.time_budget,
                   overrides=sets, progress=not args.no_progress)
        return 0
    overrides = {k: v for k, v in (("seed", args.seed), ("eval_tasks", args.eval_tasks),
                                   ("batching", args.batching), ("device", args.device),
                                   ("compile", args.compile or None)) if v is not None}
    out = args.out or f"results/{args.experiment}{'-full' if args.full else ''}"
    if args.experiment in ("reptile-gradients", "reptile-overlap"):
        from .reproduce import reptile_studies

        study = reptile_studies.run_gradients if args.experiment == "reptile-gradients" else reptile_studies.run_overlap
        study(out, full=args.full, iterations=args.iterations, progress=not args.no_progress,
              data_root=args.data_root, jobs=args.jobs, time_budget=args.time_budget or 0.0,
              eval_tasks=args.eval_tasks, seed=args.seed, download=args.download)
        return 0
    if args.experiment == "sinusoid-multitask":
        from .reproduce import multitask

        setting = multitask.Setting(**({} if args.full else {"models": 100}),
                                    **({"eval_tasks": args.eval_tasks} if args.eval_tasks else {}),
                                    **({"seed": args.seed} if args.seed is not None else {}))
        if args.iterations is not None:
            if args.iterations < 1:
                raise MetagradError(f"--iterations {args.iterations}: sinusoid-multitask trains each regressor for "
                                    "that many Adam steps; give at least 1")
            setting = multitask.Setting(**{**setting.__dict__, "steps": args.iterations})
        multitask.run(out, setting, progress=not args.no_progress)
        return 0
    if args.experiment in EXPERIMENTS:
        sinusoid.run(EXPERIMENTS[args.experiment], out, full=args.full, iterations=args.iterations,
                     overrides=overrides, progress=not args.no_progress)
        return 0
    if args.data_root:
        overrides["data_root"] = args.data_root
    if args.download:
        overrides["download"] = True
    algo = args.algo or "maml"
    from .reproduce.fewshot import ALGOS, OMNIGLOT_ONLY

    if algo not in ALGOS or (algo in OMNIGLOT_ONLY and args.experiment != "omniglot"):
        extra = " (or maml-nonconv, context or anil on omniglot)" if args.experiment == "omniglot" else ""
        raise MetagradError(f"--algo '{algo}' does not apply to {args.experiment}; choose maml, fomaml or "
                            f"reptile{extra}")
    ways, shots = 5 if args.ways is None else args.ways, 1 if args.shots is None else args.shots
    fewshot.run(args.experiment, algo, ways, shots, out, full=args.full, iterations=args.iterations,
                time_budget=args.time_budget, overrides=overrides, progress=not args.no_progress)
    return 0


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from . import tradeoff

    if args.study == "rl":
        return _tradeoff_rl(args)

    tradeoff.check_grid(args.tasks, args.points, args.alphas, args.datasets, args.dim)
    result, figures = tradeoff.run(args.out, progress=not args.no_progress, tasks=args.tasks, points=args.points,
                                   alphas=args.alphas, datasets=args.datasets, dim=args.dim, seed=args.seed,
                                   rotation_seed=args.rotation_seed)
    print(tradeoff.summary(result))
    print(f"results: {Path(args.out) / 'tradeoff.json'} (and tradeoff.npz)")
    for f in figures:
        print(f"figure:  {f}")
    return 0


def _tradeoff_rl(args: argparse.Namespace) -> int:
    from . import tradeoff_rl as rl_tradeoff

    if args.paper:
        study = rl_tradeoff.paper_study(args.env, args.pair, args.seeds, args.settings)
        study.compile = args.compile
    else:
        study = rl_tradeoff.Study(env=args.env, pair=args.pair, budget=args.budget, seeds=args.seeds,
                                  checkpoints=args.checkpoints, meta_batch_size=args.meta_batch_size,
                                  episodes=args.episodes, test_tasks=args.test_tasks,
                                  test_episodes=args.test_episodes, horizon=args.horizon, compile=args.compile,
                                  settings=args.settings)
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
    from . import compare

    grid, paths = compare.run(args.results_a, args.results_b, args.out, metric=args.metric, shots=args.shots,
                              higher_is_better=args.higher_is_better, method_a=args.method_a,
                              method_b=args.method_b, label_a=args.label_a, label_b=args.label_b)
    print(compare.format_grid(grid))
    for p in paths:
        print(f"written: {p}")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from . import curves

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
    from .checkpoint import write_text
    from .reproduce import longruns

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
