"""Meta-World through the classic API: the benchmark's own train/test split, task indices, the copy's task really
set, the horizon, rewards equal to Meta-World's, and clear errors (also without the rl extra installed)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metagrad.errors import ConfigError
from metagrad.rl import make_env, make_policy
from metagrad.rl.envs import metaworld as mw
from metagrad.rl.sampler import rollout

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def reach() -> mw.MetaWorldTaskEnv:
    return mw.MetaWorldTaskEnv("ml1-reach", horizon=6)


def goals(tasks) -> set[tuple[float, ...]]:
    return {tuple(np.round(pickle.loads(t.data)["rand_vec"], 9)) for t in tasks}


def test_train_and_test_tasks_are_the_benchmarks_own_and_disjoint(reach):
    test = make_env("ml1-reach", split="test", horizon=6)
    b = reach.benchmark
    assert test.benchmark is b  # one benchmark object per process
    assert reach.tasks is b.train_tasks and test.tasks is b.test_tasks
    assert len(goals(reach.tasks)) == 50 and len(goals(test.tasks)) == 50
    assert not goals(reach.tasks) & goals(test.tasks)


def test_task_indices_are_distinct_in_range_and_reproducible(reach):
    a = reach.sample_tasks(20, torch.Generator().manual_seed(0))
    b = reach.sample_tasks(20, torch.Generator().manual_seed(0))
    assert a.shape == (20, 1) and a.dtype == torch.int64 and torch.equal(a, b)
    assert len(set(a.flatten().tolist())) == 20 and a.min() >= 0 and a.max() < 50
    many = reach.sample_tasks(80, torch.Generator().manual_seed(0))  # more than there are: with replacement
    assert many.shape == (80, 1) and many.max() < 50


def test_each_copy_runs_its_own_task_for_the_horizon_with_metaworlds_reward(reach):
    tasks = torch.tensor([[3], [41]])
    obs = reach.reset(tasks, 2)
    assert obs.shape == (2, 2, 39) and obs.dtype == torch.float32
    copies = reach._copies
    assert len({id(c) for c in copies}) == 4 and len({id(c.model) for c in copies}) == 4
    for c, env in enumerate(copies):
        expected = pickle.loads(reach.tasks[int(tasks[c // 2])].data)["rand_vec"]
        np.testing.assert_array_equal(env._last_rand_vec, expected)
    # a reference environment with the same task gives the same observations and rewards
    ref = reach.classes["reach-v3"]()
    ref.set_task(reach.tasks[41])
    ref.seed(0)
    o_ref = ref.reset()[0]
    np.testing.assert_allclose(obs[1, 0].numpy(), o_ref, rtol=1e-6, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    for t in range(6):
        a = torch.rand(2, 2, 4, generator=gen) * 2 - 1
        obs, reward, done = reach.step(a)
        o_ref, r_ref, terminated, _, _ = ref.step(a[1, 0].double().numpy())
        np.testing.assert_allclose(obs[1, 0].numpy(), o_ref, rtol=1e-5, atol=1e-6)
        assert float(reward[1, 0]) == pytest.approx(r_ref, rel=1e-5)
        assert not terminated and bool(done.all()) == (t == 5) and bool(done.any()) == (t == 5)
    assert reward[0, 0] != reward[1, 0]  # different goals, different rewards
    assert reach.success.shape == (2, 2)


def test_copies_reuse_their_environments_across_resets(reach):
    reach.reset(torch.tensor([[0], [1], [2]]), 2)
    first = [id(c) for c in reach._copies]
    reach.reset(torch.tensor([[5], [6], [7]]), 2)
    assert [id(c) for c in reach._copies] == first


def test_a_seeded_rollout_is_reproducible(reach):
    torch.manual_seed(0)
    policy = make_policy(reach.action_space, reach.obs_dim, hidden=(16,))
    tasks = reach.sample_tasks(2, torch.Generator().manual_seed(0))
    params = dict(policy.named_parameters())
    a = rollout(reach, policy, params, tasks, 2, torch.Generator().manual_seed(1))
    b = rollout(reach, policy, params, tasks, 2, torch.Generator().manual_seed(1))
    assert a.obs.shape == (2, 2, 6, 39) and a.mask.all()
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)


def test_bad_split_index_and_name_are_config_errors(reach):
    with pytest.raises(ConfigError, match="unknown Meta-World split 'val'; choose train or test"):
        make_env("ml1-reach", split="val")
    with pytest.raises(ConfigError, match="task index 50 is outside the 50 train tasks of ml1-reach"):
        reach.reset(torch.tensor([[50]]), 1)
    with pytest.raises(ConfigError, match="did you mean 'ml45'"):
        make_env("ml46")


def test_a_missing_metaworld_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(ConfigError, match=r"this needs metaworld; install the rl extra: pip install 'metagrad\[rl\]'"):
        mw.benchmark.__wrapped__("ml1-push")


def test_metagrad_imports_without_the_rl_extra_and_the_new_envs_name_it():
    code = ("import sys\nfor m in ('gymnasium', 'mujoco', 'metaworld'): sys.modules[m] = None\n"
            "import metagrad, metagrad.rl\nfrom metagrad.errors import ConfigError\n"
            "from metagrad.rl import make_env\nmake_env('navigation2d')\n"
            "for name in ('cheetah-dir', 'hopper-rand-params', 'ml1-reach', 'ml10'):\n"
            "    try:\n        make_env(name)\n    except ConfigError as e:\n        print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith("install the rl extra: pip install 'metagrad[rl]'") for line in lines)
    assert lines[0].startswith("this needs mujoco") and lines[2].startswith("this needs metaworld")


def test_ml10_train_and_test_classes_are_disjoint_and_tasks_follow_their_class():
    train, test = mw.MetaWorldTaskEnv("ml10", horizon=3), mw.MetaWorldTaskEnv("ml10", split="test", horizon=3)
    assert len(train.classes) == 10 and len(test.classes) == 5 and not set(train.classes) & set(test.classes)
    assert {t.env_name for t in test.tasks} == set(test.classes)
    tasks = test.sample_tasks(5, torch.Generator().manual_seed(0))
    test.reset(tasks, 2)
    for c, env in enumerate(test._copies):
        assert isinstance(env, test.classes[test.tasks[int(tasks[c // 2])].env_name])
    _, _, done = test.step(torch.zeros(5, 2, 4))
    assert not done.any()


def test_a_runs_test_curve_is_taken_on_the_benchmarks_test_split(monkeypatch):
    """`metagrad eval` of a Meta-World run tested on its training split (printed as held-out test tasks); the
    step size is still tuned on the training split (validation), the curve taken on the test split."""
    from metagrad.rl import evaluate as ev
    from metagrad.rl.config import preset
    from metagrad.rl.train import build

    cfg = preset("drs-ppo").replace(env="ml1-reach", horizon=6, hidden=(4,), eval_tasks=2, eval_steps=1,
                                    eval_episodes=1, tune_eval_lr=True, eval_lr_grid=(0.1,))
    learner, _ = build(cfg)
    seen = []
    monkeypatch.setattr(ev, "tune_step_size", lambda lr, *a, **k: seen.append(("tune", lr.env.split)) or 0.1)
    monkeypatch.setattr(ev, "return_curve", lambda lr, *a, **k: seen.append(("test", lr.env.split)) or "curve")
    assert ev.evaluate(learner, cfg) == "curve"
    assert seen == [("tune", "train"), ("test", "test")] and learner.env.split == "train"
    assert ev.meta_test_env(learner.env).tasks is learner.env.benchmark.test_tasks
