"""Seconds per MAML-TRPO meta-iteration on 2D navigation (meta-batch 20, 20 episodes, one inner step), split into
sampling (environment + policy + inner step) and the TRPO update, and environment steps per second.

    python benchmarks/navigation_speed.py --iterations 10 --threads 2                     # the papers' policy
    python benchmarks/navigation_speed.py --hidden 64,64 --activation tanh                # pytorch-maml-rl's policy

Compare with pytorch-maml-rl's 3.27 s per meta-iteration on this machine (DESIGN.md, 64x64 tanh policy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metagrad.rl.config import preset
from metagrad.rl.train import RLTrainer, build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--hidden", default="100,100")
    p.add_argument("--activation", default="relu")
    p.add_argument("--method", default="maml-trpo")
    p.add_argument("--hvp-subsample", type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.method).replace(hidden=args.hidden, activation=args.activation, hvp_subsample=args.hvp_subsample,
                                      iterations=args.iterations + args.warmup)
    learner, optimizer = build(cfg)
    trainer = RLTrainer(learner, optimizer, cfg, progress=False)
    rows = []
    for i in range(args.iterations + args.warmup):
        t0 = time.perf_counter()
        m = trainer.step()
        if i >= args.warmup:
            rows.append({**m, "wall": time.perf_counter() - t0})
    wall = [r["wall"] for r in rows]
    out = {"method": args.method, "hidden": args.hidden, "activation": args.activation, "threads": args.threads,
           "hvp_subsample": args.hvp_subsample,
           "iterations": len(rows), "seconds_per_iteration_median": round(statistics.median(wall), 3),
           "seconds_per_iteration_range": [round(min(wall), 3), round(max(wall), 3)],
           "sampling_seconds_median": round(statistics.median(r["sample_seconds"] for r in rows), 3),
           "env_steps_per_second": round(sum(r["env_steps"] for r in rows) / sum(wall)),
           "sampling_env_steps_per_second": round(sum(r["env_steps"] for r in rows)
                                                  / sum(r["sample_seconds"] for r in rows))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
