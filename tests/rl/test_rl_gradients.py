"""Meta-RL gradients against exact values: the VPG estimator, the meta-gradient and the TRPO Hessian-vector
product through the inner step, and SG-MRL's unbiasedness (with MAML's bias) on a tiny MDP."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import grad, vmap

from metagrad.functional import call
from metagrad.rl import MetaRL, Navigation2D, make_policy
from metagrad.rl.sampler import process, rollout
from metagrad.rl.trpo import flatten, unflatten
from rl_fixtures import OneStepBandit, RepeatedBandit


def test_vpg_estimator_matches_the_exact_policy_gradient_of_a_gaussian_bandit():
    """J(mu, sigma) = -((mu - g)^2 + sigma^2): dJ/dmu = -2 (mu - g), dJ/dlog sigma = -2 sigma^2."""
    env = OneStepBandit(n=0)
    policy = make_policy(env.action_space, 1, hidden=(), init_std=0.7).double()
    with torch.no_grad():
        policy.mean[0].weight.fill_(0.3)
        policy.mean[0].bias.fill_(-0.1)
    goal = 0.5
    mu, sigma = 0.2, 0.7
    exact = {"mean.0.weight": -2 * (mu - goal), "mean.0.bias": -2 * (mu - goal), "log_std": -2 * sigma**2}
    for baseline in ("none", "linear"):
        learner = MetaRL(policy, env, baseline=baseline, normalize_inner=False, gamma=1.0)
        tasks = torch.full((50, 1), goal, dtype=torch.float64)  # 50 independent batches of 400 episodes
        traj = process(rollout(env, policy, learner.meta_params(), tasks, 400, torch.Generator().manual_seed(1)),
                       gamma=1.0, baseline=baseline, normalize_advantages=False)
        # the inner loss is -(sum log pi * A) / (K H); minus its gradient (H = 1) estimates grad J
        g = vmap(grad(learner.inner_loss), in_dims=(None, 0))(learner.meta_params(), traj)
        for name, value in exact.items():
            est = -g[name].reshape(50)
            mean, se = float(est.mean()), float(est.std() / math.sqrt(50))
            assert se < 0.1 * abs(value), (name, se)  # the check is sharp
            assert abs(mean - value) < 4 * se, (baseline, name, mean, value, se)


def _navigation_learner(algo: str, steps: int = 2, hvp: str = "exact") -> tuple[MetaRL, list, object]:
    torch.manual_seed(0)
    env = Navigation2D(horizon=8)
    policy = make_policy(env.action_space, 2, hidden=(6, 6), activation="tanh", init_std=0.5).double()
    learner = MetaRL(policy, env, algo=algo, inner_lr=(0.3, 0.2), inner_steps=steps, episodes=3, hvp=hvp)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0)).double()
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
    return learner, trajs, out


@pytest.mark.parametrize("algo", ["maml", "sgmrl", "emaml"])
def test_meta_gradient_matches_finite_differences_of_the_objective(algo):
    learner, trajs, out = _navigation_learner(algo)
    theta = learner.meta_params()
    x0 = flatten(theta)
    g = flatten(learner.meta_gradient(trajs, out))
    direction = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(2))
    eps = 1e-6

    def f(x):
        return float(learner.objective(unflatten(x, theta), trajs, out))

    fd = (f(x0 + eps * direction) - f(x0 - eps * direction)) / (2 * eps)
    assert float(g @ direction) == pytest.approx(fd, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("hvp", ["exact", "finite-difference"])
def test_kl_hessian_vector_product_through_the_inner_steps_matches_finite_differences(hvp):
    """The TRPO curvature: finite differences of the KL's meta-gradient (through both inner steps)."""
    learner, trajs, out = _navigation_learner("maml", hvp=hvp)
    theta = learner.meta_params()
    x0 = flatten(theta)

    def kl_grad(x):
        return grad(lambda y: learner.kl(unflatten(y, theta), trajs, out))(x)

    assert float(kl_grad(x0).abs().max()) < 1e-12  # the KL is minimal at the sampling parameters
    product = learner.kl_hvp(trajs, out)
    for seed in (3, 4):
        v = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(seed))
        eps = 1e-5
        fd = (kl_grad(x0 + eps * v) - kl_grad(x0 - eps * v)) / (2 * eps)
        hv = product(v) - learner.cg_damping * v
        assert float((hv - fd).norm() / fd.norm()) < 1e-7
        assert float(hv.norm()) > 1e-3  # not trivially zero


