"""The meta-RL algorithms on the functional engine: MAML-TRPO, first-order MAML, SG-MRL, E-MAML, ProMP and joint
training (DRS); how one task contributes to the outer objective. Sampling lives in ``sampler`` (environment,
rollouts, returns, baselines, the adaptation episodes), the outer steps in ``outer`` (TRPO, VPG, PPO, the KL
Hessian-vector products), evaluation in ``evaluate``.

One meta-iteration: for a meta-batch of tasks, sample K episodes with the meta-parameters, take the inner
policy-gradient step(s) (each on fresh episodes of the adapted policy), sample the evaluation episodes D_o with the
adapted policy, then form the outer objective as a pure function of the meta-parameters (the inner steps are
recomputed from the stored episodes, so autograd sees through them) and take a TRPO or VPG step on it.

Algorithms differ only in the outer objective (all in units of the per-step surrogate, i.e. divided by H):
- ``maml``: the post-adaptation surrogate, differentiated through the inner step (second order);
- ``fomaml``: the same with the inner gradients held constant (first order);
- ``sgmrl`` / ``sgmrl-fo``: SG-MRL (eq. 13): plus ``J(theta'; D_o) * sum over the inner episodes of
  log pi(tau; theta_s)`` (the score function of the inner batches' distribution), full or first order;
- ``emaml``: MAML plus E-MAML's exploration term (Stadie et al. 2018, in ProMP's form: the post-update reward of
  each task, normalized over the meta-batch, times the mean log-likelihood of its pre-update episodes);
- ``promp``: ProMP (Rothfuss et al. 2019): MAML whose inner step ascends the low-variance curvature (LVC)
  surrogate ``sum_t pi(a_t|s_t) / pi_old(a_t|s_t) * A_t`` (same gradient at the sampling parameters, lower-variance
  Hessian), usually with the PPO outer step and a KL penalty on the pre-update policies;
- ``joint``: no inner step during training: one policy on the pooled tasks (the "pretrained" baseline, DRS).
The outer step is TRPO, VPG (any ``torch.optim`` optimizer) or PPO (clipped ratios, several epochs on one batch).
Every term uses importance ratios ``pi / pi_old`` in place of ``log pi``: same gradient at the sampling
parameters, and a surrogate that TRPO's line search can evaluate at other parameters.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from .. import checkpoint
from ..algorithms.subsets import adapt_prefixes, adapted_by
from ..batching import WEIGHT_NORM_FAULT, WEIGHT_NORM_FIX, weight_normed
from ..distributed import Share
from ..errors import ConfigError, check_choice, check_compiler, check_whole
from ..functional import Params, call, detach
from ..inner import SGD, step_sizes
from . import outer
from .checks import check_batching, check_buffers_kept, check_fit, check_vmappable
from .envs.base import TaskEnv
from .policy import Policy
from .sampler import Trajectories, adaptation_episodes, pack, policy_dist, process

ALGOS = ("maml", "fomaml", "sgmrl", "sgmrl-fo", "emaml", "promp", "joint")
OUTERS = ("trpo", "vpg", "ppo")
HVPS = ("exact", "finite-difference")
SCORE_BASELINES = ("none", "batch")
BASELINES = ("linear", "linear-previous", "none")
LOSS_MEANS = ("steps", "slots")
DISCOUNTS_FROM = ("step", "start")
SCORE_ALGOS = ("sgmrl", "sgmrl-fo")  # an episode-level score term beside the advantages


def packable(algo: str, hvp_subsample: float) -> bool:
    """Whether ``pack_episodes`` applies: not to SG-MRL's score or a curvature subsample, which read whole episodes."""
    return algo not in SCORE_ALGOS and hvp_subsample == 1


def steps_mean_applies(algo: str) -> bool:
    """Whether ``loss_mean='steps'`` applies: not to SG-MRL, whose score term is no advantage sum
    (``MetaRL.process`` scales the advantages)."""
    return algo not in SCORE_ALGOS


def check_loss_mean(algo: str, loss_mean: str) -> None:
    """Stop with a ConfigError where ``loss_mean='steps'`` was asked for and does not apply."""
    if loss_mean == "steps" and not steps_mean_applies(algo):
        raise ConfigError(f"loss_mean 'steps' does not go with algo '{algo}': its score term does not average over "
                          "valid steps; set loss_mean=slots")


