"""The MAML code's measurement of the navigation return (rllab's VectorizedSampler: 40 environments, a batch of
4000 steps, unfinished episodes dropped) against a hand count, and its curve on a small learner."""

from __future__ import annotations

import pytest
import torch

from metagrad.rl.config import RLConfig
from metagrad.rl.evaluate import held_out_goals, return_curve, rllab_average, rllab_return_curve
from metagrad.rl.sampler import Trajectories
from metagrad.rl.train import build


def _episodes(lengths: list[list[int]], returns: list[list[float]], horizon: int = 100) -> Trajectories:
    """One task; ``lengths[i][j]``, ``returns[i][j]``: episode j of environment i (stored at i * m + j)."""
    flat_len = torch.tensor(lengths).flatten()
    flat_ret = torch.tensor(returns).flatten()
    mask = (torch.arange(horizon)[None, :] < flat_len[:, None]).float()
    rewards = mask * (flat_ret / flat_len)[:, None]
    k = flat_len.numel()
    z = torch.zeros(1, k, horizon)
    return Trajectories(torch.zeros(1, k, horizon, 2), torch.zeros(1, k, horizon, 2), rewards[None], mask[None],
                        torch.zeros(1, k, horizon, 4), z, z, z)


def test_rllab_average_counts_the_episodes_completed_when_the_batch_fills():
    # environment 0 ends episodes at steps 10, 20, 120; environment 1 at 100, 200, 300. Completed steps reach
    # 200 at step 120: the episodes ending by then are kept (-1, -2, -50 and -40), the others dropped
    traj = _episodes([[10, 10, 100], [100, 100, 100]], [[-1.0, -2.0, -50.0], [-40.0, -41.0, -42.0]])
    got = rllab_average(traj, envs=2, batch=200)
    assert torch.allclose(got, torch.tensor([(-1 - 2 - 50 - 40) / 4]))
    # episodes that all run to the horizon: one per environment, the plain mean
    full = _episodes([[100, 100], [100, 100]], [[-3.0, -9.0], [-5.0, -9.0]])
    assert torch.allclose(rllab_average(full, envs=2, batch=200), torch.tensor([-4.0]))
    with pytest.raises(ValueError, match="sample more"):
        rllab_average(traj, envs=2, batch=10_000)


def test_rllab_return_curve_runs_on_the_same_tasks_and_agrees_without_early_ends():
    cfg = RLConfig().replace(hidden=(16, 16), horizon=20)
    learner, _ = build(cfg)
    curve = rllab_return_curve(learner, 6, 1, (0.1, 0.05), seed=3, envs=4, batch=4 * 20)
    assert len(curve["mean"]) == 2
    # each step moves the point at most max_speed * sqrt(2) (each component clipped), so after t steps its distance
    # to a goal g is within |g| -+ t max_speed sqrt(2): whatever the policy, a task's mean return lies between these
    # sums (goal_radius: a run that ended at the goal). Only a return below zero was checked, which every one is
    env = learner.env
    goals = held_out_goals(learner, 6, 3).double().norm(dim=1)[:, None]
    moved = torch.arange(1, env.horizon + 1, dtype=torch.float64) * env.max_speed * 2**0.5
    low, high = -(goals + moved).sum(1).mean(), -(goals - moved).clamp(min=0).sum(1).mean() + env.goal_radius
    assert all(low <= v <= high for v in curve["mean"]), (float(low), curve["mean"], float(high))
    assert curve["lr"] == [0.1]  # the step size its one step took, not the schedule's unused tail
    plain, _, _ = return_curve(learner, 6, 0, 4, (0.1,), seed=3)
    # an untrained policy never reaches the goal: every episode runs to the horizon, so the first batch is
    # exactly one episode per environment, the same episodes as return_curve's (same tasks, same generator)
    assert curve["mean"][0] == pytest.approx(plain["mean"][0], abs=1e-4)


