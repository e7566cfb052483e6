"""ProMP and PPO: the LVC inner surrogate (its gradient is the policy gradient, its Hessian is unbiased on a bandit
where log pi's is not), PPO's clipped ratio, the adaptive inner KL penalty, and short ProMP / DRS+PPO runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import grad, hessian, vmap

from metagrad.errors import ConfigError
from metagrad.rl import MetaRL, Navigation2D, make_policy
from metagrad.rl.config import RLConfig, preset
from metagrad.rl.evaluate import adaptation_returns
from metagrad.rl.sampler import policy_dist, process, rollout
from metagrad.rl.train import RLTrainer, build
from metagrad.rl.trpo import flatten, unflatten
from rl_fixtures import OneStepBandit

GOAL, MU, SIGMA = 0.5, 0.2, 0.7


def _bandit(algo: str, batches: int, episodes: int, seed: int = 1):
    env = OneStepBandit(n=0)
    policy = make_policy(env.action_space, 1, hidden=(), init_std=SIGMA).double()
    with torch.no_grad():
        policy.mean[0].weight.fill_(0.3)
        policy.mean[0].bias.fill_(MU - 0.3)
    learner = MetaRL(policy, env, algo=algo, baseline="none", normalize_inner=False, gamma=1.0)
    tasks = torch.full((batches, 1), GOAL, dtype=torch.float64)
    traj = process(rollout(env, policy, learner.meta_params(), tasks, episodes, torch.Generator().manual_seed(seed)),
                   gamma=1.0, baseline="none", normalize_advantages=False)
    return learner, traj


def test_lvc_gradient_is_the_policy_gradient():
    promp, traj = _bandit("promp", 4, 50)
    maml = MetaRL(promp.policy, promp.env, algo="maml", baseline="none", normalize_inner=False, gamma=1.0)
    theta = promp.meta_params()
    a = vmap(grad(promp.inner_loss), in_dims=(None, 0))(theta, traj)
    b = vmap(grad(maml.inner_loss), in_dims=(None, 0))(theta, traj)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-14), k
    assert float(flatten(a).abs().max()) > 1e-3


def test_lvc_hessian_is_unbiased_on_a_gaussian_bandit_and_log_pi_is_not():
    """J(mu, sigma) = -((mu - g)^2 + sigma^2), mu = w + b: the exact Hessian is -2 on the (w, b) block and
    -4 sigma^2 for log sigma. LVC's Hessian estimate, E[(grad^2 log pi + grad log pi grad log pi^T) r], is
    unbiased; log pi's, E[grad^2 log pi r], misses the outer-product term."""
    exact = torch.tensor([[-4 * SIGMA**2, 0.0, 0.0], [0.0, -2.0, -2.0], [0.0, -2.0, -2.0]], dtype=torch.float64)
    estimates = {}
    for algo in ("promp", "maml"):
        learner, traj = _bandit(algo, 60, 1600)
        theta = learner.meta_params()
        names = ["log_std", "mean.0.weight", "mean.0.bias"]
        assert list(theta) == names

        def objective(x, t, learner=learner, theta=theta):  # minus the inner loss: the surrogate of J (H = 1)
            return -learner.inner_loss(unflatten(x, theta), t)

        estimates[algo] = vmap(hessian(objective), in_dims=(None, 0))(flatten(theta), traj)  # [60, 3, 3]
    lvc, logp = estimates["promp"], estimates["maml"]
    mean, se = lvc.mean(0), lvc.std(0) / math.sqrt(lvc.shape[0])
    assert float(se.max()) < 0.15
    assert float(((mean - exact).abs() / (se + 1e-12)).max()) < 4.5, (mean, se)
    z_logp = ((logp.mean(0) - exact).abs() / (logp.std(0) / math.sqrt(logp.shape[0]) + 1e-12)).max()
    assert float(z_logp) > 10