@pytest.mark.parametrize("hvp", ["exact", "finite-difference"])
def test_first_order_gradient_and_curvature_are_taken_at_the_adapted_parameters(hvp):
    """FOMAML treats the inner gradients as constants: its meta-gradient is the mean over tasks of the
    surrogate's gradient at each task's adapted parameters, and its TRPO curvature the Fisher matrix there (finite
    differences moved the inner path with theta: sum F J v, 5.5e-2 off and not symmetric)."""
    fo, trajs, out = _navigation_learner("fomaml", hvp=hvp)
    theta = fo.meta_params()
    x0 = flatten(theta)
    adapted = {k: v.detach() for k, v in fo.adapted_path(theta, trajs)[-1].items()}
    policy, mask = fo.policy, out.mask

    def shifted(y):  # every task's adapted parameters moved by the same y - x0
        shift = unflatten(y - x0, theta)
        return {k: adapted[k] + shift[k] for k in adapted}

    def surrogate(y):
        lp = policy.log_prob(vmap(lambda p, o: call(policy, p, {}, o))(shifted(y), out.obs), out.actions)
        ratio = torch.exp((lp - out.old_log_prob) * mask) * mask
        return (ratio * out.advantages).sum((1, 2)).mean() / mask[0].numel()

    def kl(y):
        dist = vmap(lambda p, o: call(policy, p, {}, o))(shifted(y), out.obs)
        return (policy.kl(out.old_dist, dist) * mask).sum() / mask.sum()

    g = flatten(fo.meta_gradient(trajs, out))
    assert float((g - grad(surrogate)(x0)).abs().max()) < 1e-12
    v = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(5))
    fd = (grad(kl)(x0 + 1e-5 * v) - grad(kl)(x0 - 1e-5 * v)) / 2e-5
    hv_fo = fo.kl_hvp(trajs, out)(v) - fo.cg_damping * v
    assert float((hv_fo - fd).norm() / fd.norm()) < 1e-7
    so = MetaRL(fo.policy, fo.env, algo="maml", inner_lr=(0.3, 0.2), inner_steps=2, episodes=3)
    hv_so = so.kl_hvp(trajs, out)(v) - so.cg_damping * v
    assert float((hv_so - hv_fo).norm() / hv_fo.norm()) > 1e-3  # the inner Jacobian matters


# ---------------------------------------------------------------------- SG-MRL on a two-armed bandit
ALPHA, K = 2.0, 2
REWARDS = torch.tensor([1.0, 0.2], dtype=torch.float64)


