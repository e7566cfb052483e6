"""Meta-RL on policies and environments the papers never used: the meta-gradient against plain autograd task by task
(float64) for layer norm, tied weights and frozen parameters; policies vmap differentiates wrongly, or that do not fit
the environment, refused by name; a user's gymnasium environment seeded afresh for every batch."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import metagrad as mg
from metagrad.errors import CheckpointError, ConfigError, EnvironmentFault
from metagrad.functional import call
from metagrad.rl import MetaRL, Navigation2D, make_policy
from metagrad.rl.config import preset
from metagrad.rl.policy import CategoricalMLPPolicy
from metagrad.rl.train import RLTrainer, build

LRS = (0.3, 0.2)


def _policy(body: nn.Module | None = None, frozen: str = "") -> nn.Module:
    """A Gaussian policy for 2D navigation whose mean network is ``body``; the parameter ``frozen`` made constant."""
    torch.manual_seed(0)
    policy = make_policy(Navigation2D().action_space, 2, hidden=(6, 6), activation="tanh", init_std=0.5)
    if body is not None:
        policy.mean = body
    if frozen:
        policy.get_parameter(frozen).requires_grad_(False)
    return policy.double()


def _tied() -> nn.Module:
    first, last = nn.Linear(2, 6), nn.Linear(6, 2)
    middle = nn.Linear(6, 6)
    body = nn.Sequential(first, nn.Tanh(), middle, nn.Tanh(), middle, nn.Tanh(), last)  # one layer used twice
    return body


def _sampled(policy: nn.Module, **kw):
    env = Navigation2D(horizon=8)
    learner = MetaRL(policy, env, inner_lr=LRS, inner_steps=2, episodes=3, **kw)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0)).double()
    return learner, *learner.sample(tasks, torch.Generator().manual_seed(1))


def _reference(learner: MetaRL, trajs, out) -> dict[str, torch.Tensor]:
    """MAML's meta-gradient with plain autograd (create_graph), task by task: no vmap."""
    policy = learner.policy
    theta = {n: p.detach().clone().requires_grad_() for n, p in policy.named_parameters() if p.requires_grad}
    tasks, k, horizon = out.mask.shape
    total = 0.0
    for i in range(tasks):
        params = dict(theta)
        for s, tr in enumerate(trajs):
            logp = policy.log_prob(call(policy, params, {}, tr.obs[i]), tr.actions[i])
            loss = -(logp * tr.advantages[i] * tr.mask[i]).sum() / tr.mask[i].numel()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {n: p - LRS[s] * g for (n, p), g in zip(params.items(), grads, strict=True)}
        logp = policy.log_prob(call(policy, params, {}, out.obs[i]), out.actions[i])
        ratio = torch.exp((logp - out.old_log_prob[i]) * out.mask[i]) * out.mask[i]
        total = total + (ratio * out.advantages[i]).sum() / (k * horizon) / tasks
    return dict(zip(theta, torch.autograd.grad(total, list(theta.values())), strict=True))


@pytest.mark.parametrize("case", ["layer-norm", "tied", "frozen"])
def test_meta_gradient_of_any_policy_equals_plain_autograd_task_by_task(case):
    body = {"layer-norm": nn.Sequential(nn.Linear(2, 6), mg.models.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)),
            "tied": _tied(), "frozen": None}[case]
    learner, trajs, out = _sampled(_policy(body, frozen="mean.0.weight" if case == "frozen" else ""))
    got, want = learner.meta_gradient(trajs, out), _reference(learner, trajs, out)
    assert set(got) == set(want)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-9, atol=1e-13), name
        assert float(want[name].abs().max()) > 1e-6, name


