"""Seconds per MAML-TRPO meta-iteration on 2D navigation (meta-batch 20, 20 episodes, one inner step), split into
sampling (environment + policy + inner step) and the TRPO update, with pytorch-maml-rl's in the same run.

    python benchmarks/navigation_speed.py                                   # pytorch-maml-rl's policy (64x64 tanh)
    python benchmarks/navigation_speed.py --maml-rl PATH                    # and pytorch-maml-rl, from a checkout
    python benchmarks/navigation_speed.py --hidden 100,100 --activation relu  # the papers' policy

metagrad runs eager and with ``compile=True`` (the TRPO update's functions through ``torch.compile``; the
compilation falls in the warm-up), each twice: the Hessian-vector products of TRPO's conjugate gradient on every
episode (``hvp_subsample`` 1, what pytorch-maml-rl does) and on a quarter of them (0.25; OpenAI baselines' TRPO takes
every 5th sample for its Fisher products, rllab has ``subsample_factor``). pytorch-maml-rl runs in its own environment
(``benchmarks/setup_maml_rl.sh``) through ``maml_rl_speed.py``, one thread per sampler worker (``--threads`` of
them) and its learner on each of ``--maml-rl-learner-threads`` (its row: the fastest); without ``--maml-rl`` its
column says so. ``--rounds`` repeats
the whole measurement, metagrad's rows then pytorch-maml-rl's, and reports each round's ratio: this machine's speed
drifts by up to 1.5x within minutes, and a ratio taken within one round carries less of the drift than one between
medians of separate stretches.
Results: results/navigation_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from metagrad.rl.config import preset
from metagrad.rl.train import RLTrainer, build
from report import provenance, provenance_line

HERE = Path(__file__).resolve().parent


def metagrad_row(args: argparse.Namespace, subsample: float, compile: bool = False, **settings: object) -> dict:
    """Median seconds per meta-iteration of metagrad's trainer (the call ``metagrad train`` makes), with the
    preset's ``settings`` replaced (e.g. the environment); the warm-up iterations (compilation) are not counted."""
    cfg = preset(args.method).replace(hidden=args.hidden, activation=args.activation, hvp_subsample=subsample,
                                      iterations=args.iterations + args.warmup, seed=1, compile=compile, **settings)
    learner, optimizer = build(cfg)
    trainer = RLTrainer(learner, optimizer, cfg, progress=False)
    rows = []
    for i in range(args.iterations + args.warmup):
        t0 = time.perf_counter()
        m = trainer.step()
        if i >= args.warmup:
            rows.append({**m, "wall": time.perf_counter() - t0})
    getattr(learner.env, "close", lambda: None)()  # worker processes (env_workers), if any
    wall = [r["wall"] for r in rows]
    workers = f", env_workers {settings['env_workers']}" if settings.get("env_workers", 1) != 1 else ""
    name = f"metagrad (hvp_subsample {subsample:g}{', compile=True' if compile else ''}{workers})"
    return {"library": name, "threads": args.threads,
            "iterations": len(rows), "seconds_per_iteration_median": round(statistics.median(wall), 3),
            "seconds_per_iteration_range": [round(min(wall), 3), round(max(wall), 3)],
            "sampling_seconds_median": round(statistics.median(r["sample_seconds"] for r in rows), 3),
            "update_seconds_median": round(statistics.median(r["wall"] - r["sample_seconds"] for r in rows), 3),
            "return_post_last": round(rows[-1]["return_post"], 2)}