def _exact_v1_gradient(policy) -> torch.Tensor:
    """grad V1 of eq. (6) by enumerating every inner batch D of K one-step episodes: V1 = sum_D q(D; theta)
    J(theta + alpha g(theta, D)), with g the inner estimator (1/K) sum_k grad log pi(a_k) r(a_k)."""
    names = [n for n, _ in policy.named_parameters()]

    def logits(x: torch.Tensor) -> torch.Tensor:
        w, b = x[:2], x[2:]
        return torch.log_softmax(w * 1.0 + b, -1)

    def v1(x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for batch in itertools.product(range(2), repeat=K):
            lp = logits(x)
            q = torch.exp(sum(lp[a] for a in batch))
            g = torch.autograd.grad(sum(lp[a] * REWARDS[a] for a in batch) / K, x, create_graph=True)[0]
            total = total + q * (torch.exp(logits(x + ALPHA * g)) * REWARDS).sum()
        return total

    assert names == ["logits.0.weight", "logits.0.bias"]
    x = flatten(dict(policy.named_parameters())).detach().clone().requires_grad_(True)
    return torch.autograd.grad(v1(x), x)[0]


def _estimates(algo: str, policy, repeats: int = 30, tasks: int = 3000) -> torch.Tensor:
    env = OneStepBandit(n=2)
    learner = MetaRL(policy, env, algo=algo, outer="vpg", inner_lr=ALPHA, episodes=K, baseline="none",
                     normalize_inner=False, normalize_outer=False, gamma=1.0)
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(repeats):
        trajs, post = learner.sample(REWARDS.expand(tasks, 2).clone(), gen)
        out.append(flatten(learner.meta_gradient(trajs, post)))
    return torch.stack(out)


def test_sgmrl_is_unbiased_for_eq6_and_maml_without_its_term_is_not():
    env = OneStepBandit(n=2)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, 1, hidden=()).double()
    with torch.no_grad():
        policy.logits[0].weight.copy_(torch.tensor([[0.3], [-0.2]]))
        policy.logits[0].bias.copy_(torch.tensor([0.1, 0.0]))
    exact = _exact_v1_gradient(policy)
    sg, maml = _estimates("sgmrl", policy), _estimates("maml", policy)
    for est, unbiased in ((sg, True), (maml, False)):
        mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
        z = ((mean - exact).abs() / se).max()
        if unbiased:
            assert z < 4.5, (mean, exact, se)
        else:
            assert z > 10, (mean, exact, se)
    # the extra term is what separates them: its size is the gap
    assert float((sg.mean(0) - maml.mean(0)).norm()) > 0.2 * float(exact.norm())


GAMMA, H = 0.5, 2


def _exact_discounted_v1_gradient(policy, from_start: bool) -> torch.Tensor:
    """grad V1 of eq. (6) with J the return discounted from the episode's start (eq. 2), on the two-armed bandit
    played H = 2 times an episode, enumerating every inner batch of K episodes; the inner estimator weighs the
    reward at s by gamma^s (eq. 4, ``from_start``) or gamma^(s-t) in step t's term (reward-to-go), and averages
    over the K H slots as metagrad's surrogate does."""
    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x[:2] + x[2:], -1)

    def v1(x: torch.Tensor) -> torch.Tensor:
        total, discount = torch.zeros((), dtype=torch.float64), sum(GAMMA ** t for t in range(H))
        for batch in itertools.product(itertools.product(range(2), repeat=H), repeat=K):
            lp = logits(x)
            q = torch.exp(sum(lp[a] for episode in batch for a in episode))
            surrogate = sum(lp[episode[t]] * sum(GAMMA ** (s if from_start else s - t) * REWARDS[episode[s]]
                                                 for s in range(t, H)) for episode in batch for t in range(H))
            g = torch.autograd.grad(surrogate / (K * H), x, create_graph=True)[0]
            total = total + q * discount * (torch.exp(logits(x + ALPHA * g)) * REWARDS).sum()
        return total

    x = flatten(dict(policy.named_parameters())).detach().clone().requires_grad_(True)
    return torch.autograd.grad(v1(x), x)[0]


