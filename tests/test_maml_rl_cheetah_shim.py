"""The thin half-cheetah shim of benchmarks/maml_rl_cheetah.py gives pytorch-maml-rl the environment metagrad's runs
see: the same reset, observations and rewards as one copy of ``make_env("cheetah-dir")``, for both directions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import maml_rl_cheetah
from metagrad.rl.envs import make_env

SEED, STREAM, STEPS = 3, 11, 50


def copy_seed() -> int:
    """The seed ``make_env("cheetah-dir", seed=SEED)`` gives its one copy after ``reseed(STREAM)`` (CopyTaskEnv)."""
    return int(np.random.SeedSequence([SEED, STREAM]).generate_state(1)[0])


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_thin_shim_steps_as_metagrads_environment(direction):
    ours = make_env("cheetah-dir", seed=SEED)
    ours.reseed(STREAM)
    first = ours.reset(torch.tensor([[direction]]), 1)[0, 0].numpy()
    thin = maml_rl_cheetah.ThinCheetahDir()
    thin.reset_task({"direction": direction})
    thin.seed(copy_seed())
    obs = thin.reset()
    assert obs.dtype == np.float32 and obs.shape == (20,) == first.shape
    np.testing.assert_array_equal(obs, first)  # the same reset formula and generator, and rllab's observation
    actions = np.random.default_rng(0).normal(0.0, 1.5, (STEPS, 6)).astype(np.float32)
    assert (np.abs(actions) > 1).mean() > 0.3  # clipping matters
    for a in actions:
        o, r, _ = ours.step(torch.from_numpy(a).view(1, 1, 6))
        obs, reward, thin_done, info = thin.step(a)
        assert obs.dtype == np.float32 and isinstance(reward, float) and thin_done is False
        assert info["task"] == {"direction": direction}
        np.testing.assert_array_equal(obs, o[0, 0].numpy())  # to the bit
        assert reward == float(r[0, 0])


def test_thin_shim_resets_as_a_seeded_gym_environment():
    """Seeded once, it draws each episode's start from gymnasium's formula, continuing its generator (the copy shim
    started every environment of a batch from the same state from the second episode on)."""
    a, b = maml_rl_cheetah.ThinCheetahDir(), maml_rl_cheetah.ThinCheetahDir()
    a.seed(1)
    b.seed(2)
    starts = [env.reset() for env in (a, a, b, b)]
    assert all(not np.array_equal(x, y) for i, x in enumerate(starts) for y in starts[i + 1:])
    sim = a.sim
    noise = sim.data.qpos - sim.init_qpos
    assert np.abs(noise).max() <= 0.1 and np.abs(noise).max() > 0.01  # U(-0.1, 0.1) on the positions
    a.seed(1)
    np.testing.assert_array_equal(a.reset(), starts[0])


def test_thin_shim_draws_tasks_from_its_seed():
    """Tasks come from the generator ``seed`` sets (pytorch-maml-rl's environments: their seeded ``np_random``), so a
    run's tasks follow its ``--seed`` (the copy shim drew them from numpy's unseeded global generator)."""
    draws = []
    for seed in (5, 5, 6):
        env = maml_rl_cheetah.ThinCheetahDir()
        env.seed(seed)
        draws.append([t["direction"] for t in env.sample_tasks(40)])
    assert draws[0] == draws[1] != draws[2]
    assert set(draws[0]) == {-1.0, 1.0} and 10 < draws[0].count(1.0) < 30


def test_run_folders_resume_with_their_own_shim_and_refuse_other_settings():
    """A folder from before ``--shim`` (its settings name none) goes on with the copy shim; a new one takes the thin
    one; a setting that differs from the folder's is named and refused."""
    given = {"seed": 0, "threads": 0, "shim": None}
    old = {"seed": 0}  # written before --threads and --shim
    assert maml_rl_cheetah.run_settings(given, old) == ({"seed": 0, "threads": 0, "shim": "copy"}, [])
    assert maml_rl_cheetah.run_settings(given, None) == ({"seed": 0, "threads": 0, "shim": "thin"}, [])
    assert maml_rl_cheetah.run_settings({**given, "shim": "thin"}, old)[1] == ["shim"]
    assert maml_rl_cheetah.run_settings({**given, "seed": 1, "shim": "copy"}, old)[1] == ["seed"]
    new = {"seed": 0, "threads": 0, "shim": "thin"}
    assert maml_rl_cheetah.run_settings({**given, "shim": "copy"}, new)[1] == ["shim"]
    assert maml_rl_cheetah.run_settings(given, new) == (new, [])


def test_resumed_segments_seed_their_samplers_with_seeds_no_earlier_segment_used():
    """pytorch-maml-rl's sampler seeds worker i's environments with ``seed + i * episodes + j``: the seeds of the
    segments resumed after 0, 1, ... iterations never overlap (``seed + done`` made neighbours share 19 of 20)."""
    for workers, episodes in ((1, 20), (2, 20), (3, 5)):
        used: set[int] = set()
        for done in range(12):
            start = maml_rl_cheetah.segment_seed(7, done, workers, episodes)
            mine = {start + i * episodes + j for i in range(workers) for j in range(episodes)}
            assert not mine & used, (workers, episodes, done)
            used |= mine
