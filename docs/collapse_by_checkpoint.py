"""Why MAML-VPG's half-cheetah direction runs fall back late: the best and the last checkpoints of the kept runs side
by side.

    OMP_NUM_THREADS=1 python docs/collapse_by_checkpoint.py [RUN ...] [--tasks 10]

For each run directory (default: the three MAML-VPG seeds of the SG-MRL Table 2 row in results/long) and each of its
checkpoints, one meta-batch of ``--tasks`` tasks at the run's own settings: the returns before and after the inner
step, how far that step moves the policy's mean action (in units of the policy's std), the norm of the inner
gradient, the cosine between the mean step of the forward tasks and that of the backward ones (opposite tasks should
step apart), and the fraction of saturated hidden units (|tanh| > 0.99) over the visited states, per hidden layer.
Used in docs/meta-rl.md to say where the collapse lives: in the pre-update policy, not in the inner step's size.
"""

from __future__ import annotations

import argparse

import torch

from metagrad.experiment import load_run
from metagrad.rl.sampler import policy_dist

RUNS = [f"results/long/sgmrl-cheetah-dir-scaled-tanh{suffix}/maml-vpg" for suffix in ("", "-seed-1", "-seed-2")]


def diagnose(run: str, checkpoint: str, tasks: int, seed: int = 1000) -> dict[str, float]:
    """Returns, inner-step size and saturation of one checkpoint on one meta-batch."""
    learner, _, info = load_run(run, checkpoint)
    generator = torch.Generator().manual_seed(seed)
    goals = learner.env.sample_tasks(tasks, generator)
    trajs, out = learner.sample(goals, generator)
    theta = learner.meta_params()
    hidden = [m for m in learner.policy.modules() if isinstance(m, torch.nn.Tanh)]
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, h: seen.append(h.detach())) for m in hidden]
    before = policy_dist(learner.policy, theta, out.obs, False)  # the pre-update policy on the post-step states
    for h in hooks:
        h.remove()
    adapted = learner.adapted_path(theta, trajs)[-1]
    after = policy_dist(learner.policy, adapted, out.obs, True)
    a, mask = learner.policy.action_dim, out.mask.unsqueeze(-1)
    std = float(theta["log_std"].exp().mean())
    change = float(((after[..., :a] - before[..., :a]).abs() * mask).sum() / mask.sum() / a) / std
    step = torch.cat([(adapted[n] - theta[n]).reshape(adapted[n].shape[0], -1) for n in theta], 1)
    forward, backward = step[goals[:, 0] > 0].mean(0), step[goals[:, 0] < 0].mean(0)
    row = {"iteration": info["iteration"], "before": float(trajs[0].episode_returns.mean()),
           "after": float(out.episode_returns.mean()), "change": change, "step": float(step.norm(dim=1).mean()),
           "cosine": float(torch.nn.functional.cosine_similarity(forward, backward, dim=0))}
    valid = out.mask.bool()
    for k, h in enumerate(seen):
        row[f"saturated{k + 1}"] = float((h.reshape(*valid.shape, -1)[valid].abs() > 0.99).float().mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=RUNS)
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | checkpoint (iteration) | return before | after one step | mean action change (std units) "
          "| inner step norm | cosine, forward vs backward step | saturated, layer 1 | layer 2 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        for checkpoint in ("best", "last"):
            r = diagnose(run, checkpoint, args.tasks)
            print(f"| {run} | {checkpoint} ({r['iteration']}) | {r['before']:.1f} | {r['after']:.1f} | "
                  f"{r['change']:.4f} | {r['step']:.3f} | {r['cosine']:+.2f} | {r['saturated1']:.1%} | "
                  f"{r['saturated2']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
