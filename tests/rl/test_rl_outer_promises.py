"""Meta-RL promises checked against definitions built by hand (float64): E-MAML's exploration term, first-order
SG-MRL's meta-gradient and its leave-one-out score baseline, the VPG outer step's sign, PPO's epochs and TRPO's step
length; each fails when its part of the source is changed, which the finite-difference tests (of the same
``learner.objective``) and the CPU-bound golden runs could not show on every machine."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import grad

from metagrad.errors import ConfigError
from metagrad.functional import call, write_grads
from metagrad.rl import MetaRL, Navigation2D, make_policy
from metagrad.rl.outer import ppo_loss
from metagrad.rl.trpo import flatten, trust_region_step
from rl_fixtures import spd_matrix
from test_rl_promp import _navigation

LRS = (0.3, 0.2)


def _learner(algo: str, **kw) -> tuple[MetaRL, list, object]:
    """A float64 tanh policy on 2D navigation, 3 tasks x 3 episodes x 8 steps, two inner steps, sampled once."""
    torch.manual_seed(0)
    env = Navigation2D(horizon=8)
    policy = make_policy(env.action_space, 2, hidden=(6, 6), activation="tanh", init_std=0.5).double()
    learner = MetaRL(policy, env, algo=algo, inner_lr=LRS, inner_steps=2, episodes=3, **kw)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0)).double()
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
    return learner, trajs, out


def _twin(learner: MetaRL, algo: str, **kw) -> MetaRL:
    """Another algorithm on the same policy and inner steps (to differentiate the same episodes)."""
    return MetaRL(learner.policy, learner.env, algo=algo, inner_lr=LRS, inner_steps=2, episodes=3, **kw)


def _logp(policy, params, traj, i: int) -> torch.Tensor:
    """log pi(a | s) of task ``i``'s steps in ``traj`` under ``params``, ``[K, H]``."""
    return policy.log_prob(call(policy, params, {}, traj.obs[i]), traj.actions[i])


def _by_hand(learner: MetaRL, trajs, out, second_order: bool) -> tuple[dict, list[list[dict]]]:
    """Plain autograd, task by task: the leaf meta-parameters, and per task the parameters before and after each
    inner VPG step ``theta_{s+1} = theta_s - alpha_s grad L_s(theta_s)`` (through the step, or with the gradient held
    constant)."""
    theta = {n: p.detach().clone().requires_grad_() for n, p in learner.policy.named_parameters()}
    paths = []
    for i in range(out.mask.shape[0]):
        params, path = dict(theta), [dict(theta)]
        for s, tr in enumerate(trajs):
            loss = -(_logp(learner.policy, params, tr, i) * tr.advantages[i] * tr.mask[i]).sum() / tr.mask[i].numel()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
            params = {n: p - LRS[s] * g for (n, p), g in zip(params.items(), grads, strict=True)}
            path.append(params)
        paths.append(path)
    return theta, paths


def _post_update_surrogate(learner: MetaRL, paths, out) -> torch.Tensor:
    """MAML's term: the mean over tasks of sum log pi(theta') A / (K H) on D_o."""
    tasks = out.mask.shape[0]
    return sum((_logp(learner.policy, paths[i][-1], out, i) * out.advantages[i] * out.mask[i]).sum()
               / out.mask[i].numel() for i in range(tasks)) / tasks


def _gradient(value: torch.Tensor, theta: dict) -> torch.Tensor:
    """d value / d theta as one vector (the graph kept: the terms share the inner steps)."""
    return flatten(dict(zip(theta, torch.autograd.grad(value, list(theta.values()), retain_graph=True), strict=True)))


