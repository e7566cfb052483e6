"""2D navigation, the gymnasium bridge, returns, GAE and the linear feature baseline."""

from __future__ import annotations

import pytest
import torch

from metagrad.errors import ConfigError, TrainingDiverged
from metagrad.rl import Navigation2D, make_env, make_policy
from metagrad.rl.baseline import features, fit_predict
from metagrad.rl.returns import discounted_returns, gae, normalize
from metagrad.rl.sampler import process, rollout
from rl_fixtures import EndsThenBreaks


def test_navigation_clips_velocity_rewards_distance_and_stops_at_the_goal():
    env = Navigation2D(reward="distance")
    goals = torch.tensor([[0.05, 0.0], [0.3, -0.4]])
    obs = env.reset(goals, 2)
    assert obs.shape == (2, 2, 2) and obs.abs().sum() == 0
    actions = torch.tensor([[[0.05, 0.0], [1.0, -1.0]], [[0.3, -0.4], [-0.02, 0.5]]])
    obs, reward, done = env.step(actions)
    expected_pos = torch.tensor([[[0.05, 0.0], [0.1, -0.1]], [[0.1, -0.1], [-0.02, 0.1]]])
    assert torch.allclose(obs, expected_pos)
    assert torch.allclose(reward, -(expected_pos - goals[:, None]).norm(dim=-1))
    assert done.tolist() == [[True, False], [False, False]]  # the first episode reached its goal exactly
    squared = Navigation2D(reward="squared")
    squared.reset(goals, 2)
    _, r2, _ = squared.step(actions)
    assert torch.allclose(r2, -reward**2)


def test_normalized_actions_scale_to_the_velocity_limit_as_rllab_normalize():
    """The policy acts in [-1, 1]; the environment moves by 0.1 times that, still clipped to 0.1 per axis."""
    env = Navigation2D(normalized_actions=True)
    assert env.action_space.low == -1.0 and env.action_space.high == 1.0
    raw = Navigation2D()
    goals = torch.tensor([[0.3, -0.4]])
    env.reset(goals, 1)
    raw.reset(goals, 1)
    actions = torch.tensor([[[0.5, -3.0]]])
    obs, reward, _ = env.step(actions)
    assert torch.allclose(obs, torch.tensor([[[0.05, -0.1]]]))
    assert torch.equal((obs, reward)[1], raw.step(torch.tensor([[[0.05, -0.1]]]))[1])


def test_navigation_goals_lie_in_the_chosen_square_and_the_oracle_sees_them():
    gen = torch.Generator().manual_seed(0)
    goals = Navigation2D(goal_low=0.0, goal_high=1.0).sample_tasks(500, gen)
    assert goals.min() >= 0 and goals.max() <= 1 and goals.min() < 0.01 and goals.max() > 0.99
    oracle = Navigation2D(oracle=True)
    obs = oracle.reset(goals[:3], 4)
    assert oracle.obs_dim == 4 and torch.equal(obs[..., 2:], goals[:3, None].expand(3, 4, 2))


def test_rollout_masks_steps_after_an_episode_ends():
    env = Navigation2D(horizon=30, goal_radius=0.15)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, 2, hidden=(8,))
    tasks = torch.tensor([[0.0, 0.1], [0.4, 0.4]])
    traj = rollout(env, policy, dict(policy.named_parameters()), tasks, 6, torch.Generator().manual_seed(0))
    assert traj.obs.shape == (2, 6, 30, 2) and traj.mask.shape == (2, 6, 30)
    first = traj.mask[0, :, 0]
    assert first.all()  # every episode takes its first step
    ended = (traj.mask[0].sum(-1) < 30)
    assert ended.any()  # the goal at distance 0.1 (radius 0.15) ends some episodes early
    # once masked, always masked; and no reward is counted after the end
    assert (traj.mask[..., 1:] <= traj.mask[..., :-1]).all()
    assert (traj.rewards[traj.mask == 0] == 0).all()


def test_discounted_returns_and_gae_match_a_loop():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.float64)
    mask[1, 4:] = 0
    gamma, lam = 0.9, 0.7
    ret, adv = torch.zeros_like(r), torch.zeros_like(r)
    for i in range(3):
        acc, a, next_v = 0.0, 0.0, 0.0
        for t in reversed(range(7)):
            if mask[i, t] == 0:
                continue
            acc = r[i, t] + gamma * acc
            delta = r[i, t] + gamma * next_v - v[i, t]
            a = delta + gamma * lam * a
            ret[i, t], adv[i, t], next_v = acc, a, v[i, t]
    assert torch.allclose(discounted_returns(r, mask, gamma), ret)
    assert torch.allclose(gae(r, v, mask, gamma, lam), adv)
    assert torch.allclose(gae(r, v, mask, gamma, 1.0), (ret - v) * mask)


