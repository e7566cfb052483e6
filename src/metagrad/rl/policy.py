"""Stochastic policies as plain modules that the engine calls functionally (``call(policy, params, {}, obs)``).

``forward`` returns the distribution's parameters as one tensor, so that per-task parameters work under
``vmap``; ``log_prob``, ``kl``, ``sample`` and ``entropy`` are pure functions of that tensor.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, check_choice, check_whole
from ..models.context import ContextVector
from .envs.base import Space, as_space

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
POLICIES = ("auto", "gaussian", "categorical")
MIN_LOG_STD = math.log(1e-6)


def _mlp(inputs: int, hidden: Sequence[int], outputs: int, activation: str) -> nn.Sequential:
    check_choice("activation", activation, tuple(ACTIVATIONS))
    if isinstance(hidden, str | numbers.Number) or not isinstance(hidden, Iterable):
        one = f", or ({hidden},) for one layer" if isinstance(hidden, numbers.Integral) else ""
        raise ConfigError(f"hidden {hidden!r} must be a sequence of layer sizes, e.g. (100, 100){one}")
    hidden = list(hidden)
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in hidden):
        raise ConfigError(f"hidden {hidden!r} must hold whole layer sizes, e.g. (100, 100)")
    sizes = [inputs, *(int(h) for h in hidden), outputs]
    if any(h < 1 for h in sizes):
        raise ConfigError(f"hidden sizes {list(hidden)} must be positive")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """Interface: ``forward(obs) -> dist`` and pure functions of ``dist``."""

    discrete: bool = False
    free_dist: bool = False  # dist's entries are unconstrained, so the KL's gradient in them is 0 at the old dist

    def log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        """log pi(a | s), summed over action dimensions: shape ``dist.shape[:-1]``."""
        raise NotImplementedError

    def sample(self, dist: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Actions drawn from ``dist`` with ``generator`` (reproducible sampling)."""
        raise NotImplementedError

    def mode(self, dist: Tensor) -> Tensor:
        """The most likely action (deterministic evaluation)."""
        raise NotImplementedError

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        """KL(old || new) per state."""
        raise NotImplementedError

    def entropy(self, dist: Tensor) -> Tensor:
        """Entropy per state."""
        raise NotImplementedError


class GaussianMLPPolicy(Policy):
    """Diagonal Gaussian with an MLP mean (the papers: 2 hidden layers of 100, ReLU) and a learned,
    state-independent log standard deviation. ``dist`` is ``[mean, log_std]`` along the last dimension."""

    free_dist = True  # mean and log-std

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (100, 100), activation: str = "relu",
                 init_std: float = 1.0):
        super().__init__()
        if not init_std > 0:
            raise ConfigError(f"init_std {init_std} must be positive (e.g. 1.0)")
        self.action_dim = action_dim
        self.mean = _mlp(obs_dim, hidden, action_dim, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.mean(obs)
        return torch.cat([mean, self.log_std.clamp(min=MIN_LOG_STD).expand_as(mean)], -1)

    def _split(self, dist: Tensor) -> tuple[Tensor, Tensor]:
        return dist[..., : self.action_dim], dist[..., self.action_dim:]

    def log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self._split(dist)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, dist: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = self._split(dist)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + log_std.exp() * noise

    def mode(self, dist: Tensor) -> Tensor:
        return self._split(dist)[0]

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        m0, s0 = self._split(old)
        m1, s1 = self._split(new)
        return (s1 - s0 + (torch.exp(2 * s0) + (m0 - m1) ** 2) / (2 * torch.exp(2 * s1)) - 0.5).sum(-1)

    def entropy(self, dist: Tensor) -> Tensor:
        return (self._split(dist)[1] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class CategoricalMLPPolicy(Policy):
    """Softmax over ``n`` discrete actions from an MLP; ``dist`` holds the logits."""

    discrete = True

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (100, 100), activation: str = "relu"):
        super().__init__()
        self.n_actions = n_actions
        self.logits = _mlp(obs_dim, hidden, n_actions, activation)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(obs), -1)

    def log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        return torch.gather(dist, -1, actions.long().unsqueeze(-1)).squeeze(-1)

    def sample(self, dist: Tensor, generator: torch.Generator | None = None) -> Tensor:
        flat = dist.reshape(-1, dist.shape[-1]).exp()
        return torch.multinomial(flat, 1, generator=generator).view(dist.shape[:-1])

    def mode(self, dist: Tensor) -> Tensor:
        return dist.argmax(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        return (old.exp() * (old - new)).sum(-1)

    def entropy(self, dist: Tensor) -> Tensor:
        return -(dist.exp() * dist).sum(-1)


class ContextPolicy(ContextVector, Policy):
    """``policy`` reading the observation with a learned context vector ``z`` (the parameter ``context``, ``size``
    numbers starting at 0) appended: the MAML paper's context-vector baseline (appendix C.2, Tables 4-5), whose
    inner steps adapt ``z`` alone (``MetaRL(adapt=["context"])``). The wrapped policy is ``model``."""

    def __init__(self, policy: Policy, size: int):
        super().__init__(policy, size)
        self.discrete, self.free_dist = policy.discrete, policy.free_dist

    def log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        return self.model.log_prob(dist, actions)

    def sample(self, dist: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.model.sample(dist, generator)

    def mode(self, dist: Tensor) -> Tensor:
        return self.model.mode(dist)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        return self.model.kl(old, new)

    def entropy(self, dist: Tensor) -> Tensor:
        return self.model.entropy(dist)


def make_policy(space: Space, obs_dim: int, kind: str = "auto", hidden: Sequence[int] = (100, 100),
                activation: str = "relu", init_std: float = 1.0, context: int = 0) -> Policy:
    """The policy for ``space``: Gaussian for continuous actions, categorical for discrete ones, reading a learned
    context vector of ``context`` numbers beside the observation when ``context > 0``; a ``kind`` that cannot
    serve the space stops with a ``ConfigError`` naming both."""
    check_whole("obs_dim", obs_dim, 1)
    space = as_space(space)
    if context < 0:
        raise ConfigError(f"context {context} must be >= 0 (0: no context vector)")
    if context:
        return ContextPolicy(make_policy(space, obs_dim + context, kind, hidden, activation, init_std), context)
    check_choice("policy", kind, tuple(POLICIES))
    if kind == "auto":
        kind = "categorical" if space.kind == "discrete" else "gaussian"
    if kind == "gaussian":
        if space.kind == "box" and len(space.shape) != 1:
            raise ConfigError(f"metagrad's policies act in one-dimensional continuous spaces, not "
                              f"{space.describe()}; flatten the actions (a Box of shape "
                              f"[{math.prod(space.shape)}], reshaped in the environment's step)")
        if space.kind != "box":
            raise ConfigError(f"a gaussian policy cannot serve {space.describe()}; use policy 'categorical' "
                              "(or 'auto')")
        return GaussianMLPPolicy(obs_dim, space.shape[0], hidden, activation, init_std)
    if space.kind != "discrete":
        raise ConfigError(f"a categorical policy cannot serve {space.describe()}; use policy 'gaussian' "
                          "(or 'auto')")
    return CategoricalMLPPolicy(obs_dim, space.n, hidden, activation)
