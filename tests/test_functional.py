"""The engine's gradient: plain autograd outside function transforms, torch.func.grad inside; the same numbers."""

from __future__ import annotations

import torch

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