def check_score_normalization(algo: str, normalize_outer: bool) -> None:
    """Stop with a ConfigError for SG-MRL with normalized outer advantages: eq. 13 is the gradient of eq. 6 only with
    raw ones (normalizing scales its advantage term by 1/std and leaves the score term as is)."""
    if algo in SCORE_ALGOS and normalize_outer:
        raise ConfigError(f"algo '{algo}' with normalize_outer=true: SG-MRL's gradient (eq. 13) holds only with raw "
                          "advantages; set normalize_outer=false")


def check_shardable(algo: str, score_baseline: str) -> None:
    """Stop with a ConfigError for what normalizes over the whole meta-batch, which no process of several sees: E-MAML's
    weights, SG-MRL's batch baseline (their reductions over processes are not written)."""
    if algo == "emaml" or (algo in SCORE_ALGOS and score_baseline == "batch"):
        what = "E-MAML's weights" if algo == "emaml" else "SG-MRL's score_baseline=batch"
        raise ConfigError(f"algo '{algo}' on several processes: {what} normalize over the whole meta-batch, which "
                          "each process sees only a share of; run it on one process (without torchrun)")


def check_settings(v: dict[str, Any]) -> None:
    """The learner's settings (``MetaRL``'s arguments, the same fields of ``RLConfig``), each refused with its fix:
    one set of rules for the Python API and the config file."""
    for name, allowed in (("algo", ALGOS), ("outer", OUTERS), ("hvp", HVPS), ("score_baseline", SCORE_BASELINES),
                          ("baseline", BASELINES), ("loss_mean", LOSS_MEANS)):
        check_choice(name, v[name], allowed)
    check_choice("discount_from", v["discount_from"], DISCOUNTS_FROM)
    for name, low in (("inner_steps", 0), ("episodes", 1), ("cg_iters", 1), ("max_backtracks", 1), ("ppo_epochs", 1)):
        check_whole(name, v[name], low)
    check_whole("curvature_chunk", v["curvature_chunk"], 0, "0: every task in one product")
    if not (v["max_kl"] > 0 and math.isfinite(v["max_kl"])):
        raise ConfigError(f"max_kl {v['max_kl']} must be a positive number")
    if not (v["cg_damping"] >= 0 and math.isfinite(v["cg_damping"])):
        raise ConfigError(f"cg_damping {v['cg_damping']} must be a finite number >= 0, e.g. 1e-5")
    lrs = v["inner_lr"]
    if not lrs or any(not (lr >= 0 and math.isfinite(lr)) for lr in lrs):
        raise ConfigError(f"inner_lr {list(lrs)} must hold step sizes >= 0, e.g. 0.1")
    unit, open_unit, at_least_0 = (lambda x: 0 <= x <= 1, "[0, 1]"), (lambda x: 0 < x < 1, "(0, 1)"), (
        lambda x: x >= 0, "[0, inf)")
    for name, (inside, where) in (("gamma", unit), ("gae_lambda", unit), ("backtrack", open_unit),
                                  ("ppo_clip", open_unit), ("inner_kl_coef", at_least_0),
                                  ("inner_kl_target", at_least_0)):
        if not inside(v[name]):  # NaN too
            raise ConfigError(f"{name} {v[name]} must lie in {where}")
    if not 0 < v["hvp_subsample"] <= 1:
        raise ConfigError(f"hvp_subsample {v['hvp_subsample']} must lie in (0, 1] (1: every episode)")
    if v["hvp_subsample"] < 1 and v["hvp"] == "finite-difference" and v["outer"] == "trpo":
        raise ConfigError(f"hvp_subsample {v['hvp_subsample']} subsamples the exact products; hvp finite-difference "
                          "uses every episode: set hvp exact, or hvp_subsample 1")
    weight = v["emaml_weight"]
    if isinstance(weight, bool) or not (isinstance(weight, numbers.Real) and weight >= 0 and math.isfinite(weight)):
        raise ConfigError(f"emaml_weight {weight!r} must be a finite number >= 0, e.g. 1")
    if v["pack_episodes"]:
        check_packable(v["algo"], v["hvp_subsample"])
    check_loss_mean(v["algo"], v["loss_mean"])
    check_score_normalization(v["algo"], v["normalize_outer"])