@pytest.mark.parametrize("outer", ["trpo", "vpg", "ppo"])
def test_frozen_parameters_stay_frozen_in_the_inner_and_outer_steps(outer):
    policy = _policy(frozen="mean.0.weight")
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer = None if outer == "trpo" else torch.optim.Adam(policy.parameters(), lr=1e-2)
    learner, trajs, out = _sampled(policy, outer=outer)
    assert "mean.0.weight" not in learner.adapted and "mean.0.weight" not in learner.meta_gradient(trajs, out)
    path = learner.adapted_path(learner.meta_params(), trajs)
    assert "mean.0.weight" not in path[-1] and float((path[-1]["mean.2.weight"][0] - before["mean.2.weight"]).abs()
                                                     .max()) > 1e-6  # the others adapt
    learner.update(trajs, out, optimizer)
    assert torch.equal(policy.mean[0].weight, before["mean.0.weight"]) and policy.mean[0].weight.grad is None
    assert not torch.equal(policy.mean[2].weight, before["mean.2.weight"])  # the others moved


class GatedNorm(nn.Module):
    """``x + gate * layer_norm(x)`` in one module, the gate starting at 0 (ReZero): the norm's share is nothing at
    the start, everything once training opens the gate."""

    def __init__(self, size: int, norm: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.weight, self.bias = nn.Parameter(torch.ones(size)), nn.Parameter(torch.zeros(size))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x) if self.norm is not None else nn.functional.layer_norm(x, x.shape[-1:], self.weight,
                                                                                     self.bias)
        return x + self.gate * normed


def test_a_layer_norm_behind_a_closed_gate_is_refused_by_its_call():
    """Compared by numbers, a layer norm behind a zero gate in the same module passed the check (its second
    derivatives count for nothing at gate 0) and MAML-TRPO trained on wrong ones once the gate opened: the check
    also looks for the call. Opened, the numbers alone find it (so the call is no false alarm); metagrad's own
    LayerNorm behind the same gate still trains."""
    from metagrad.rl.checks import vmap_fault

    def body(norm=None):
        return nn.Sequential(nn.Linear(2, 6), GatedNorm(6, norm), nn.Tanh(), nn.Linear(6, 2))

    env = Navigation2D(horizon=8)
    with pytest.raises(ConfigError, match=r"layer_norm with affine parameters gives wrong second derivatives"):
        MetaRL(_policy(body()), env)
    opened = _policy(body())
    with torch.no_grad():
        opened.mean[1].gate.fill_(0.7)
    assert "first in module 'mean.1' (GatedNorm)" in vmap_fault(opened, 2)
    MetaRL(_policy(body(mg.models.LayerNorm(6))), env)
    MetaRL(_policy(body()), env, algo="fomaml", outer="vpg")  # first derivatives only: exact under vmap


class Counts(nn.Module):
    """A module that assigns a new tensor to its buffer at every call."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1
        return x


def test_a_policy_that_assigns_its_buffers_or_draws_random_numbers_is_refused_saying_so():
    """A buffer assigned in forward is lost after every functional call (vmap stopped with torch's internal
    assert); dropout under vmap was refused with advice about recurrent modules. Dropout in eval mode trains."""
    env = Navigation2D(horizon=4)
    with pytest.raises(ConfigError, match=r"assigns new tensors to its buffers mean\.1\.calls .*keep that state "
                                          r"outside the policy"):
        MetaRL(_policy(nn.Sequential(nn.Linear(2, 6), Counts(), nn.Tanh(), nn.Linear(6, 2))), env)
    dropout = _policy(nn.Sequential(nn.Linear(2, 6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 2)))
    with pytest.raises(ConfigError, match=r"draws random numbers \(dropout\).*policy\.eval\(\)"):
        MetaRL(dropout, env, episodes=2)
    learner = MetaRL(dropout.eval(), env, episodes=2)
    g = torch.Generator().manual_seed(0)
    assert np.isfinite(learner.meta_step(env.sample_tasks(2, g), g)["return_post"])


def test_a_policy_vmap_differentiates_wrongly_is_refused_naming_the_module():
    body = nn.Sequential(nn.Linear(2, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2))
    env = Navigation2D(horizon=8)
    with pytest.raises(ConfigError, match=r"first in module 'mean.1' \(LayerNorm\); metagrad.models.LayerNorm is "
                                          r"exact under vmap.*algo 'maml' needs them"):
        MetaRL(_policy(body), env)
    with pytest.raises(ConfigError, match=r"mean\.1"):  # TRPO's curvature needs them after a first-order step too
        MetaRL(_policy(body), env, algo="fomaml")
    MetaRL(_policy(body), env, algo="fomaml", outer="vpg")  # first derivatives only: exact under vmap
    MetaRL(_policy(body), env, algo="joint")  # no inner step: no vmap over tasks


class _GRUMean(nn.Module):
    """A mean network through a one-step GRU: vmap cannot batch torch's recurrent modules at all."""

    def __init__(self):
        super().__init__()
        self.gru, self.head = nn.GRU(2, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, obs):
        h, _ = self.gru(obs.reshape(-1, 1, obs.shape[-1]))
        return self.head(h[:, 0]).reshape(*obs.shape[:-1], 2)


