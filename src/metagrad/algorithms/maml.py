"""MAML (Finn et al. 2017): differentiate the query loss through the inner loop.

Second-order through any number of inner steps; ``first_order=True`` treats the inner gradients as
constants (FOMAML), so the meta-gradient is the query-loss gradient at the adapted parameters. With
``SGD(lr, learn=True)`` the per-parameter step sizes are meta-learned too (Meta-SGD).

``recompute=True`` trades compute for memory over many inner steps: instead of keeping the graph of every
inner step for the backward pass, it keeps only the parameters after each step and walks back through the
steps, recomputing each one's Hessian-vector product: g <- g - H_k (lr * g) (and d/d lr = -grad_k * g), so
memory holds one step's graph at a time while the result is the same meta-gradient. With per-step learned step
sizes (``SGD([a, b], learn=True)``) step k's d/d lr_k lands in slot k of each ``lr.<name>``.

``tail`` says which data the outer loss is taken on (Reptile paper, section 6.3): ``separate`` (default) the query
set, drawn apart from the inner loop's data, as MAML (on grid tasks the whole grid, support points included);
``shared`` the next minibatch drawn from the support set after the inner steps' ones (cycling on through it, or drawn
anew with ``inner_sampling="replacement"``; the whole support set with full-batch steps), so that it overlaps the
inner loop's data once that is used up: shared-tail FOMAML.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vjp

from ..batch import Split, TaskBatch
from ..batching import WEIGHT_NORM_FAULT, WEIGHT_NORM_FIX, weight_normed
from ..choices import TAILS
from ..errors import ConfigError, check_choice, check_flag
from ..functional import Params
from ..functional import grad as functional_grad
from ..inner import SGD, _key
from .base import Meta, MetaLearner, buffer_state, buffers_moved, random_moved, random_state
from .trajectory import run_inner


class MAML(MetaLearner):
    """Model-agnostic meta-learning; see ``MetaLearner`` for the shared arguments and the module docstring for
    ``tail`` (``separate``: the query set; ``shared``: the next support minibatch)."""

    DEFINING = (*MetaLearner.DEFINING, "first_order", "tail")

    def __init__(self, *args: Any, first_order: bool = False, recompute: bool = False, tail: str = "separate",
                 **kwargs: Any):
        check_flag("first_order", first_order)
        check_flag("recompute", recompute)
        super().__init__(*args, **kwargs)
        self.first_order = first_order
        self.recompute = recompute
        self._recompute_checked_for: object = None  # the model layout whose buffers recompute was seen to keep
        if recompute and not isinstance(self.inner, SGD):
            raise ConfigError("recompute works with the SGD inner rule (fixed, scheduled or learned step sizes)")
        if recompute and any(p.is_complex() for p in self.model.parameters()):
            raise ConfigError("recompute works with real parameters (its hand-written backward takes no complex "
                              "conjugates); use recompute=False")
        check_choice("tail", tail, TAILS)
        self.tail = tail
        if self.inner_steps == 0 and any(True for _ in self.inner.parameters()):
            raise ConfigError("inner_steps 0 takes no inner step, so learned inner step sizes (SGD(learn=True)) "
                              "would get no gradient and never train; take at least one step, or a fixed mg.SGD(lr)")
        if getattr(self.inner, "per_step", False) and len(self.inner.schedule) > self.inner_steps:
            n = len(self.inner.schedule)
            raise ConfigError(f"SGD(learn=True) holds {n} learned step sizes, one per inner step, but inner_steps is "
                              f"{self.inner_steps}: the last {n - self.inner_steps} would never train; give "
                              f"{self.inner_steps} value(s), or take {n} inner steps")
        self.check_model()
        if self.carried is not None and not first_order:
            raise ConfigError("inner_state 'carried' works with first-order MAML (fomaml) and Reptile: second-order "
                              "MAML would differentiate through the earlier tasks' inner steps")

    def check_model(self) -> None:
        if not self.first_order and (module := weight_normed(self.model)):
            raise ConfigError(f"module '{module}' {WEIGHT_NORM_FAULT}, and second-order MAML would be silently off "
                              f"with it: use first_order=True, or {WEIGHT_NORM_FIX}")

    @property
    def minibatch_steps(self) -> int:
        return self.inner_steps + (self.tail == "shared")

    def outer_split(self, task: TaskBatch, minibatches: Tensor | None) -> Split:
        """The data of the outer loss: the query set (separate tail), or the support minibatch after the inner
        steps' (shared tail; the whole support set when the steps are full-batch)."""
        if self.tail == "separate":
            return task.query
        x, y = task.support
        if minibatches is None:
            return Split(x, y)
        return Split(x[minibatches[self.inner_steps]], y[minibatches[self.inner_steps]])

    @property
    def second_order(self) -> bool:
        return not self.first_order and self.inner_steps > 0

    def task_objective(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None) -> Tensor:
        adapted = self.adapt(meta, buffers, task.support, first_order=self.first_order, minibatches=minibatches)
        return self.loss_at(adapted, buffers, *self.outer_split(task, minibatches))

    def carried_task(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None,
                     state: Any) -> tuple[tuple[Meta, Tensor], Any]:
        """First-order MAML with the inner state carried: the outer loss's gradient at the adapted parameters (the
        inner steps' Jacobians taken as the identity), and the state the inner loop leaves."""
        with torch.no_grad():
            adapted, state = run_inner(self.inner_loop(meta, buffers, task.support, self.inner_steps,
                                                       first_order=True, minibatches=minibatches, state=state))
        split = self.outer_split(task, minibatches)

        def outer(params: Params) -> tuple[Tensor, Tensor]:
            loss = self.loss_at(params, buffers, *split)
            return loss, loss

        g, loss = functional_grad(outer, has_aux=True, create_graph=False)(adapted)
        return ({"model": g, "inner": {}}, loss), state

    def combine_tasks(self, meta: Meta, outs: tuple[Meta, Tensor]) -> tuple[Meta, Tensor]:
        grads, loss = outs
        return {part: {n: g.mean(0) for n, g in tree.items()} for part, tree in grads.items()}, loss.mean()

    def batch_gradient(self, meta: Meta, buffers: Params, batch: TaskBatch,
                       mb: Tensor | None) -> tuple[Meta, Tensor]:
        if self.recompute:
            return self._recomputed_gradient(meta, buffers, batch, mb)
        return super().batch_gradient(meta, buffers, batch, mb)

    def _recomputed_gradient(self, meta: Meta, buffers: Params, batch: TaskBatch,
                             mb: Tensor | None) -> tuple[Meta, Tensor]:
        watch = not torch.compiler.is_compiling()
        stream = random_state(self._on_cpu()) if watch else []
        layout = self.model_layout() if watch else None
        before = buffer_state(buffers) if watch and layout != self._recompute_checked_for else None
        grads, loss = self.map_tasks(lambda t, m: self._recomputed_task_gradient(meta, buffers, t, m), batch, mb)
        if watch and random_moved(stream, self._on_cpu()):
            raise ConfigError("recompute=True cannot run a model that draws random numbers as it runs (dropout in "
                              "training mode, say): the recomputed steps would draw other ones than the steps they "
                              "differentiate; set recompute=False, or put the random layers in eval mode")
        if before is not None:
            changed = buffers_moved(before, buffers)
            if changed:
                raise ConfigError(f"recompute=True cannot run a model that updates its buffers as it runs "
                                  f"({', '.join(changed)}; spectral_norm in training mode, say): each recomputed step "
                                  "would advance them once more, and the meta-gradient would differ from the one "
                                  "without recompute; set recompute=False, or put those modules in eval mode")
            self._recompute_checked_for = layout
        return {part: {n: g.mean(0) for n, g in tree.items()} for part, tree in grads.items()}, loss.mean()

    def _recomputed_task_gradient(self, meta: Meta, buffers: Params, task: TaskBatch,
                                  minibatches: Tensor | None) -> tuple[Meta, Tensor]:
        """One task's meta-gradient by walking back through the inner steps (see the module docstring). With
        ``adapt``, step k maps (a, b) to (a - lr * grad_a, b): the Hessian-vector product is that of grad_a with
        respect to all the parameters, so g_b collects H_ba (lr * g_a) while g_a <- g_a - H_aa (lr * g_a)."""
        rule: SGD = self.inner  # type: ignore[assignment]
        with torch.no_grad():
            trajectory = list(self.inner_loop(meta, buffers, task.support, self.inner_steps, minibatches=minibatches))
        g, loss = grad_and_value(self.loss_at)(trajectory[-1], buffers, *self.outer_split(task, minibatches))
        names = self.adapted_names(g)
        hyper = meta["inner"]
        keys = {n: "lr." + _key(n) for n in names if "lr." + _key(n) in hyper}  # learned step sizes with a gradient
        slots = len(rule.schedule) if rule.per_step else 1
        lr_grad = {n: [torch.zeros_like(g[n]) for _ in range(slots)] for n in keys}

        def inner_grad(p: Params, x: Tensor, y: Tensor) -> Params:
            adapted = {n: p[n] for n in names}
            return grad(self.loss_at)(adapted, self.constants(p, adapted, buffers), x, y)

        for k in reversed(range(self.inner_steps)):
            x, y = task.support
            if minibatches is not None:
                x, y = x[minibatches[k]], y[minibatches[k]]
            if self.first_order:  # the steps' Jacobians are taken as the identity: g stays the query gradient
                support_grad = inner_grad(trajectory[k], x, y) if keys else None
            else:
                support_grad, hvp = vjp(lambda p, x=x, y=y: inner_grad(p, x, y), trajectory[k])
            j = rule.slot(k) if rule.per_step else 0
            for n in keys:
                lr_grad[n][j] = lr_grad[n][j] - support_grad[n] * g[n]
            if not self.first_order:
                lr = {n: rule.step_size(n, k, hyper) for n in names}
                (h,) = hvp({n: lr[n] * g[n] for n in names})
                g = {n: g[n] - h[n] for n in g}
        inner = {keys[n]: torch.stack(parts) if rule.per_step else parts[0] for n, parts in lr_grad.items()}
        return {"model": g, "inner": inner}, loss

    def extra_repr(self) -> str:
        tail = f", tail={self.tail}" if self.tail != "separate" else ""
        return (f"inner_steps={self.inner_steps}, first_order={self.first_order}, recompute={self.recompute}, "
                f"batching={self.batching}{tail}")


def FOMAML(*args: Any, **kwargs: Any) -> MAML:
    """First-order MAML."""
    return MAML(*args, first_order=True, **kwargs)