def test_sgmrl_is_unbiased_for_the_discounted_return_with_discount_from_start():
    """With gamma < 1 the advantages weigh rewards from each step (gamma^(s-t)), where eq. (4) weighs them from the
    episode's start (gamma^s): SG-MRL's mean then misses the gradient of the discounted return (an outside check:
    42% off at gamma 0.5); ``discount_from='start'`` is eq. (4), and the estimator is unbiased again."""
    env = RepeatedBandit(n=2, horizon=H)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, 1, hidden=()).double()
    with torch.no_grad():
        policy.logits[0].weight.copy_(torch.tensor([[0.3], [-0.2]]))
        policy.logits[0].bias.copy_(torch.tensor([0.1, 0.0]))
    for from_start in (True, False):
        learner = MetaRL(policy, env, algo="sgmrl", outer="vpg", inner_lr=ALPHA, episodes=K, baseline="none",
                         normalize_inner=False, gamma=GAMMA, score_baseline="batch",  # (less variance, unbiased)
                         discount_from="start" if from_start else "step")
        gen = torch.Generator().manual_seed(7)
        est = torch.stack([flatten(learner.meta_gradient(*learner.sample(REWARDS.expand(3000, 2).clone(), gen)))
                           for _ in range(30)]) * H  # metagrad's objective: the return over the H slots' mean
        exact = _exact_discounted_v1_gradient(policy, from_start)
        z = ((est.mean(0) - exact).abs() / (est.std(0) / math.sqrt(len(est)))).max()
        assert (z < 4.5) if from_start else (z > 10), (from_start, est.mean(0), exact)


def test_discount_from_reaches_the_learner_from_the_command_line_and_is_checked(tmp_path, capsys):
    from conftest import cli_error
    from metagrad.errors import ConfigError
    from metagrad.rl.config import preset
    from metagrad.rl.train import build

    learner, _ = build(preset("sgmrl").replace(discount_from="start", episodes=2, meta_batch_size=2))
    assert learner.discount_from == "start"
    with pytest.raises(ConfigError, match=r"unknown discount_from 'begin'.*choose one of step, start"):
        preset("sgmrl").replace(discount_from="begin")
    assert "unknown discount_from 'begin'" in cli_error(["train", "--config", "sgmrl-navigation", "--discount-from",
                                                          "begin", "--out", str(tmp_path)], capsys)


def test_finite_difference_curvature_is_usable_in_float32():
    """The MAML paper's finite-difference products, in the precision training runs in: the step must not be so
    small that rounding dominates (a 1e-5 relative step gave errors of 10 to 100 times the product here). With
    ReLU, differences across kinks leave an error of about 10%; exact products have none."""
    torch.manual_seed(0)
    env = Navigation2D(horizon=30)
    policy = make_policy(env.action_space, 2, hidden=(32, 32))
    fd = MetaRL(policy, env, episodes=5, hvp="finite-difference")
    trajs, out = fd.sample(env.sample_tasks(4, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    exact = MetaRL(policy, env, episodes=5)
    x0 = flatten(fd.meta_params())
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    a, b = fd.kl_hvp(trajs, out)(v), exact.kl_hvp(trajs, out)(v)
    assert float((a - b).norm() / b.norm()) < 0.3


# ---------------------------------------------------------------------- the context-vector baseline
def _context_learner(adapt=("context",)) -> tuple[MetaRL, list, object]:
    torch.manual_seed(0)
    env = Navigation2D(horizon=8)
    policy = make_policy(env.action_space, 2, hidden=(6, 6), activation="tanh", init_std=0.5, context=3).double()
    with torch.no_grad():
        policy.context.normal_()  # z starts at 0; a random start makes every term of the check count
    learner = MetaRL(policy, env, inner_lr=(0.3, 0.2), inner_steps=2, episodes=3, adapt=adapt)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0)).double()
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
    return learner, trajs, out