def test_a_policy_vmap_cannot_run_is_refused_for_first_order_too():
    """A GRU policy was refused for second order with the advice to train first order, which then crashed on its
    first meta-batch inside vmap (a raw RuntimeError)."""
    env = Navigation2D(horizon=8)
    for algo, outer in (("maml", "trpo"), ("fomaml", "vpg"), ("sgmrl", "vpg")):
        with pytest.raises(ConfigError, match=r"meta-RL batches its tasks with vmap, which cannot run this policy .*"
                                              r"recurrent modules \(nn.GRU, nn.LSTM, nn.RNN\) cannot be batched"):
            MetaRL(_policy(_GRUMean()), env, algo=algo, outer=outer)
    MetaRL(_policy(_GRUMean()), env, algo="joint")  # no inner step: no vmap over tasks


def test_a_policy_that_does_not_fit_the_environment_is_refused():
    env = Navigation2D(horizon=8)
    cases = [(nn.Sequential(nn.Linear(2, 2)), "policy must be a metagrad.rl Policy .* not Sequential"),
             (make_policy(mg.rl.envs.base.Space("box", (1,)), 2), r"actions have shape \[1\], a continuous action "
                                                                   r"space of shape \[2\].* needs \[2\]"),
             (make_policy(env.action_space, 4), "cannot read the environment's observations of 2 numbers"),
             (CategoricalMLPPolicy(2, 2), "a discrete .categorical. policy cannot serve a continuous")]
    for policy, message in cases:
        with pytest.raises(ConfigError, match=message):
            MetaRL(policy, env)
    with pytest.raises(ConfigError, match="episodes 1 x horizon 1: advantages normalized over a task's one step"):
        MetaRL(make_policy(env.action_space, 2), Navigation2D(horizon=1), episodes=1)
    learner = MetaRL(make_policy(env.action_space, 2), env)
    for tasks in (torch.zeros(0, 2), torch.zeros(2)):
        with pytest.raises(ConfigError, match=r"tasks must be a \[tasks, task_dim\] tensor of at least one task"):
            learner.meta_step(tasks)


def test_the_trainer_refuses_a_learner_or_a_resume_that_is_not_its_config(tmp_path):
    cfg = preset("maml-trpo").replace(horizon=6, episodes=2, meta_batch_size=2, iterations=2, hidden=(4,))
    learner, _ = build(cfg.replace(episodes=3))
    with pytest.raises(ConfigError, match="episodes 3 in the learner, 2 in the config"):
        RLTrainer(learner, None, cfg, tmp_path / "run", progress=False)
    learner, _ = build(cfg)
    RLTrainer(learner, None, cfg, tmp_path / "run", progress=False).fit()
    other = cfg.replace(seed=5, iterations=3)
    learner, _ = build(other)
    with pytest.raises(CheckpointError, match="seed 0 in the run, 5 given"):
        RLTrainer(learner, None, other, tmp_path / "run", progress=False).fit(resume=True)