LEARNER_SETTINGS = ("algo", "outer", "hvp", "score_baseline", "baseline", "loss_mean", "inner_steps", "episodes",
                    "cg_iters", "max_backtracks", "ppo_epochs", "curvature_chunk", "max_kl", "cg_damping", "inner_lr",
                    "gamma", "gae_lambda", "backtrack", "ppo_clip", "inner_kl_coef", "inner_kl_target",
                    "hvp_subsample", "emaml_weight", "pack_episodes", "normalize_outer",
                    "discount_from")  # check_settings reads


def check_packable(algo: str, hvp_subsample: float) -> None:
    """Stop with a ConfigError where ``pack_episodes`` was asked for and does not apply."""
    if not packable(algo, hvp_subsample):
        causes = [(f"algo '{algo}' (SG-MRL's score term reads whole episodes)", "an algo other than sgmrl")
                  ] * (algo in SCORE_ALGOS) + [(f"hvp_subsample {hvp_subsample} (curvature on a subsample reads "
                                                 "whole episodes)", "hvp_subsample=1.0")] * (hvp_subsample != 1)
        raise ConfigError(f"pack_episodes=true does not go with {' and '.join(c for c, _ in causes)}; set "
                          f"pack_episodes=false, or use {' and '.join(f for _, f in causes)}")


