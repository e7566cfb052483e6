"""Seconds per rollout of the meta-RL sampler on half-cheetah direction at the MAML paper's meta-batch (40 tasks x 20
episodes x 200 steps, a 2 x 100 policy) with the copies stepped in this process or in ``env_workers`` processes,
for each torch thread count of this process, with the sampler's policy passes on the environment's
``sampling_threads`` (1, the default for simulator copies) or on the caller's threads (what it did before): what
``env_workers`` saves, and what the main process's own threads take from the workers.

    python benchmarks/sampler_workers.py [--workers 1,2] [--threads 1,2] [--repeats 3]

Results: results/sampler_workers.{json,md} (the median of the repeats, after one warm-up rollout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metagrad.rl import make_env, make_policy
from metagrad.rl.sampler import rollout
from report import provenance, provenance_line

HERE = Path(__file__).resolve().parent


def seconds(workers: int, threads: int, held: bool, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` rollouts of 40 x 20 half-cheetah episodes (after one warm-up); ``held``: on the
    environment's ``sampling_threads``, else on this process's ``threads``."""
    torch.set_num_threads(threads)
    env = make_env("cheetah-dir", workers=workers)
    if not held:
        env.sampling_threads = None
    torch.manual_seed(0)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(100, 100))
    params = dict(policy.named_parameters())
    tasks = env.sample_tasks(40, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    out = []
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                rollout(env, policy, params, tasks, 20, generator)
                if i:
                    out.append(time.perf_counter() - t0)
    finally:
        getattr(env, "close", lambda: None)()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", default=str(HERE / "results" / "sampler_workers"))
    args = p.parse_args()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for held in (True, False) if threads > 1 else (True,):
            for workers in (int(w) for w in args.workers.split(",")):
                wall = seconds(workers, threads, held, args.repeats)
                rows.append({"torch_threads": threads, "sampling_threads": 1 if held else threads,
                             "env_workers": workers, "seconds_median": round(statistics.median(wall), 3),
                             "seconds_range": [round(min(wall), 3), round(max(wall), 3)]})
                print(rows[-1], flush=True)
    prov = provenance()
    Path(args.results).with_suffix(".json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1) + "\n")
    lines = [provenance_line(prov), "", "One rollout of 40 x 20 half-cheetah direction episodes x 200 steps, 2 x 100 "
             f"policy, median of {args.repeats} after one warm-up.", "",
             "| torch threads | sampling on | env_workers | s per rollout (median, range) |", "|---|---|---|---|"]
    lines += [f"| {r['torch_threads']} | {r['sampling_threads']} | {r['env_workers']} | {r['seconds_median']:.2f} "
              f"({r['seconds_range'][0]:.2f}-{r['seconds_range'][1]:.2f}) |" for r in rows]
    Path(args.results).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