class NoisyWalk:
    """A gymnasium environment with a random start and noisy steps (a user's own task family: its goal)."""

    def __init__(self):
        import gymnasium as gym

        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
        self.goal, self.pos, self.np_random = np.zeros(2), np.zeros(2), np.random.default_rng()
        self.nan_reward = False

    def sample_tasks(self, n, rng):
        return rng.uniform(-0.5, 0.5, size=(n, 2))

    def set_task(self, task):
        self.goal = np.asarray(task, dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        self.np_random = np.random.default_rng(seed)
        self.pos = self.np_random.uniform(-0.2, 0.2, size=2)
        return self.pos.astype(np.float32), {}

    def step(self, action):
        self.pos = self.pos + np.clip(action, -0.1, 0.1) + self.np_random.normal(0, 0.01, 2)
        reward = np.nan if self.nan_reward else -float(np.linalg.norm(self.pos - self.goal))
        return self.pos.astype(np.float32), reward, False, False, {}

    @property
    def unwrapped(self):
        return self


def test_a_gymnasium_environment_starts_every_batch_from_fresh_random_states():
    pytest.importorskip("gymnasium")
    from metagrad.rl.envs.gym import GymTaskEnv

    env = GymTaskEnv(NoisyWalk, horizon=5, seed=3)
    tasks = torch.zeros(2, 2)
    first, second = env.reset(tasks, 2), env.reset(tasks, 2)
    assert not torch.equal(first, second)  # a new batch, new states
    assert not torch.equal(first[0, 0], first[0, 1])  # the episodes of one task differ
    env.reseed(11)
    again = env.reset(tasks, 2)
    env.reseed(11)
    assert torch.equal(env.reset(tasks, 2), again)  # the sampler's seeds replay (a resumed run sees the same)
    assert torch.equal(GymTaskEnv(NoisyWalk, horizon=5, seed=3).reset(tasks, 2), first)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(4,))
    learner = MetaRL(policy, env, episodes=2, outer="vpg", algo="fomaml")
    env._envs[0].nan_reward = True
    with pytest.raises(EnvironmentFault, match="non-finite reward"):
        learner.sample(tasks, torch.Generator().manual_seed(0))


USER_MODULE = '''
import gymnasium as gym
import numpy as np


class Walk(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)

    def sample_tasks(self, n, rng):
        return rng.uniform(-0.5, 0.5, size=(n, 2))

    def set_task(self, task):
        self.goal = np.asarray(task, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.2, 0.2, size=2).astype(np.float32)
        return self.pos, {}

    def step(self, action):
        self.pos = (self.pos + np.clip(action, -0.1, 0.1)).astype(np.float32)
        return self.pos, -float(np.linalg.norm(self.pos - self.goal)), False, False, {}


gym.register("user/Walk-v0", entry_point=Walk)
'''