def _navigation(algo: str = "promp", outer: str = "ppo", **kw):
    torch.manual_seed(0)
    env = Navigation2D(horizon=10)
    policy = make_policy(env.action_space, 2, hidden=(8,), activation="tanh", init_std=0.5).double()
    learner = MetaRL(policy, env, algo=algo, outer=outer, inner_lr=0.3, episodes=4, **kw)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0)).double()
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
    return learner, trajs, out


def test_ppo_clips_the_ratio_pessimistically():
    learner, trajs, out = _navigation()
    theta = learner.meta_params()
    x0 = flatten(theta)
    moved = unflatten(x0 + 0.3 * torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(3)),
                      theta)
    clip = 0.2
    clipped, _, _ = learner.outer_terms(moved, trajs, out, clip)
    plain, _, _ = learner.outer_terms(moved, trajs, out)
    # by hand: the adapted policy's ratios on D_o, min(r A, clip(r) A), averaged per step
    adapted = learner.adapted_path(moved, trajs)[-1]
    dist = policy_dist(learner.policy, adapted, out.obs, per_task=True)
    ratio = torch.exp((learner.policy.log_prob(dist, out.actions) - out.old_log_prob) * out.mask) * out.mask
    outside = ((ratio > 1 + clip) | (ratio < 1 - clip)) & out.mask.bool()
    assert int(outside.sum()) > 10  # the clip is exercised
    gain = torch.minimum(ratio * out.advantages, ratio.clamp(1 - clip, 1 + clip) * out.advantages) * out.mask
    assert float(clipped) == pytest.approx(float(gain.sum((1, 2)).mean() / out.mask[0].numel()), rel=1e-12)
    assert float(clipped) < float(plain)  # pessimistic bound
    # at the sampling parameters every ratio is 1: clipping changes neither the value nor the gradient
    g_clip = grad(lambda t: learner.outer_terms(t, trajs, out, clip)[0])(theta)
    g_plain = grad(lambda t: learner.outer_terms(t, trajs, out)[0])(theta)
    assert float((flatten(g_clip) - flatten(g_plain)).abs().max()) < 1e-12


def test_ppo_loss_averages_the_inner_kl_penalties_over_the_steps_as_promp():
    """ProMP: ``reduce_mean(inner_kl_coeff * mean_inner_kl_per_step)``; the sum made a coefficient twice as strong
    with two inner steps."""
    from metagrad.rl.outer import ppo_loss

    learner, trajs, out = _navigation(inner_steps=2, inner_kl_coef=0.5)
    learner.inner_kl_coefs.copy_(torch.tensor([0.5, 2.0]))
    theta = learner.meta_params()
    x0 = flatten(theta)
    moved = unflatten(x0 + 0.2 * torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(4)),
                      theta)
    loss, (_, inner_kls) = ppo_loss(learner, moved, trajs, out)
    sur, _, kls = learner.outer_terms(moved, trajs, out, learner.ppo_clip, inner_kls=True)
    assert torch.equal(kls, inner_kls) and float(kls.min()) > 1e-4  # both steps' policies moved
    assert float(loss) == pytest.approx(float(-sur + (0.5 * kls[0] + 2.0 * kls[1]) / 2), rel=1e-12)


def test_inner_kl_penalty_adapts_to_its_target_and_is_checkpointed():
    learner, trajs, out = _navigation(inner_kl_coef=1e-3, inner_kl_target=1e-9, ppo_epochs=3)
    opt = torch.optim.Adam(learner.policy.parameters(), lr=1e-2)
    stats = learner.update(trajs, out, opt)
    assert stats["inner_kl_0"] > 1.5e-9  # the pre-update policy moved more than the target allows
    assert float(learner.inner_kl_coefs[0]) == pytest.approx(2e-3)
    assert "inner_kl_coefs" in learner.state_dict()
    learner, trajs, out = _navigation(inner_kl_coef=1e-3, inner_kl_target=10.0, ppo_epochs=3)
    learner.update(trajs, out, torch.optim.Adam(learner.policy.parameters(), lr=1e-3))
    assert float(learner.inner_kl_coefs[0]) == pytest.approx(5e-4)
    fixed, trajs, out = _navigation(inner_kl_coef=1e-3, inner_kl_target=0.0)
    fixed.update(trajs, out, torch.optim.Adam(fixed.policy.parameters(), lr=1e-2))
    assert float(fixed.inner_kl_coefs[0]) == pytest.approx(1e-3)


