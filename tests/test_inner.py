"""Inner-loop rules."""

from __future__ import annotations

import pytest
import torch

import metagrad as mg
from metagrad.errors import ConfigError


def test_sgd_schedule_repeats_its_last_step_size():
    rule = mg.SGD([0.1, 0.05])
    p, g = {"w": torch.ones(2)}, {"w": torch.ones(2)}
    for step, lr in enumerate([0.1, 0.05, 0.05]):
        new, _ = rule.step(p, g, None, step, {})
        torch.testing.assert_close(new["w"], p["w"] - lr)


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.999), (0.5, 0.9)])
@pytest.mark.parametrize("lr", [0.01, [0.02, 0.01, 0.005]])
def test_adam_matches_torch_with_its_betas_and_step_schedule(betas, lr):
    """Each step equals torch's Adam with the same betas and that step's size (a schedule's last size repeats)."""
    rule = mg.Adam(lr, betas=betas)
    schedule = lr if isinstance(lr, list) else [lr]
    w = torch.randn(5, dtype=torch.float64)
    ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=schedule[0], betas=betas, eps=1e-8)
    params, state = {"w": w}, rule.init_state({"w": w})
    for step in range(5):
        grad = torch.sin(params["w"] * (step + 1))
        params, state = rule.step(params, {"w": grad}, state, step, {})
        opt.param_groups[0]["lr"] = schedule[min(step, len(schedule) - 1)]
        opt.zero_grad()
        ref.grad = torch.sin(ref.detach() * (step + 1))
        opt.step()
        torch.testing.assert_close(params["w"], ref.detach(), rtol=1e-12, atol=1e-12)


def test_carried_adam_corrects_its_bias_over_every_step_and_restarts_its_schedule():
    """A carried state is torch's Adam run on across inner loops (bias correction over all steps seen), while the
    step size follows each inner loop's own step index."""
    rule = mg.Adam([0.02, 0.01], betas=(0.9, 0.999))
    w = torch.randn(4, dtype=torch.float64)
    ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.02, betas=(0.9, 0.999), eps=1e-8)
    params, state = {"w": w}, rule.carry({"w": w})
    for loop in range(3):
        for step in range(2):
            grad = torch.cos(params["w"] + loop + step)
            params, state = rule.step(params, {"w": grad}, state, step, {})
            opt.param_groups[0]["lr"] = [0.02, 0.01][step]
            opt.zero_grad()
            ref.grad = torch.cos(ref.detach() + loop + step)
            opt.step()
            torch.testing.assert_close(params["w"], ref.detach(), rtol=1e-12, atol=1e-12)
    assert state.t == 6


@pytest.mark.parametrize("lr", [-0.1, [0.1, -1.0], []])
def test_bad_step_sizes_are_refused(lr):
    with pytest.raises(ConfigError, match="inner_lr"):
        mg.SGD(lr)


def test_learned_step_sizes_cannot_be_overridden():
    model = torch.nn.Linear(1, 1)
    rule = mg.SGD(0.1, learn=True, params=dict(model.named_parameters()))
    assert {n for n, _ in rule.named_parameters()} == {"lr.weight", "lr.bias"}
    with pytest.raises(ConfigError, match="meta-learns"):
        rule.with_lr(0.2)


def test_learned_step_sizes_take_the_model_or_its_named_parameters_alike():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    by_model = mg.SGD([0.1, 0.05], learn=True, params=net)
    by_name = mg.SGD([0.1, 0.05], learn=True, params=dict(net.named_parameters()))
    assert by_model.lr.keys() == by_name.lr.keys() == {"0__weight", "0__bias", "2__weight", "2__bias"}
    for key, lr in by_model.lr.items():
        assert torch.equal(lr, by_name.lr[key]) and lr.shape[0] == 2


class ComplexWeights(torch.nn.Module):
    """A complex weight read through its modulus, then a real head: a real loss of complex parameters."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.complex128) * 0.4)
        self.out = torch.nn.Linear(6, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh((x.to(torch.complex128) @ self.w).abs()))


def test_learned_step_sizes_of_a_complex_parameter_are_real_and_get_the_real_gradient():
    """Meta-SGD on a complex weight: its step sizes were complex (0.1+0j), their gradient had an imaginary part,
    and after one outer step the inner update rotated the gradient instead of scaling it. They are real; the
    meta-gradient of each equals plain autograd's with a real step-size tensor."""
    torch.manual_seed(0)
    net = ComplexWeights()
    x, y, qx, qy = (torch.randn(6, 4 if i % 2 == 0 else 1, dtype=torch.float64) for i in range(4))
    learn = mg.MAML(net, inner=mg.SGD(0.1, learn=True), loss_fn=mg.losses.mse, batching="loop")
    learn.meta_gradient(mg.TaskBatch(mg.Split(x[None], y[None]), mg.Split(qx[None], qy[None])))
    lrs = {n: torch.full(p.shape, 0.1, dtype=torch.float64, requires_grad=True) for n, p in net.named_parameters()}
    params = dict(net.named_parameters())
    support = ((torch.func.functional_call(net, params, (x,)) - y) ** 2).mean()
    grads = dict(zip(params, torch.autograd.grad(support, list(params.values()), create_graph=True), strict=True))
    fast = {n: p - lrs[n] * grads[n] for n, p in params.items()}
    query = ((torch.func.functional_call(net, fast, (qx,)) - qy) ** 2).mean()
    want = dict(zip(lrs, torch.autograd.grad(query, list(lrs.values())), strict=True))
    for n, lr in learn.inner.lr.items():
        name = n.replace("__", ".")
        assert lr.dtype == torch.float64 and lr.grad.dtype == torch.float64
        assert torch.allclose(lr.grad, want[name], rtol=1e-10, atol=1e-14)
