"""Environment steps per second of the meta-RL sampler (``rollout`` with a Gaussian 2x100 policy) against the raw
simulators stepping random actions in a plain loop over the same number of instances, in the same run.

    taskset -c 1 python benchmarks/rl_sampler_speed.py                  # writes benchmarks/results/rl_sampler.*
    taskset -c 1 python benchmarks/rl_sampler_speed.py --envs cheetah-dir --repeats 1 --out /tmp/x

The raw loop is what the sampler cannot avoid: one ``step`` of each unwrapped simulator per copy (random actions
drawn in one numpy call per step, fallen robots reset). The sampler adds the policy, action clipping, the task's
reward and the trajectory tensors; the goal is sampler >= 80% of raw. The raw loop calls gymnasium's ``step``; the
sampler steps the half-cheetah, swimmer and ant in MuJoCo directly (``direct_stepper`` and ``ant_stepper`` in
``metagrad.rl.envs.locomotion``), so there it can pass 100%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metagrad.rl import make_env, make_policy
from metagrad.rl.envs.copies import CopyTaskEnv
from metagrad.rl.sampler import rollout
from report import provenance, provenance_line

RESULTS = Path(__file__).resolve().parent / "results"


def clock() -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds): on a shared machine the CPU time is what the loop itself
    costs, the wall time also counts the time other jobs held the core."""
    return time.process_time(), time.perf_counter()


def rates(steps: int, start: tuple[float, float]) -> tuple[float, float]:
    """Steps per CPU second and per wall second since ``start``."""
    cpu, wall = clock()
    return steps / (cpu - start[0]), steps / (wall - start[1])


def twin_env(env: CopyTaskEnv) -> CopyTaskEnv:
    """Another TaskEnv like ``env`` (same family or benchmark and split, same seed): its simulators serve the
    raw loops, outside the TaskEnv."""
    name = getattr(env, "family_name", None) or env.name  # type: ignore[attr-defined]
    split = {"split": env.split} if hasattr(env, "split") else {}  # type: ignore[attr-defined]
    twin = make_env(name, horizon=env.horizon, seed=env.seed, **split)
    assert isinstance(twin, CopyTaskEnv)
    return twin


def replay_steps_per_second(twin: CopyTaskEnv, tasks: torch.Tensor, episodes: int, traj: Any,
                            seed: int) -> tuple[float, float]:
    """The sampler's own actions replayed through the twin's simulators from the same initial states (reseeded as
    ``rollout`` reseeds from its generator, ``seed``'s): exactly the simulator work of that rollout, in a plain
    loop."""
    twin.reseed(int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(seed))))
    twin.reset(tasks, episodes)
    sims, n, horizon = twin._copies, len(twin._copies), traj.mask.shape[-1]
    actions = np.clip(traj.actions.reshape(n, horizon, -1).double().numpy(), twin._low, twin._high)
    mask = traj.mask.reshape(n, horizon).bool().numpy()
    alive = [np.flatnonzero(mask[:, t]).tolist() for t in range(horizon)]
    start = clock()
    for t in range(horizon):
        for i in alive[t]:
            sims[i].step(actions[i, t])
    return rates(int(mask.sum()), start)


def raw_steps_per_second(sims: list[Any], horizon: int, low: np.ndarray, high: np.ndarray,
                         seed: int) -> tuple[float, float]:
    """Random actions through the unwrapped simulators, one plain loop, resetting an episode that ends."""
    rng = np.random.default_rng(seed)
    for i, s in enumerate(sims):
        s.reset(seed=i)
    steps = 0
    start = clock()
    for _ in range(horizon):
        actions = rng.uniform(low, high, size=(len(sims), low.size))
        for s, a in zip(sims, actions, strict=True):
            _, _, terminated, truncated, _ = s.step(a)
            steps += 1
            if terminated or truncated:
                s.reset()
    return rates(steps, start)