def test_linear_feature_baseline_fits_a_linear_return_exactly():
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(4, 5, 30, 2, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 5, 30, dtype=torch.float64)
    mask[2, 1, 20:] = 0
    weights = torch.randn(4, 2 * 2 + 4, generator=gen, dtype=torch.float64)  # one linear law per task
    returns = (features(obs, mask) * weights[:, None, None]).sum(-1)
    exact = fit_predict(obs, returns, mask, reg=0.0)
    assert torch.allclose(exact, returns, atol=1e-9, rtol=0)
    ridge = fit_predict(obs.float(), returns.float(), mask.float())  # rllab's ridge 1e-5: close, not exact
    assert torch.allclose(ridge, returns.float(), atol=1e-3, rtol=1e-3)
    assert (exact[mask == 0] == 0).all()
    # a least-squares fit, not an interpolation: a non-linear return is not fitted
    cubic = returns + obs[..., 0] ** 3
    assert not torch.allclose(fit_predict(obs, cubic, mask, reg=0.0), cubic, atol=1e-2)
    # rllab's older order: each task's steps predicted with the law fitted on the task before it
    shifted = fit_predict(obs, returns, mask, reg=0.0, previous=True)
    before = (features(obs, mask) * weights.roll(1, 0)[:, None, None]).sum(-1)
    assert torch.allclose(shifted, before, atol=1e-9, rtol=0)
    assert not torch.allclose(shifted, returns, atol=1e-2)


def test_process_normalizes_advantages_per_task():
    env = Navigation2D(horizon=10)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, 2, hidden=(8,))
    traj = rollout(env, policy, dict(policy.named_parameters()), env.sample_tasks(3, torch.Generator()), 4)
    adv = process(traj).advantages
    n = traj.mask.sum((1, 2))
    assert torch.allclose((adv * traj.mask).sum((1, 2)) / n, torch.zeros(3), atol=1e-5)
    assert torch.allclose(((adv * traj.mask) ** 2).sum((1, 2)) / n, torch.ones(3), atol=1e-3)


def test_gymnasium_navigation_matches_the_vectorised_environment():
    pytest.importorskip("gymnasium")
    env = make_env("gym:metagrad/Navigation2D-v0", horizon=12)
    vec = Navigation2D(horizon=12)
    goals = vec.sample_tasks(2, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(8,))
    params = dict(policy.named_parameters())
    a = rollout(env, policy, params, goals, 3, torch.Generator().manual_seed(1))
    b = rollout(vec, policy, params, goals, 3, torch.Generator().manual_seed(1))
    assert torch.allclose(a.rewards, b.rewards, atol=1e-5) and torch.equal(a.mask, b.mask)


def test_navigation_is_a_registered_gymnasium_environment():
    gym = pytest.importorskip("gymnasium")
    env = gym.make("metagrad.rl.envs.gym:metagrad/Navigation2D-v0")
    env.unwrapped.set_task([0.2, -0.1])
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step([0.5, 0.0])  # clipped to 0.1
    assert obs.tolist() == pytest.approx([0.1, 0.0]) and reward == pytest.approx(-(0.1**2 + 0.1**2) ** 0.5)
    steps = 1
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step([0.0, 0.0])
        steps += 1
    assert steps == 100 and truncated  # the registered horizon


def test_unknown_environments_are_named():
    with pytest.raises(ConfigError, match=r"unknown environment 'navigaton2d' .did you mean 'navigation2d'"):
        make_env("navigaton2d")
    with pytest.raises(ConfigError, match="horizon -3 must be a whole number >= 1"):
        make_env("navigation2d", horizon=-3)
    pytest.importorskip("gymnasium")
    with pytest.raises(ConfigError, match="unknown gymnasium environment 'NoSuchEnv-v0'"):
        make_env("gym:NoSuchEnv-v0")
    with pytest.raises(ConfigError, match="has no sample_tasks"):
        make_env("gym:CartPole-v1")


def test_a_gymnasium_environment_without_its_extra_is_one_line(monkeypatch):
    """gymnasium's own families that need an extra (Box2D, MuJoCo) raise DependencyNotInstalled when made: one
    ConfigError naming the package, not a traceback."""
    gym = pytest.importorskip("gymnasium")

    def missing(*args, **kwargs):
        raise gym.error.DependencyNotInstalled('Box2D is not installed, run `pip install "gymnasium[box2d]"`')

    monkeypatch.setattr(gym, "make", missing)
    with pytest.raises(ConfigError, match=r"needs a package that is not installed: Box2D .*gymnasium\[box2d\]"):
        make_env("gym:LunarLander-v3")


def test_navigation_marks_done_at_the_horizon_and_done_stays_done():
    """The TaskEnv contract: done on the step that reaches the goal or the horizon, and from then on."""
    env = Navigation2D(horizon=3)
    env.reset(torch.tensor([[0.05, 0.0]]), 2)
    to_goal, away = torch.tensor([[[0.05, 0.0], [0.0, 0.0]]]), torch.tensor([[[0.1, 0.0], [0.0, 0.0]]])
    _, _, done = env.step(to_goal)
    assert done.tolist() == [[True, False]]
    _, _, done = env.step(away)  # the first copy moves off the goal: still done
    assert done.tolist() == [[True, False]]
    _, _, done = env.step(torch.zeros(1, 2, 2))
    assert done.tolist() == [[True, True]]  # the horizon


