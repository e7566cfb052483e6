"""``pack_episodes``: the update on each task's valid steps alone gives the padded layout's losses, meta-gradient,
curvature products and outer step (float64), on every algorithm it serves; SG-MRL and subsampled curvature, which
read whole episodes, keep the padded layout. ``loss_mean``: each task's losses average over its K x H slots
(``slots``) or over its valid steps (``steps``, the papers' code), checked against the means written out here."""

from __future__ import annotations

import pytest
import torch

from metagrad.errors import ConfigError
from metagrad.reproduce import locomotion
from metagrad.reproduce.metarl import method_config
from metagrad.rl.config import RLConfig
from metagrad.rl.envs import Navigation2D
from metagrad.rl.metarl import MetaRL
from metagrad.rl.policy import make_policy
from metagrad.rl.sampler import Trajectories, pack, policy_dist
from metagrad.tradeoff_rl import Study

T, K, H = 3, 4, 6


def _learner(algo: str, outer: str, **kw) -> MetaRL:
    torch.manual_seed(0)
    env = Navigation2D()
    policy = make_policy(env.action_space, env.obs_dim, hidden=(8, 8)).double()
    return MetaRL(policy, env, algo=algo, outer=outer, inner_lr=0.1, episodes=K, **kw)


def _batch(learner: MetaRL, seed: int, lengths: torch.Tensor) -> Trajectories:
    """Episodes of the given lengths (``[T, K]``), sampled by the learner's policy: the old distribution is its own."""
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(H) < lengths[..., None]).double()
    obs = torch.randn(T, K, H, 2, generator=gen, dtype=torch.float64)
    dist = policy_dist(learner.policy, learner.meta_params(), obs, False)
    actions = torch.randn(T, K, H, 2, generator=gen, dtype=torch.float64)
    log_prob = learner.policy.log_prob(dist, actions) * mask
    rewards = torch.randn(T, K, H, generator=gen, dtype=torch.float64) * mask
    adv = torch.randn(T, K, H, generator=gen, dtype=torch.float64) * mask
    return Trajectories(obs, actions, rewards, mask, dist.detach(), log_prob.detach(), rewards.cumsum(-1), adv)