def test_context_inner_steps_move_z_alone_and_the_meta_gradient_matches_plain_autograd():
    """Appendix C.2's baseline: the inner steps adapt z only; the meta-gradient (second order, through both steps)
    reaches every parameter, as plain autograd with create_graph computes it task by task."""
    learner, trajs, out = _context_learner()
    policy = learner.policy
    theta = {n: p.detach().clone().requires_grad_() for n, p in policy.named_parameters()}
    path = learner.adapted_path(learner.meta_params(), trajs)
    for name, value in path[-1].items():
        moved = (value - theta[name].detach()).abs().amax()
        assert (moved > 1e-6) if name == "context" else (moved == 0), name

    total = 0.0
    tasks, k, horizon = out.mask.shape
    for i in range(tasks):
        params = dict(theta)
        for s, tr in enumerate(trajs):
            logp = policy.log_prob(call(policy, params, {}, tr.obs[i]), tr.actions[i])
            loss = -(logp * tr.advantages[i] * tr.mask[i]).sum() / tr.mask[i].numel()
            (g,) = torch.autograd.grad(loss, params["context"], create_graph=True)
            params = {**params, "context": params["context"] - (0.3, 0.2)[s] * g}
        logp = policy.log_prob(call(policy, params, {}, out.obs[i]), out.actions[i])
        ratio = torch.exp((logp - out.old_log_prob[i]) * out.mask[i]) * out.mask[i]
        total = total + (ratio * out.advantages[i]).sum() / (k * horizon) / tasks
    expected = dict(zip(theta, torch.autograd.grad(total, list(theta.values())), strict=True))
    got = learner.meta_gradient(trajs, out)
    for name in theta:
        assert torch.allclose(got[name], expected[name], rtol=1e-10, atol=1e-13), name
        assert float(expected[name].abs().max()) > 1e-6, name  # every parameter gets a meta-gradient


def test_context_kl_curvature_through_the_inner_steps_matches_finite_differences():
    """TRPO's exact products with J = I - alpha P H (P: z only) and J^T = I - alpha H P, against finite
    differences of the KL's gradient; adapting every parameter gives another curvature."""
    learner, trajs, out = _context_learner()
    theta = learner.meta_params()
    x0 = flatten(theta)

    def kl_grad(x):
        return grad(lambda y: learner.kl(unflatten(y, theta), trajs, out))(x)

    product = learner.kl_hvp(trajs, out)
    v = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(3))
    fd = (kl_grad(x0 + 1e-5 * v) - kl_grad(x0 - 1e-5 * v)) / 2e-5
    hv = product(v) - learner.cg_damping * v
    assert float((hv - fd).norm() / fd.norm()) < 1e-7
    every = MetaRL(learner.policy, learner.env, inner_lr=(0.3, 0.2), inner_steps=2, episodes=3)
    hv_every = every.kl_hvp(trajs, out)(v) - every.cg_damping * v
    assert float((hv_every - hv).norm() / hv.norm()) > 1e-3


def test_adapt_names_must_match_the_policy():
    from metagrad.errors import ConfigError

    env = Navigation2D(horizon=8)
    policy = make_policy(env.action_space, 2, hidden=(4,), context=2)
    with pytest.raises(ConfigError, match="adapt 'contxt' matches no parameter"):
        MetaRL(policy, env, adapt=["contxt"])
    with pytest.raises(ConfigError, match="context -1 must be >= 0"):
        make_policy(env.action_space, 2, context=-1)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_fisher_product_is_the_kl_hessian_at_the_sampling_parameters(kind):
    """The TRPO Fisher product (per-task parameters) against finite differences of the KL's gradient: by
    Gauss-Newton where the distribution's parameters are free (Gaussian), by double backward where they are not
    (categorical log-probs, whose KL gradient is -p_old: Gauss-Newton there would miss the curvature)."""
    from types import SimpleNamespace

    from metagrad.rl.outer import _dist, _kl_of_dist, fisher_product
    from metagrad.rl.policy import CategoricalMLPPolicy, GaussianMLPPolicy

    torch.manual_seed(0)
    policy = (GaussianMLPPolicy(3, 2, (8, 8), "tanh") if kind == "gaussian"
              else CategoricalMLPPolicy(3, 4, (8, 8), "tanh")).double()
    assert policy.free_dist == (kind == "gaussian")
    tasks = 3
    p = {k: v.detach().expand(tasks, *v.shape) + 0.1 * torch.randn(tasks, *v.shape, dtype=torch.float64)
         for k, v in policy.named_parameters()}
    obs = torch.randn(tasks, 2, 5, 3, dtype=torch.float64)
    learner = SimpleNamespace(policy=policy)
    out = SimpleNamespace(obs=obs, mask=(torch.rand(tasks, 2, 5) > 0.2).double(), old_dist=None)
    out.old_dist = _dist(learner, out, p).detach()
    kl_grad = grad(lambda q: _kl_of_dist(learner, out, _dist(learner, out, q)))
    product = fisher_product(learner, out, p)
    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        u = {k: torch.randn(v.shape, dtype=v.dtype, generator=gen) for k, v in p.items()}
        eps = 1e-5
        plus, minus = (kl_grad({k: p[k] + s * eps * u[k] for k in p}) for s in (1, -1))
        fd = flatten({k: (plus[k] - minus[k]) / (2 * eps) for k in p})
        fu = flatten(product(u)[0])
        assert float((fu - fd).norm() / fd.norm()) < 1e-7
        assert float(fu.norm()) > 1e-3


