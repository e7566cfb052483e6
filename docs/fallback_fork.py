"""Is MAML-VPG's late fall-back on half-cheetah direction the outer step's size? Continue a kept run from its best
checkpoint with a fresh Adam at the run's own outer step and at smaller ones, side by side.

    OMP_NUM_THREADS=1 python docs/fallback_fork.py RUN --lrs 1e-3,1e-4 --iterations 50 --out /tmp/fork

For each outer step size, a run directory ``<out>/lr-<lr>`` starts from ``RUN/best`` (the parameters at the run's
highest training return; its Adam state is not kept there, so every fork starts a fresh Adam, the control too) and
trains ``--iterations`` more meta-iterations at the run's other settings, seed ``--seed`` (the same tasks and episodes
for every fork). Each fork resumes like any run (rerun the command). Printed: the mean training return after the inner
step(s) over each block of ten iterations. Used in docs/meta-rl.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metagrad.experiment import load_run
from metagrad.rl.train import RLTrainer


def fork(run: str, lr: float, iterations: int, seed: int, out: Path, budget: float) -> list[float]:
    """Train one fork (or continue it); its training returns after adaptation, one per iteration."""
    learner, cfg, _ = load_run(run, "best")
    cfg = cfg.replace(outer_lr=lr, iterations=iterations, seed=seed, time_budget=budget, checkpoint_every=5)
    optimizer = torch.optim.Adam(learner.policy.parameters(), lr=lr)
    run_dir = out / f"lr-{lr:g}"
    RLTrainer(learner, optimizer, cfg, run_dir).fit(resume=(run_dir / "last.json").exists())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [row["return_post"] for row in map(json.loads, lines) if "return_post" in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a kept MAML-VPG run directory with a 'best' checkpoint")
    parser.add_argument("--lrs", default="1e-3,1e-4", help="outer step sizes, comma-separated")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--time-budget", type=float, default=0.0, help="minutes per fork (0: no limit)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for lr in (float(x) for x in args.lrs.split(",")):
        returns = fork(args.run, lr, args.iterations, args.seed, args.out, args.time_budget)
        blocks = [sum(returns[i:i + 10]) / len(returns[i:i + 10]) for i in range(0, len(returns), 10)]
        print(f"outer lr {lr:g}: " + " / ".join(f"{b:.0f}" for b in blocks)
              + f"  (mean return after adaptation per 10 iterations, {len(returns)} iterations)", flush=True)


if __name__ == "__main__":
    main()