def _batches(learner: MetaRL) -> tuple[list[Trajectories], Trajectories]:
    gen = torch.Generator().manual_seed(1)
    lengths = [torch.randint(1, H // 2 + 1, (T, K), generator=gen) for _ in range(2)]  # every episode ends early
    lengths[1][0, 0] = H // 2  # the longest task's count sets L
    return [_batch(learner, 2, lengths[0])], _batch(learner, 3, lengths[1])


def test_pack_keeps_every_valid_step_once_in_a_shorter_row():
    learner = _learner("maml", "trpo")
    trajs, out = _batches(learner)
    (packed_in,), packed = pack(trajs, out)
    assert packed.mask.shape[:2] == (T, 1) and packed.mask.shape[2] < K * H
    for a, b in ((trajs[0], packed_in), (out, packed)):
        assert torch.equal(b.mask.sum((1, 2)), a.mask.sum((1, 2)))
        valid = a.mask.bool()
        for t in range(T):
            kept = b.mask[t, 0].bool()
            assert torch.equal(b.obs[t, 0][kept], a.obs[t][valid[t]])  # in order, episode after episode
    # a batch whose episodes all run to the horizon sets L = K H (shared by all the batches): nothing to drop, the
    # very batches come back, unpacked (it was only checked that pack returned something)
    full = out._replace(mask=torch.ones(T, K, H, dtype=torch.float64))
    (same_in,), same = pack(trajs, full)
    assert same_in is trajs[0] and same is full


@pytest.mark.parametrize(("algo", "outer"), [("maml", "trpo"), ("fomaml", "trpo"), ("emaml", "trpo"),
                                             ("promp", "ppo"), ("maml", "vpg"), ("joint", "trpo")])
def test_packed_update_equals_the_padded_one(algo, outer):
    learner = _learner(algo, outer)
    trajs, out = _batches(learner)
    ptrajs, pout = pack(trajs, out)
    theta = learner.meta_params()
    for fn in (learner.objective, learner.kl):
        torch.testing.assert_close(fn(theta, ptrajs, pout), fn(theta, trajs, out), rtol=1e-10, atol=1e-12)
    if outer == "trpo":
        g, pg = learner.meta_gradient(trajs, out), learner.meta_gradient(ptrajs, pout)
        for k in g:
            torch.testing.assert_close(pg[k], g[k], rtol=1e-10, atol=1e-12)
        v = torch.randn(sum(p.numel() for p in theta.values()), dtype=torch.float64)
        torch.testing.assert_close(learner.kl_hvp(ptrajs, pout)(v), learner.kl_hvp(trajs, out)(v), rtol=1e-9,
                                   atol=1e-12)
    after = {}
    for packed in (False, True):
        learner = _learner(algo, outer, pack_episodes=packed)
        optimizer = torch.optim.Adam(learner.policy.parameters(), lr=1e-2) if outer != "trpo" else None
        learner.update(*_batches(learner), optimizer)
        after[packed] = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    for k in after[False]:
        torch.testing.assert_close(after[True][k], after[False][k], rtol=1e-8, atol=1e-10)
        assert not torch.equal(after[True][k], _learner(algo, outer).policy.state_dict()[k]) or algo == "joint"


@pytest.mark.parametrize("kw", [{"algo": "sgmrl"}, {"algo": "maml", "hvp_subsample": 0.5}])
def test_packing_what_reads_whole_episodes_is_refused(kw):
    with pytest.raises(ConfigError, match="pack_episodes=false"):
        _learner(outer="trpo", pack_episodes=True, **kw)
    assert not _learner(outer="trpo", **kw).packable


def test_a_config_that_packs_what_reads_whole_episodes_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="pack_episodes=false"):
        RLConfig(algo="maml", hvp_subsample=0.5, pack_episodes=True).validate()


def test_the_ant_and_the_tradeoff_families_pack_where_the_method_allows_it():
    ant = locomotion.experiment("ant-vel")
    packed = {m: method_config(m, False, 1, None, {}, ant.settings(m)).pack_episodes
              for m in ("maml-trpo", "pretrained", "oracle", "sgmrl")}
    assert packed == {"maml-trpo": True, "pretrained": True, "oracle": True, "sgmrl": False}
    assert not method_config("maml-trpo", False, 1, None, {"hvp_subsample": "0.5"},
                             ant.settings("maml-trpo")).pack_episodes
    assert not method_config("maml-trpo", False, 1, None, {"pack_episodes": "false"},
                             ant.settings("maml-trpo")).pack_episodes
    with pytest.raises(ConfigError, match="pack_episodes=false"):  # asked for by name: refused, not dropped
        method_config("sgmrl", False, 1, None, {"pack_episodes": "true"}, ant.settings("sgmrl"))
    means = {m: method_config(m, False, 1, None, {}, ant.settings(m)).loss_mean for m in ("maml-trpo", "sgmrl")}
    assert means == {"maml-trpo": "steps", "sgmrl": "slots"}  # the ant's valid-step means where they apply
    with pytest.raises(ConfigError, match="score term"):
        method_config("sgmrl", False, 1, None, {"loss_mean": "steps"}, ant.settings("sgmrl"))
    cheetah = locomotion.experiment("cheetah-dir")
    assert not method_config("maml-trpo", False, 1, None, {}, cheetah.settings("maml-trpo")).pack_episodes
    study = Study(env="hopper-rand-params", pair="trpo")
    assert all(study.config(m, 0).pack_episodes for m in study.methods)


def _task(traj: Trajectories, t: int) -> Trajectories:
    return Trajectories(*(f[t] for f in traj))


def _learners() -> tuple[MetaRL, MetaRL, list[Trajectories], Trajectories]:
    slots, steps = _learner("maml", "trpo"), _learner("maml", "trpo", loss_mean="steps")
    trajs, out = _batches(slots)
    return slots, steps, trajs, out


def test_steps_scales_each_tasks_advantages_by_its_slots_over_its_valid_steps():
    slots, steps, _, out = _learners()
    a, b = slots.process(out, True), steps.process(out, True)
    valid = out.mask.sum((1, 2))
    assert (valid < out.mask[0].numel()).all()  # every task has episodes that end early
    torch.testing.assert_close(b.advantages, a.advantages * (out.mask[0].numel() / valid)[:, None, None])
    full = out._replace(mask=torch.ones_like(out.mask))  # no episode ends early: the two agree
    torch.testing.assert_close(steps.process(full, True).advantages, slots.process(full, True).advantages)


def test_the_inner_loss_and_the_outer_surrogate_average_over_valid_steps():
    slots, steps, trajs, out = _learners()
    theta = steps.meta_params()
    inner, out_s = steps.process(trajs[0], True), steps.process(out, True)
    plain_inner, plain_out = slots.process(trajs[0], True), slots.process(out, True)
    for t in range(T):
        task, plain = _task(inner, t), _task(plain_inner, t)
        logp = steps.policy.log_prob(policy_dist(steps.policy, theta, task.obs, False), task.actions)
        expected = -(logp * plain.advantages * task.mask).sum() / task.mask.sum()
        torch.testing.assert_close(steps.inner_loss(theta, task), expected, rtol=1e-12, atol=1e-12)
    joint = _learner("joint", "trpo", loss_mean="steps")  # no inner step: the surrogate at moved parameters
    moved = {k: v + 0.05 * torch.randn_like(v) for k, v in theta.items()}
    logp = joint.policy.log_prob(policy_dist(joint.policy, moved, out_s.obs, False), out_s.actions)
    ratio = torch.exp((logp - out_s.old_log_prob) * out_s.mask) * out_s.mask
    expected = ((ratio * plain_out.advantages).sum((1, 2)) / out_s.mask.sum((1, 2))).mean()
    torch.testing.assert_close(joint.objective(moved, [], out_s), expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(slots.objective(moved, [], plain_out), expected)


def test_packing_keeps_the_valid_step_means():
    _, steps, trajs, out = _learners()
    trajs, out = [steps.process(t, True) for t in trajs], steps.process(out, True)
    theta = steps.meta_params()
    ptrajs, pout = pack(trajs, out)
    torch.testing.assert_close(steps.objective(theta, ptrajs, pout), steps.objective(theta, trajs, out),
                               rtol=1e-10, atol=1e-12)


def test_loss_mean_is_checked():
    with pytest.raises(ConfigError, match="loss_mean"):
        _learner("maml", "trpo", loss_mean="episodes")
    with pytest.raises(ConfigError, match="loss_mean"):
        RLConfig(loss_mean="mean").validate()
    for algo in ("sgmrl", "sgmrl-fo"):  # its score term is no advantage sum: the scaling would not make it a mean
        with pytest.raises(ConfigError, match="score term"):
            _learner(algo, "vpg", loss_mean="steps")
        with pytest.raises(ConfigError, match="score term"):
            RLConfig(algo=algo, outer="vpg", loss_mean="steps").validate()
    assert RLConfig().loss_mean == "slots"
