"""The engine's gradient: plain autograd outside function transforms, torch.func.grad inside; the same numbers."""

from __future__ import annotations

import torch
from torch import nn

from metagrad.functional import autograd_grad, grad


def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (p["w"] ** 3 * x).sum() + p["b"].sin().sum()


def params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(n, generator=g, dtype=torch.float64) for k, n in (("w", 3), ("b", 2), ("unused", 4))}


def total(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v.sum() for v in tree.values())


def test_autograd_grad_equals_torch_func_grad_to_second_order():
    p, x = params(), torch.linspace(-1, 1, 3, dtype=torch.float64)
    first = autograd_grad(f)(p, x)
    for k, v in torch.func.grad(f)(p, x).items():
        torch.testing.assert_close(first[k], v, rtol=1e-14, atol=0)
    assert not first["w"].requires_grad and torch.equal(first["unused"], torch.zeros(4, dtype=torch.float64))
    second = autograd_grad(lambda q: total(autograd_grad(f)(q, x)))(p)  # through the inner gradient's graph
    reference = torch.func.grad(lambda q: total(torch.func.grad(f)(q, x)))(p)
    for k, v in reference.items():
        torch.testing.assert_close(second[k], v, rtol=1e-14, atol=0)
    torch.testing.assert_close(second["w"], 6 * p["w"] * x)  # d/dw sum(3 w^2 x), by hand


def test_without_create_graph_the_inner_gradient_is_a_constant():
    """``create_graph=False`` (first-order MAML): the outer gradient does not see the inner one's dependence."""
    p, x = params(), torch.ones(3, dtype=torch.float64)
    out = autograd_grad(lambda q: total(autograd_grad(f, create_graph=False)(q, x)))(p)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in out.values())


def test_aux_is_returned_detached_and_grad_dispatches_on_transforms():
    p, x = params(), torch.ones(3, dtype=torch.float64)
    g, aux = autograd_grad(lambda q, x: (f(q, x), f(q, x) * 2), has_aux=True)(p, x)
    assert not aux.requires_grad and aux == 2 * f(p, x)
    batched = torch.func.vmap(lambda xi: grad(f)(p, xi)["w"])(torch.eye(3, dtype=torch.float64))  # torch.func inside
    torch.testing.assert_close(batched, torch.diag(3 * p["w"] ** 2))
    torch.testing.assert_close(grad(f)(p, x)["w"], g["w"])


# --------------------------------------------------------------------------- Members: the walk kept between calls
def _as_named(module):
    return [(n, id(p)) for n, p in module.named_parameters()], {n: id(b) for n, b in module.named_buffers()}


def _members_named(members):
    return [(n, id(p)) for n, p in members.parameters()], {n: id(b) for n, b in members.buffers().items()}


def test_members_follow_the_module_through_every_change():
    """Members gives what named_parameters / named_buffers give, after each way a module's members change: tied
    weights, a layer added, a parameter replaced, set to None or deleted, a submodule deleted, a buffer added."""
    from metagrad.functional import Members

    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    members = Members(model)
    changes = [
        lambda: None,
        lambda: setattr(model[2][1], "weight", model[2][0].weight),  # tied: listed once, under its first name
        lambda: model.append(nn.Linear(2, 1)),
        lambda: setattr(model[0], "weight", nn.Parameter(torch.ones(3, 2))),
        lambda: setattr(model[0], "bias", None),
        lambda: delattr(model[3], "bias"),
        lambda: delattr(model[2], "1"),
        lambda: model[1].register_buffer("extra", torch.zeros(1)),
        lambda: model[1].__dict__["_buffers"].pop("running_var"),  # no hook tells: seen by the table's size
    ]
    for change in changes:
        change()
        assert _members_named(members) == _as_named(model)
        assert _members_named(members) == _as_named(model)  # and from the kept walk


def test_meta_gradient_writes_into_grad_fields_of_any_dtype():
    """The foreach write into existing .grad fields casts as copy_ does, and a fresh field is a copy."""
    from metagrad.functional import write_grads

    p32, p64 = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, dtype=torch.float64))
    g = {"a": torch.full((3,), 2.0, dtype=torch.float64), "b": torch.full((2,), 3.0)}
    write_grads({"a": p32, "b": p64}, g)
    assert p32.grad.dtype == torch.float32 and p64.grad.dtype == torch.float64
    g["a"].fill_(5.0)
    assert float(p32.grad[0]) == 2.0  # not the same storage
    write_grads({"a": p32, "b": p64}, {"a": torch.ones(3), "b": torch.full((2,), 7.0)})
    assert p32.grad.tolist() == [1.0] * 3 and p64.grad.tolist() == [7.0] * 2
