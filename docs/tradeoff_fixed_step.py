"""A kept trade-off study's DRS re-tested at the meta-learner's fixed test step (its inner step, 0.1) instead of the
step size each DRS seed chose on training tasks; Welch's P(DRS better) recomputed. Nothing is written.

    python docs/tradeoff_fixed_step.py results/long/tradeoff-rl-ml1-reach-trpo 1 [2 ...]

The study tests DRS at a tuned step and the meta-learner at 0.1 (docs/tradeoff.md); this measures what that
asymmetry is worth at the snapshots given (1-based), with the study's own test tasks and episode streams.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from metagrad.analysis.stats import welch_probability
from metagrad.experiment import load_run
from metagrad.rl.evaluate import adaptation_returns, held_out_goals
from metagrad.tradeoff_rl import Study, _test_env


def drs_at_fixed_step(folder: Path, study: Study, drs: str, snapshot: int, seed: int, env) -> np.ndarray:
    """One DRS seed's mean return after t = 0..test_updates updates at the study's inner step."""
    learner, _, _ = load_run(folder / drs / f"seed-{seed}", f"snapshot-{snapshot:03d}")
    learner.env = env
    tasks = held_out_goals(learner, study.test_tasks, study.eval_seed + seed)
    gen = torch.Generator().manual_seed(study.eval_seed + seed + 1)  # the study's test episodes (tradeoff_rl)
    values, _ = adaptation_returns(learner, tasks, study.test_updates, study.test_episodes, (study.inner_lr,), gen)
    return values.mean(0).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", type=Path)
    p.add_argument("snapshots", type=int, nargs="+")
    args = p.parse_args()
    torch.set_num_threads(1)
    saved = json.loads((args.study / "study.json").read_text())
    study = Study(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    results = json.loads((args.study / "tradeoff_rl.json").read_text())
    drs, meta = study.methods
    tuned, theirs = np.array(results["returns"][drs]), np.array(results["returns"][meta])
    fixed = tuned.copy()
    env = _test_env(study)
    for j in args.snapshots:
        for s in range(study.seeds):
            chosen = json.loads((args.study / drs / f"seed-{s}" / "step_size.json").read_text())["lr"]
            if chosen != study.inner_lr:
                fixed[s, j - 1] = drs_at_fixed_step(args.study, study, drs, j, s, env)
    p_tuned, p_fixed = np.array(results["p_drs_better"]), welch_probability(fixed, theirs, axis=0)
    for j in args.snapshots:
        print(f"{args.study.name}, snapshot {j}, t = 0..{study.test_updates}:")
        print(f"  DRS, tuned step:   {np.round(tuned[:, j - 1].mean(0), 1)}  P(DRS better) "
              f"{np.round(p_tuned[j - 1], 2)}")
        print(f"  DRS, step {study.inner_lr}:   {np.round(fixed[:, j - 1].mean(0), 1)}  P(DRS better) "
              f"{np.round(p_fixed[j - 1], 2)}")
        print(f"  {meta}: {np.round(theirs[:, j - 1].mean(0), 1)}")


if __name__ == "__main__":
    main()
