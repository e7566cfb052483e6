"""The command line's options: the ``metagrad`` parser and its argument types."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from typing import Any

from .. import __version__
from ..choices import BATCHING
from ..config import SECTIONS, Config
from ..errors import ConfigError, suggest
from ..rl.config import RLConfig
from ..settings import check_seed, list_items, preset_names

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump); a value that starts with '-' and a digit (``--inner-lr
    -0.1,0.05``, ``--alphas -1e-3``) is a value, not an option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --inner-ste would pass for --inner-steps, past the --set check
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, then a key given both as ``--set KEY=VALUE`` and as its own option (in either order) refused:
        argparse alone would keep whichever came last."""
        parsed = super().parse_args(args, namespace)
        words = list(sys.argv[1:] if args is None else args)
        for key, flags in getattr(parsed, "set_flags", {}).items():
            given = next((w for w in words for f in flags if w == f or w.startswith(f + "=")), None)
            if given:
                self.error(f"{key} is given twice ({given} and --set {key}=...); give it once")
        return parsed

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="metagrad", description="Gradient-based meta-learning: MAML, first-order MAML, Reptile, "
                    "joint training; paper reproductions.")
    parser.add_argument("--version", action="version", version=f"metagrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="meta-train from a config file", description="Meta-train from a config "
                       f"file or preset ({', '.join(preset_names())}); supervised presets have [task] and [model] "
                       "sections, meta-RL ones [env] and [policy]. Any config value can be overridden below; an "
                       "option left out keeps the config's value (the built-in defaults shown are those of keys a file "
                       "omits).")
    p.add_argument("--config", type=nonempty, help="config file or preset name (default: sinusoid-maml; with "
                   "--resume, the run's own)")
    p.add_argument("--out", type=nonempty, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    Config.add_arguments(p, SECTIONS)
    RLConfig.add_arguments(p, title="meta-RL [{section}] options (override the config file)")
    _add_set(p)
    _say_which_kind(p)

    p = sub.add_parser("eval", help="adaptation curves of a trained run on held-out tasks",
                       description="Evaluate a run directory: query loss (meta-RL: return) after 0..eval-steps "
                       "adaptation steps on test tasks, mean ± 95% CI; writes eval.json into the run directory. An "
                       "option left out takes the run's own value (the built-in defaults below are the supervised "
                       "config's).")
    p.add_argument("run", help="run directory written by `metagrad train`")
    p.add_argument("--checkpoint", default="last", type=checkpoint_name,
                   help="which checkpoint: last (default), best, best-before-N (a best set aside at iteration N "
                   "when a resume changed the validation), or a meta-RL snapshot-NNN (kept every snapshot_steps "
                   "environment steps)")
    p.add_argument("--output", type=nonempty, help="where to write the results (default: RUN/eval.json); e.g. one "
                   "file per checkpoint in a folder, for `metagrad compare`")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the data loaders')")
    p.add_argument("--data-root", dest="run_data_root", type=nonempty, help="few-shot runs: the image data's folder "
                   "where it is not at the run's recorded data_root (e.g. a relative one, from another folder); "
                   "checked against the images the run was trained on")
    Config.add_arguments(p, ("eval",), title="[{section}] options (override the run's config)")
    RLConfig.add_arguments(p, ("eval",), title="meta-RL [{section}] options (override the run's config)")
    _add_set(p, "eval_tasks=100")
    _say_which_kind(p)

    from ..reproduce import EXPERIMENTS, FEWSHOT

    p = sub.add_parser("reproduce", help="reproduce a paper's experiment", description="Train the paper's methods, "
                       "evaluate them on the same test tasks, print the paper's numbers beside ours, draw figures.")
    p.add_argument("experiment", choices=[*sorted(EXPERIMENTS), "sinusoid-multitask", *FEWSHOT, "reptile-gradients",
                                          "reptile-overlap", "navigation", "locomotion"],
                   help="which experiment")
    p.add_argument("--full", action="store_true",
                   help="the full budget of the paper (or of its code where the text gives none, e.g. 70,000 sinusoid "
                   "meta-iterations)")
    p.add_argument("--iterations", type=int, help="meta-iterations for every trained method (overrides --full)")
    p.add_argument("--out", type=nonempty, help="results folder (default: results/<experiment>[-full]; "
                   "locomotion: results/locomotion-<env>[-full])")
    p.add_argument("--seed", type=seed, help="training seed of every method (default: 0)")
    p.add_argument("--eval-tasks", type=int, help="test tasks (default: the experiment's, e.g. 600 sinusoid tasks, "
                   "the meta-RL presets' eval_tasks, locomotion 40)")
    p.add_argument("--batching", choices=BATCHING, help="task batching of the sinusoid and few-shot experiments "
                   "(default: auto)")
    p.add_argument("--device", help="where the sinusoid and few-shot methods train: cpu (default), cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the meta-gradient (the sinusoid, few-shot "
                   "and meta-RL methods; for navigation the same as --set compile=true; locomotion compiles by "
                   "default, --set compile=false does not): pays for the sinusoid MLP and the meta-RL policies on the "
                   "CPU, and for the convolutions on a GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    images = p.add_argument_group("few-shot classification (omniglot, miniimagenet)")
    images.add_argument("--algo", type=nonempty, help="algorithm: maml (default), fomaml, reptile, maml-nonconv "
                        "(Omniglot, the MAML paper's fully connected network), context (Omniglot, the MAML paper's "
                        "context-vector baseline), anil (Omniglot, the inner loop adapts the head alone); for "
                        "navigation and locomotion, comma-separated methods: maml-trpo (default), fomaml-trpo, "
                        "pretrained, random, oracle, sgmrl, sgmrl-full, maml-vpg, emaml, promp, drs-ppo, drs-trpo, "
                        "context, trpo-maml (the trade-off study's preset of maml-trpo), or all (every one but "
                        "trpo-maml)")
    images.add_argument("--ways", type=int, help="classes per task, N (default: 5)")
    images.add_argument("--shots", type=int, help="examples per class, K (default: 1)")
    images.add_argument("--time-budget", type=float, help="minutes of training before testing the best checkpoint "
                        "(few-shot default: 30; 0, --full or --iterations: no limit; navigation and locomotion: per "
                        "method; the Reptile studies: for the whole study, default none); rerun the same command to "
                        "continue")
    images.add_argument("--data-root", help="dataset folder (default: $METAGRAD_DATA/<dataset>); also the "
                        "Reptile studies' Omniglot")
    images.add_argument("--download", action="store_true", help="Omniglot (and the Reptile studies): fetch the "
                        "official zip files into the dataset folder when they are missing")
    nav = p.add_argument_group("meta-RL (navigation, locomotion)")
    nav.add_argument("--env", type=nonempty, help="locomotion task family: cheetah-dir (default), cheetah-vel, "
                     "ant-dir, ant-vel (the MAML paper's), swimmer-vel (the same family on the swimmer); "
                     "cheetah-rand-vel, swimmer-rand-vel (maml_zoo's, the SG-MRL paper's Table 2 with cheetah-dir)")
    nav.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a meta-RL config "
                     "value of every method, e.g. --set hidden=64,64 --set reward=squared (repeatable)")
    nav.add_argument("--redraw", action="store_true", help="print the table and draw the figures again from "
                     "OUT/results.json with the papers' numbers as they are now; trains and evaluates nothing")
    studies = p.add_argument_group("Reptile's studies (reptile-gradients, reptile-overlap)")
    studies.add_argument("--jobs", type=int, default=1, help="runs at once, one process of one thread each "
                         "(default: 1; 2 uses both cores of a 2-core machine)")
    studies.add_argument("--panels", default=None, help="reptile-overlap: only these sweeps, comma-separated among "
                         "4a, 4b, 4c (default: all three; a later call finds the finished runs)")
    _add_tradeoff_parsers(sub)
    _add_curves_parser(sub)
    p = sub.add_parser("status", help="where the long paper runs stand (results/long)", description="For every "
                       "long paper run kept in the repository: its budget, how much of it is done, the wall time and "
                       "sessions so far, and the command that continues it. Writes FOLDER/INDEX.md.")
    p.add_argument("folder", nargs="?", default="results/long", help="where the long runs live (default: %(default)s)")
    return parser


class SetOption(argparse.Action):
    """``--set KEY=VALUE``, the form ``reproduce`` takes, as the key's own option: ``--set inner_lr=0.1`` is
    ``--inner-lr 0.1``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        key, sep, text = value.partition("=")
        key = key.replace("-", "_")
        options = {a.dest: a for a in parser._actions if a.dest in CONFIG_FIELDS}
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got '{value}' (e.g. --set inner_lr=0.1)")
        if key not in options and key in CONFIG_FIELDS:  # e.g. eval --set ways=20: the head was trained for 5
            parser.error(f"--set {key}: a training setting, not a value this command changes")
        if key not in options:
            known = list(options)
            parser.error(f"--set {key}: not a config value this command takes{suggest(key, known)}")
        if getattr(namespace, key, None) is not None:
            parser.error(f"--set {value}: {key} is already given; give it once")
        setattr(namespace, key, text)
        namespace.set_flags = {**getattr(namespace, "set_flags", {}), key: options[key].option_strings}


CONFIG_FIELDS = {f.name for f in (*fields(Config), *fields(RLConfig))}


def _add_set(parser: argparse.ArgumentParser, example: str = "inner_lr=0.1") -> None:
    key, _, value = example.partition("=")
    parser.add_argument("--set", action=SetOption, metavar="KEY=VALUE", help="any config value above by its key, as "
                        f"`reproduce` takes it: --set {example} is --{key.replace('_', '-')} {value} (repeatable)")


def nonempty(text: str) -> str:
    """A name or path option's value: an empty one (a shell variable left unset) is refused, not the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value; give a name or a path (or leave the option out)")
    return text


def _say_which_kind(parser: argparse.ArgumentParser) -> None:
    """In ``train --help`` and ``eval --help``, mark the supervised options a meta-RL config refuses, and give the
    meta-RL meaning and default of a shared option where they differ (``--outer-lr``: any supervised outer step,
    meta-RL's outer vpg and ppo only; ``--checkpoint-every``: 2000 supervised, 10 meta-RL)."""
    supervised = {f.name: f.metadata["help"] for f in fields(Config)}
    rl = {f.name: f.metadata["help"] for f in fields(RLConfig)}
    for action in parser._actions:
        name = action.dest
        if name in supervised and name not in rl:
            action.help += "; supervised configs only"
        elif name in supervised and name in rl:
            ours, theirs = Config.shown_default(name), RLConfig.shown_default(name)
            meaning = f"; meta-RL: {rl[name]}" if rl[name] != supervised[name] else ""
            default = f"; meta-RL: {theirs}" if theirs != ours else ""
            action.help = action.help.replace(f" (built-in default: {ours})",
                                              f"{meaning} (built-in default: {ours}{default})")


def checkpoint_name(text: str) -> str:
    """``--checkpoint``: last, best, snapshot-NNN or best-before-N (a best set aside when validation changed)."""
    if text in ("last", "best") or re.fullmatch(r"snapshot-\d+|best-before-\d+(-again)*", text):
        return text
    raise argparse.ArgumentTypeError(f"'{text}' is no checkpoint; choose last, best, snapshot-NNN (e.g. "
                                     "snapshot-003) or best-before-N")


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
        parts = list_items(text)
        if not parts:  # an empty entry inside (one trailing comma is harmless), or none at all
            raise argparse.ArgumentTypeError(f"'{text}' has an empty entry; give numbers separated by single commas")
        try:
            return [kind(v) for v in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of "
                                             f"{'integers' if kind is int else 'numbers'}") from None
    return parse


def _add_tradeoff_parsers(sub: Any) -> None:
    """``tradeoff`` (trade-off paper, Figure 3) and ``compare`` (its Figures 1-2: Welch t-test contours)."""
    from .. import tradeoff

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
    p.add_argument("--rotation-seed", type=seed, help="seed of the rotation V for p > 1 (default: 0)")
    p.add_argument("--out", default="results/tradeoff-linreg", help="results folder (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    from ..tradeoff_rl import TEST_STEPS, Study

    d = Study()
    p = studies.add_parser("rl", help="DRS vs MAML in meta-RL on equal simulator-step budgets (section 2, Figs 1-2)",
                           description=RL_STUDY)
    p.add_argument("--env", default=d.env, help="task family, e.g. hopper-rand-params, walker-rand-params, "
                   "cheetah-rand-vel, walker-rand-vel, ml1-push, ml1-reach, ml10, ml45, navigation2d "
                   "(default: %(default)s)")
    p.add_argument("--pair", choices=("ppo", "trpo"), default=d.pair, help="ppo: DRS+PPO vs ProMP; trpo: DRS+TRPO vs "
                   "TRPO-MAML (default: %(default)s)")
    # the sizes default to None, so that --paper can tell a size given (refused) from one left out
    p.add_argument("--budget", type=int, help=f"environment steps per run (default: {d.budget})")
    p.add_argument("--seeds", type=int, default=d.seeds, help="training seeds per method (default: %(default)s)")
    p.add_argument("--checkpoints", type=int, help=f"snapshots, evenly spaced over the budget (default: "
                   f"{d.checkpoints})")
    p.add_argument("--meta-batch-size", type=int, help=f"tasks per iteration (default: {d.meta_batch_size}; the "
                   "paper: 40)")
    p.add_argument("--episodes", type=int, help=f"episodes per task and step (default: {d.episodes}; the paper: "
                   "20)")
    p.add_argument("--test-tasks", type=int, help=f"meta-test tasks (default: {d.test_tasks})")
    p.add_argument("--test-episodes", type=int, help=f"episodes per test update (default: {d.test_episodes})")
    p.add_argument("--horizon", type=int, help="steps per episode (default: the paper's, 200 for "
                   "locomotion, 150 for Meta-World, 100 for navigation2d)")
    p.add_argument("--paper", action="store_true", help="the paper's budget: 21 snapshots 16M environment steps apart "
                   "(100 iterations of 40 tasks x 20 episodes of 200 steps; days on 2 cores); the sizes above stay "
                   "unset")
    p.add_argument("--compile", action="store_true", help="torch.compile the outer steps (about a minute once per "
                   "run, then each update up to 2x faster; the same results)")
    p.add_argument("--settings", choices=("metagrad", "promp"), default=d.settings, help="metagrad (default; the "
                   "kept panels') or promp: as ProMP's code, the policy acting in normalize()'s units (a tenth of the "
                   "simulator's; locomotion), each task's losses over its valid steps, a fixed inner KL coefficient")
    p.add_argument("--test-step", choices=TEST_STEPS, default=d.test_step, help="whose "
                   "test-time step size is chosen on validation tasks: drs-tuned (default; the kept panels': DRS's, "
                   "the meta-learner tested at its training step 0.1), tuned (each method's) or fixed (both at 0.1); "
                   "may change on resume (the runs are tested again, not retrained)")
    p.add_argument("--lr-grid", type=csv(float), metavar="A,B,...", help="test-time step sizes a tuned method chooses "
                   f"from on validation tasks (default: {','.join(map(str, d.lr_grid))}); may change on resume (the "
                   "step size is chosen again, the runs tested again, not retrained)")
    p.add_argument("--out", type=nonempty, help="results folder (default: results/tradeoff-rl-ENV-PAIR)")
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
    p.add_argument("--method-a", help="method of RESULTS_A when it is a results.json with several (a few-shot "
                   "results file: its batch-norm mode, transductive or non-transductive)")
    p.add_argument("--method-b", help="method of RESULTS_B, as --method-a")
    p.add_argument("--label-a", help="name of A in the table and figure (default: an eval.json's folder name, a "
                   "results file's method label; the shortest distinguishing path where the two names clash)")
    p.add_argument("--label-b", help="name of B")
    p.add_argument("--out", default="compare", help="folder for compare.json and compare.png (default: compare)")


def _add_curves_parser(sub: Any) -> None:
    """``curves``: the logged numbers of several runs in one figure."""
    p = sub.add_parser("curves", help="training curves of several runs in one figure", description="Draw the "
                       "numbers logged in runs' metrics.jsonl against the iteration, one colour per run (the "
                       "metric by line style), and print each run's last iteration and recent means.")
    p.add_argument("runs", nargs="+", metavar="RUN[=LABEL]", help="a run folder holding metrics.jsonl, the file, or a "
                   "reproduction's folder (all its methods' runs); =LABEL names it in the figure (default: its "
                   "folder's name)")
    p.add_argument("--metric", type=csv(str), metavar="M1,M2", help="logged numbers to draw (default: "
                   "return_post and return_pre for meta-RL runs, meta_loss for supervised ones)")
    p.add_argument("--smooth", type=int, default=1, metavar="N", help="trailing mean over N logged points (default 1)")
    p.add_argument("--last", type=int, default=10, metavar="N", help="the printed means are over the last N points "
                   "(default: 10)")
    p.add_argument("--title", help="the figure's title")
    p.add_argument("--out", default="curves.png", help="the figure's path (default: curves.png)")