def run_maml_rl(args: argparse.Namespace, script: str, *options: str) -> str | dict:
    """Run ``script`` of this folder in pytorch-maml-rl's own environment with its checkout and ``options``: its
    standard output, or the row that says why it did not run."""
    if not args.maml_rl:
        return {"library": "pytorch-maml-rl", "skipped": "no checkout given (--maml-rl PATH)"}
    python = args.maml_rl_python or str(HERE / ".venv-maml-rl" / "bin" / "python")
    if not Path(python).exists():
        return {"library": "pytorch-maml-rl", "skipped": f"{python} missing: run benchmarks/setup_maml_rl.sh"}
    # one thread per sampler worker (with torch's default threads everywhere, 2 workers and the learner took 14.6 s
    # per navigation iteration, with one 5.0 s); the learner's own count is set by maml_rl_speed.py --threads
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([python, str(HERE / script), "--repo", args.maml_rl, *options], capture_output=True,
                          text=True, env=one_thread)
    if done.returncode:
        return {"library": "pytorch-maml-rl", "skipped": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    return done.stdout


def fastest(rows: list[dict]) -> dict:
    """The fastest of a peer's rows under different settings, the others' medians kept beside it."""
    ran = [r for r in rows if "skipped" not in r]
    if not ran:
        return rows[0]
    best = min(ran, key=lambda r: r["seconds_per_iteration_median"])
    keys = ("learner_threads", "seconds_per_iteration_median")
    others = [{key: r[key] for key in keys} for r in ran if r is not best]
    return {**best, "library": f"pytorch-maml-rl (learner on {best['learner_threads']} thread(s), its fastest)",
            "other_settings": others}


def maml_rl_row(args: argparse.Namespace) -> dict:
    """pytorch-maml-rl's row at its fastest learner thread count, run in its own environment, or why there is none."""
    rows = []
    for threads in args.maml_rl_learner_threads.split(","):
        out = run_maml_rl(args, "maml_rl_speed.py", "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                          "--workers", str(args.threads), "--threads", threads)
        rows.append(out if isinstance(out, dict) else json.loads(out.strip().splitlines()[-1]))
    return fastest(rows)


def write_results(path: str, setting: str, rows: list[dict], reference: dict) -> None:
    """``path``.json (every row) and ``path``.md (the table under its setting), printed too."""
    p = provenance()
    out = {"provenance": p, "setting": setting, "rows": [*rows, reference]}
    Path(path).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    md = f"{provenance_line(p)}\n\n{setting}.\n\n{table(rows, reference)}\n"
    Path(path).with_suffix(".md").write_text(md)
    print(md)


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per library from its rows of every round (``rounds[k][i]``: round k's row i, the last pytorch-maml-rl's):
    medians of the rounds' medians, the whole range, and each round's speed-up of pytorch-maml-rl over the row."""
    references = [r[-1] for r in rounds]
    combined = []
    for rows in zip(*rounds, strict=True):
        if "skipped" in rows[0]:
            combined.append(rows[0])
            continue
        row = {**rows[-1], "rounds": len(rows),
               "seconds_per_iteration_range": [min(r["seconds_per_iteration_range"][0] for r in rows),
                                               max(r["seconds_per_iteration_range"][1] for r in rows)]}
        for key in ("seconds_per_iteration_median", "sampling_seconds_median", "update_seconds_median"):
            if key in row:
                row[key] = round(statistics.median(r[key] for r in rows), 3)
        if "skipped" not in references[0]:
            row["speedup_by_round"] = [round(ref["seconds_per_iteration_median"] / r["seconds_per_iteration_median"], 2)
                                       for ref, r in zip(references, rows, strict=True)]
        combined.append(row)
    return combined


def table(rows: list[dict], reference: dict) -> str:
    """The results as markdown, each row's speed-up over pytorch-maml-rl (the median of the rounds' and their range
    where there were several rounds)."""
    ref = reference.get("seconds_per_iteration_median")
    lines = ["| library | s per meta-iteration (median, range) | sampling | update | pytorch-maml-rl / this |",
             "|---|---|---|---|---|"]
    for r in [*rows, reference]:
        if "skipped" in r:
            lines.append(f"| {r['library']} | not run: {r['skipped']} | | | |")
            continue
        lo, hi = r["seconds_per_iteration_range"]
        speedup = f"{ref / r['seconds_per_iteration_median']:.2f}x" if ref else "-"
        if len(r.get("speedup_by_round", ())) > 1:
            by_round = r["speedup_by_round"]
            speedup = f"{statistics.median(by_round):.2f}x ({min(by_round):.2f}-{max(by_round):.2f})"
        lines.append(f"| {r['library']} | {r['seconds_per_iteration_median']:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{r.get('sampling_seconds_median', '-')} | {r.get('update_seconds_median', '-')} | {speedup} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads (pytorch-maml-rl: sampler workers)")
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--activation", default="tanh")
    p.add_argument("--method", default="maml-trpo")
    p.add_argument("--subsample", default="1,0.25", help="hvp_subsample values to run")
    p.add_argument("--no-compile", action="store_true", help="skip the compile=True rows")
    p.add_argument("--maml-rl", default="", help="a checkout of tristandeleu/pytorch-maml-rl")
    p.add_argument("--maml-rl-learner-threads", default="1,2", help="torch threads of pytorch-maml-rl's learner to "
                   "try (its workers: one each); the fastest is its row")
    p.add_argument("--maml-rl-python", default="", help="its environment's python (default benchmarks/.venv-maml-rl)")
    p.add_argument("--rounds", type=int, default=3, help="repeats of the whole measurement, ratios taken per round")
    p.add_argument("--results", default=str(HERE / "results" / "navigation_speed"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rounds = []
    for _ in range(args.rounds):
        rows = [metagrad_row(args, float(s), compile) for s in args.subsample.split(",")
                for compile in ((False,) if args.no_compile else (False, True))]
        rounds.append([*rows, maml_rl_row(args)])
    *rows, reference = combine_rounds(rounds)
    setting = (f"2D navigation, MAML-TRPO, meta-batch 20 x 20 episodes x 100 steps, one inner step, "
               f"{args.hidden} {args.activation} policy, {args.threads} threads, {args.rounds} rounds of "
               f"{args.iterations} timed iterations per row (speed-ups: the median and range of the rounds'), "
               f"torch {torch.__version__}")
    write_results(args.results, setting, rows, reference)


if __name__ == "__main__":
    sys.exit(main())