def test_a_gymnasium_id_of_the_users_own_module_is_made_after_importing_it(tmp_path, monkeypatch):
    pytest.importorskip("gymnasium")
    (tmp_path / "user_walk.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = mg.rl.make_env("gym:user_walk:user/Walk-v0", horizon=4, seed=1)
    import user_walk

    goal = torch.tensor([[0.3, -0.2]])
    start = env.reset(goal, 2)
    assert start.shape == (1, 2, 2) and all(type(e.unwrapped) is user_walk.Walk for e in env._envs)
    assert bool((start.abs() <= 0.2).all()) and not torch.equal(start[0, 0], start[0, 1])  # Walk's random starts
    action = torch.tensor([[[0.05, -0.1], [-0.1, 0.08]]])
    obs, reward, done = env.step(action)
    torch.testing.assert_close(obs, start + action)
    torch.testing.assert_close(reward, -(start + action - goal).norm(dim=-1))  # Walk.step's reward, at its goal
    assert not done.any()
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_module' .* put its folder on PYTHONPATH"):
        mg.rl.make_env("gym:no_such_module:user/Walk-v0")


class _Tasks(NoisyWalk):
    """NoisyWalk whose ``sample_tasks`` is one a user might write: ``kind`` picks it."""

    kind = "no-rng"

    def sample_tasks(self, n, rng=None):
        if self.kind == "no-rng":
            return super().sample_tasks(n)  # ProMP's signature: no generator (TypeError below)
        if self.kind == "dicts":
            return [{"goal": np.zeros(2)} for _ in range(n)]
        return rng.uniform(-0.5, 0.5, size=n)  # "flat": one number per task


@pytest.mark.parametrize("kind, words", [("no-rng", "sample_tasks(n, rng) failed"),
                                         ("dicts", "flatten dict tasks in sample_tasks")])
def test_a_user_sample_tasks_that_does_not_fit_is_named(kind, words, monkeypatch):
    pytest.importorskip("gymnasium")
    from metagrad.rl.envs.gym import GymTaskEnv

    monkeypatch.setattr(_Tasks, "kind", kind)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        GymTaskEnv(_Tasks, horizon=5).sample_tasks(3, torch.Generator().manual_seed(0))


def test_one_number_per_task_is_a_task_column(monkeypatch):
    pytest.importorskip("gymnasium")
    from metagrad.rl.envs.gym import GymTaskEnv

    monkeypatch.setattr(_Tasks, "kind", "flat")
    assert GymTaskEnv(_Tasks, horizon=5).sample_tasks(3, torch.Generator().manual_seed(0)).shape == (3, 1)


class Recording(NoisyWalk):
    """NoisyWalk that keeps what it was given, with an action space, observations and task ids of the test's."""

    def __init__(self, action_space=None, obs_size: int = 2, obs_value: float = 0.0):
        super().__init__()
        self.action_space = action_space or self.action_space
        self.obs_size, self.obs_value, self.actions, self.tasks = obs_size, obs_value, [], []

    def sample_tasks(self, n, rng):
        return rng.integers(2**30, 2**31, size=n)  # task ids above float32's 2**24 whole numbers

    def set_task(self, task):
        self.tasks.append(np.asarray(task).copy())

    def reset(self, *, seed=None, options=None):
        return np.full(self.obs_size, self.obs_value, dtype=np.float32), {}

    def step(self, action):
        self.actions.append(action)
        return np.full(self.obs_size, self.obs_value, dtype=np.float32), 0.0, False, False, {}


def test_a_gymnasium_environment_gets_its_own_actions_and_tasks():
    """Discrete(3, start=-1) was stepped with 0..2 (every action shifted by one), a Box's bounds were not applied
    to the Gaussian policy's samples (the MuJoCo families clip), and task ids were rounded to float32."""
    gym = pytest.importorskip("gymnasium")
    from metagrad.rl.envs.gym import GymTaskEnv

    env = GymTaskEnv(lambda: Recording(gym.spaces.Discrete(3, start=-1)), horizon=1)
    drawn = env.sample_tasks(3, torch.Generator().manual_seed(0))
    env.reset(drawn, 1)
    env.step(torch.tensor([[0], [1], [2]]))
    copies = env._envs
    assert [c.actions for c in copies] == [[-1], [0], [1]]
    assert [int(c.tasks[-1][0]) for c in copies] == [int(t) for t in drawn[:, 0]]
    assert all(int(t) == t and t > 2**30 for t in drawn[:, 0].tolist())  # whole numbers, as sample_tasks drew them
    unrounded = Recording().sample_tasks(3, np.random.default_rng(int(torch.randint(
        0, 2**31 - 1, (), generator=torch.Generator().manual_seed(0)))))
    assert drawn[:, 0].tolist() == unrounded.tolist()
    space = gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 0.5]), dtype=np.float32)
    box = GymTaskEnv(lambda: Recording(space), horizon=1)
    box.reset(torch.zeros(1, 1), 1)
    box.step(torch.tensor([[[-2.5, 0.7]]]))
    assert box._envs[0].actions[0].tolist() == [-1.0, 0.5]


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"obs_size": 5}, ConfigError, r"Recording\.reset returned an observation of 5 numbers, and its "
                                   r"observation_space .* declares 2"),
    ({"obs_value": float("nan")}, EnvironmentFault, r"reset returned non-finite observations"),
])
def test_an_environment_whose_observations_the_policy_cannot_read_is_named(kw, error, match):
    """Observations of another size than declared crashed in the policy's matrix product; NaN observations were
    reported as a diverged policy and blamed on the inner step size."""
    pytest.importorskip("gymnasium")
    from metagrad.rl.envs.gym import GymTaskEnv

    env = GymTaskEnv(lambda: Recording(**kw), horizon=3)
    learner = MetaRL(make_policy(env.action_space, env.obs_dim, hidden=(4,)), env, episodes=2, outer="vpg",
                     algo="fomaml")
    with pytest.raises(error, match=match):
        learner.sample(env.sample_tasks(2, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0))


