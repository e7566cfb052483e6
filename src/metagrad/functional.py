"""Parameters as dicts of tensors, and the one place that calls a module functionally.

Every algorithm works on ``Params`` (name -> tensor) so that inner loops are pure functions that
``torch.func.grad`` and ``torch.func.vmap`` can transform; any ``torch.nn.Module`` works unchanged.
"""

from __future__ import annotations

import copy
import itertools
import threading
import weakref
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]


def params_of(module: nn.Module) -> Params:
    """The module's parameters as a detached dict (the functional view of its current values)."""
    return {name: p.detach() for name, p in module.named_parameters()}


def buffers_of(module: nn.Module) -> Params:
    """The module's buffers (e.g. batch-norm running statistics) as a dict."""
    return dict(module.named_buffers())


_worker = threading.local()


def use_private_shells() -> None:
    """Make ``call`` in this thread run a private copy of each module: ``functional_call`` swaps parameters on the
    module it is given, so threads that differentiate different tasks at once must not share one."""
    _worker.shells = weakref.WeakKeyDictionary()


def in_task_thread() -> bool:
    """Whether this thread is one of the engine's task threads (``use_private_shells`` was called in it)."""
    return getattr(_worker, "shells", None) is not None


def _shell(model: nn.Module) -> nn.Module:
    shells = getattr(_worker, "shells", None)
    if shells is None:
        return model
    if model not in shells:  # the copy shares the parameter and buffer tensors: no memory, only its own dicts
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        shells[model] = copy.deepcopy(model, shared)
    return shells[model]


def call(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` with the given parameters and buffers instead of its own."""
    return functional_call(_shell(model), ({**params, **buffers},), (x,), strict=False)


def tree_map(fn: Callable[..., Tensor], *trees: Mapping[str, Tensor]) -> Params:
    """Apply ``fn`` leaf-wise over dicts that share their keys."""
    return {k: fn(*(t[k] for t in trees)) for k in trees[0]}


def detach(tree: Mapping[str, Tensor]) -> Params:
    """Cut a tree from the autograd graph (first-order approximations)."""
    return {k: v.detach() for k, v in tree.items()}


def max_abs_diff(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Largest absolute difference between two trees with the same keys."""
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def write_grads(module_params: Mapping[str, nn.Parameter], grads: Mapping[str, Tensor]) -> None:
    """Store ``grads`` in the ``.grad`` fields so that any ``torch.optim`` optimizer can take the step."""
    for name, p in module_params.items():
        g = grads[name].detach().to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad.copy_(g)


def to_dtype(tree: Mapping[str, Tensor], dtype: torch.dtype) -> Params:
    """Cast floating-point leaves to ``dtype``."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tree.items()}
