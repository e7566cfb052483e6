"""How much the half-cheetah's forward reward depends on which velocity it reads: the root's displacement over the
step (ours, gymnasium's) or the robot's centre-of-mass velocity after the step (rllab's ``get_body_comvel``, what the
MAML code rewarded).

    OMP_NUM_THREADS=1 python docs/cheetah_com_velocity.py [--run results/long/cheetah-dir-seed-1/maml-trpo] [--tasks 10]

The run's best policy samples one meta-batch (its episodes per task, before and after its inner step); along the very
same steps both velocities are recorded, and the forward part of the return (direction times velocity, summed over
the episode) is printed both ways. Used in docs/meta-rl.md for the half-cheetah gap's account.
"""

from __future__ import annotations

import argparse

import mujoco
import numpy as np
import torch

from metagrad.experiment import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="results/long/cheetah-dir-seed-1/maml-trpo")
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args()
    learner, cfg, info = load_run(args.run, "best")
    env, simulate, root, com = learner.env, learner.env._simulate, [], []

    def recording(actions: np.ndarray) -> None:  # each step: the root's velocity and, on the new state, the CoM's
        alive = list(env._alive)
        simulate(actions)
        velocity = np.zeros(len(env._copies))
        for i in alive:
            sim = env._copies[i]
            mujoco.mj_forward(sim.model, sim.data)
            mujoco.mj_subtreeVel(sim.model, sim.data)
            velocity[i] = sim.data.subtree_linvel[1][0]
        root.append(np.where(np.isin(np.arange(len(velocity)), alive), env._xv, 0.0))
        com.append(velocity)

    env._simulate = recording
    generator = torch.Generator().manual_seed(0)
    tasks = env.sample_tasks(args.tasks, generator)
    learner.sample(tasks, generator)
    direction = np.repeat(tasks[:, 0].numpy(), cfg.episodes)
    print(f"{args.run}, best checkpoint (iteration {info['iteration']}), {args.tasks} tasks x {cfg.episodes} episodes")
    for name, steps in (("before the inner step", slice(0, cfg.horizon)), ("after it", slice(cfg.horizon, None))):
        by_root = float((direction * np.array(root[steps])).sum(0).mean())
        by_com = float((direction * np.array(com[steps])).sum(0).mean())
        print(f"{name}: forward return {by_root:.1f} from the root's displacement, {by_com:.1f} from the "
              f"centre-of-mass velocity (difference {by_com - by_root:+.1f})")


if __name__ == "__main__":
    main()
