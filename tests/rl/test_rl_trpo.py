"""TRPO: conjugate gradient, and a trust-region step that never breaks the KL bound nor lowers the surrogate."""

from __future__ import annotations

import pytest
import torch

from metagrad.errors import ConfigError
from metagrad.rl import MetaRL, Navigation2D, make_policy, outer
from metagrad.rl.trpo import conjugate_gradient, flatten, trust_region_step, unflatten
from rl_fixtures import spd_matrix


def test_conjugate_gradient_solves_a_positive_definite_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)
    assert torch.allclose(a @ x, b, atol=1e-8)


def _problem(seed: int):
    """A surrogate whose quadratic model is poor (cubic and sine terms) and a non-quadratic KL-like distance."""
    gen = torch.Generator().manual_seed(seed)
    d = 5
    a = spd_matrix(d, 0.1, gen)
    c = torch.randn(d, generator=gen, dtype=torch.float64)
    x0 = torch.randn(d, generator=gen, dtype=torch.float64)

    def surrogate(x):
        y = x - x0
        return float(c @ y - 3.0 * (y**3).sum() + torch.sin(5 * y).sum())

    def kl(x):
        y = x - x0
        return float(0.5 * y @ a @ y + (y**4).sum())

    g = c + 5.0  # the gradient at x0: c + 5 cos(0)
    return x0, (lambda x: (surrogate(x), kl(x))), g, (lambda v: a @ v)


def test_trust_region_step_respects_the_bound_and_never_lowers_the_surrogate():
    accepted = 0
    for seed in range(40):
        x0, evaluate, g, hvp = _problem(seed)
        for max_kl in (1e-3, 0.05, 1.0):
            x, info = trust_region_step(x0, evaluate, g, hvp, max_kl=max_kl, max_backtracks=10)
            (new, kl), (old, _) = evaluate(x), evaluate(x0)
            if info.accepted:
                accepted += 1
                assert kl <= max_kl
                assert new > old
                assert info.kl == kl
            else:
                assert torch.equal(x, x0)
    assert accepted > 40  # the line search finds steps on most problems


def test_trust_region_step_keeps_the_parameters_when_no_step_improves():
    x0 = torch.zeros(3, dtype=torch.float64)
    g = torch.ones(3, dtype=torch.float64)  # claims that increasing x helps, but the surrogate only falls

    def surrogate(x):
        return float(-((x - x0) ** 2).sum())

    x, info = trust_region_step(x0, lambda x: (surrogate(x), float(((x - x0) ** 2).sum())), g, lambda v: 2 * v,
                                max_kl=0.1)
    assert not info.accepted and torch.equal(x, x0)


def test_maml_trpo_update_stays_in_the_trust_region_and_improves_its_surrogate():
    torch.manual_seed(0)
    env = Navigation2D(horizon=20)
    policy = make_policy(env.action_space, 2, hidden=(16, 16))
    learner = MetaRL(policy, env, algo="maml", episodes=5, max_kl=0.01)
    tasks = env.sample_tasks(4, torch.Generator().manual_seed(0))
    trajs, out = learner.sample(tasks, torch.Generator().manual_seed(1))
    theta = {k: v.clone() for k, v in learner.meta_params().items()}  # (meta_params share the storage)
    before = float(learner.objective(theta, trajs, out))
    metrics = learner.update(trajs, out)
    new = learner.meta_params()
    assert metrics["accepted"] == 1.0
    assert float(flatten(new).sub(flatten(theta)).norm()) > 0
    with torch.no_grad():
        assert float(learner.kl(new, trajs, out)) <= 0.01
        # the new parameters, adapted on the same inner episodes, score higher on the same D_o
        assert float(learner.objective(new, trajs, out)) > before
    assert float(learner.kl(unflatten(flatten(theta), theta), trajs, out)) < 1e-7


