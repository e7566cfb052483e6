"""Meta-RL over 2 processes (torchrun, gloo on the loopback address): a meta-batch's tasks split over the processes
give the same TRPO, PPO and VPG steps as one process on the whole meta-batch; the reproduction runs under torchrun
with one process writing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from test_distributed import env, torchrun

STEP = textwrap.dedent("""
    import sys
    import torch
    from metagrad.distributed import Distributed, Share
    from metagrad.rl import MetaRL, Navigation2D, make_policy
    from metagrad.rl.sampler import Trajectories
    from metagrad.rl.trpo import flatten

    algo, outer, subsample, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    # goals within reach: episodes end early, each process's share of the valid steps differs from its share of
    # the tasks (the pooled KLs must weigh processes by the former)
    env = Navigation2D(horizon=5, goal_low=-0.3, goal_high=0.3, goal_radius=0.25)
    policy = make_policy(env.action_space, 2, hidden=(8,), activation="tanh", init_std=0.5).double()
    # damping 0.1: with 1e-5 the conjugate gradient amplifies round-off so much that merely reordering the tasks
    # in one process moves the TRPO step by 2e-5 (measured); with 0.1 reordering moves it by 1.7e-7
    learner = MetaRL(policy, env, algo=algo, outer=outer, inner_lr=0.3, episodes=3, ppo_epochs=3, cg_damping=0.1,
                     hvp_subsample=subsample)
    opt = torch.optim.Adam(policy.parameters(), lr=0.01) if outer != "trpo" else None
    tasks = env.sample_tasks(5, torch.Generator().manual_seed(0)).double()
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))  # the whole meta-batch, on every process
    valid = [float(t.mask[:3].sum() / t.mask.sum()) for t in (*trajs, out)]
    assert all(0.3 < v < 0.9 for v in valid) and max(valid) - min(valid) > 0.005 and valid[-1] != 0.6, valid
    group, share = Distributed.from_env(), None
    if group is not None:
        shard = group.shard(5)
        trajs = [Trajectories(*(f[shard] for f in t)) for t in trajs]
        out = Trajectories(*(f[shard] for f in out))
        share = Share(group, (shard.stop - shard.start) / 5)
    learner.update(trajs, out, opt, share)
    if group is None or group.is_main:
        torch.save(flatten(dict(policy.named_parameters())).detach(), path)
    if group is not None:
        group.close()
""")


@pytest.mark.parametrize(("algo", "outer", "subsample"),
                         [("maml", "trpo", 1.0), ("maml", "trpo", 0.6), ("promp", "ppo", 1.0), ("maml", "vpg", 1.0)])
def test_sharded_meta_rl_steps_equal_one_process(tmp_path, algo, outer, subsample):
    """Also where episodes end early: the KLs and their curvature (on every episode or a subsample) are means over
    the meta-batch's valid steps, weighed by each process's share of them (by its share of the tasks, TRPO's step
    moved by 2e-3, PPO's by 2e-5)."""
    script = tmp_path / "step.py"
    script.write_text(STEP)
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    subprocess.run([sys.executable, str(script), algo, outer, str(subsample), str(single)], check=True, env=env(),
                   timeout=300)
    torchrun([str(script), algo, outer, str(subsample), str(double)])
    a, b = torch.load(single), torch.load(double)
    assert float((a - b).abs().max()) < (1e-6 if outer == "trpo" else 1e-9)  # TRPO: as much as a reordering
    assert float(a.abs().max()) > 0


def test_navigation_reproduction_trains_on_two_processes(tmp_path):
    out = tmp_path / "nav"
    proc = torchrun(["-m", "metagrad", "reproduce", "navigation", "--algo", "maml-trpo", "--iterations", "2",
                     "--set", "hidden=8", "--set", "meta_batch_size=4", "--set", "episodes=2",
                     "--set", "eval_tasks=4", "--set", "eval_episodes=2", "--set", "eval_steps=1",
                     "--out", str(out), "--no-progress"], fresh=out)
    assert "on 2 processes" in proc.stderr
    assert proc.stdout.count("2D navigation: average return") == 1  # only process 0 evaluates and prints
    lines = (out / "maml-trpo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines] == [1, 2]
    # each iteration counts both processes' environment steps: 4 tasks x 2 episodes x 100 steps, twice
    assert json.loads(lines[0])["env_steps"] == 2 * 4 * 2 * 100
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["maml-trpo"]["iterations"] == 2


def test_tradeoff_rl_trains_on_two_processes_and_one_reports(tmp_path):
    out = tmp_path / "study"
    proc = torchrun(["-m", "metagrad", "tradeoff", "rl", "--env", "navigation2d", "--budget", "4000",
                     "--seeds", "2", "--checkpoints", "2", "--meta-batch-size", "4", "--episodes", "2",
                     "--test-tasks", "3", "--test-episodes", "2", "--out", str(out), "--no-progress"], fresh=out)
    assert proc.stdout.count("P(DRS better)") == 1
    results = json.loads((out / "tradeoff_rl.json").read_text())
    assert all(run[-1] >= 4000 for runs in results["env_steps"].values() for run in runs)
    lines = (out / "promp" / "seed-1" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["env_steps"] == 2 * 4 * 2 * 100  # both processes' steps, pre and post update