def test_tuning_passes_over_a_diverging_step_size_and_tunes_with_the_tests_episodes(monkeypatch):
    """A step size whose policy diverges is skipped, not the end of the evaluation (the supervised tuning scores it
    infinitely bad); all of them diverging is one line; the candidates are scored on as many episodes per step as
    the test takes."""
    import metagrad.rl.evaluate as rl_evaluate
    from metagrad.errors import ConfigError

    cfg = RLConfig().replace(hidden=(8,), horizon=10, eval_steps=1, eval_tasks=3, eval_episodes=3,
                             tune_eval_lr=True, eval_lr_grid=(1e30, 0.1))
    learner, _ = build(cfg)
    assert rl_evaluate.tune_step_size(learner, (1e30, 0.1), 1, 2, seed=0, num_tasks=3) == 0.1
    with pytest.raises(ConfigError, match=r"step size of the grid \[1e\+30\] diverged.*--set eval_lr_grid"):
        rl_evaluate.tune_step_size(learner, (1e30,), 1, 2, seed=0, num_tasks=3)
    seen = []
    tune = rl_evaluate.tune_step_size
    monkeypatch.setattr(rl_evaluate, "tune_step_size", lambda *a, **k: seen.append(a[3]) or tune(*a, **k))
    curve, _, _ = rl_evaluate.evaluate(learner, cfg)
    assert seen == [3] and curve["lr"] == [0.1]  # tuned 0.1 (then 0.05, unused by the one step)


def test_tuning_passes_over_a_step_size_whose_rewards_are_not_finite():
    """An environment that returns NaN rewards once actions grow (a simulator blowing up) ended the tuning with
    TrainingDiverged instead of passing over that step size."""
    import metagrad.rl.evaluate as rl_evaluate

    learner, _ = build(RLConfig().replace(hidden=(8,), horizon=10))
    step = learner.env.step

    def blows_up(actions):
        obs, reward, done = step(actions)
        return obs, torch.where(actions.abs().amax(-1) > 5, torch.nan, reward), done

    learner.env.step = blows_up
    assert rl_evaluate.tune_step_size(learner, (0.1, 20.0), 2, 3, seed=7, num_tasks=3) == 0.1


def test_the_test_step_follows_the_trained_one_unless_given(capsys):
    """No eval_lr: the test steps are the trained inner_lr, then eval_later times it (the MAML paper's alpha, then
    alpha / 2); a run trained at another inner_lr was tested at 0.1 whatever it trained with. eval_lr given is
    tested as given, and eval_later beside it is refused (it would be ignored)."""
    from metagrad.cli import main
    from metagrad.rl import evaluate as rl_evaluate

    cfg = RLConfig().replace(hidden=(8,), horizon=10, eval_steps=2, eval_tasks=2, eval_episodes=2, inner_lr=(0.3,))
    learner, _ = build(cfg)
    assert rl_evaluate.evaluate(learner, cfg)[0]["lr"] == [0.3, 0.15]
    assert rl_evaluate.evaluate(learner, cfg.replace(eval_later=0.1))[0]["lr"] == [0.3, pytest.approx(0.03)]
    assert rl_evaluate.evaluate(learner, cfg.replace(eval_lr=(0.2,)))[0]["lr"] == [0.2]
    args = ["train", "--config", "maml-trpo-navigation", "--set", "eval_lr=0.2", "--set", "eval_later=0.1",
            "--out", "unused"]
    assert main(args) == 2
    assert "--eval-later scales a tuned or the trained first step; this config tests at eval_lr [0.2]" in \
        capsys.readouterr().err


def test_a_tuned_step_at_the_top_of_the_grid_is_said(capsys, monkeypatch):
    """The best step size being the grid's largest says the grid may cut the best off (navigation's random and
    ant direction's baselines were tuned to 1.0, the default grid's top, without a word)."""
    import metagrad.rl.evaluate as rl_evaluate

    learner, _ = build(RLConfig().replace(hidden=(8,), horizon=10))
    for sign in (1.0, -1.0):  # the return rises with the step size, then falls with it
        def returns(learner, tasks, steps, episodes, lr, gen, sign=sign):
            return torch.full((3, steps + 1), sign * lr[0]), None

        monkeypatch.setattr(rl_evaluate, "adaptation_returns", returns)
        best = rl_evaluate.tune_step_size(learner, (0.1, 0.5, 1.0), 1, 2, seed=0, num_tasks=3)
        assert best == (1.0 if sign > 0 else 0.1)
        err = capsys.readouterr().err
        assert ("tuned test-time step size 1 is the largest of the grid [0.1, 0.5, 1.0]" in err) == (sign > 0)
        assert ("--set eval_lr_grid=" in err) == (sign > 0)
    monkeypatch.setattr(rl_evaluate, "adaptation_returns", lambda *a: (torch.full((3, 2), a[4][0]), None))
    rl_evaluate.tune_step_size(learner, (0.1, 0.5, 1.0), 1, 2, seed=0, num_tasks=3, option="--lr-grid A,B,...")
    err = capsys.readouterr().err  # the trade-off study has no --set: its own option is named
    assert "largest of the grid" in err and "--set" not in err and "widen the grid (--lr-grid A,B,...)" in err