class MetaRL(nn.Module):
    """A policy meta-trained on an environment's task distribution.

    Args:
        policy, env: any ``Policy`` module and ``TaskEnv``.
        algo: see the module docstring; ``outer``: ``trpo`` (KL-constrained, CG + line search), ``vpg`` (the
            gradient goes to ``.grad`` and any ``torch.optim`` optimizer takes the step) or ``ppo`` (clipped
            ratios, ``ppo_epochs`` passes over one batch, with ProMP's KL penalty on the pre-update policies).
        inner_lr / inner_steps / episodes: the inner VPG step(s) and K, the episodes per step and task.
        gamma, gae_lambda, baseline: returns, GAE and the linear feature baseline (refit per task and batch).
        discount_from: ``step`` (every policy-gradient code's: the reward at s weighs gamma^(s-t) in step t's
            advantage) or ``start`` (eq. (4) of the SG-MRL paper: gamma^s, from the episode's start, so that the
            estimates are of the gradient of the discounted return, SG-MRL's unbiased for gamma < 1 too).
        normalize_inner / normalize_outer: normalize advantages per task (the papers' code does; outer: by default
            on, off for SG-MRL, whose gradient holds only with raw advantages).
        max_kl, cg_iters, cg_damping, backtrack, max_backtracks: TRPO; ``hvp`` ``exact`` (Hessian-vector products
            of the KL through the inner step, second derivatives only) or ``finite-difference`` (the MAML paper's);
            ``hvp_subsample``: the fraction of each task's episodes those products use (rllab's subsampling; the
            gradient and the line search's KL check use every episode); ``curvature_chunk``: with ``compile=True``,
            the tasks per compiled product, summed over the chunks (0: all at once; ``outer.task_chunks``).
        score_baseline: SG-MRL's score term with ``J`` as is (``none``, eq. 13) or minus the mean ``J`` of the
            other tasks of the meta-batch (``batch``: independent of the task's episodes, so still unbiased).
        emaml_weight: the weight of E-MAML's exploration term.
        ppo_epochs, ppo_clip: PPO's optimizer steps per meta-batch and the ratio clip (the trade-off paper: 0.3).
        adapt: the parameters the inner steps adapt, as module or parameter names (``["context"]`` for the MAML
            paper's context-vector baseline; None: all); the meta-gradient and the outer step reach all of them.
        inner_kl_coef, inner_kl_target: PPO's penalty ``coef * KL(pi_old || pi)`` on each inner step's
            pre-update policy (ProMP); with a target > 0 the coefficient is halved or doubled after each update
            when that KL is below target / 1.5 or above target * 1.5 (ProMP's adaptive penalty; 0: fixed).
        compile: TRPO's curvature products (``exact``) through ``torch.compile``: about a minute once per batch
            shape, then each conjugate-gradient product 2-3x faster (the elementwise passes of the double backward
            fused; half-cheetah, ``benchmarks/cheetah_speed.py``).
        pack_episodes: the update on each task's valid steps alone (``sampler.pack``: the same losses, fewer
            slots where episodes end early); refused (ConfigError) with SG-MRL or ``hvp_subsample`` < 1, which
            read whole episodes.
        loss_mean: what each task's losses average over: ``slots``, all ``K H`` (steps after an episode's end
            count as zeros: where episodes end early, a smaller inner step and a smaller weight in the outer
            objective), or ``steps``, its valid steps (the MAML and ProMP code's mean over a task's samples). The
            same where no episode ends early.
    """

    def __init__(self, policy: Policy, env: TaskEnv, algo: str = "maml", outer: str = "trpo",
                 inner_lr: float | Sequence[float] = 0.1, inner_steps: int = 1, episodes: int = 20,
                 gamma: float = 0.99, gae_lambda: float = 1.0, baseline: str = "linear",
                 normalize_inner: bool = True, normalize_outer: bool | None = None, max_kl: float = 0.01,
                 cg_iters: int = 10, cg_damping: float = 1e-5, backtrack: float = 0.8, max_backtracks: int = 15,
                 hvp: str = "exact", hvp_subsample: float = 1.0, curvature_chunk: int = 4,
                 score_baseline: str = "none",
                 emaml_weight: float = 1.0, ppo_epochs: int = 5, ppo_clip: float = 0.3,
                 inner_kl_coef: float = 5e-4, inner_kl_target: float = 0.01, adapt: Sequence[str] | None = None,
                 compile: bool = False, pack_episodes: bool = False, loss_mean: str = "slots",
                 discount_from: str = "step"):
        super().__init__()
        normalize_outer = algo not in SCORE_ALGOS if normalize_outer is None else normalize_outer
        inner_lr = step_sizes(inner_lr)
        given = dict(locals())  # the arguments, as check_settings reads them
        check_settings({name: given[name] for name in LEARNER_SETTINGS})
        check_fit(policy, env)
        if (normalize_inner or normalize_outer) and episodes * env.horizon < 2:
            raise ConfigError(f"episodes {episodes} x horizon {env.horizon}: advantages normalized over a task's one "
                              "step are all 0, so nothing would learn; give more episodes or a longer horizon")
        self.policy, self.env = policy, env
        prefixes = adapt_prefixes(policy, adapt)
        self.adapted = frozenset(n for n, p in policy.named_parameters() if p.requires_grad and adapted_by(n, prefixes))
        if not self.trainable():
            raise ConfigError("every parameter of the policy has requires_grad=False: nothing to meta-train")
        self.algo, self.outer, self.hvp_mode = algo, outer, hvp
        self.inner = SGD(inner_lr)
        self.inner_steps = 0 if algo == "joint" else inner_steps
        self.episodes, self.gamma, self.gae_lambda, self.baseline = episodes, gamma, gae_lambda, baseline
        self.normalize_inner, self.normalize_outer, self.loss_mean = normalize_inner, normalize_outer, loss_mean
        self.discount_from = discount_from
        self.max_kl, self.cg_iters, self.cg_damping, self.hvp_subsample = max_kl, cg_iters, cg_damping, hvp_subsample
        self.backtrack, self.max_backtracks, self.curvature_chunk = backtrack, max_backtracks, curvature_chunk
        self.score_baseline, self.emaml_weight = score_baseline, emaml_weight
        self.first_order = algo in ("fomaml", "sgmrl-fo")
        self.use_compile = bool(compile)
        self.pack_episodes = bool(pack_episodes)
        self.ppo_epochs, self.ppo_clip, self.inner_kl_target = ppo_epochs, ppo_clip, inner_kl_target
        # one penalty coefficient per inner step; a buffer, so that checkpoints keep its adapted value
        self.register_buffer("inner_kl_coefs", torch.full((self.inner_steps,), float(inner_kl_coef)))
        check_buffers_kept(policy, env.obs_dim)
        if self.inner_steps:  # the inner steps run under vmap over the tasks
            check_vmappable(policy, env.obs_dim)
        if self.inner_steps and (not self.first_order or outer == "trpo"):  # second derivatives under vmap
            check_batching(policy, env.obs_dim, algo)
        if ((self.inner_steps and not self.first_order) or outer == "trpo") and (module := weight_normed(policy)):
            raise ConfigError(f"policy module '{module}' {WEIGHT_NORM_FAULT}, and algo {algo} with outer {outer} "
                              f"needs second derivatives: {WEIGHT_NORM_FIX}")

    @property
    def packable(self) -> bool:
        """Whether ``pack_episodes`` applies to this learner (``packable``)."""
        return packable(self.algo, self.hvp_subsample)

    # ------------------------------------------------------------------ the inner step
    def save(self, path: str | Path) -> None:
        """Write the policy's meta-parameters to ``path.safetensors`` (+ ``path.json``), atomically."""
        checkpoint.save_learner(path, self)

    def load(self, path: str | Path) -> MetaRL:
        """Load what ``save`` or an RLTrainer run (``run_dir/last``, ``best``) wrote; a file of another learner or
        policy shape is refused in one line and leaves this learner as it was."""
        return checkpoint.load_learner(path, self)

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters the outer step moves: those with ``requires_grad`` (the others are constants everywhere:
        not adapted, no meta-gradient)."""
        return {n: p for n, p in self.policy.named_parameters() if p.requires_grad}

    def meta_params(self) -> Params:
        """The trainable parameters as a detached dict (sharing storage: TRPO writes into them in place)."""
        return {n: p.detach() for n, p in self.trainable().items()}

    def inner_loss(self, params: Params, traj: Trajectories) -> Tensor:
        """The VPG surrogate of one task's episodes (``[K, H, ...]``), as a loss: ``-sum log pi * A / (K H)``;
        for ProMP the LVC surrogate, ``pi / pi_old`` in place of ``log pi`` (the same gradient where the episodes
        were sampled; its Hessian adds the ``grad log pi grad log pi^T A`` term that ``log pi`` lacks)."""
        logp = self.policy.log_prob(call(self.policy, params, {}, traj.obs), traj.actions)
        if self.algo == "promp":
            logp = torch.exp((logp - traj.old_log_prob) * traj.mask)
        return -(logp * traj.advantages * traj.mask).sum() / traj.mask.numel()

    def inner_step(self, params: Params, traj: Trajectories, step: int, rule: SGD | None = None,
                   first_order: bool = False) -> Params:
        """One task's adapted parameters after the ``step``-th VPG step on ``traj`` (on the adapted ones only)."""
        moving, fixed = self.split(params)
        grads = grad(lambda m: self.inner_loss({**fixed, **m}, traj))(moving)
        if first_order:
            grads = detach(grads)
        return {**params, **(rule or self.inner).step(moving, grads, None, step, {})[0]}

    def split(self, params: Params) -> tuple[Params, Params]:
        """``params`` as (the inner steps' parameters, the others)."""
        return ({n: p for n, p in params.items() if n in self.adapted},
                {n: p for n, p in params.items() if n not in self.adapted})

    def masked(self, tree: Params) -> Params:
        """``tree`` with zeros in place of the parameters the inner steps leave alone (the projection P)."""
        return {n: t if n in self.adapted else torch.zeros_like(t) for n, t in tree.items()}

    def adapt_batch(self, params: Params, traj: Trajectories, step: int, per_task: bool,
                    rule: SGD | None = None) -> Params:
        """Every task's parameters after one inner step (``params`` shared, or per task with ``per_task``)."""
        fn = vmap(lambda p, t: self.inner_step(p, t, step, rule), in_dims=(0 if per_task else None, 0))
        return detach(fn(params, traj))

    def adapted_path(self, theta: Params, trajs: Sequence[Trajectories]) -> list[Params]:
        """The parameters before and after each inner step as differentiable functions of ``theta`` (tasks
        batched; entry 0 is ``theta`` itself, shared)."""
        if not trajs:
            return [theta]

        def one(theta: Params, *task_trajs: Trajectories) -> list[Params]:
            path = [theta]
            for s, tr in enumerate(task_trajs):
                path.append(self.inner_step(path[-1], tr, s, first_order=self.first_order))
            return path[1:]

        return [theta, *vmap(one, in_dims=(None, *[0] * len(trajs)))(theta, *trajs)]

    # ------------------------------------------------------------------ sampling
    def process(self, traj: Trajectories, normalize: bool) -> Trajectories:
        """Returns, baseline and advantages with this learner's settings. The advantage terms of the losses divide
        each task's sums by its ``K H`` slots and are linear in the advantages, so ``discount_from='start'`` weighs
        step t's by gamma^t, and ``loss_mean='steps'`` scales each task's advantages by ``K H`` over its valid steps:
        those terms then average over the task's valid steps (SG-MRL's score term is refused, ``check_loss_mean``)."""
        traj = process(traj, self.gamma, self.gae_lambda, self.baseline, normalize)
        if self.discount_from == "start":  # step t's advantage weighs gamma^t more: gamma^s from the start
            traj = traj._replace(advantages=traj.advantages * self.gamma ** torch.arange(
                traj.mask.shape[-1], dtype=traj.advantages.dtype, device=traj.advantages.device))
        if self.loss_mean == "slots":
            return traj
        slots = traj.mask[0].numel()
        valid = traj.mask.flatten(1).sum(1).clamp(min=1)
        return traj._replace(advantages=traj.advantages * (slots / valid).view(-1, *[1] * (traj.mask.dim() - 1)))

    def sample(self, tasks: Tensor, generator: torch.Generator | None) -> tuple[list[Trajectories], Trajectories]:
        """The inner batches (one per inner step) and the post-adaptation batch ``D_o`` of a meta-batch
        (``sampler.adaptation_episodes``)."""
        if not isinstance(tasks, Tensor) or tasks.dim() != 2 or not len(tasks):
            raise ConfigError(f"tasks must be a [tasks, task_dim] tensor of at least one task (env.sample_tasks(n, "
                              f"generator) draws them), not {describe(tasks)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator {generator!r} must be a torch.Generator (e.g. "
                            "torch.Generator().manual_seed(0)) or None")
        return adaptation_episodes(self, tasks, generator)

    # ------------------------------------------------------------------ the outer objective
    def _ratio(self, params: Params, traj: Trajectories, per_task: bool) -> Tensor:
        logp = self.policy.log_prob(policy_dist(self.policy, params, traj.obs, per_task), traj.actions)
        return torch.exp((logp - traj.old_log_prob) * traj.mask) * traj.mask

    def objective(self, theta: Params, trajs: Sequence[Trajectories], out: Trajectories) -> Tensor:
        """The surrogate to maximize: its gradient at the sampling parameters is the algorithm's meta-gradient."""
        return self.objective_and_kl(theta, trajs, out)[0]

    def objective_and_kl(self, theta: Params, trajs: Sequence[Trajectories],
                         out: Trajectories) -> tuple[Tensor, Tensor]:
        """The surrogate and the mean KL(pi_old || pi_theta') over D_o, from one pass through the inner steps."""
        total, kl, _ = self.outer_terms(theta, trajs, out)
        return total, kl

    def outer_terms(self, theta: Params, trajs: Sequence[Trajectories], out: Trajectories,
                    clip: float | None = None, inner_kls: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """The surrogate (with PPO's ratio clipped to ``[1 - clip, 1 + clip]`` when ``clip`` is given), the mean KL
        over D_o, and with ``inner_kls`` per inner step the mean KL(pi_old || pi_theta_s) over its episodes
        (ProMP's penalty; another forward pass over the inner episodes, so only when asked; else empty)."""
        path = self.adapted_path(theta, trajs)
        horizon = out.mask.shape[-1]
        dist = policy_dist(self.policy, path[-1], out.obs, bool(trajs))
        logp = self.policy.log_prob(dist, out.actions)
        ratio = torch.exp((logp - out.old_log_prob) * out.mask) * out.mask
        gain = ratio * out.advantages
        if clip is not None:  # pessimistic: the clipped ratio counts only where it lowers the gain
            gain = torch.minimum(gain, ratio.clamp(1 - clip, 1 + clip) * out.advantages) * out.mask
        total = gain.sum((1, 2)).mean() / (out.mask.shape[1] * horizon)
        if self.algo in SCORE_ALGOS and trajs:
            coef = self.score_coefficients(out)
            for s, tr in enumerate(trajs):  # d/dtheta log q(D_s; theta_s(theta)), through the earlier steps
                score = self._ratio(path[s], tr, s > 0).sum((1, 2))
                total = total + (coef * score).mean() / horizon
        if self.algo == "emaml" and trajs:
            coef = self.emaml_coefficients(out)
            for s, tr in enumerate(trajs):
                lik = self._ratio(path[s], tr, s > 0).sum((1, 2)) / tr.mask.sum((1, 2)).clamp(min=1)
                total = total + self.emaml_weight * (coef * lik).mean()
        kl = (self.policy.kl(out.old_dist, dist) * out.mask).sum() / out.mask.sum().clamp(min=1)
        kls = [(self.policy.kl(tr.old_dist, policy_dist(self.policy, path[s], tr.obs, s > 0)) * tr.mask).sum()
               / tr.mask.sum().clamp(min=1) for s, tr in enumerate(trajs) if inner_kls]
        return total, kl, torch.stack(kls) if kls else torch.zeros(0, dtype=total.dtype)

    def score_coefficients(self, out: Trajectories) -> Tensor:
        """SG-MRL's ``J_i(theta'; D_o)``: each task's mean discounted return on ``D_o`` (minus the other tasks'
        mean with ``score_baseline='batch'``, which a meta-batch of one task cannot have: a ConfigError)."""
        j = out.returns[..., 0].mean(1)
        if self.score_baseline == "batch":
            if j.shape[0] < 2:
                raise ConfigError("score_baseline batch subtracts the other tasks' mean score, and a meta-batch of one "
                                  "task has none; sample 2 or more tasks, or use score_baseline none")
            j = j - (j.sum() - j) / (j.shape[0] - 1)
        return j.detach()

    def emaml_coefficients(self, out: Trajectories) -> Tensor:
        """E-MAML's weights: each task's mean post-update reward per step, normalized over the meta-batch."""
        valid = out.mask.bool()
        r = out.rewards[valid]
        per_task = (out.rewards * out.mask).sum((1, 2)) / out.mask.sum((1, 2)).clamp(min=1)
        return ((per_task - r.mean()) / (r.std(correction=0) + 1e-8)).detach()  # ProMP's np.std

    def kl(self, theta: Params, trajs: Sequence[Trajectories], out: Trajectories) -> Tensor:
        """Mean KL(pi_old || pi_theta') over the valid steps of ``D_o``, theta' adapted from ``theta``."""
        return self.objective_and_kl(theta, trajs, out)[1]

    def meta_gradient(self, trajs: Sequence[Trajectories], out: Trajectories) -> Params:
        """The gradient of ``objective`` at the meta-parameters (an ascent direction)."""
        return self.compiled(objective_gradient)(self, self.meta_params(), trajs, out)

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` through ``torch.compile`` (one graph, made once per learner and input shapes) with ``compile=True``,
        else ``fn``. Static shapes: dynamo's automatic dynamic shapes, tried on a second set of shapes (e.g. another
        number of episodes), cannot size the batched tensors inside ``vmap`` and fail. Checked for a C++ compiler at
        the first (not when built: evaluating a compiled run compiles nothing)."""
        if not self.use_compile:
            return fn
        cache = self.__dict__.setdefault("_compiled", {})
        if fn.__name__ not in cache:
            check_compiler()
            cache[fn.__name__] = torch.compile(fn, fullgraph=True, dynamic=False)
        return cache[fn.__name__]

    def kl_hvp(self, trajs: Sequence[Trajectories], out: Trajectories) -> Any:
        """``v -> (H + damping) v``, H the Hessian of the KL through the inner steps (``outer.kl_hvp``)."""
        return outer.kl_hvp(self, trajs, out)

    def update(self, trajs: Sequence[Trajectories], out: Trajectories,
               optimizer: torch.optim.Optimizer | None = None, share: Share | None = None) -> dict[str, float]:
        """Form the meta-gradient and take the outer step (``outer.step``: TRPO in place, or ``optimizer.step()``
        for VPG and PPO); ``share``: this process's part of the meta-batch under ``torchrun``."""
        if share is not None:
            check_shardable(self.algo, self.score_baseline)
        if self.pack_episodes:
            trajs, out = pack(trajs, out)
        return outer.step(self, trajs, out, optimizer, share)

    def meta_step(self, tasks: Tensor, generator: torch.Generator | None = None,
                  optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """One meta-iteration, the call a user makes: ``sample`` then ``update`` (the trainer calls the two apart to
        keep the best parameters between them)."""
        trajs, out = self.sample(tasks, generator)
        return {**self.sample_metrics(trajs, out), **self.update(trajs, out, optimizer)}

    @staticmethod
    def sample_metrics(trajs: Sequence[Trajectories], out: Trajectories) -> dict[str, float]:
        """Average return before and after adaptation on a meta-batch, and the environment steps it took."""
        return {"return_pre": float((trajs[0] if trajs else out).episode_returns.mean()),
                "return_post": float(out.episode_returns.mean()),
                "env_steps": float(sum(t.steps for t in trajs) + out.steps)}


def describe(x: Any) -> str:
    """A value in words for error messages: a tensor by its shape."""
    return f"a tensor of shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def objective_gradient(learner: MetaRL, theta: Params, trajs: Sequence[Trajectories], out: Trajectories) -> Params:
    """The gradient of ``learner.objective`` at ``theta`` (a pure function: what ``compile=True`` compiles)."""
    return grad(learner.objective)(theta, trajs, out)