def test_emaml_meta_gradient_is_maml_plus_the_exploration_term_built_by_hand():
    """E-MAML (ProMP's form): MAML's surrogate plus weight x mean over tasks of each task's post-update mean reward,
    normalized over the meta-batch (population std + 1e-8), times the mean log-likelihood of each inner batch under
    the parameters that sampled it (the second through the first step). Its gradient is MAML's plus exactly that."""
    weight = 2.5
    learner, trajs, out = _learner("emaml", emaml_weight=weight)
    maml = _twin(learner, "maml")
    theta, paths = _by_hand(learner, trajs, out, second_order=True)
    valid = out.mask.bool()
    r = out.rewards[valid]
    per_task = (out.rewards * out.mask).sum((1, 2)) / out.mask.sum((1, 2))
    coef = (per_task - r.mean()) / (r.std(correction=0) + 1e-8)
    tasks = out.mask.shape[0]
    explore = weight * sum(coef[i] * sum((_logp(learner.policy, paths[i][s], tr, i) * tr.mask[i]).sum()
                                         / tr.mask[i].sum() for s, tr in enumerate(trajs))
                           for i in range(tasks)) / tasks
    g_explore = _gradient(explore, theta)
    g_maml_hand = _gradient(_post_update_surrogate(learner, paths, out), theta)
    g_emaml, g_maml = (flatten(lr.meta_gradient(trajs, out)) for lr in (learner, maml))
    assert float(g_explore.norm()) > 0.05 * float(g_maml.norm())  # the term is no rounding-size detail here
    torch.testing.assert_close(g_maml, g_maml_hand, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_emaml - g_maml, g_explore, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(g_emaml, g_maml_hand + g_explore, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("score_baseline", ["none", "batch"])
def test_first_order_sgmrl_meta_gradient_matches_its_definition_built_by_hand(score_baseline):
    """``sgmrl-fo`` (SG-MRL eq. 13, first order): the post-update surrogate's gradient with the inner gradients held
    constant, plus J_i (minus the other tasks' mean J with ``batch``) times the score sum of grad log pi over each
    inner batch's episodes at the parameters that sampled it, over H, averaged over tasks. Raw outer advantages."""
    learner, trajs, out = _learner("sgmrl-fo", outer="vpg", score_baseline=score_baseline)
    assert not learner.normalize_outer
    theta, paths = _by_hand(learner, trajs, out, second_order=False)
    tasks, horizon = out.mask.shape[0], out.mask.shape[-1]
    j = out.returns[:, :, 0].mean(1)  # each task's mean discounted return on D_o
    if score_baseline == "batch":
        j = torch.stack([j[i] - torch.cat([j[:i], j[i + 1:]]).mean() for i in range(tasks)])
    score = sum(j[i] * sum((_logp(learner.policy, paths[i][s], tr, i) * tr.mask[i]).sum() for s, tr in enumerate(trajs))
                for i in range(tasks)) / (tasks * horizon)
    g_score = _gradient(score, theta)
    g_surrogate = _gradient(_post_update_surrogate(learner, paths, out), theta)
    got = flatten(learner.meta_gradient(trajs, out))
    assert float(g_score.norm()) > 0.05 * float(g_surrogate.norm())
    torch.testing.assert_close(got, g_surrogate + g_score, rtol=1e-9, atol=1e-12)
    # first order is not second order: the full SG-MRL differentiates through the inner steps
    full = flatten(_twin(learner, "sgmrl", outer="vpg", score_baseline=score_baseline).meta_gradient(trajs, out))
    assert float((full - got).norm()) > 1e-3 * float(got.norm())


def test_sgmrl_batch_score_baseline_is_the_other_tasks_mean_return():
    """``score_baseline='batch'``: J_i minus the mean J of the other tasks (leave-one-out, independent of task i's
    episodes, so unbiased), not minus the mean over all tasks; ``none`` leaves J as is."""
    learner, _, out = _learner("sgmrl", outer="vpg", score_baseline="batch")
    episodes = torch.tensor([[0.5, 1.5, 1.0], [-3.0, -1.0, -2.0], [4.0, 4.0, 4.0]], dtype=torch.float64)  # J: 1, -2, 4
    returns = out.returns.clone()
    returns[:, :, 0] = episodes
    known = out._replace(returns=returns)
    assert learner.score_coefficients(known).tolist() == [1 - 1.0, -2 - 2.5, 4 - (-0.5)]
    none = _twin(learner, "sgmrl", outer="vpg", score_baseline="none")
    assert none.score_coefficients(known).tolist() == [1.0, -2.0, 4.0]
    one = known._replace(returns=returns[:1])
    with pytest.raises(ConfigError, match="a meta-batch of one task"):  # no other tasks: refused, not J itself
        learner.score_coefficients(one)


def test_vpg_outer_step_ascends_the_objective():
    """VPG: ``.grad`` holds minus the meta-gradient, so plain SGD moves theta by +lr x meta-gradient (ascent on the
    return) and the objective on the same episodes rises by about lr |g|^2."""
    lr = 1e-3
    learner, trajs, out = _learner("maml", outer="vpg")
    before = {k: v.clone() for k, v in learner.meta_params().items()}  # (meta_params share the storage)
    g = learner.meta_gradient(trajs, out)
    learner.update(trajs, out, torch.optim.SGD(learner.policy.parameters(), lr=lr))
    for name, p in learner.trainable().items():
        torch.testing.assert_close(p.grad, -g[name], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(p.detach(), before[name] + lr * g[name], rtol=1e-12, atol=1e-15)
    with torch.no_grad():
        old = float(learner.objective(before, trajs, out))
        new = float(learner.objective(learner.meta_params(), trajs, out))
    gain = lr * float(flatten(g).norm()) ** 2
    assert gain > 1e-6
    assert new - old == pytest.approx(gain, rel=0.1)


def test_ppo_takes_ppo_epochs_optimizer_steps_on_the_ppo_loss():
    """PPO: ``ppo_epochs`` Adam steps per meta-batch, each on the gradient of the clipped surrogate minus the inner
    KL penalty at the current parameters (as a by-hand loop takes them)."""
    epochs = 3
    learner, trajs, out = _navigation(ppo_epochs=epochs)
    twin = copy.deepcopy(learner)
    opt = torch.optim.Adam(learner.policy.parameters(), lr=1e-2)
    steps = []
    step = opt.step
    opt.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
    learner.update(trajs, out, opt)
    assert len(steps) == epochs
    by_hand = torch.optim.Adam(twin.policy.parameters(), lr=1e-2)
    after = []
    for _ in range(epochs):
        g = grad(ppo_loss, argnums=1, has_aux=True)(twin, twin.meta_params(), trajs, out)[0]
        write_grads(twin.trainable(), g)
        by_hand.step()
        after.append(flatten(twin.meta_params()).clone())
    torch.testing.assert_close(flatten(learner.meta_params()), after[-1], rtol=1e-10, atol=1e-13)
    assert float((after[-1] - after[0]).norm()) > 1e-3  # every epoch moves the parameters


@pytest.mark.parametrize("max_kl", [0.01, 0.3])
def test_trust_region_full_step_reaches_the_kl_bound_on_a_quadratic(max_kl):
    """Linear surrogate g'y and KL 0.5 y'Ay: the first step, sqrt(2 max_kl / g'A^-1 g) A^-1 g, has KL max_kl exactly
    and improves, so it is taken without backtracking. (The products carry a damping of 1e-9, as TRPO's, so the
    step lands just inside the bound rather than on it, where rounding would decide.)"""
    gen = torch.Generator().manual_seed(0)
    d = 4
    a = spd_matrix(d, 0.5, gen)
    g = torch.randn(d, generator=gen, dtype=torch.float64)
    x0 = torch.randn(d, generator=gen, dtype=torch.float64)

    def evaluate(x):
        y = x - x0
        return float(g @ y), float(0.5 * y @ a @ y)

    x, info = trust_region_step(x0, evaluate, g, lambda v: a @ v + 1e-9 * v, max_kl=max_kl, cg_iters=10)
    natural = torch.linalg.solve(a, g)
    expected = math.sqrt(2 * max_kl / float(g @ natural)) * natural
    assert info.accepted and info.backtracks == 0
    assert evaluate(x)[1] == pytest.approx(max_kl, rel=1e-6) and evaluate(x)[1] <= max_kl
    assert info.kl == pytest.approx(max_kl, rel=1e-6)
    torch.testing.assert_close(x - x0, expected, rtol=1e-6, atol=1e-12)
    assert info.expected_improvement == pytest.approx(math.sqrt(2 * max_kl * float(g @ natural)), rel=1e-6)