def _bad_env_calls():
    nav = Navigation2D()
    nav.reset(torch.zeros(2, 2), 3)
    cheetah = make_env("cheetah-vel", horizon=5)
    cheetah.reset(torch.tensor([[1.0], [0.5]]), 2)
    return {
        "navigation action of one number per episode": (lambda: nav.step(torch.zeros(2, 3, 1)), "actions [2, 3, 1]"),
        "navigation action without episodes": (lambda: nav.step(torch.zeros(2)), "must be [2, 3, 2]"),
        "navigation tasks of one number": (lambda: Navigation2D().reset(torch.zeros(2, 1), 1), "tasks [2, 1]"),
        "navigation without episodes": (lambda: Navigation2D().reset(torch.zeros(2, 2), 0), "episodes 0"),
        "navigation NaN action": (lambda: nav.step(torch.full((2, 3, 2), float("nan"))), "NaN"),
        "cheetah action of one joint": (lambda: cheetah.step(torch.full((2, 2, 1), 0.5)), "must be [2, 2, 6]"),
        "cheetah NaN action": (lambda: cheetah.step(torch.full((2, 2, 6), float("nan"))), "NaN"),
        "cheetah NaN goal": (lambda: cheetah.reset(torch.tensor([[float("nan")]]), 1), "NaN"),
        "cheetah direction 0.3": (lambda: make_env("cheetah-dir", horizon=5).reset(torch.tensor([[0.3]]), 1),
                                  "-1 or 1"),
        "horizon 2.5": (lambda: make_env("cheetah-vel", horizon=2.5), "horizon 2.5"),
        "frame_skip 2.5": (lambda: make_env("cheetah-vel", frame_skip=2.5), "frame_skip 2.5"),
        "oracle 'yes'": (lambda: make_env("cheetah-vel", oracle="yes"), "oracle 'yes'"),
        "infinite action scale": (lambda: make_env("cheetah-vel", action_scale=float("inf")), "action_scale inf"),
        "negative seed": (lambda: make_env("cheetah-vel", seed=-1), "seed -1"),
        "unknown navigation option": (lambda: make_env("navigation2d", foo=1), "takes no option foo"),
        "unknown gym option": (lambda: make_env("gym:metagrad/Navigation2D-v0", oracle=True),
                               "takes no option oracle"),
    }


@pytest.mark.parametrize("case", list(_bad_env_calls()))
def test_bad_actions_tasks_and_options_are_config_errors(case):
    """A wrong action shape was broadcast over the joints or episodes; NaN went on into the simulator; options the
    environment does not take were dropped: each now a ConfigError naming it; NaN actions, which a diverged policy
    gives, a TrainingDiverged (the trainer then names the step sizes and the checkpoint to resume from)."""
    call, words = _bad_env_calls()[case]
    with pytest.raises(TrainingDiverged if case.endswith("NaN action") else ConfigError) as e:
        call()
    assert words in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
@pytest.mark.parametrize("baseline", ["none", "linear"])
def test_what_an_environment_returns_after_an_episode_ends_is_ignored(bad, baseline):
    """A NaN or infinite reward or observation after ``done`` leaves the episode's return, the policy's inputs and
    the advantages as if the steps were never taken (it reached every step of the episode through 0 x NaN)."""
    env = EndsThenBreaks(bad)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, 2, hidden=(8,))
    traj = rollout(env, policy, dict(policy.named_parameters()), torch.zeros(2, 1), 3, torch.Generator())
    assert traj.mask[:, 0].tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2
    assert traj.rewards[:, 0].tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2
    assert traj.episode_returns.tolist() == [[1.0, 4.0, 4.0]] * 2
    assert torch.isfinite(traj.obs).all() and torch.isfinite(traj.old_log_prob).all()
    out = process(traj, 0.99, 1.0, baseline, True)
    assert torch.isfinite(out.advantages).all()
    assert out.returns[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("reward", [0.1, -3.7, 123.456])
def test_normalizing_equal_advantages_gives_zero_in_float32(reward):
    """Their std is the float32 mean's rounding error: divided by it, every advantage came out near -1 (0.1: -0.43,
    123.456: -0.999), all of one sign, lowering the likelihood of every sampled action."""
    x = torch.full((3, 5, 7), reward)
    mask = torch.ones_like(x)
    mask[1, :, 4:] = 0
    assert (normalize(x, mask, (1, 2)) == 0).all()
    y = torch.randn(3, 5, 7)  # a real spread: mean 0 and std 1 per task over its valid steps
    z = normalize(y, mask, (1, 2))
    n = mask.sum((1, 2))
    assert torch.allclose((z * mask).sum((1, 2)) / n, torch.zeros(3), atol=1e-6)
    assert torch.allclose((z ** 2 * mask).sum((1, 2)) / n, torch.ones(3), atol=1e-5)
