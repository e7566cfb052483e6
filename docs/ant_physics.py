"""The ant under gymnasium's settings and rllab's (the MAML code's ant.xml): how long a fresh policy stays up.

    OMP_NUM_THREADS=1 python docs/ant_physics.py [--tasks 5] [--episodes 10] [--stds 1.0 0.5]

For each ``physics`` of ``ant-vel`` and each action noise: a policy acting N(0, std^2) per joint (a fresh Gaussian
policy's actions, std 1 at the initialization), one batch of tasks x episodes over the 200-step horizon: the mean and
shortest episode length (an episode ends when the torso leaves [0.2, 1.0]), the mean return and the return per step.
Used in docs/meta-rl.md to say why the ant families moved to rllab's settings.
"""

from __future__ import annotations

import argparse

import torch

from metagrad.rl.envs.locomotion import MujocoTaskEnv


def episodes(physics: str, std: float, tasks: int, count: int, seed: int = 0) -> dict[str, float]:
    """Episode lengths and returns of random N(0, std^2) actions on ``ant-vel`` with ``physics``."""
    env = MujocoTaskEnv("ant-vel", horizon=200, seed=seed, physics=physics)
    generator = torch.Generator().manual_seed(seed)
    env.reset(env.sample_tasks(tasks, generator), count)
    alive, total, length = torch.ones(tasks, count), torch.zeros(tasks, count), torch.zeros(tasks, count)
    for _ in range(env.horizon):
        _, reward, done = env.step(torch.randn(tasks, count, env.action_space.shape[0], generator=generator) * std)
        total, length = total + reward * alive, length + alive
        alive = alive * (~done).float()
    return {"seconds per action": env._pool[0].dt, "mean length": float(length.mean()),
            "shortest": float(length.min()), "return": float(total.mean()), "per step": float((total / length).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--stds", type=float, nargs="+", default=[1.0, 0.5])
    args = parser.parse_args()
    print("| physics | action std | s per action | mean episode length | shortest | return | per step |")
    print("|---|---|---|---|---|---|---|")
    for std in args.stds:
        for physics in ("gym", "rllab"):
            r = episodes(physics, std, args.tasks, args.episodes)
            print(f"| {physics} | {std} | {r['seconds per action']:.2f} | {r['mean length']:.1f} | "
                  f"{r['shortest']:.0f} | {r['return']:.1f} | {r['per step']:.3f} |")


if __name__ == "__main__":
    main()