def test_emaml_weights_are_promps_population_normalized_post_update_rewards():
    """ProMP: each task's mean of (r - mean of all r) / (np.std(all r) + 1e-8) over its valid post-update steps. The
    sample std made them 1/1.013 of ProMP's here and NaN with one valid step (a diverged run, wrongly blamed)."""
    torch.manual_seed(0)
    env = Navigation2D(horizon=12, goal_radius=0.2)
    learner = MetaRL(make_policy(env.action_space, 2, hidden=(8,)), env, algo="emaml", episodes=3)
    _, out = learner.sample(env.sample_tasks(4, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    valid = out.mask.bool()
    assert not valid.all()  # some episodes ended early: their slots are not steps
    everything = out.rewards[valid].double().numpy()
    promp = [((out.rewards[t][valid[t]].double().numpy() - everything.mean()) / (everything.std() + 1e-8)).mean()
             for t in range(4)]
    assert torch.allclose(learner.emaml_coefficients(out).double(), torch.tensor(promp), atol=1e-5)
    first = torch.zeros_like(out.mask[:1, :1])
    first[..., 0] = 1  # one task whose one episode ended at its first step
    assert learner.emaml_coefficients(out._replace(rewards=out.rewards[:1, :1], mask=first)).tolist() == [0.0]


def test_settings_under_which_an_algorithm_does_not_do_what_it_says_are_refused():
    from metagrad.errors import ConfigError
    from metagrad.rl.config import preset

    env = Navigation2D(horizon=8)
    policy = make_policy(env.action_space, 2, hidden=(4,))
    with pytest.raises(ConfigError, match="max_backtracks 0 must be a whole number >= 1"):
        MetaRL(policy, env, max_backtracks=0)  # TRPO would try no step: every update rejected, nothing trained
    assert not MetaRL(policy, env, algo="sgmrl").normalize_outer and MetaRL(policy, env).normalize_outer
    message = "algo 'sgmrl-fo' with normalize_outer=true: SG-MRL's gradient .eq. 13. holds only with raw advantages"
    with pytest.raises(ConfigError, match=message):
        MetaRL(policy, env, algo="sgmrl-fo", normalize_outer=True)
    with pytest.raises(ConfigError, match=message):
        preset("maml-trpo").replace(algo="sgmrl-fo", outer="vpg").validate()


def test_what_normalizes_over_the_whole_meta_batch_is_refused_on_a_share_of_it():
    from metagrad.distributed import Share
    from metagrad.errors import ConfigError

    env = Navigation2D(horizon=8)
    policy = make_policy(env.action_space, 2, hidden=(4,))
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    for kw, what in (({"algo": "emaml"}, "E-MAML's weights"),
                     ({"algo": "sgmrl-fo", "score_baseline": "batch"}, "SG-MRL's score_baseline=batch")):
        learner = MetaRL(policy, env, outer="vpg", episodes=2, **kw)
        trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
        with pytest.raises(ConfigError, match=f"on several processes: {what} normalize over the whole meta-batch"):
            learner.update(trajs, out, torch.optim.SGD(policy.parameters(), lr=0.1), Share(None, 0.5))
