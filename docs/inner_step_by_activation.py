"""How far the first inner step moves the policy on the SG-MRL row's settings, ReLU against tanh hidden units.

    OMP_NUM_THREADS=1 python docs/inner_step_by_activation.py [--seeds 0 1 2] [--lr 0.1] [--tasks 10]

Half-cheetah direction as `metagrad reproduce locomotion --algo maml-vpg` runs it, the SG-MRL code's environment and
policy (5 simulator steps per action, gym's observation, actions scaled by 0.1, initial std 1, 2 x 100 units): for
each seed and activation, one meta-batch at the initialization, the inner VPG step (normalized advantages), then the
mean absolute change of the policy's mean action over the post-step states (in units of the policy's std, 1 here) and
the returns before and after. Used in docs/meta-rl.md to say why ReLU stays flat where tanh learns.
"""

from __future__ import annotations

import argparse

import torch

from metagrad.reproduce import locomotion
from metagrad.reproduce.metarl import method_configs
from metagrad.rl.sampler import policy_dist
from metagrad.rl.train import build


def inner_step_size(activation: str, seed: int, lr: float, tasks: int) -> tuple[float, float, float]:
    """(mean |change of the mean action|, return before, return after) of one inner step at the initialization."""
    overrides = {"activation": activation, "inner_lr": (lr,), "meta_batch_size": tasks, "seed": seed}
    cfg = method_configs(locomotion.experiment("cheetah-dir"), ["maml-vpg"], overrides=overrides)[0]
    learner, _ = build(cfg)
    generator = torch.Generator().manual_seed(seed + 1000)
    trajs, out = learner.sample(learner.env.sample_tasks(tasks, generator), generator)
    theta = learner.meta_params()
    before = policy_dist(learner.policy, theta, out.obs, False)
    after = policy_dist(learner.policy, learner.adapted_path(theta, trajs)[-1], out.obs, True)
    a, mask = learner.policy.action_dim, out.mask.unsqueeze(-1)
    change = float(((after[..., :a] - before[..., :a]).abs() * mask).sum() / mask.sum() / a)
    return change, float(trajs[0].episode_returns.mean()), float(out.episode_returns.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1])
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| activation | inner lr | seed | mean action change (std units) | return before | after one step |")
    print("|---|---|---|---|---|---|")
    for lr in args.lr:
        for activation in ("relu", "tanh"):
            for seed in args.seeds:
                change, pre, post = inner_step_size(activation, seed, lr, args.tasks)
                print(f"| {activation} | {lr} | {seed} | {change:.4f} | {pre:.2f} | {post:.2f} |", flush=True)


if __name__ == "__main__":
    main()
