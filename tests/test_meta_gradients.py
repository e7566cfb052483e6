"""Meta-gradients against closed forms, finite differences and independent autograd computations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import metagrad as mg
from conftest import grads_of, sinusoid_batch, small_mlp
from metagrad.functional import params_of
from metagrad.tasks import Split, TaskBatch

D, TASKS, ALPHA = 3, 4, 0.1


class Point(nn.Module):
    """A model whose output is its parameter t: with ``quadratic`` as loss, task i has loss
    0.5 (t - c_i)^T Q_i (t - c_i)."""

    def __init__(self, t: torch.Tensor):
        super().__init__()
        self.t = nn.Parameter(t.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.t.expand(x.shape[0], -1)


def quadratic(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    c, q = target[:, :D], target[:, D:].reshape(-1, D, D)
    diff = pred - c
    return 0.5 * torch.einsum("bi,bij,bj->b", diff, q, diff).mean()


def quadratic_tasks(seed: int = 0) -> tuple[TaskBatch, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(TASKS, D, D, generator=g, dtype=torch.float64)
    q = a @ a.transpose(1, 2) / D + 0.5 * torch.eye(D, dtype=torch.float64)
    c = torch.randn(TASKS, D, generator=g, dtype=torch.float64)
    y = torch.cat([c, q.reshape(TASKS, -1)], dim=1)[:, None, :]
    x = torch.zeros(TASKS, 1, 1, dtype=torch.float64)
    split = Split(x, y)
    return TaskBatch(split, split), q, c


def t0() -> torch.Tensor:
    return torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_maml_matches_closed_form_on_quadratics(batching, steps):
    batch, q, c = quadratic_tasks()
    t = t0()
    learner = mg.MAML(Point(t), loss_fn=quadratic, inner=mg.SGD(ALPHA), inner_steps=steps, batching=batching)
    learner.meta_gradient(batch)
    eye = torch.eye(D, dtype=torch.float64)
    expected = torch.zeros(D, dtype=torch.float64)
    for i in range(TASKS):
        m = torch.linalg.matrix_power(eye - ALPHA * q[i], steps)
        # (I - aQ)^k Q (I - aQ)^k (t - c); for k = 1 this is the (I - aQ) Q (I - aQ)(t - c)
        expected += m @ q[i] @ m @ (t - c[i])
    torch.testing.assert_close(learner.model.t.grad, expected / TASKS, rtol=1e-12, atol=1e-12)


def test_first_order_maml_closed_form_on_quadratics():
    batch, q, c = quadratic_tasks()
    t = t0()
    learner = mg.FOMAML(Point(t), loss_fn=quadratic, inner=mg.SGD(ALPHA), inner_steps=1)
    learner.meta_gradient(batch)
    expected = sum(q[i] @ (t - ALPHA * q[i] @ (t - c[i]) - c[i]) for i in range(TASKS)) / TASKS
    torch.testing.assert_close(learner.model.t.grad, expected, rtol=1e-12, atol=1e-12)


def test_learned_step_sizes_get_the_closed_form_gradient():
    """Meta-SGD: d/d(lr) L(t - lr * g) = -g * grad L(t') elementwise, g = grad L(t)."""
    batch, q, c = quadratic_tasks()
    t = t0()
    model = Point(t)
    learner = mg.MAML(model, loss_fn=quadratic, inner=mg.SGD(ALPHA, learn=True, params=params_of(model)))
    learner.meta_gradient(batch)
    expected = torch.zeros(D, dtype=torch.float64)
    for i in range(TASKS):
        g = q[i] @ (t - c[i])
        expected += -g * (q[i] @ (t - ALPHA * g - c[i]))
    lr_param = dict(learner.inner.named_parameters())["lr.t"]
    torch.testing.assert_close(lr_param.grad, expected / TASKS, rtol=1e-12, atol=1e-12)


def _meta_loss(learner: mg.MetaLearner, batch: TaskBatch) -> float:
    meta, buffers = learner.meta_params(), learner.buffers()
    losses = [learner.task_objective(meta, buffers, batch.task(i), None) for i in range(batch.num_tasks)]
    return float(torch.stack(losses).mean())


def _check_directional_derivatives(learner: mg.MetaLearner, batch: TaskBatch, grads: dict[str, torch.Tensor],
                                   directions: int, tol: float, eps: float = 1e-6) -> None:
    """The meta-gradient ``grads`` against central differences of the meta-loss along random directions."""
    params = dict(learner.named_parameters())
    gen = torch.Generator().manual_seed(3)
    for _ in range(directions):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.add_(eps * direction[n])
            plus = _meta_loss(learner, batch)
            for n, p in params.items():
                p.sub_(2 * eps * direction[n])
            minus = _meta_loss(learner, batch)
            for n, p in params.items():
                p.add_(eps * direction[n])
        fd = (plus - minus) / (2 * eps)
        analytic = float(sum((grads[n] * direction[n]).sum() for n in params))
        assert abs(fd - analytic) <= tol * max(1.0, abs(analytic)), (fd, analytic)


@pytest.mark.parametrize("learn_lr", [False, True])
def test_maml_two_steps_matches_finite_differences(learn_lr):
    model = small_mlp().double()
    inner = mg.SGD(0.05, learn=learn_lr, params=params_of(model))
    learner = mg.MAML(model, inner=inner, inner_steps=2).double()
    batch = sinusoid_batch()
    learner.meta_gradient(batch)
    params = dict(learner.named_parameters())
    grads = {n: p.grad.clone() for n, p in params.items()}
    _check_directional_derivatives(learner, batch, grads, 4, 1e-7)


def test_first_order_maml_is_query_gradient_at_adapted_parameters():
    model = small_mlp().double()
    learner = mg.FOMAML(model, inner=mg.SGD(0.05), inner_steps=3).double()
    batch = sinusoid_batch()
    learner.meta_gradient(batch)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(batch.num_tasks):  # adapt with plain autograd, then differentiate the query loss there
        task = batch.task(i)
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, params, task.support.x),
                                                task.support.y)
            g = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - 0.05 * gi).detach().requires_grad_()
                      for (n, p), gi in zip(params.items(), g, strict=True)}
        loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, params, task.query.x), task.query.y)
        for n, gi in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            expected[n] += gi / batch.num_tasks
    got = grads_of(model)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-10, atol=1e-12)


