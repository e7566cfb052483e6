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
