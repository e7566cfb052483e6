"""What ``MetaRL`` checks of its policy and environment before it trains: that the policy reads the environment's
observations and acts in its action space, and that ``vmap``, which batches the tasks, differentiates the policy
exactly (torch 2.13 gets second derivatives of ``nn.LayerNorm`` and ``nn.BatchNorm`` wrong under vmap, and the
meta-RL engine has no per-task loop to fall back on)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.func import vmap

from ..batching import CHECK_TASKS, WrongNorms, faulty_module, first_line, located, twice_differentiable
from ..errors import ConfigError
from ..functional import call, call_watching_buffers
from .envs.base import TaskEnv
from .policy import Policy

BUILD = "make_policy(env.action_space, env.obs_dim) builds one that fits"


def check_fit(policy: nn.Module, env: TaskEnv) -> None:
    """Stop with a ConfigError unless ``policy`` is a ``Policy`` that reads ``env``'s observations and whose actions
    have the shape (or, discrete, the number) of ``env``'s action space."""
    if not isinstance(policy, Policy):
        raise ConfigError(f"policy must be a metagrad.rl Policy (forward(obs) -> the distribution's parameters, with "
                          f"log_prob, sample and kl), not {type(policy).__name__}; {BUILD}")
    if not isinstance(env, TaskEnv):
        raise ConfigError(f"env must be a metagrad.rl TaskEnv (e.g. make_env('navigation2d') or GymTaskEnv), not "
                          f"{type(env).__name__}")
    space = env.action_space
    if policy.discrete != (space.kind == "discrete"):
        kind = "a discrete (categorical)" if policy.discrete else "a continuous"
        raise ConfigError(f"{kind} policy cannot serve {space.describe()}; {BUILD}")
    ref = next(iter(policy.parameters()), None)
    obs = torch.zeros(1, env.obs_dim, dtype=ref.dtype if ref is not None else torch.float32,
                      device=ref.device if ref is not None else None)
    try:
        with torch.no_grad():
            dist = policy(obs)
            action = policy.sample(dist)
    except Exception as e:
        raise ConfigError(f"the policy cannot read the environment's observations of {env.obs_dim} numbers "
                          f"({first_line(e)}); {BUILD}") from None
    if space.kind == "discrete" and dist.shape[-1] != space.n:
        raise ConfigError(f"the policy chooses among {dist.shape[-1]} actions, the environment has {space.n}; {BUILD}")
    want = (1,) if space.kind == "discrete" else (1, *space.shape)
    if tuple(action.shape) != want:
        raise ConfigError(f"the policy's actions have shape {list(action.shape[1:])}, {space.describe()} needs "
                          f"{list(want[1:])}; {BUILD}")


def check_buffers_kept(policy: Policy, obs_dim: int) -> None:
    """Stop with a ConfigError where the policy's forward assigns new tensors to its buffers (``self.n = ...``): the
    engine calls it with its buffers swapped in (``torch.func.functional_call``), which puts the old ones back, so
    the new values would be lost (under vmap torch stopped with an internal assert)."""
    buffers = dict(policy.named_buffers())
    if not buffers:
        return
    ref = next(iter(policy.parameters()), None)
    obs = torch.zeros(1, obs_dim, dtype=ref.dtype if ref is not None else torch.float32,
                      device=ref.device if ref is not None else None)
    try:
        with torch.no_grad():
            _, replaced = call_watching_buffers(policy, dict(policy.named_parameters()), buffers, obs)
    except Exception:  # check_fit and check_vmappable say why it cannot run
        return
    if replaced:
        raise ConfigError(f"the policy assigns new tensors to its buffers {', '.join(replaced)} as it "
                          "runs (self.name = ...): meta-RL runs it with its buffers swapped in "
                          "(torch.func.functional_call), which puts the old ones back after each call, so the new "
                          "values would be lost; keep that state outside the policy")


def batched_forward(policy: Policy, obs_dim: int) -> None:
    """The policy's forward pass on two tasks under vmap, as the engine batches them (on zeros, without gradients)."""
    params = {name: p.detach().expand(2, *p.shape) for name, p in policy.named_parameters()}
    ref = next(iter(params.values()), None)
    obs = torch.zeros(2, 3, obs_dim, dtype=ref.dtype if ref is not None else torch.float32,
                      device=ref.device if ref is not None else None)
    buffers = {n: b.clone() for n, b in policy.named_buffers()}  # the policy's own are left as they are
    with torch.no_grad():
        vmap(lambda p, o: call(policy, p, buffers, o))(params, obs)


def check_vmappable(policy: Policy, obs_dim: int) -> None:
    """Stop with a ConfigError where vmap, which batches the tasks of every algorithm, cannot run the policy at all
    (``nn.GRU``, ``nn.LSTM``, ``nn.RNN``): first order too would crash on its first meta-batch."""
    try:
        batched_forward(policy, obs_dim)
    except Exception as e:
        if "random operation" in str(e):
            fix = ("its forward draws random numbers (dropout), which the batched tasks cannot share: remove the "
                   "dropout, or use the policy in eval mode (policy.eval())")
        else:
            fix = "recurrent modules (nn.GRU, nn.LSTM, nn.RNN) cannot be batched: use a feed-forward policy"
        raise ConfigError(f"meta-RL batches its tasks with vmap, which cannot run this policy ({first_line(e)}); "
                          f"{fix}") from None


def vmap_fault(policy: Policy, obs_dim: int) -> str | None:
    """Why vmap must not batch tasks through this policy's second derivatives (None: it calls none of the
    normalisations torch differentiates wrongly under vmap whatever the values, ``batching.WrongNorms``, and each of
    its modules' one-step MAML gradient equals the per-task loop's in float64, ``batching.faulty_module``). The
    calls are looked for as well as the numbers compared: a layer norm behind a zero-initialised gate inside one
    module passes the comparison, and training opens the gate."""
    recorder = WrongNorms()
    with recorder:
        batched_forward(policy, obs_dim)
    try:
        ref = copy.deepcopy(policy).double()
    except Exception as e:  # not copyable: not checkable; say so rather than pass in silence
        warnings.warn(f"metagrad: the policy could not be copied to check its batched second derivatives "
                      f"({first_line(e)}); they are trusted unchecked", stacklevel=3)
        return None
    obs = torch.randn(CHECK_TASKS, 4, obs_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    param = next(iter(ref.parameters()), None)
    with twice_differentiable(True):
        found = faulty_module(ref, obs if param is None else obs.to(param.device))
    if called := recorder.fault():
        return called + located(found)
    return None if found is None else located(found).lstrip(", ")


def check_batching(policy: Policy, obs_dim: int, algo: str) -> None:
    """Stop with a ConfigError where the algorithm needs the policy's second derivatives under vmap and they are
    wrong (``vmap_fault``)."""
    fault = vmap_fault(policy, obs_dim)
    if fault:
        raise ConfigError(f"meta-RL batches its tasks with vmap, under which this policy's second derivatives are "
                          f"wrong ({fault}); replace that module, or train first order (algo fomaml) with the vpg "
                          f"or ppo outer step (algo '{algo}' needs them)")