def _manual_adapt(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  optimizer_factory, steps: int, order: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Adapt a copy of ``model`` set to ``params`` with a torch.optim optimizer (the independent reference)."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in clone.named_parameters():
            p.copy_(params[n])
    opt = optimizer_factory(clone.parameters())
    for s in range(steps):
        xb, yb = (x, y) if order is None else (x[order[s]], y[order[s]])
        opt.zero_grad()
        torch.nn.functional.mse_loss(clone(xb), yb).backward()
        opt.step()
    return {n: p.detach() for n, p in clone.named_parameters()}


@pytest.mark.parametrize("inner_name", ["sgd", "adam"])
@pytest.mark.parametrize("batch_size", [0, 3])
def test_reptile_update_is_epsilon_times_mean_displacement(inner_name, batch_size):
    model = small_mlp().double()
    lr, steps, eps = 0.02, 4, 0.5
    inner = mg.SGD(lr) if inner_name == "sgd" else mg.Adam(lr)  # Adam with beta1 = 0, as Reptile
    learner = mg.Reptile(model, inner=inner, inner_steps=steps, inner_batch_size=batch_size).double()
    batch = sinusoid_batch(shots=10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    order = learner.minibatch_indices(batch.num_tasks, 10, steps, batch_size, torch.Generator().manual_seed(5))
    outer = torch.optim.SGD(learner.parameters(), lr=eps)
    outer.zero_grad()
    learner.meta_gradient(batch, torch.Generator().manual_seed(5))
    outer.step()

    def factory(ps):
        return torch.optim.SGD(ps, lr=lr) if inner_name == "sgd" else torch.optim.Adam(ps, lr=lr, betas=(0.0, 0.999))

    adapted = [_manual_adapt(model, before, batch.support.x[i], batch.support.y[i], factory, steps,
                             None if order is None else order[i]) for i in range(batch.num_tasks)]
    for n, p in model.named_parameters():
        mean_disp = torch.stack([a[n] - before[n] for a in adapted]).mean(0)
        torch.testing.assert_close(p.detach(), before[n] + eps * mean_disp, rtol=1e-10, atol=1e-12)


def test_joint_training_gradient_is_pooled_loss_gradient():
    model = small_mlp().double()
    learner = mg.JointTraining(model).double()
    batch = sinusoid_batch()
    learner.meta_gradient(batch)
    x = torch.cat([batch.support.x, batch.query.x], dim=1)
    y = torch.cat([batch.support.y, batch.query.y], dim=1)
    model.zero_grad()
    torch.stack([torch.nn.functional.mse_loss(model(x[i]), y[i]) for i in range(len(x))]).mean().backward()
    expected = grads_of(model)
    learner.meta_gradient(batch)
    for n, g in grads_of(model).items():
        torch.testing.assert_close(g, expected[n], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize(("first_order", "learn", "batch_size"), [(False, False, 0), (False, True, 0),
                                                                   (True, True, 0), (False, False, 4)])
def test_recomputing_the_inner_steps_gives_the_same_meta_gradient(batching, first_order, learn, batch_size):
    """The memory-saving backward (walk back through the steps with Hessian-vector products) equals autograd
    through the whole inner loop."""
    grads = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        model = small_mlp().double()
        inner = mg.SGD([0.05, 0.03, 0.02], learn=learn, params=params_of(model))
        learner = mg.MAML(model, inner=inner, inner_steps=3, inner_batch_size=batch_size, first_order=first_order,
                          batching=batching, recompute=recompute).double()
        metrics = learner.meta_gradient(sinusoid_batch(shots=10), torch.Generator().manual_seed(2))
        grads[recompute] = (metrics["meta_loss"], grads_of(learner))
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-12)
    assert grads[True][1].keys() == grads[False][1].keys()
    for n, g in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][n], g, rtol=1e-10, atol=1e-12)


def test_second_order_maml_through_inner_adam_with_a_dead_relu_unit_matches_finite_differences():
    """A unit dead on every input gives inner-gradient entries exactly 0, where sqrt's derivative is infinite:
    the meta-gradient was NaN in 87 of 97 entries (0 x inf). Locally the loss is smooth (the unit stays dead)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 6), nn.ReLU(), nn.Linear(6, 1)).double()
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # dead on the sinusoid's inputs in [-5, 5]
    learner = mg.MAML(model, inner=mg.Adam(0.01), inner_steps=2).double()
    batch = sinusoid_batch()
    inner_grad = torch.func.grad(lambda p: learner.loss_at(p, {}, batch.support.x[0], batch.support.y[0]))(
        {n: p.detach() for n, p in model.named_parameters()})
    assert (inner_grad["0.weight"][:2] == 0).all()
    learner.meta_gradient(batch)
    params = dict(learner.named_parameters())
    grads = {n: p.grad.clone() for n, p in params.items()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    _check_directional_derivatives(learner, batch, grads, 3, 1e-6)
