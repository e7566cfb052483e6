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
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

Params = dict[str, Tensor]


def params_of(module: nn.Module) -> Params:
    """The module's parameters as a detached dict (the functional view of its current values)."""
    return {name: p.detach() for name, p in module.named_parameters()}


_worker = threading.local()


def use_private_shells() -> None:
    """Make ``call`` in this thread run a private copy of each module: ``functional_call`` swaps parameters on the
    module it is given, so threads that differentiate different tasks at once must not share one. Called at the
    start of each job of a task thread (``threads.in_threads``): a copy is made at the job's first call, so that it
    runs the model as it is then (a module swapped, a parameter removed, ``.eval()`` since the last job)."""
    _worker.shells = weakref.WeakKeyDictionary()


def in_task_thread() -> bool:
    """Whether this thread is one of the engine's task threads (``use_private_shells`` was called in it)."""
    return getattr(_worker, "shells", None) is not None


def _shell(model: nn.Module) -> nn.Module:
    shells = getattr(_worker, "shells", None)
    if shells is None:
        return model
    if model not in shells:
        shells[model] = shell_copy(model)
    return shells[model]


def shell_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that shares every tensor it holds (parameters, buffers, and tensors kept as plain
    attributes, e.g. legacy ``weight_norm``'s computed weight): no memory, only its own modules, hooks and
    attributes, references among them rebound to the copy (a deep copy: a shallow one left a hook bound to the
    original, or a cache shared between threads)."""
    tensors = itertools.chain(model.parameters(), model.buffers(),
                              (v for m in model.modules() for v in vars(m).values() if isinstance(v, Tensor)))
    return copy.deepcopy(model, {id(t): t for t in tensors})


def copy_fault(model: nn.Module) -> str | None:
    """Why task threads cannot run ``model`` (each runs a ``shell_copy`` of it), or None."""
    try:
        shell_copy(model)
    except Exception as e:  # any failure to copy: reported, the caller keeps to one thread
        return f"it cannot be copied for a task thread ({type(e).__name__}: {e})"
    return None


def call(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` with the given parameters and buffers instead of its own."""
    return apply(_shell(model), {**params, **buffers}, (x,))


def apply(module: nn.Module, tensors: Mapping[str, Tensor], args: tuple, kwargs: dict | None = None) -> Any:
    """``functional_call``, with a tensor tied between modules set in each of their slots (``tie_weights``) but a
    module registered under two names set once: torch's ``tie_weights`` swaps such a slot twice and restores the
    wrong value, leaving the user's model holding the swapped-in tensors in place of its Parameters (torch 2.13)."""
    return functional_call(module, tied(module, tensors), args, kwargs, strict=False, tie_weights=False)


def tied(module: nn.Module, tensors: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """``tensors`` (by the names ``named_parameters`` and ``named_buffers`` give) plus, for a tensor the module
    holds in the slots of two different submodules, its other slots' names with the same value."""
    names: dict[Tensor, list[str]] = {}
    for name, t in itertools.chain(module.named_parameters(remove_duplicate=False),
                                   module.named_buffers(remove_duplicate=False)):
        names.setdefault(t, []).append(name)
    out = None
    for group in names.values():
        given = next((n for n in group if n in tensors), None) if len(group) > 1 else None
        if given is None:
            continue
        owners = {id(_owner(module, given))}
        for other in group:
            if id(owner := _owner(module, other)) not in owners:
                owners.add(id(owner))
                out = dict(tensors) if out is None else out
                out[other] = tensors[given]
    return tensors if out is None else out


def _owner(module: nn.Module, name: str) -> nn.Module:
    return module.get_submodule(name.rpartition(".")[0])


def slot(module: nn.Module, name: str) -> Any:
    """What ``module`` holds under the dotted parameter or buffer ``name`` now (a swapped-in tensor during a call)."""
    return getattr(_owner(module, name), name.rpartition(".")[2])


def call_watching_buffers(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                          x: Tensor) -> tuple[Any, list[str]]:
    """``call`` on copies of ``buffers``, and the names of the buffers the forward replaced by new tensors
    (``self.name = ...``): ``functional_call`` puts the old ones back after each call, so such values are lost."""
    clones = {n: b.clone() for n, b in buffers.items()}
    replaced: list[str] = []
    watch = model.register_forward_hook(  # runs before functional_call puts the buffers back
        lambda module, args, out: replaced.extend(n for n, b in clones.items() if slot(module, n) is not b))
    try:
        out = call(model, params, clones, x)
    finally:
        watch.remove()
    return out, sorted(set(replaced))


def under_transform() -> bool:
    """Whether the caller runs inside a ``torch.func`` transform (vmap, grad) or is being compiled."""
    # is_compiling first: dynamo cannot trace get_interpreter_stack (a graph break that left compile=True eager)
    return torch.compiler.is_compiling() or bool(torch._C._functorch.get_interpreter_stack())


def autograd_grad(fn: Callable[..., Any], has_aux: bool = False, create_graph: bool = True) -> Callable[..., Any]:
    """``torch.func.grad(fn)`` (gradient with respect to the first argument, a tree of tensors) by plain autograd.

    For the per-task loop, outside function transforms: nested ``torch.func.grad`` kept 2.7x the memory of
    autograd's ``create_graph`` for one second-order MAML task (122 vs 45 MB, Omniglot Conv4, 5-way 1-shot).
    The result is differentiable (a graph is built) when grad mode is on, an input already requires grad and
    ``create_graph``; otherwise it is a plain tensor, as ``torch.func.grad``'s.
    """

    def grad_fn(tree: Any, *args: Any) -> Any:
        leaves, spec = tree_flatten(tree)
        differentiable = create_graph and torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
        with torch.enable_grad():
            inputs = [t if t.requires_grad else t.detach().requires_grad_() for t in leaves]
            out = fn(tree_unflatten(inputs, spec), *args)
            value, aux = out if has_aux else (out, None)
            grads = (torch.autograd.grad(value, inputs, create_graph=differentiable, allow_unused=True)
                     if value.requires_grad else [None] * len(inputs))  # a constant: zero gradients, as torch.func
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
        result = tree_unflatten(grads, spec)
        if not has_aux:
            return result
        return result, aux.detach() if isinstance(aux, Tensor) and not differentiable else aux

    return grad_fn


def grad(fn: Callable[..., Any], has_aux: bool = False, create_graph: bool = True) -> Callable[..., Any]:
    """The gradient of ``fn`` with respect to its first argument: ``torch.func.grad`` inside function transforms
    (vmap) and compilation, plain autograd outside (less memory: see ``autograd_grad``)."""
    if under_transform():
        return torch.func.grad(fn, has_aux=has_aux)
    return autograd_grad(fn, has_aux=has_aux, create_graph=create_graph)


def detach(tree: Mapping[str, Tensor]) -> Params:
    """Cut a tree from the autograd graph (first-order approximations)."""
    return {k: v.detach() for k, v in tree.items()}


def write_grads(module_params: Mapping[str, nn.Parameter], grads: Mapping[str, Tensor]) -> None:
    """Store ``grads`` in the ``.grad`` fields so that any ``torch.optim`` optimizer can take the step (the fields
    that exist are overwritten in one foreach copy)."""
    dst, src = [], []
    for name, p in module_params.items():
        g = grads[name]
        if g.requires_grad:
            g = g.detach()
        if p.grad is None:
            p.grad = g.to(p.dtype, copy=True)
        else:
            dst.append(p.grad)
            src.append(g)
    if dst:
        torch._foreach_copy_(dst, src)  # casts to each field's dtype


_registrations = [0]  # how many modules, parameters and buffers any module has registered, process-wide


def _count_registration(*_: Any) -> None:
    _registrations[0] += 1


nn.modules.module.register_module_module_registration_hook(_count_registration)
nn.modules.module.register_module_parameter_registration_hook(_count_registration)
nn.modules.module.register_module_buffer_registration_hook(_count_registration)


class Members:
    """A module's parameters and buffers, as ``named_parameters`` / ``named_buffers`` give them (same names, order
    and deduplication), read through where each lives (its owner's ``_parameters`` or ``_buffers`` and key).

    The walk over the submodules that finds them costs tens of microseconds, a tenth of a compiled small-model
    meta-gradient; it runs once, and again after any module, parameter or buffer is registered anywhere (torch's
    global registration hooks) or deleted from the module (seen as a table of a submodule changing size). Values
    are read at each call, so a member that is replaced (``module.weight = nn.Parameter(...)``, ``.to()``) is seen
    at once."""

    KINDS = ("_parameters", "_buffers")

    def __init__(self, module: nn.Module):
        self.module = module
        self.seen = -1
        self.slots: dict[str, list[tuple[str, dict[str, Any], str]]] = {}
        self.tables: list[dict[str, Any]] = []  # every submodule's tables, and their sizes when last walked
        self.sizes: list[int] = []
        self.owners: list[nn.Module] = []  # the module and its submodules, as last walked
        self.ids: tuple[int, ...] = ()  # their identities

    def _walk(self) -> None:
        owners = list(self.module.named_modules(remove_duplicate=False))
        self.owners = [owner for _, owner in owners]
        self.ids = tuple(map(id, self.owners))
        self.slots = {kind: [] for kind in self.KINDS}
        for kind, slots in self.slots.items():
            found: set[int] = set()
            for prefix, owner in owners:
                for key, value in getattr(owner, kind).items():
                    if value is not None and id(value) not in found:
                        found.add(id(value))
                        slots.append((f"{prefix}.{key}" if prefix else key, getattr(owner, kind), key))
        self.tables = [getattr(owner, t) for _, owner in owners for t in ("_modules", *self.KINDS)]
        self.sizes = list(map(len, self.tables))
        self.seen = _registrations[0]

    def _fresh(self) -> None:
        if self.seen != _registrations[0] or list(map(len, self.tables)) != self.sizes:
            self._walk()

    def _read(self, kind: str) -> list[tuple[str, Any]]:
        self._fresh()
        return [(name, v) for name, table, key in self.slots[kind] if (v := table[key]) is not None]

    def key(self) -> list[Any]:
        """The walk's slots (new at every walk: names, order and modules), every parameter, each followed by its
        ``requires_grad`` flag, then every buffer, then every module's training flag: what a cache of values derived
        from them (``MetaLearner.fused_inputs``, keyed by name, and the batching check it stands for) compares by
        identity."""
        self._fresh()
        out: list[Any] = [self.slots]
        for _, table, key in self.slots["_parameters"]:
            if (p := table[key]) is not None:
                out += (p, p.requires_grad)
        out += [b for _, table, key in self.slots["_buffers"] if (b := table[key]) is not None]
        out += [m.training for m in self.owners]
        return out

    def first_parameter(self) -> nn.Parameter | None:
        """``next(module.parameters(), None)``."""
        self._fresh()
        for _, table, key in self.slots["_parameters"]:
            if (p := table[key]) is not None:
                return p
        return None

    def layout(self) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """The identities of ``modules()``, in order, and their training flags."""
        self._fresh()
        return self.ids, tuple(m.training for m in self.owners)

    def modules(self) -> list[nn.Module]:
        """``list(module.modules())`` with repeats (``named_modules(remove_duplicate=False)``)."""
        self._fresh()
        return self.owners

    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``list(module.named_parameters())``."""
        return self._read("_parameters")

    def buffers(self) -> Params:
        """``dict(module.named_buffers())``."""
        return dict(self._read("_buffers"))
