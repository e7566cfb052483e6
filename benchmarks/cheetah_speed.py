"""Seconds per MAML-TRPO meta-iteration on half-cheetah direction at the MAML paper's meta-batch (40 tasks x 20
episodes x 200 steps, one inner step, 2 x 100 ReLU), split into sampling and the TRPO update: metagrad eager and
with ``compile=True`` (the curvature products, the meta-gradient and the line search through ``torch.compile``),
beside pytorch-maml-rl's ``MAMLTRPO`` on the same environment in the same run.

    python benchmarks/cheetah_speed.py [--maml-rl PATH] [--iterations 2] [--warmup 1] [--threads 2] [--rounds 3]
        [--env-workers 1,2]

pytorch-maml-rl runs ``maml_rl_cheetah.py`` (its sampler, baseline and ``MAMLTRPO`` on its thin gym shim: one
gymnasium simulator stepped as metagrad's environment steps it, at about gymnasium's own cost) in its own
environment (``benchmarks/setup_maml_rl.sh``, plus mujoco and gymnasium), with ``--threads`` sampler workers of
one thread each and its learner on each of ``--maml-rl-learner-threads`` (its row: the fastest); it reports whole
iterations only. ``--rounds N`` repeats the whole measurement and reports the median and range of the rounds'
speed-ups (about 8 minutes a round on 2 cores), as navigation_speed.py does. Results:
results/cheetah_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from navigation_speed import combine_rounds, fastest, metagrad_row, run_maml_rl, write_results

HERE = Path(__file__).resolve().parent
PAPER = {"env": "cheetah-dir", "horizon": 200, "meta_batch_size": 40, "episodes": 20, "max_kl": 0.02}


def maml_rl_row(args: argparse.Namespace) -> dict:
    """pytorch-maml-rl's seconds per meta-iteration on metagrad's half-cheetah at its fastest learner thread count, or
    why there is none."""
    return fastest([maml_rl_run(args, int(t)) for t in args.maml_rl_learner_threads.split(",")])


def maml_rl_run(args: argparse.Namespace, threads: int) -> dict:
    """pytorch-maml-rl with its learner on ``threads`` torch threads (its workers: one each)."""
    with tempfile.TemporaryDirectory() as folder:
        out = run_maml_rl(args, "maml_rl_cheetah.py", "--out", folder, "--iterations",
                          str(args.iterations + args.warmup), "--workers", str(args.threads), "--seed", "1",
                          "--threads", str(threads), "--shim", "thin")
        if isinstance(out, dict):
            return out
        rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    wall = [r["seconds"] for r in rows]
    return {"library": "pytorch-maml-rl", "shim": "thin", "workers": args.threads, "learner_threads": threads,
            "iterations": len(rows),
            "seconds_per_iteration_median": round(statistics.median(wall), 3),
            "seconds_per_iteration_range": [round(min(wall), 3), round(max(wall), 3)],
            "return_post_last": round(rows[-1]["return_post"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="iterations not timed (compilation happens there)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (pytorch-maml-rl: sampler workers)")
    p.add_argument("--subsample", default="1", help="hvp_subsample values to run")
    p.add_argument("--env-workers", default="1,2", help="env_workers values to run (processes stepping the "
                   "simulator copies; pytorch-maml-rl's sampler workers: --threads)")
    p.add_argument("--maml-rl", default="", help="a checkout of tristandeleu/pytorch-maml-rl")
    p.add_argument("--maml-rl-learner-threads", default="1,2", help="torch threads of pytorch-maml-rl's learner to "
                   "try (its workers: one each); the fastest is its row")
    p.add_argument("--maml-rl-python", default="", help="its environment's python (default benchmarks/.venv-maml-rl)")
    p.add_argument("--rounds", type=int, default=3, help="repeats of the whole measurement, ratios taken per round")
    p.add_argument("--results", default=str(HERE / "results" / "cheetah_speed"))
    args = p.parse_args()
    args.method, args.hidden, args.activation = "maml-trpo", "100,100", "relu"
    torch.set_num_threads(args.threads)
    rounds = []
    for _ in range(args.rounds):
        rows = [metagrad_row(args, float(s), compile, **PAPER, env_workers=int(w)) for s in args.subsample.split(",")
                for w in args.env_workers.split(",") for compile in (False, True)]
        rounds.append([*rows, maml_rl_row(args)])
    *rows, reference = combine_rounds(rounds)
    setting = (f"Half-cheetah direction, MAML-TRPO, meta-batch 40 x 20 episodes x 200 steps, one inner step, "
               f"100,100 relu policy, {args.threads} threads, {args.rounds} round(s) of {args.iterations} timed "
               f"iterations after {args.warmup} warm-up, torch {torch.__version__}; pytorch-maml-rl on the thin shim "
               f"(maml_rl_cheetah.py --shim thin)")
    write_results(args.results, setting, rows, reference)


if __name__ == "__main__":
    sys.exit(main())