def sampler_steps_per_second(env: CopyTaskEnv, tasks: torch.Tensor, episodes: int,
                             seed: int) -> tuple[tuple[float, float], Any]:
    """``rollout`` (reset included) with a fresh Gaussian 2x100 policy; steps/s and the trajectories."""
    torch.manual_seed(seed)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(100, 100))
    params = dict(policy.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    start = clock()
    traj = rollout(env, policy, params, tasks, episodes, gen)
    return rates(traj.steps, start), traj


def measure(name: str, num_tasks: int, episodes: int, horizon: int, repeats: int) -> dict[str, Any]:
    env = make_env(name, horizon=horizon)
    assert isinstance(env, CopyTaskEnv)
    tasks = env.sample_tasks(num_tasks, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    sampler_steps_per_second(env, tasks, episodes, 0)  # warm-up: builds the copies
    setup = time.perf_counter() - t0
    twin = twin_env(env)
    twin.reset(tasks, episodes)  # builds the raw loops' simulators, with the tasks set
    raw, replay, sampled = [], [], []
    for r in range(repeats):  # interleaved, so that a slow phase of the machine hits all alike
        raw.append(raw_steps_per_second(twin._copies, horizon, env._low, env._high, r))
        speed, traj = sampler_steps_per_second(env, tasks, episodes, r)
        sampled.append(speed)
        replay.append(replay_steps_per_second(twin, tasks, episodes, traj, r))
    out: dict[str, Any] = {"env": name, "tasks": num_tasks, "episodes": episodes, "horizon": horizon,
                           "copies": num_tasks * episodes, "repeats": repeats,
                           "mean_episode_length": round(float(traj.mask.sum(-1).mean()), 1),
                           "first_rollout_seconds": round(setup, 2)}
    for j, clock_name in enumerate(("cpu", "wall")):
        raw_m, replay_m, sampler_m = (statistics.median(v[j] for v in runs) for runs in (raw, replay, sampled))
        out[clock_name] = {"raw_steps_per_second": round(raw_m), "replay_steps_per_second": round(replay_m),
                           "sampler_steps_per_second": round(sampler_m),
                           "sampler_over_raw": round(sampler_m / raw_m, 3),
                           "sampler_over_replay": round(sampler_m / replay_m, 3),
                           "raw_all": [round(v[j]) for v in raw], "replay_all": [round(v[j]) for v in replay],
                           "sampler_all": [round(v[j]) for v in sampled]}
    return out


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Meta-RL sampler vs raw simulators", "",
             f"{meta['tasks']} tasks x {meta['episodes']} episodes x horizon {meta['horizon']}, Gaussian 2x100 policy "
             f"(fresh, std 1), torch threads {meta['threads']}, CPU affinity {meta['affinity']}; median of "
             f"{meta['repeats']} interleaved runs; gymnasium {meta['gymnasium']}, mujoco {meta['mujoco']}, "
             f"metaworld {meta['metaworld']}. `taskset -c 1 python benchmarks/rl_sampler_speed.py`.", "",
             "- raw: the same number of unwrapped simulators stepping uniform random actions in a plain loop "
             "(an episode that ends is reset and goes on), through gymnasium's `step` (the sampler steps the "
             "half-cheetah, swimmer and ant in MuJoCo directly, skipping its Python: there it can pass 100%);",
             "- replay: the sampler's own actions replayed through fresh simulators from the same initial states in a "
             "plain loop: exactly the simulator work of the sampled rollout (random actions put a robot in other "
             "states, where a step may cost more or less);",
             "- sampler: `metagrad.rl.sampler.rollout` (reset, policy, clipping, task rewards, trajectory tensors).",
             "",
             "Steps per CPU second of this process (the machine is shared: wall-clock rates, also in the JSON, "
             "count the time other jobs held the core).", "",
             "| env | copies | mean episode length | raw steps/s | replay steps/s | sampler steps/s | sampler / raw "
             "| sampler / replay | wall: sampler / raw, / replay | first rollout (builds copies) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        c, w = r["cpu"], r["wall"]
        lines.append(f"| {r['env']} | {r['copies']} | {r['mean_episode_length']} | {c['raw_steps_per_second']:,} | "
                     f"{c['replay_steps_per_second']:,} | {c['sampler_steps_per_second']:,} | "
                     f"{c['sampler_over_raw']:.0%} | {c['sampler_over_replay']:.0%} | "
                     f"{w['sampler_over_raw']:.0%}, {w['sampler_over_replay']:.0%} | {r['first_rollout_seconds']} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="cheetah-dir,swimmer-vel,ant-vel,hopper-rand-params,ml1-reach")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.envs.split(","):
        rows.append(measure(name, args.tasks, args.episodes, args.horizon, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    affinity = sorted(os.sched_getaffinity(0))
    meta = {"provenance": provenance(), "tasks": args.tasks, "episodes": args.episodes, "horizon": args.horizon,
            "repeats": args.repeats,
            "threads": args.threads, "affinity": affinity, "python": platform.python_version(),
            "torch": torch.__version__, **{m: version(m) for m in ("gymnasium", "mujoco", "metaworld")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl_sampler.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    text = provenance_line(meta["provenance"]) + "\n\n" + markdown(rows, meta)
    (out / "rl_sampler.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