def test_subsampled_curvature_is_symmetric_and_the_step_still_respects_the_full_kl():
    torch.manual_seed(0)
    env = Navigation2D(horizon=20)
    policy = make_policy(env.action_space, 2, hidden=(16, 16)).double()
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(0)).double()
    full = MetaRL(policy, env, episodes=4)
    trajs, out = full.sample(tasks, torch.Generator().manual_seed(1))
    half = MetaRL(policy, env, episodes=4, hvp_subsample=0.5)
    x0 = flatten(full.meta_params())
    gen = torch.Generator().manual_seed(2)
    u, v = (torch.randn(x0.shape, dtype=x0.dtype, generator=gen) for _ in range(2))
    hv_full, hv_half = full.kl_hvp(trajs, out), half.kl_hvp(trajs, out)
    assert float(u @ hv_half(v)) == pytest.approx(float(v @ hv_half(u)), rel=1e-9)
    assert float(v @ hv_half(v)) > 0
    gap = float((hv_half(v) - hv_full(v)).norm() / hv_full(v).norm())
    assert 1e-3 < gap < 1.0  # another estimate of the same curvature
    assert torch.equal(MetaRL(policy, env, episodes=4, hvp_subsample=0.9).kl_hvp(trajs, out)(v), hv_full(v))
    before = {k: w.clone() for k, w in half.meta_params().items()}
    metrics = half.update(trajs, out)
    assert metrics["accepted"] == 1.0
    with torch.no_grad():
        assert float(half.kl(half.meta_params(), trajs, out)) <= half.max_kl
        assert float(half.objective(half.meta_params(), trajs, out)) > float(half.objective(before, trajs, out))


