"""``metagrad train`` and ``metagrad eval``: one config's run, and its checkpoint's evaluation."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from ..analysis.stats import format_ci
from ..choices import IMAGE_FAMILIES
from ..compare import task_of
from ..config import Config, load_config
from ..errors import Interrupted, MetagradError, flag
from ..inner import schedule_used
from ..provenance import stamped
from ..rl.config import RLConfig
from .parser import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from collections.abc import Iterator


DEFAULT_CONFIG = "sinusoid-maml"


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


def resume_hint(args: argparse.Namespace) -> str:
    """The command that continues this run: the user's own options, with --resume (under torchrun as torchrun
    started it, since another number of processes leaves the bit-for-bit path)."""
    from ..distributed import launched_world

    words = [w for w in args.argv if w != "--resume"]
    if "--out" not in words and not any(w.startswith("--out=") for w in words):
        words += ["--out", str(args.out_dir)]
    world = launched_world()
    local = os.environ.get("LOCAL_WORLD_SIZE", str(world))
    launcher = ("" if world <= 1 else f"torchrun --standalone --nproc_per_node={world} -m " if local == str(world)
                else f"torchrun --nnodes=... --nproc_per_node={local} -m ")
    return launcher + "metagrad " + " ".join(shlex.quote(w) for w in [*words, "--resume"])


def _finished(cfg: Config | RLConfig, result: Any) -> str:
    """Where a resumed run that trained nothing stands against the budget that ended it, and what raises it."""
    if result.iteration < cfg.iterations:  # a meta-RL step budget
        done, budget, flag = result.env_steps, cfg.step_budget, "--step-budget"
        at = f"at {done:,} environment steps"
    else:
        done, budget, flag = result.iteration, cfg.iterations, "--iterations"
        at = f"at iteration {done}"
    head = f"{at}, {'past' if done > budget else 'at'} {flag} {budget:,}: nothing trained (its files unchanged); "
    if flag == "--iterations" and (fixed := cfg.fixed_because("iterations")):
        return head + f"it is finished{fixed}"
    return head + f"give a larger {flag} to continue it"


def cmd_train(args: argparse.Namespace) -> int:
    from ..distributed import Distributed
    from ..experiment import saved_config, train

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
    except Interrupted as e:  # a second signal: aborted mid-iteration
        raise e.then(f"continue with: {resume_hint(args)}") from None
    finally:
        if group is not None:
            group.close(finished)
    if group is not None and not group.is_main:
        return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0
    if result.stopped == "interrupted":
        print(f"interrupted at iteration {result.iteration}; checkpoint saved in {out}; continue with: "
              f"{resume_hint(args)}", file=sys.stderr)
        return 128 + (trainer.stop_signal or signal.SIGINT)  # as Interrupted's: 130 after Ctrl-C, 143 after SIGTERM
    if result.stopped == "time_budget":
        print(f"time budget reached at iteration {result.iteration}; continue with: {resume_hint(args)}",
              file=sys.stderr)
        return 0
    procs = f" on {group.world} processes" if group is not None else ""
    if args.resume and trainer.session_iterations == 0:
        print(f"{out} is {_finished(cfg, result)}")
        return 0
    start = result.iteration - trainer.session_iterations
    span = (f"{result.iteration} iterations" if start == 0 else
            f"iterations {start} -> {result.iteration} ({trainer.session_iterations} this session)")
    took = f"{result.seconds:.1f} s{' in all' if start else ''}"
    if isinstance(cfg, Config):
        best = f", best validation {result.best_val:.4f}" if result.best_val is not None else ""
        print(f"trained {span} in {took} ({result.iterations_per_second:.1f} it/s this session){procs}{best}; "
              f"run: {out}")
    else:
        best = f", best training return {result.best_return:.2f}" if result.best_return is not None else ""
        print(f"trained {span} ({result.env_steps:,} environment steps) in {took}{procs}{best}; run: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..experiment import evaluate, load_run

    learner, cfg, info = load_run(args.run, args.checkpoint, data_root=args.run_data_root)
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
                    lr = r["lr"] if r["lr"] == "learned" else schedule_used(r["lr"], cfg.eval_steps)
                    print(f"  K={k} {metric} (step size {lr})  {_row(r[metric], 3)}")
        curves = {str(k): v for k, v in results.items()}
    else:
        from ..rl.evaluate import evaluate as evaluate_rl

        curve, _, _ = evaluate_rl(learner, cfg)
        print(f"{head}: average return after k policy-gradient steps, {cfg.eval_tasks} test tasks x "
              f"{cfg.eval_episodes} episodes per step, mean ± 95% CI")
        print(f"  return (step sizes {curve['lr']})  {_row(curve, 2)}")
        curves = {str(cfg.eval_episodes): {"lr": curve["lr"], "return": curve}}
    payload: dict[str, Any] = {"checkpoint": args.checkpoint, "iteration": info["iteration"],
                               "task": task_of(cfg.to_sections()), "task_settings": cfg.to_sections().get("task"),
                               "eval": cfg.to_sections()["eval"],
                               "curves": curves}
    files.write_json(path, stamped(payload))
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
