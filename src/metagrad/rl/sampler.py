"""Trajectories for a meta-batch: K episodes of each of T tasks, all stepped together, with per-task policy
parameters (after adaptation) or shared ones (the meta-parameters); then returns and advantages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from ..errors import EnvironmentFault
from ..functional import Params, call
from ..threads import torch_threads
from . import baseline as linear_baseline
from .envs.base import TaskEnv
from .policy import Policy
from .returns import discounted_returns, gae, normalize

if TYPE_CHECKING:
    from .metarl import MetaRL


class Trajectories(NamedTuple):
    """Episodes of T tasks x K episodes x H steps (a pytree, so ``vmap`` maps over its task dimension).

    ``mask`` is 1 on the steps an episode actually took; ``old_dist`` and ``old_log_prob`` are those of the
    sampling policy (for importance ratios and the TRPO KL); ``returns`` are discounted rewards-to-go.
    """

    obs: Tensor  # [T, K, H, obs_dim]
    actions: Tensor  # [T, K, H, action_dim] or [T, K, H] (discrete)
    rewards: Tensor  # [T, K, H]
    mask: Tensor  # [T, K, H]
    old_dist: Tensor  # [T, K, H, dist_dim]
    old_log_prob: Tensor  # [T, K, H]
    returns: Tensor  # [T, K, H]
    advantages: Tensor  # [T, K, H]

    @property
    def episode_returns(self) -> Tensor:
        """Undiscounted return of each episode, ``[T, K]`` (what the papers report)."""
        return (self.rewards * self.mask).sum(-1)

    @property
    def steps(self) -> int:
        """Environment steps taken (valid transitions)."""
        return int(self.mask.sum())


def policy_dist(policy: Policy, params: Params, obs: Tensor, per_task: bool) -> Tensor:
    """Distribution parameters for ``obs`` ``[T, ...]``: with per-task ``params`` (leading task dimension) under
    vmap, or with shared ``params`` in one call."""
    if per_task:
        return vmap(lambda p, o: call(policy, p, {}, o))(params, obs)
    return call(policy, params, {}, obs)


def rollout(env: TaskEnv, policy: Policy, params: Params, tasks: Tensor, episodes: int,
            generator: torch.Generator | None = None, per_task: bool = False, deterministic: bool = False,
            dtype: torch.dtype | None = None) -> Trajectories:
    """Run ``episodes`` episodes of every task in ``tasks`` with the policy at ``params``; all tasks and episodes
    advance in one batched step, on the environment's ``sampling_threads``. Returns and advantages are left at zero
    (see ``process``)."""
    with torch.no_grad(), torch_threads(getattr(env, "sampling_threads", None)):  # any object with TaskEnv's methods
        return _rollout(env, policy, params, tasks, episodes, generator, per_task, deterministic, dtype)


def _rollout(env: TaskEnv, policy: Policy, params: Params, tasks: Tensor, episodes: int,
             generator: torch.Generator | None, per_task: bool, deterministic: bool,
             dtype: torch.dtype | None) -> Trajectories:
    params = {k: v.detach() for k, v in params.items()}
    dtype = dtype or next(iter(params.values())).dtype  # the policy's precision (float64 in gradient checks)
    if generator is not None:
        env.reseed(int(torch.randint(0, 2**62, (), generator=generator)))
    obs = _finite_observations(env.reset(tasks, episodes).to(dtype), "reset")
    t, k = obs.shape[:2]
    alive = torch.ones(t, k, dtype=torch.bool)
    rec: dict[str, list[Tensor]] = {"obs": [], "actions": [], "rewards": [], "mask": [], "dist": []}
    for _ in range(env.horizon):
        dist = policy_dist(policy, params, obs, per_task)
        action = policy.mode(dist) if deterministic else policy.sample(dist, generator)
        next_obs, reward, done = env.step(action)
        reward = torch.where(alive, reward.to(dtype), 0.0)  # after an episode's end: 0, even a NaN
        for key, v in (("obs", obs), ("actions", action), ("rewards", reward), ("mask", alive), ("dist", dist)):
            rec[key].append(v)
        alive = alive & ~done
        obs = torch.where(alive[..., None], next_obs.to(dtype), obs)  # an ended episode keeps its last one
        _finite_observations(obs, "step")
        if not alive.any():
            break
    pad = env.horizon - len(rec["mask"])  # all episodes ended early: pad to the horizon (masked out)
    out = {key: torch.stack(v + [torch.zeros_like(v[0])] * pad, 2) for key, v in rec.items()}
    out["mask"] = out["mask"].to(dtype)
    zeros = torch.zeros_like(out["rewards"])
    log_prob = policy.log_prob(out["dist"], out["actions"]) * out["mask"]
    return Trajectories(out["obs"], out["actions"], out["rewards"], out["mask"], out["dist"], log_prob, zeros, zeros)


def _finite_observations(obs: Tensor, where: str) -> Tensor:
    """Stop where the environment's observations of running episodes hold NaN or inf (the policy would turn them
    into NaN actions, and the error would blame its step sizes)."""
    if not bool(torch.isfinite(obs).all()):
        raise EnvironmentFault(f"the environment's {where} returned non-finite observations (NaN or inf) for a "
                               "running episode, from finite actions; check its reset and step")
    return obs


def pack(trajs: Sequence[Trajectories], out: Trajectories,
         buckets: int = 8) -> tuple[list[Trajectories], Trajectories]:
    """The same batches with each task's valid steps first, in one row: ``[T, 1, L, ...]`` instead of
    ``[T, K, H, ...]``. Episodes that end early leave slots of a batch masked (65-80% on gymnasium's ant), and the
    update costs per slot. ``L``, shared by all the batches, is the largest task's valid steps rounded up to a
    multiple of ``K H / buckets`` (a few shapes, each compiled once). The advantages are scaled by ``L / (K H)``: the
    losses normalize by the layout's slots per task (``K H``; every loss is linear in the advantages), so every loss,
    gradient and curvature product is unchanged. Not for what reads episodes (SG-MRL's score, ``hvp_subsample``)."""
    batches = [*trajs, out]
    k, h = out.mask.shape[1:3]
    if any(b.mask.shape[1:3] != (k, h) for b in batches):
        return list(trajs), out
    step = -(-k * h // buckets)
    longest = max(int(b.mask.flatten(1).sum(1).max()) for b in batches)
    length = min(k * h, -(-max(longest, 1) // step) * step)
    if length >= k * h:
        return list(trajs), out

    def one(b: Trajectories) -> Trajectories:
        t = b.mask.shape[0]
        order = torch.argsort((b.mask.reshape(t, k * h) == 0).to(torch.uint8), dim=1, stable=True)[:, :length]

        def take(x: Tensor) -> Tensor:
            flat = x.reshape(t, k * h, *x.shape[3:])
            index = order.view(t, length, *[1] * (flat.dim() - 2)).expand(t, length, *flat.shape[2:])
            return flat.gather(1, index).unsqueeze(1)

        packed = Trajectories(*(take(f) for f in b))
        return packed._replace(advantages=packed.advantages * (length / (k * h)))

    return [one(b) for b in trajs], one(out)


def process(traj: Trajectories, gamma: float = 0.99, gae_lambda: float = 1.0, baseline: str = "linear",
            normalize_advantages: bool = True) -> Trajectories:
    """Discounted returns, the baseline refitted on these trajectories (per task; ``linear-previous``: each task
    predicted with the fit of the task before it, rllab's order), advantages (GAE), optionally normalized per task
    over its valid steps (as the papers' code does). ``MetaRL.process`` adds its ``loss_mean`` scaling."""
    if not bool(torch.isfinite(traj.rewards.masked_fill(~traj.mask.bool(), 0)).all()):
        raise EnvironmentFault("the environment returned a non-finite reward (NaN or inf) in a running episode; "
                               "check its reward function")
    returns = discounted_returns(traj.rewards, traj.mask, gamma)
    if baseline in ("linear", "linear-previous"):
        values = linear_baseline.fit_predict(traj.obs, returns, traj.mask, previous=baseline == "linear-previous")
    elif baseline == "none":
        values = torch.zeros_like(returns)
    else:
        raise ValueError(f"unknown baseline '{baseline}'")
    adv = gae(traj.rewards, values, traj.mask, gamma, gae_lambda)
    if normalize_advantages:
        adv = normalize(adv, traj.mask, (1, 2))
    return traj._replace(returns=returns, advantages=adv)


def adaptation_episodes(learner: MetaRL, tasks: Tensor,
                        generator: torch.Generator | None) -> tuple[list[Trajectories], Trajectories]:
    """A meta-batch's episodes: one batch per inner step (each with the policy adapted by the steps before it) and
    the post-adaptation batch ``D_o``, with returns and advantages."""
    params, per_task, trajs = learner.meta_params(), False, []
    for s in range(learner.inner_steps):
        tr = learner.process(rollout(learner.env, learner.policy, params, tasks, learner.episodes, generator,
                                     per_task), learner.normalize_inner)
        trajs.append(tr)
        params, per_task = learner.adapt_batch(params, tr, s, per_task), True
    out = learner.process(rollout(learner.env, learner.policy, params, tasks, learner.episodes, generator, per_task),
                          learner.normalize_outer)
    return trajs, out