def test_compiled_meta_gradient_and_curvature_equal_eager_in_one_graph_each():
    """``compile=True``: the meta-gradient and the curvature products (through the inner step, the context policy's
    projection) compile with ``fullgraph=True`` (a graph break fails here) and equal eager (the line search's compiled
    evaluations: the joint-training test below); so does the product summed over chunks of tasks
    (``curvature_chunk``: 4 tasks asked in chunks of 3 make two of 2, each weighted by its share of the KL's steps)."""
    import copy

    torch.manual_seed(0)
    env = Navigation2D(horizon=10)
    policy = make_policy(env.action_space, 2, hidden=(8, 8), context=2).double()
    tasks = env.sample_tasks(4, torch.Generator().manual_seed(0)).double()
    kwargs = {"inner_steps": 1, "episodes": 3, "adapt": ["context"]}
    eager = MetaRL(copy.deepcopy(policy), env, **kwargs)
    compiled = MetaRL(copy.deepcopy(policy), env, compile=True, **kwargs)
    chunked = MetaRL(copy.deepcopy(policy), env, compile=True, curvature_chunk=3, **kwargs)
    trajs, out = eager.sample(tasks, torch.Generator().manual_seed(1))
    g_eager, g_comp = flatten(eager.meta_gradient(trajs, out)), flatten(compiled.meta_gradient(trajs, out))
    assert torch.allclose(g_comp, g_eager, rtol=1e-10, atol=1e-12) and float(g_eager.norm()) > 0
    v = torch.randn(g_eager.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hv_eager = eager.kl_hvp(trajs, out)(v)
    for learner in (compiled, chunked):
        assert torch.allclose(learner.kl_hvp(trajs, out)(v), hv_eager, rtol=1e-10, atol=1e-12)
    assert float(v @ hv_eager) > 0
    assert set(compiled.__dict__["_compiled"]) == {"objective_gradient", "curvature_product"}
    path = outer.inner_path(eager, eager.meta_params(), trajs)[0]
    assert [p[2].mask.shape[0] for p in outer.task_chunks(3, eager.meta_params(), path, trajs, out)] == [2, 2]
    with pytest.raises(ConfigError, match=r"curvature_chunk -1 must be a whole number >= 0 \(0: every task in one "):
        MetaRL(copy.deepcopy(policy), env, curvature_chunk=-1)


def test_compiled_curvature_equals_eager_when_the_episode_count_changes():
    """Learners with another number of episodes compile the same functions again: dynamo's automatic dynamic shapes
    on that second compilation cannot size the batched tensors inside vmap (it failed so in the navigation benchmark,
    hvp_subsample 1 then 0.25); each set of shapes gets its own static graph, equal to eager."""
    import copy

    torch.manual_seed(0)
    env = Navigation2D(horizon=10)
    policy = make_policy(env.action_space, 2, hidden=(8, 8)).double()
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0)).double()
    for episodes in (3, 5):
        eager, compiled = (MetaRL(copy.deepcopy(policy), env, algo="fomaml", episodes=episodes, compile=c)
                           for c in (False, True))  # first-order: the smallest product with per-task parameters
        trajs, out = eager.sample(tasks, torch.Generator().manual_seed(1))
        v = torch.randn(flatten(eager.meta_params()).shape, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
        hv_eager, hv_comp = eager.kl_hvp(trajs, out)(v), compiled.kl_hvp(trajs, out)(v)
        assert torch.allclose(hv_comp, hv_eager, rtol=1e-10, atol=1e-12) and float(v @ hv_eager) > 0


def test_compiled_joint_training_curvature_equals_eager():
    """DRS+TRPO (``algo='joint'``, no inner step): the compiled KL Hessian-vector product and update equal eager."""
    import copy

    torch.manual_seed(0)
    env = Navigation2D(horizon=10)
    policy = make_policy(env.action_space, 2, hidden=(8, 8)).double()
    eager, compiled = (MetaRL(copy.deepcopy(policy), env, algo="joint", episodes=3, compile=c) for c in (False, True))
    trajs, out = eager.sample(env.sample_tasks(3, torch.Generator().manual_seed(0)).double(),
                              torch.Generator().manual_seed(1))
    assert trajs == []
    v = torch.randn(flatten(eager.meta_params()).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    hv_eager, hv_comp = eager.kl_hvp(trajs, out)(v), compiled.kl_hvp(trajs, out)(v)
    assert torch.allclose(hv_comp, hv_eager, rtol=1e-10, atol=1e-12) and float(v @ hv_eager) > 0
    assert eager.update(trajs, out)["accepted"] == compiled.update(trajs, out)["accepted"] == 1.0
    # conjugate gradient on the policy's nearly singular KL Hessian (damping 1e-5) turns rounding (1e-16 in the
    # products) into 1e-7 in the step; a wrong product would move it by the step's own size (1e-2)
    step = float((flatten(eager.meta_params()) - flatten(dict(policy.named_parameters()))).abs().max())
    assert float((flatten(compiled.meta_params()) - flatten(eager.meta_params())).abs().max()) < 1e-3 * step
    assert "policy_curvature" in compiled.__dict__["_compiled"]


def test_subsampled_curvature_is_refused_with_finite_difference_products():
    """Finite-difference products use every episode: hvp_subsample < 1 there was stored and ignored."""
    env = Navigation2D(horizon=20)
    policy = make_policy(env.action_space, 2, hidden=(8,))
    with pytest.raises(ConfigError, match="hvp finite-difference uses every episode"):
        MetaRL(policy, env, episodes=4, hvp="finite-difference", hvp_subsample=0.5)
    MetaRL(policy, env, episodes=4, hvp="finite-difference")  # every episode: fine


def test_a_weight_normed_policy_is_refused_where_second_derivatives_are_taken():
    """torch's weight norm has a wrong second derivative: TRPO's curvature and second-order inner steps refuse it;
    first order with a VPG outer step takes it."""
    from torch.nn.utils import parametrizations

    env = Navigation2D(horizon=20)
    policy = make_policy(env.action_space, 2, hidden=(8,))
    parametrizations.weight_norm(policy.mean[0])
    for algo, outer_step in (("maml", "vpg"), ("fomaml", "trpo")):
        with pytest.raises(ConfigError, match="weight norm, whose second derivative torch gets wrong"):
            MetaRL(policy, env, algo=algo, outer=outer_step, episodes=2)
    MetaRL(policy, env, algo="fomaml", outer="vpg", episodes=2)
