"""Seconds per MAML-TRPO meta-iteration of pytorch-maml-rl (tristandeleu/pytorch-maml-rl) on its 2D navigation, the
loop of its ``train.py`` timed: run by ``navigation_speed.py --maml-rl REPO`` in pytorch-maml-rl's own environment
(``benchmarks/setup_maml_rl.sh``: numpy<2, gym 0.17.3), never imported by metagrad.

    PYTHON_OF_ITS_VENV benchmarks/maml_rl_speed.py --repo PATH [--iterations 6] [--workers 2] [--config NAME]

Its code is used as it is, with the one call current torch lacks supplied at run time (``torch.lstsq``, removed in
torch 2.0, by ``torch.linalg.lstsq``). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="a checkout of tristandeleu/pytorch-maml-rl")
    p.add_argument("--config", default="2d-navigation", help="a file of its configs/maml/ (without .yaml)")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads of the learner (0: torch's default)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    import gym
    import torch
    import yaml

    def lstsq(b, a):  # torch < 2.0's torch.lstsq(B, A) -> (solution, QR)
        return torch.linalg.lstsq(a, b).solution, None

    torch.lstsq = lstsq
    import maml_rl.envs  # noqa: F401  (registers its environments)
    from maml_rl.baseline import LinearFeatureBaseline
    from maml_rl.metalearners import MAMLTRPO
    from maml_rl.samplers import MultiTaskSampler
    from maml_rl.utils.helpers import get_input_size, get_policy_for_env

    config = yaml.safe_load((Path(args.repo) / "configs" / "maml" / f"{args.config}.yaml").read_text())
    torch.manual_seed(args.seed)
    env = gym.make(config["env-name"], **config.get("env-kwargs", {}))
    env.close()
    policy = get_policy_for_env(env, hidden_sizes=config["hidden-sizes"], nonlinearity=config["nonlinearity"])
    policy.share_memory()
    baseline = LinearFeatureBaseline(get_input_size(env))
    sampler = MultiTaskSampler(config["env-name"], env_kwargs=config.get("env-kwargs", {}),
                               batch_size=config["fast-batch-size"], policy=policy, baseline=baseline, env=env,
                               seed=args.seed, num_workers=args.workers)
    if args.threads:  # the learner's own threads, set once the sampler's workers run (they keep the environment's)
        torch.set_num_threads(args.threads)
    learner = MAMLTRPO(policy, fast_lr=config["fast-lr"], first_order=config["first-order"], device="cpu")
    walls, returns = [], []
    for i in range(args.warmup + args.iterations):
        t0 = time.perf_counter()
        tasks = sampler.sample_tasks(num_tasks=config["meta-batch-size"])
        futures = sampler.sample_async(tasks, num_steps=config["num-steps"], fast_lr=config["fast-lr"],
                                       gamma=config["gamma"], gae_lambda=config["gae-lambda"], device="cpu")
        learner.step(*futures, max_kl=config["max-kl"], cg_iters=config["cg-iters"], cg_damping=config["cg-damping"],
                     ls_max_steps=config["ls-max-steps"], ls_backtrack_ratio=config["ls-backtrack-ratio"])
        _, valid = sampler.sample_wait(futures)
        if i >= args.warmup:
            walls.append(time.perf_counter() - t0)
            returns.append(float(sum(e.rewards.sum(0).mean() for e in valid) / len(valid)))
    sampler.close()
    print(json.dumps({"library": "pytorch-maml-rl", "config": args.config, "workers": args.workers,
                      "learner_threads": torch.get_num_threads(),
                      "hidden": config["hidden-sizes"], "activation": config["nonlinearity"],
                      "meta_batch_size": config["meta-batch-size"], "episodes": config["fast-batch-size"],
                      "iterations": len(walls), "seconds_per_iteration_median": round(statistics.median(walls), 3),
                      "seconds_per_iteration_range": [round(min(walls), 3), round(max(walls), 3)],
                      "return_post_last": round(returns[-1], 2)}))


if __name__ == "__main__":
    main()