def test_ppo_without_an_optimizer_is_refused():
    learner, trajs, out = _navigation()
    with pytest.raises(ConfigError, match="needs an optimizer"):
        learner.update(trajs, out, None)


@pytest.mark.parametrize("method", ["promp", "drs-ppo"])
def test_short_ppo_runs_improve_the_return(method):
    """The return after k steps (k = 1 for ProMP, 0 for DRS) on the same 40 goals and episodes seed, before and
    after 15 iterations: the mean paired gain must exceed 3 standard errors."""
    cfg = preset(method).replace(hidden=(32, 32), meta_batch_size=10, episodes=10, horizon=50, iterations=15,
                                 outer_lr=0.01)
    learner, optimizer = build(cfg)
    k = 1 if method == "promp" else 0
    tasks = learner.env.sample_tasks(40, torch.Generator().manual_seed(7))

    def returns():
        values, _ = adaptation_returns(learner, tasks, k, 10, (0.1,), torch.Generator().manual_seed(8))
        return values[:, k]

    before = returns()
    RLTrainer(learner, optimizer, cfg, progress=False).fit()
    gain = returns() - before
    assert float(gain.mean()) > 3 * float(gain.std() / math.sqrt(len(gain))), gain


def test_bad_ppo_settings_are_named():
    with pytest.raises(ConfigError, match="ppo_clip"):
        RLConfig().replace(ppo_clip=1.5)
    with pytest.raises(ConfigError, match="ppo_epochs"):
        RLConfig().replace(ppo_epochs=0)


def test_compiled_ppo_update_equals_eager_as_the_penalties_adapt():
    """``compile=True`` on ProMP's PPO step: two meta-batches, the KL penalty coefficients (a buffer) changing after
    the first; the compiled gradient must read them afresh (not baked in), so both steps equal eager's in float64."""
    import copy

    torch.manual_seed(0)
    env = Navigation2D(horizon=10)
    policy = make_policy(env.action_space, 2, hidden=(8, 8)).double()
    kwargs = {"algo": "promp", "outer": "ppo", "episodes": 3, "ppo_epochs": 2, "inner_kl_target": 1e-6}
    learners = [MetaRL(copy.deepcopy(policy), env, compile=c, **kwargs) for c in (False, True)]
    optimizers = [torch.optim.Adam(lr.policy.parameters(), lr=0.01) for lr in learners]
    gen, coefs = torch.Generator().manual_seed(0), []
    for _ in range(2):
        tasks = env.sample_tasks(3, gen).double()
        trajs, out = learners[0].sample(tasks, torch.Generator().manual_seed(1))
        coefs.append(learners[0].inner_kl_coefs.clone())
        metrics = [lr.update(trajs, out, opt) for lr, opt in zip(learners, optimizers, strict=True)]
        assert metrics[0]["grad_norm"] == pytest.approx(metrics[1]["grad_norm"], rel=1e-9)
        eager, compiled = (flatten(lr.meta_params()) for lr in learners)
        assert torch.allclose(compiled, eager, rtol=1e-9, atol=1e-12)
        assert torch.equal(learners[0].inner_kl_coefs, learners[1].inner_kl_coefs)
    assert not torch.equal(coefs[0], coefs[1])  # the second step ran with other penalties than the first
    assert "ppo_gradient" in learners[1].__dict__["_compiled"]
