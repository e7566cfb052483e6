"""The outer steps of meta-RL: TRPO (conjugate gradient on the KL's Hessian through the inner steps, then a line
search), VPG (any ``torch.optim`` optimizer on the meta-gradient) and PPO (clipped ratios, several epochs, ProMP's
adaptive KL penalty on the pre-update policies). Each takes the learner's objective as it is (``MetaRL``) and, under
``torchrun``, this process's ``Share`` of the meta-batch, over which per-task means are combined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from ..distributed import Share
from ..errors import ConfigError, TrainingDiverged
from ..functional import Params, detach, write_grads
from .sampler import Trajectories, policy_dist
from .trpo import StepInfo, flatten, trust_region_step, unflatten

if TYPE_CHECKING:
    from .metarl import MetaRL


def step(learner: MetaRL, trajs: Sequence[Trajectories], out: Trajectories,
         optimizer: torch.optim.Optimizer | None = None, share: Share | None = None) -> dict[str, float]:
    """Form the meta-gradient and take the outer step: TRPO in place, or ``optimizer.step()`` for VPG and PPO.
    Under ``torchrun``, ``share`` is this process's part of the meta-batch: per-task means are combined over
    the processes by their tasks, means over valid steps (the KLs) by their steps, so that every process takes the
    step one process takes on the whole meta-batch."""
    if learner.outer in ("vpg", "ppo") and optimizer is None:
        raise ConfigError(f"outer '{learner.outer}' needs an optimizer (e.g. torch.optim.Adam(policy.parameters()))")
    if learner.outer == "ppo":
        return ppo_update(learner, trajs, out, optimizer, share)
    g = _reduce_params(learner.meta_gradient(trajs, out), share)
    gnorm = _finite_norm(g)
    if learner.outer == "vpg":
        write_grads(learner.trainable(), {k: -v for k, v in g.items()})
        optimizer.step()
        return {"grad_norm": gnorm}
    info = trpo_update(learner, flatten(learner.meta_params()), flatten(g), trajs, out, share)
    return {"grad_norm": gnorm, "accepted": float(info.accepted), "kl": info.kl,
            "improvement": info.improvement, "backtracks": float(info.backtracks)}


def ppo_update(learner: MetaRL, trajs: Sequence[Trajectories], out: Trajectories, optimizer: torch.optim.Optimizer,
               share: Share | None = None) -> dict[str, float]:
    """``ppo_epochs`` optimizer steps on the clipped surrogate minus the inner KL penalties (ProMP), all on this
    meta-batch; then the penalty coefficients adapt to their target."""
    params = learner.trainable()
    gradient = learner.compiled(ppo_gradient)
    *inner_pools, out_pool = pooled(share, [tr.mask for tr in (*trajs, out)])
    coefs = learner.inner_kl_coefs.clone()
    if share is not None and len(coefs):  # the penalties are means over steps: reduced by tasks, weighed by steps
        learner.inner_kl_coefs.mul_(coefs.new_tensor([p.fraction / share.fraction for p in inner_pools]))
    try:
        for epoch in range(learner.ppo_epochs):
            g = _reduce_params(gradient(learner, learner.meta_params(), trajs, out)[0], share)
            if epoch == 0:  # the first epoch's gradient is the meta-gradient (ratios are 1, no penalty yet)
                gnorm = _finite_norm(g)
            write_grads(params, g)
            optimizer.step()
    finally:
        learner.inner_kl_coefs.copy_(coefs)
    with torch.no_grad():
        _, (kl, inner_kls) = ppo_loss(learner, learner.meta_params(), trajs, out)
        kl = _reduce(kl, out_pool)
        inner_kls = torch.stack([_reduce(k, p) for k, p in zip(inner_kls, inner_pools, strict=True)]) \
            if len(inner_kls) else inner_kls
    if learner.inner_kl_target > 0 and len(inner_kls):
        low, high = inner_kls < learner.inner_kl_target / 1.5, inner_kls > learner.inner_kl_target * 1.5
        learner.inner_kl_coefs[low.to(learner.inner_kl_coefs.device)] /= 2
        learner.inner_kl_coefs[high.to(learner.inner_kl_coefs.device)] *= 2
    stats = {"grad_norm": gnorm, "kl": float(kl)}
    stats.update({f"inner_kl_{s}": float(v) for s, v in enumerate(inner_kls)})
    stats.update({f"inner_kl_coef_{s}": float(c) for s, c in enumerate(learner.inner_kl_coefs)})
    return stats


def ppo_loss(learner: MetaRL, theta: Params, trajs: Sequence[Trajectories],
             out: Trajectories) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """PPO's loss at ``theta``: minus the clipped surrogate plus the inner KL penalties averaged over the inner steps
    (ProMP's ``reduce_mean(inner_kl_coeff * mean_inner_kl_per_step)``), with the mean KL over D_o and each inner
    step's KL."""
    sur, kl, inner_kls = learner.outer_terms(theta, trajs, out, learner.ppo_clip, inner_kls=True)
    penalty = (learner.inner_kl_coefs.to(sur.dtype) * inner_kls).sum() / max(1, len(inner_kls))
    return -sur + penalty, (kl, inner_kls)


def ppo_gradient(learner: MetaRL, theta: Params, trajs: Sequence[Trajectories],
                 out: Trajectories) -> tuple[Params, tuple[Tensor, Tensor]]:
    """The gradient of ``ppo_loss`` at ``theta`` (a pure function: what ``compile=True`` compiles)."""
    return grad(ppo_loss, argnums=1, has_aux=True)(learner, theta, trajs, out)


def trpo_update(learner: MetaRL, x0: Tensor, g: Tensor, trajs: Sequence[Trajectories], out: Trajectories,
                share: Share | None = None) -> StepInfo:
    """A trust-region step from ``x0`` written into the policy's parameters."""
    theta = learner.meta_params()
    curvature_steps = subsample(learner, out).mask if learner.hvp_mode == "exact" and trajs else out.mask
    out_pool, curvature_pool = pooled(share, [out.mask, curvature_steps])

    def evaluate(x: Tensor) -> tuple[float, float]:
        with torch.no_grad():
            sur, kl = learner.compiled(surrogate_and_kl)(learner, unflatten(x, theta), trajs, out)
        return float(_reduce(sur, share)), float(_reduce(kl, out_pool))

    local = kl_hvp(learner, trajs, out)
    x, info = trust_region_step(x0, evaluate, g, lambda v: _reduce(local(v), curvature_pool), learner.max_kl,
                                learner.cg_iters, learner.backtrack, learner.max_backtracks)
    with torch.no_grad():
        params = learner.trainable()
        for name, v in unflatten(x, theta).items():
            params[name].copy_(v)
    return info


def surrogate_and_kl(learner: MetaRL, theta: Params, trajs: Sequence[Trajectories], out: Trajectories) -> Tensor:
    """``[surrogate, mean KL]`` at ``theta`` (``MetaRL.objective_and_kl``, stacked: what the line search compiles)."""
    return torch.stack(learner.objective_and_kl(theta, trajs, out))


def kl_hvp(learner: MetaRL, trajs: Sequence[Trajectories], out: Trajectories) -> Any:
    """``v -> (H + damping) v`` with H the Hessian of the KL through the inner step at the meta-parameters.

    ``exact``: at the sampling parameters the KL's gradient with respect to the adapted parameters is zero,
    so its Hessian through the inner steps is exactly ``sum_i J_i^T F_i J_i`` (F_i: the Fisher matrix of task
    i's adapted policy on D_o, J_i: the Jacobian of its inner steps, each ``I - alpha * Hessian of the inner
    loss``): Hessian-vector products of the inner losses and of the KL, no third derivatives.
    ``finite-difference``: central differences of the KL's gradient through the inner step (the MAML paper's).
    """
    theta = learner.meta_params()
    x0 = flatten(theta)
    if learner.hvp_mode == "finite-difference" or not trajs:
        if learner.first_order and trajs:  # J = I: the adapted parameters move with theta, the inner path held
            adapted = inner_path(learner, theta, trajs)[0][-1]

            def kl_grad(x: Tensor) -> Tensor:
                def kl(y: Tensor) -> Tensor:
                    shift = unflatten(y - x0, theta)
                    return _kl_at(learner, out, {k: adapted[k] + shift[k] for k in adapted})
                return grad(kl)(x)
        else:
            def kl_grad(x: Tensor) -> Tensor:
                return grad(lambda y: learner.kl(unflatten(y, theta), trajs, out))(x)

        if not trajs:  # joint training: the KL Hessian of the policy itself, exact
            if learner.use_compile:  # the products recompute their forward pass, fused by the compiler
                joint = learner.compiled(policy_curvature)
                return lambda v: joint(learner, theta, out, v) + learner.cg_damping * v
            _, product = vjp(kl_grad, x0)
            return lambda v: product(v)[0] + learner.cg_damping * v

        # central differences: step ~ machine epsilon^(1/3) balances rounding and truncation (float32: 5e-3
        # relative; a 1e-5 step gives errors of the order of the product itself in float32)
        rel = torch.finfo(x0.dtype).eps ** (1 / 3)

        def fd(v: Tensor) -> Tensor:
            eps = rel * (1 + float(x0.norm())) / (float(v.norm()) + 1e-12)
            return (kl_grad(x0 + eps * v) - kl_grad(x0 - eps * v)) / (2 * eps) + learner.cg_damping * v

        return fd
    path, hessians = inner_path(learner, theta, trajs)
    out = subsample(learner, out)
    if learner.use_compile:  # the products recompute their forward passes, fused by the compiler (2-3x faster)
        product = learner.compiled(curvature_product)
        parts = task_chunks(learner.curvature_chunk, theta, path, [subsample(learner, tr) for tr in trajs], out)
        return lambda v: sum(w * product(learner, theta, p, s, o, v) for p, s, o, w in parts) + learner.cg_damping * v
    # eager: the double backward over the kept graph (as fast here as Gauss-Newton, which pays off compiled)
    fisher = kl_hessian_product(learner, out, path[-1])
    tasks = out.mask.shape[0]
    return lambda v: curvature_chain(learner, theta, tasks, hessians, fisher, v) + learner.cg_damping * v


def task_chunks(size: int, theta: Params, path: list[Params], subs: Sequence[Trajectories],
                out: Trajectories) -> list[tuple[list[Params], list[Trajectories], Trajectories, Tensor]]:
    """``curvature_product``'s per-task inputs cut into chunks of about ``size`` tasks (0: one chunk of all), each
    with its share of the KL's steps (the KL is a mean over every task's steps, the product linear in it): the
    product is the weighted sum over chunks, whose activations stay in the caches. Copies, not views: compiled
    forward-mode products of views of the inputs fail inside torch (an internal assert, torch 2.13)."""
    tasks = out.mask.shape[0]
    if size <= 0 or size >= tasks:
        return [(path, list(subs), out, torch.ones((), dtype=out.mask.dtype))]
    total = out.mask.sum()
    parts = []
    for index in torch.arange(tasks).tensor_split(math.ceil(tasks / size)):
        a, b = int(index[0]), int(index[-1]) + 1
        chunk = [{k: t.expand(b - a, *t.shape) for k, t in theta.items()}]
        chunk += [{k: t[a:b].clone() for k, t in p.items()} for p in path[1:]]
        sub = [Trajectories(*(f[a:b].clone() for f in tr)) for tr in subs]
        part = Trajectories(*(f[a:b].clone() for f in out))
        parts.append((chunk, sub, part, part.mask.sum() / total))
    return parts


def policy_curvature(learner: MetaRL, theta: Params, out: Trajectories, v: Tensor) -> Tensor:
    """The KL's Hessian at ``theta`` times ``v``, with no inner step (joint training; what ``compile=True``
    compiles)."""
    kl_grad = grad(lambda x: learner.kl(unflatten(x, theta), [], out))
    return vjp(kl_grad, flatten(theta))[1](v)[0]


def curvature_product(learner: MetaRL, theta: Params, path: list[Params], subs: Sequence[Trajectories],
                      out: Trajectories, v: Tensor) -> Tensor:
    """``sum_i J_i^T F_i J_i v`` as a pure function of its inputs (what ``compile=True`` compiles): the inner
    losses' and the KL's Hessian-vector products taken afresh at the kept inner path."""
    hessians = [] if learner.first_order else [inner_gradient(learner, path[s], sub)[1] for s, sub in enumerate(subs)]
    fisher = fisher_product(learner, out, path[-1])
    return curvature_chain(learner, theta, out.mask.shape[0], hessians, fisher, v)


def curvature_chain(learner: MetaRL, theta: Params, tasks: int, hessians: Sequence[Any], fisher: Any,
                    v: Tensor) -> Tensor:
    """``sum_i J_i^T F_i J_i v`` from each inner step's Hessian-vector product ``hessians[s]`` and the adapted
    policies' Fisher product ``fisher`` (both on ``[T, ...]`` trees): ``J_s = I - alpha_s * P H_s``, P the projection
    on the parameters the inner steps adapt (``I`` when they adapt all), so ``J_s^T = I - alpha_s * H_s P``. First-order
    methods take ``J = I`` (the inner gradients are constants)."""
    every = len(learner.adapted) == len(theta)
    mask = (lambda t: t) if every else learner.masked
    steps = [] if learner.first_order else list(enumerate(hessians))
    u = {k: t.expand(tasks, *t.shape) for k, t in unflatten(v, theta).items()}
    for s, hess in steps:  # J v = J_n ... J_1 v
        hu, lr = mask(hess(u)[0]), learner.inner.lr_at(s)
        u = {k: u[k] - lr * hu[k] for k in u}
    w = fisher(u)[0]
    for s, hess in reversed(steps):  # J^T w = J_1^T ... J_n^T w
        hw, lr = hess(mask(w))[0], learner.inner.lr_at(s)
        w = {k: w[k] - lr * hw[k] for k in w}
    return flatten({k: t.sum(0) for k, t in w.items()})


def fisher_product(learner: MetaRL, out: Trajectories, p: Params) -> Any:
    """``u -> (F u,)``, F the Hessian of the mean KL(pi_old || pi_p) at the sampling parameters ``p`` (per task).

    Where the policy's distribution parameters are free (``Policy.free_dist``: a Gaussian's mean and log-std) the
    KL's gradient in them is zero at the old distribution, so F is exactly the Gauss-Newton product ``J^T H J`` (J:
    the Jacobian of the distribution parameters, H: the KL's Hessian in them, taken on the distribution alone):
    one forward-mode and one reverse pass through the policy instead of the double backward: what ``compile=True``
    compiles (half-cheetah's product 1.09-1.17 against 1.25 s, equal to the bit; ``benchmarks/fisher_product.py``).
    Categorical log-probs are not free (the KL's gradient in them is -p_old): there the double backward."""
    if not learner.policy.free_dist:
        return kl_hessian_product(learner, out, p)
    p = {k: t.contiguous() for k, t in p.items()}  # forward mode refuses expanded primals and tangents
    d, pullback = vjp(partial(_dist, learner, out), p)
    _, kl_hessian = vjp(grad(partial(_kl_of_dist, learner, out)), d)

    def product(u: Params) -> tuple[Params]:
        _, ju = jvp(partial(_dist, learner, out), (p,), ({k: t.contiguous() for k, t in u.items()},))
        return pullback(kl_hessian(ju)[0])

    return product


def kl_hessian_product(learner: MetaRL, out: Trajectories, p: Params) -> Any:
    """``u -> (F u,)`` by double backward of the mean KL through the policy (any policy), its graph kept once."""
    return vjp(grad(partial(_kl_at, learner, out)), p)[1]


def _kl_at(learner: MetaRL, out: Trajectories, p: Params) -> Tensor:
    """The mean KL(pi_old || pi_p) over the valid steps of ``out`` with per-task parameters ``p``."""
    return _kl_of_dist(learner, out, _dist(learner, out, p))


def _dist(learner: MetaRL, out: Trajectories, p: Params) -> Tensor:
    """The policy's distribution parameters on the states of ``out`` with per-task parameters ``p``."""
    return policy_dist(learner.policy, p, out.obs, True)


def _kl_of_dist(learner: MetaRL, out: Trajectories, dist: Tensor) -> Tensor:
    """The mean KL(pi_old || dist) over the valid steps of ``out``."""
    return (learner.policy.kl(out.old_dist, dist) * out.mask).sum() / out.mask.sum().clamp(min=1)


def inner_path(learner: MetaRL, theta: Params, trajs: Sequence[Trajectories]) -> tuple[list[Params], list[Any]]:
    """The (detached, per-task) parameters after each inner step, and per step s the Hessian-vector product
    ``u -> H_s u`` of the task's inner loss at its parameters before step s (on ``[T, ...]`` trees, on the
    ``hvp_subsample`` episodes), from which ``curvature_chain`` forms the inner steps' Jacobians (None where they
    are not needed: first-order methods, and ``compile=True``, whose products take them afresh)."""
    tasks = trajs[0].mask.shape[0]
    path = [{k: v.expand(tasks, *v.shape) for k, v in theta.items()}]
    hessians = []
    for s, tr in enumerate(trajs):
        sub = subsample(learner, tr)
        if learner.first_order or learner.use_compile:  # no curvature of the inner losses (J = I), or compiled
            grads, hess = vmap(grad(learner.inner_loss))(path[-1], tr), None  # products that recompute it
        else:
            grads, hess = inner_gradient(learner, path[-1], sub)
            if sub is not tr:  # the path itself follows the inner steps on all episodes
                grads = vmap(grad(learner.inner_loss))(path[-1], tr)
        moved = detach(learner.inner.step(learner.split(path[-1])[0], learner.split(grads)[0], None, s, {})[0])
        path.append({k: moved.get(k, v) for k, v in path[-1].items()})
        hessians.append(hess)
    return path, hessians


def inner_gradient(learner: MetaRL, params: Params, traj: Trajectories) -> tuple[Params, Any]:
    """Every task's inner-loss gradient at its ``params`` (``[T, ...]``) on ``traj``, and its Hessian-vector product
    ``u -> (H u,)`` (the gradient's vjp: second derivatives only)."""
    return vjp(lambda p: vmap(grad(learner.inner_loss))(p, traj), params)


def subsample(learner: MetaRL, traj: Trajectories) -> Trajectories:
    """The first ``hvp_subsample`` fraction of each task's episodes (episodes are i.i.d.), for curvature."""
    k = traj.mask.shape[1]
    keep = max(1, math.ceil(learner.hvp_subsample * k))
    return traj if keep >= k else Trajectories(*(f[:, :keep] for f in traj))

# ------------------------------------------------------------------ one meta-iteration


def _finite_norm(g: Params) -> float:
    """The norm of a meta-gradient; a clear error when it is not finite."""
    norm = float(flatten(g).norm())
    if not math.isfinite(norm):
        raise TrainingDiverged(f"the meta-gradient is {norm}; lower inner_lr or the outer step size")
    return norm


def _reduce(x: Tensor, share: Share | None) -> Tensor:
    """The meta-batch's value of a per-task mean computed on this process's ``share`` (``x`` itself alone)."""
    return x if share is None else share.mean(x)


def pooled(share: Share | None, masks: Sequence[Tensor]) -> list[Share | None]:
    """Per batch (its mask), this process's share of the meta-batch's valid steps: the weight of its means over
    valid steps (the KLs), which its share of the tasks misweighs where episodes end early. One all-reduce."""
    if share is None:
        return [None] * len(masks)
    counts = torch.stack([m.sum() for m in masks]).double()
    totals = counts.clone()
    share.group.all_reduce(totals)
    return [Share(share.group, float(c / t)) for c, t in zip(counts, totals.clamp(min=1), strict=True)]


def _reduce_params(tree: Params, share: Share | None) -> Params:
    """``_reduce`` on every leaf of a gradient, in one flat all-reduce."""
    return tree if share is None else unflatten(share.mean(flatten(tree)), tree)
