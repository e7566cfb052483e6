"""Policies: log-probabilities, KL and entropy against torch.distributions; the action-space check."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from metagrad.errors import ConfigError
from metagrad.functional import call
from metagrad.rl import Space, make_policy


def test_gaussian_policy_matches_torch_distributions():
    policy = make_policy(Space("box", (3,), -1, 1), 4, hidden=(5,), init_std=0.6).double()
    obs = torch.randn(7, 4, dtype=torch.float64)
    dist = policy(obs)
    other = {k: v + 0.1 * torch.randn_like(v) for k, v in policy.named_parameters()}
    dist2 = call(policy, other, {}, obs)

    def ref(d):
        return Independent(Normal(d[..., :3], d[..., 3:].exp()), 1)

    a = policy.sample(dist, torch.Generator().manual_seed(0))
    assert torch.allclose(policy.log_prob(dist, a), ref(dist).log_prob(a))
    assert torch.allclose(policy.kl(dist, dist2), kl_divergence(ref(dist), ref(dist2)))
    assert torch.allclose(policy.entropy(dist), ref(dist).entropy())
    assert torch.equal(policy.mode(dist), dist[..., :3])


def test_categorical_policy_matches_torch_distributions():
    policy = make_policy(Space("discrete", n=4), 3, hidden=(6,)).double()
    obs = torch.randn(5, 3, dtype=torch.float64)
    dist = policy(obs)
    dist2 = call(policy, {k: 2 * v for k, v in policy.named_parameters()}, {}, obs)
    a = policy.sample(dist, torch.Generator().manual_seed(0))
    assert a.shape == (5,) and a.dtype == torch.long
    ref, ref2 = Categorical(logits=dist), Categorical(logits=dist2)
    assert torch.allclose(policy.log_prob(dist, a), ref.log_prob(a))
    assert torch.allclose(policy.kl(dist, dist2), kl_divergence(ref, ref2))
    assert torch.allclose(policy.entropy(dist), ref.entropy())


def test_a_policy_that_cannot_serve_the_action_space_is_refused():
    with pytest.raises(ConfigError, match="a gaussian policy cannot serve a discrete action space of 4 actions"):
        make_policy(Space("discrete", n=4), 2, kind="gaussian")
    with pytest.raises(ConfigError, match="a categorical policy cannot serve a continuous action space"):
        make_policy(Space("box", (2,), -0.1, 0.1), 2, kind="categorical")
    assert make_policy(Space("discrete", n=4), 2).discrete  # auto picks categorical