class _Odd(NoisyWalk):
    """NoisyWalk with one thing a user's environment might do differently (``odd`` picks it)."""

    odd = ""

    def __init__(self):
        import gymnasium as gym

        super().__init__()
        if self.odd == "dict-observations":
            self.observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,))})
        if self.odd == "integer-actions":
            self.action_space = gym.spaces.Box(0, 4, (2,), np.int64)

    def step(self, action):
        obs, reward, *rest = super().step(action)
        reward = {"reward-vector": np.array([reward, reward]), "reward-none": None, "reward-huge": 1e39}.get(
            self.odd, reward)
        return (np.full(2, 1e39) if self.odd == "observation-huge" else obs), reward, *rest


ODD_ENVS = {  # what the environment does: the words of the one-line refusal (each was a traceback or silent)
    "dict-observations": "observation space Dict of Odddict-observations is not supported",
    "integer-actions": "holds integers, and metagrad's continuous policies act in real numbers",
    "reward-vector": "returned a reward of ndarray of shape [2]; it must return one number per step",
    "reward-none": "returned a reward of NoneType",  # (was called non-finite: NaN or inf)
    "reward-huge": "returned a reward of 1e+39, beyond float32's range",  # (was called non-finite)
    "observation-huge": "returned an observation beyond float32's range (largest 1e+39)",
}


@pytest.mark.parametrize("odd", list(ODD_ENVS))
def test_what_a_users_environment_does_wrong_is_said_in_one_line(odd):
    pytest.importorskip("gymnasium")
    from metagrad.rl.envs.gym import GymTaskEnv

    env_class = type(f"Odd{odd}", (_Odd,), {"odd": odd})
    with pytest.raises(ConfigError, match=re.escape(ODD_ENVS[odd])):
        env = GymTaskEnv(env_class, horizon=3, seed=0)
        learner = MetaRL(make_policy(env.action_space, env.obs_dim, hidden=(4,)), env, episodes=2, outer="vpg")
        learner.sample(torch.zeros(2, 2), torch.Generator().manual_seed(0))


def test_a_registered_episode_limit_and_actions_of_more_dimensions_are_refused_naming_the_fix():
    """``make_env`` overrode a registration's ``max_episode_steps`` with the horizon (episodes of 5 ran 100 steps,
    silently); a Box of shape [2, 2] got advice to use the other policy kind, both ways round; env_workers was said
    to be an option the registration should set."""
    gym = pytest.importorskip("gymnasium")
    if "audit/Walk5-v0" not in gym.registry:  # 2D navigation with episodes of 5 steps
        gym.register("audit/Walk5-v0", entry_point="metagrad.rl.envs.gym:Navigation2DEnv", max_episode_steps=5)
    with pytest.raises(ConfigError, match=r"horizon 8 is longer than the episodes of 'gym:audit/Walk5-v0' \(its "
                                          r"registration's max_episode_steps 5\); give horizon 5 or less"):
        mg.rl.make_env("gym:audit/Walk5-v0", horizon=8)
    assert mg.rl.make_env("gym:audit/Walk5-v0", horizon=5).horizon == 5
    with pytest.raises(ConfigError, match=r"env_workers 2 steps the copies of the MuJoCo and Meta-World"):
        mg.rl.make_env("gym:audit/Walk5-v0", horizon=5, workers=2)
    with pytest.raises(ConfigError, match=r"one-dimensional continuous spaces.*a Box of shape \[4\]"):
        make_policy(gym.spaces.Box(-1.0, 1.0, (2, 2)), 2)
