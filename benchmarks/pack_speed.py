"""The meta-RL update with ``pack_episodes`` (each task's valid steps alone) against the padded layout, on one
meta-batch sampled by a trained policy, in one process: seconds per TRPO update, alternating repeats, and the
largest relative difference between the two updates' parameters.

    .venv/bin/python benchmarks/pack_speed.py [--run results/long/ant-vel-gym-physics/maml-trpo] [--checkpoint last]
        [--threads 1] [--repeats 2] [--compile]

Episodes that end early (the ant falls; hopper, walker) leave most slots of a batch masked, and the update costs
per slot. The run's checkpoint (``last``, ``best`` or another it holds) gives the policy and settings (its own
meta-batch: 40 x 20 x 200 for the ant); without ``--compile`` the updates run eagerly (no compilation in the
timing; the share of padding is the same).
Results: results/pack_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metagrad.experiment import load_run
from report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="results/long/ant-vel-gym-physics/maml-trpo")
    parser.add_argument("--checkpoint", default="last", help="last, best or another checkpoint the run holds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    learner, cfg, info = load_run(args.run, args.checkpoint)
    if not learner.packable:
        raise SystemExit(f"pack_speed: {args.run} ({cfg.algo}, hvp_subsample {cfg.hvp_subsample}) reads whole "
                         "episodes; pack_episodes does not apply to it")
    learner.use_compile = args.compile
    state = {k: t.clone() for k, t in learner.state_dict().items()}
    tasks = learner.env.sample_tasks(cfg.meta_batch_size, torch.Generator().manual_seed(0))
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
    valid = sum(t.steps for t in trajs) + out.steps
    slots = sum(t.mask.numel() for t in trajs) + out.mask.numel()
    times: dict[bool, list[float]] = {False: [], True: []}
    after: dict[bool, dict[str, torch.Tensor]] = {}
    for repeat in range(args.repeats + args.compile):  # with --compile, one more round first: compilation
        for packed in (False, True):
            learner.load_state_dict(state)
            learner.pack_episodes = packed
            t = time.perf_counter()
            learner.update(trajs, out)
            if repeat >= args.compile:
                times[packed].append(time.perf_counter() - t)
            after[packed] = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    diff = max(float((after[True][k] - after[False][k]).norm() / after[False][k].norm().clamp(min=1e-30))
               for k in after[False])
    rows = {("packed" if p else "padded"): round(statistics.median(s), 2) for p, s in times.items()}
    lines = [f"The meta-RL update packed and padded: {args.run} at iteration {info['iteration']} "
             f"({cfg.env}, {cfg.meta_batch_size} tasks x {cfg.episodes} episodes x {cfg.horizon} steps), "
             f"{'compiled' if args.compile else 'eager'}, {args.threads} thread(s), median of {args.repeats} "
             "alternating", "",
             f"valid steps {valid:,} of {slots:,} slots ({100 * valid / slots:.0f}%)", "",
             "| layout | s per TRPO update |", "|---|---|",
             f"| padded `[T, K, H]` | {rows['padded']} |",
             f"| packed `[T, 1, L]` (`pack_episodes`) | {rows['packed']} ({rows['padded'] / rows['packed']:.2f}x) |",
             "", f"largest relative difference between the updated parameters: {diff:.1e}"]
    write_report("pack_speed", {"run": args.run, "checkpoint": args.checkpoint, "iteration": info["iteration"],
                                "valid": valid, "slots": slots,
                                "compile": args.compile, "threads": args.threads, "seconds": rows,
                                "relative_difference": diff, "torch": torch.__version__}, lines)


if __name__ == "__main__":
    main()
