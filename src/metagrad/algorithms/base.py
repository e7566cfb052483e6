"""The meta-learning engine shared by every algorithm.

A ``MetaLearner`` owns a model, its task loss and an inner-loop rule. It runs the inner loop as a pure
function of the meta-parameters, maps it over the tasks of a meta-batch (``torch.func.vmap``, or a
per-task loop that serves as the reference path), and writes the meta-gradient into ``.grad`` so that
any ``torch.optim`` optimizer takes the outer step. An algorithm only says how one task contributes:
``task_objective`` (differentiated here) or, for Reptile, the adapted weights of each task and how they combine
(``combine_tasks``: the step towards them is the meta-gradient).

Inner-loop variants (Reptile paper, sections 6 and 6.3): minibatches drawn by cycling through the support set or
anew for every step (``inner_sampling``), and an inner optimizer state that is fresh for every task or carried from
one task to the next across meta-iterations (``inner_state``, the paper's Adam; a buffer of the learner, so that it
is checkpointed). Algorithms add which data the final minibatch holds (``tail``) and, for Reptile, how the inner
steps' updates combine into the outer one.

Parameter subsets: a parameter with ``requires_grad=False`` is a constant (held with the buffers: never adapted, no
meta-gradient, its ``.grad`` stays None); ``adapt`` names the trainable parameters the inner loop adapts (ANIL: the
head), while the meta-gradient reaches every trainable parameter.
"""

from __future__ import annotations

import inspect
import math
import operator
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.utils._pytree import tree_map

from .. import checkpoint, losses
from ..batch import Split, TaskBatch, partition
from ..batching import (
    attention_fast_path,
    data_dependent_fault,
    explained_torch_errors,
    first_line,
    has_conv,
    has_torch_batchnorm,
    needs_math_attention,
    needs_slow_attention,
    torch_fault,
    twice_differentiable,
    vmap_fault,
)
from ..errors import ConfigError, MetagradError, NonFiniteMetaLoss, check_compiler, check_whole
from ..functional import (
    Members,
    Params,
    call,
    call_watching_buffers,
    copy_fault,
    detach,
    grad,
    in_task_thread,
    write_grads,
)
from ..inner import SGD, InnerRule
from ..seeds import global_stream_from
from ..threads import in_threads
from .checks import check_arguments, check_call, check_rule
from .subsets import adapt_prefixes, adapted_by
from .trajectory import CarriedState

# The compiled graph's kernels called from C++ rather than Python on the CPU: W1's compiled graph 0.39 vs 0.46 ms in a
# warm loop, the Python wrapper's ~100 tensor allocations and calls being a sixth of it (docs/speed.md).
CPU_COMPILE_OPTIONS = {"cpp_wrapper": True}
Meta = dict[str, Params]


_CHUNK = os.environ.get("METAGRAD_LOOP_CHUNK")
LOOP_CHUNK: int | None = int(_CHUNK) if _CHUNK else None  # tasks whose graphs the per-task loop holds at once


def loop_chunk() -> int:
    """Tasks the per-task loop differentiates at once: ``METAGRAD_LOOP_CHUNK``, else one per task thread (their
    memory adds up; with malloc keeping freed blocks it is as fast, measured) and 8 on a single thread (about 10%
    faster than one at a time there, for 2.7x the memory, on W2; ``task_chunk=1`` gives the peers' memory)."""
    if LOOP_CHUNK is not None:
        return LOOP_CHUNK
    return 1 if in_task_thread() else 8


def random_state(on_cpu: bool = True) -> list[Tensor]:
    """torch's global random streams (the CPU's, and the GPUs' when the model is on one): what a model that draws
    random numbers as it runs (dropout) moves."""
    return [torch.get_rng_state(), *([] if on_cpu or not torch.cuda.is_available() else torch.cuda.get_rng_state_all())]


def random_moved(before: list[Tensor], on_cpu: bool = True) -> bool:
    """Whether torch's random streams moved since ``before`` (``random_state``'s): something drew random numbers."""
    return not all(torch.equal(a, b) for a, b in zip(before, random_state(on_cpu), strict=True))


Layout = tuple[tuple[int, ...], tuple[bool, ...]]  # a model's module identities and training flags
CARRIED_IN_ONE_PROCESS = ("inner_state 'carried' runs the tasks of a meta-batch in order in one process; train it "
                          "without torchrun (or use inner_state 'fresh')")


def buffer_state(buffers: Params) -> dict[str, tuple[int, Tensor]]:
    """Each buffer's version counter and a copy of its values (kernels may write without moving the counter)."""
    return {name: (b._version, b.clone()) for name, b in buffers.items()}


def buffers_moved(before: dict[str, tuple[int, Tensor]], buffers: Params) -> list[str]:
    """The buffers written since ``before`` (``buffer_state``'s): what a model that updates its state as it runs
    (batch norm's running statistics, spectral norm's power iteration in training mode) changes."""
    return sorted(n for n, b in buffers.items() if b._version != before[n][0] or not torch.equal(b, before[n][1]))


def _takes_one_input(model: nn.Module) -> bool:
    """Whether ``model(x)`` binds to its forward's signature (a forward that needs a mask as well does not)."""
    try:
        inspect.signature(model.forward).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): assume it does
        return True
    return True


_LIBRARIES = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))


def raised_by_user_code(e: BaseException) -> traceback.FrameSummary | None:
    """Where ``e`` was raised when that was the user's own code (a model's forward that raises), not inside torch's
    layers or metagrad: its own error, which says more than a shape hint (a torch operation failing in the user's
    line is a RuntimeError, which the caller leaves to the shape and dtype hints)."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or frames[-1].filename.startswith(_LIBRARIES):
        return None
    return frames[-1]


def weighted_sum(parts: Iterable[tuple[float, Any]]) -> Any:
    """``sum_i w_i * out_i`` over ``(w_i, out_i)`` pairs, leaf-wise over trees of tensors (the mean over tasks of
    shards or chunks of tasks), summed as the pairs come: one running tree is held, not one per part."""
    total = None
    for w, out in parts:
        total = (tree_map(lambda x, w=w: w * x, out) if total is None
                 else tree_map(lambda t, x, w=w: t + w * x, total, out))
    return total


def _submodule(name: str, doc: str) -> property:
    """A property that reads the submodule ``name`` from nn.Module's table (an AttributeError where there is none, as
    nn.Module's ``__getattr__`` gives, so that ``hasattr`` and ``getattr(..., default)`` still work)."""

    def read(self: nn.Module) -> nn.Module:
        try:
            return self._modules[name]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    return property(read, doc=doc)


class MetaLearner(nn.Module):
    """Base class of MAML, Reptile and joint training: a model adapted to each task by an inner loop.

    Args:
        model: any ``nn.Module``; its parameters are the meta-learned initialization.
        loss_fn: ``loss(prediction, target) -> scalar`` for one task.
        inner: the inner-loop update rule (default: SGD with step size 0.01).
        inner_steps: inner steps during meta-training.
        inner_batch_size: examples per inner step, drawn without replacement from the support set
            (0, or at least the support set's size: the whole support set at every step, as MAML; Reptile uses
            minibatches).
        batching: ``vmap`` (tasks batched), ``loop`` (per-task reference path) or ``auto``.
        compile: run the meta-gradient through ``torch.compile`` (a one-off compilation of tens of seconds;
            several times faster for small models, e.g. the sinusoid MLP); ``True`` or one of torch.compile's
            modes, e.g. ``"reduce-overhead"`` (CUDA graphs: on a GPU, one launch for the whole meta-gradient).
        threads: threads that differentiate disjoint shards of the meta-batch at once, each running torch's
            kernels on its share of the cores (0: as many as torch's threads in the per-task loop on the CPU,
            where small convolutions use cores better one task per core than split across cores; else 1). A model
            that updates its buffers as it runs (batch norm's running statistics) stays on one thread: threads would
            race on them (``threads=0`` says so on stderr once, explicit threads raise ``ConfigError``).
        task_chunk: tasks differentiated at once, whose graphs are alive together: memory grows with it
            (0: all of them under vmap; in the per-task loop ``METAGRAD_LOOP_CHUNK``, else 1 per task thread
            and 8 on a single thread). Under vmap on a GPU, k trades speed for memory (the meta-batch runs k
            tasks at a time); the meta-gradient is the same up to the order of the sum. ``1`` with batching
            ``auto`` takes the per-task loop: the peers' memory (94 MB on W2 on a GPU) at 2.3x vmap's speed there.
        self_check: before the first batched (vmap) computation, check once that vmap gives this model's
            meta-gradient exactly (float64, two tasks, against the per-task loop): ``auto`` falls back to the loop
            with one line on stderr if not, ``vmap`` raises ``ConfigError`` naming the module (metagrad.batching).
        inner_sampling: how inner-loop minibatches are drawn from the support set: ``cycle`` (epochs of random
            permutations consumed in order, so that consecutive minibatches do not overlap until the data is used
            up) or ``replacement`` (every minibatch a random subset drawn anew: minibatches of one inner loop may
            overlap), as the Reptile paper's ``--replacement`` (section 6.3). Also used at evaluation.
        inner_state: ``fresh`` (the inner rule's state, e.g. Adam's moments, starts anew for every task) or
            ``carried`` (first-order learners with a stateful rule: one state runs on from task to task, the tasks of a
            meta-batch in order, across meta-iterations, as the Reptile paper's Adam; held in the ``carried``
            buffers, so that checkpoints keep it). Training then processes the tasks one after another on one
            thread (``batching`` and ``threads`` still apply to evaluation). Evaluation starts every task from the
            carried state and never changes it, as the paper's code backed up and restored the whole state around
            each test task.
        adapt: the parameters that the inner loop adapts, as parameter-name prefixes: a module's name (``"classifier"``
            adapts ``classifier.weight`` and ``classifier.bias``; ``"features.0"`` one block) or a parameter's full
            name. None: every trainable parameter. The others stay at their meta-learned values during adaptation
            (training and evaluation) but still receive the meta-gradient: ``adapt=["classifier"]`` is ANIL (Raghu et
            al. 2020), a context vector's name is CAVIA-style adaptation. With a learned step size
            (``SGD(learn=True)``) only the adapted parameters keep one (the rule is restricted to them). Reptile's
            direction ``initial - adapted`` is 0 for the parameters it does not adapt. A prefix that matches no
            parameter, or only frozen ones, is a ``ConfigError`` naming the model's modules, and so is an empty
            list (which would adapt nothing).

    Frozen parameters (``requires_grad=False``, e.g. ``model.features.requires_grad_(False)``, also after
    construction) are constants on every path: not adapted, no meta-gradient (their ``.grad`` stays None, so no
    ``torch.optim`` optimizer moves them) and no learned step size.
    """

    # what makes a run this algorithm (a resumed Trainer must match them; step sizes may change, logged)
    DEFINING: tuple[str, ...] = ("inner_steps", "inner_batch_size", "adapt_prefixes", "inner_sampling", "inner_state")

    def defining(self) -> dict[str, Any]:
        """The learner's settings that make a run this algorithm: ``DEFINING``, the inner rule's kind, whether it
        learns its step sizes (not the step sizes, which a resumed run may change)."""
        out = {name: getattr(self, name) for name in self.DEFINING}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}  # as JSON gives them back
        return {"learner": type(self).__name__, **out, "inner": type(self.inner).__name__,
                "learn_inner_lr": bool(getattr(self.inner, "learn", False))}

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] = losses.mse,
                 inner: InnerRule | None = None, inner_steps: int = 1, inner_batch_size: int = 0,
                 batching: str = "auto", compile: bool | str = False, threads: int = 0, task_chunk: int = 0,
                 self_check: bool = True, adapt: Sequence[str] | None = None, inner_sampling: str = "cycle",
                 inner_state: str = "fresh"):
        super().__init__()
        check_arguments(model, loss_fn, inner, inner_steps, inner_batch_size, batching, compile, threads, task_chunk,
                        inner_sampling, inner_state)
        self.model = model
        self.inner = inner if inner is not None else SGD(0.01)
        self.loss_fn = loss_fn
        self.inner_steps = inner_steps
        self.inner_batch_size = inner_batch_size
        self.batching = batching
        self.use_compile = bool(compile)
        self.compile_mode = compile if isinstance(compile, str) else "default"
        self.threads = threads
        self.task_chunk = task_chunk
        self.self_check = self_check
        self.vmap_verdict: str | None = None  # why ``auto`` does not batch this model (set by ``verify_batching``)
        self._checked = False
        self._inputs_checked = False  # see ``check_inputs``
        self._math_attention = False  # attention on torch's math kernel (set when a fused one lacks double backward)
        self._slow_attention = False  # attention's inference fast path off (set when it failed under torch.func)
        self._attention_probed = False  # a call has run through: attention_safe stops copying the buffers first
        self._thread_verdicts: dict[Layout, str | None] = {}  # see ``in_shards``
        self._structure = has_torch_batchnorm(model), has_conv(model)  # looked up outside any compiled region
        self._checked_for = self.model_layout()  # the layout the structure and checks are of (``verify_batching``)
        self._model_checked_at: object = None  # the walk of the model's members that check_model last passed
        self.metrics: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"loss": loss_fn}
        if loss_fn is losses.cross_entropy:  # a classifier: accuracy beside the loss (curves, the best checkpoint)
            self.metrics["accuracy"] = losses.accuracy
        self.adapt_prefixes = adapt_prefixes(model, adapt)
        trainable = self.trainable()
        adapted = {n: trainable[n] for n in self.adapted_names(trainable)}
        self.inner.shape(adapted)
        self.inner.restrict(adapted)
        self.inner_sampling = inner_sampling
        self.inner_state = inner_state
        self.carried: CarriedState | None = None
        if inner_state == "carried":
            trainable = self.trainable()
            adapted = self.adapted_names(trainable)
            start = self.inner.carry({n: trainable[n].detach() for n in adapted})
            if start is None:
                raise ConfigError(f"inner_state 'carried' needs an inner rule with a state to carry, such as Adam; "
                                  f"{type(self.inner).__name__} has none (use inner_state 'fresh')")
            self.carried = CarriedState(start, adapted)

    # the submodules, read from nn.Module's table by a property: nn.Module's __getattr__, which finds them otherwise,
    # costs 1.5 us a read on these machines, and a compiled W1 meta-gradient (half a ms) read them a dozen times
    model = _submodule("model", "The model whose initialization is meta-learned.")
    inner = _submodule("inner", "The inner-loop update rule.")

    def __getstate__(self) -> dict[str, Any]:
        """nn.Module's state without the compiled functions, which are bound to this learner: a deep copy used the
        original's (its inner rule, its parameters) and pickling failed on them; a copy compiles its own."""
        state = super().__getstate__()
        state.pop("_compiled", None)
        return state

    # ----------------------------------------------------------------- parameter subsets
    def members(self, module: nn.Module) -> Members:
        """``module``'s parameters and buffers, found without walking it at every call (``functional.Members``)."""
        cache = self.__dict__.setdefault("_members", {})
        found = cache.get(id(module))
        if found is None or found.module is not module:
            found = cache[id(module)] = Members(module)
        return found

    def trainable(self) -> dict[str, nn.Parameter]:
        """The model's parameters that are meta-learned (``requires_grad``); the others are constants."""
        return {n: p for n, p in self.members(self.model).parameters() if p.requires_grad}

    def adapts(self, name: str) -> bool:
        """Whether the inner loop adapts the (trainable) parameter ``name`` (see ``adapt``)."""
        return adapted_by(name, self.adapt_prefixes)

    def adapted_names(self, params: Iterable[str]) -> list[str]:
        """The names among ``params`` (trainable parameters) that the inner loop adapts."""
        return [n for n in params if self.adapts(n)]

    # ----------------------------------------------------------------- functional views
    def meta_params(self) -> Meta:
        """The meta-parameters as detached trees: the model's trainable parameters and the inner rule's (learned step
        sizes of the adapted parameters); frozen parameters are not meta-parameters (see ``buffers``)."""
        return self.functional_inputs()[0]

    def buffers(self) -> Params:
        """The constants of the model's functional call: its buffers and its frozen parameters."""
        return self.functional_inputs()[1]

    def functional_inputs(self, detached: bool = True) -> tuple[Meta, Params]:
        """``meta_params()`` and ``buffers()`` from one read of the model's members (a compiled W1 meta-gradient
        is half a millisecond: each read is a few percent of it); ``detached=False``: the model's parameters
        themselves, for a caller that computes under ``torch.no_grad``."""
        members = self.members(self.model)
        model: Params = {}
        frozen: Params = {}
        for n, p in members.parameters():
            (model if p.requires_grad else frozen)[n] = p.detach() if detached else p
        buffers = members.buffers()
        inner = self.inner.hyper(self.adapted_names(model))
        meta = {"model": model, "inner": {n: p.detach() for n, p in inner.items()} if detached else inner}
        return meta, {**buffers, **frozen} if frozen else buffers

    def fused_inputs(self, batch: TaskBatch) -> tuple[Meta, Params, Meta]:
        """``functional_inputs(detached=False)`` and the ``.grad`` fields (``grad_fields``) that ``fused_gradient``
        writes, the model checked against ``batch`` first (``verify_batching``). While the members (``members_key``)
        are the objects they were, the same dicts come back with no check (rebuilding them is a tenth of a compiled W1
        meta-gradient), and the same fields while they are the parameters' ``.grad`` (``zero_grad`` unsets them)."""
        key = self.members_key()
        cached = self.__dict__.get("_fused_inputs")
        hit = cached is not None and len(cached[0]) == len(key) and all(map(operator.is_, cached[0], key))
        if not (hit and self._checked):
            self.verify_batching(batch)  # before a miss rebuilds: a check of another layout drops the cache
        if not hit:
            cached = self.__dict__["_fused_inputs"] = [key, *self.functional_inputs(detached=False), None, []]
        _, meta, buffers, fields, written = cached
        if fields is None or any(p.grad is not g for p, g in written):
            parts = ("model", self.model), ("inner", self.inner)
            fields = {part: self.grad_fields(module, meta[part]) for part, module in parts}
            written = [(p, fields[part].get(n)) for part, module in parts for n, p in self.members(module).parameters()]
            cached[3:] = fields, written  # the others' None too: a .grad given to one of them is taken away again
        return meta, buffers, fields

    def members_key(self) -> list[Any]:
        """The model's and the inner rule's members (``Members.key``: names, modules and their training flags,
        parameters with their ``requires_grad`` flags, buffers) and the settings that choose among them: what
        ``fused_inputs`` are made of and what ``verify_batching`` depends on, compared by identity."""
        return [self.adapt_prefixes, getattr(self.inner, "learn", None), *self.members(self.model).key(),
                *self.members(self.inner).key()]

    @property
    def vmapped(self) -> bool:
        """``auto``: vmap, except for torch's batch norm (wrong under vmap), convolutions on the CPU, where
        the per-task loop is about twice as fast (vmap turns each convolution into a slower batched one), and
        models that failed the self-check (``verify_batching``), and ``task_chunk=1``: one task at a time, the
        per-task loop (autograd) is leaner and faster than vmap over one task (W2 on an H200: 94 vs 250 MB,
        472 vs 1098 ms; ``benchmarks/results/bench_cuda_memory_loop.md``)."""
        if self.batching != "auto":
            return self.batching == "vmap"
        if self.vmap_unsafe or self.task_chunk == 1:
            return False
        return not (self._structure[1] and self._on_cpu())  # convolutions

    @property
    def vmap_unsafe(self) -> bool:
        """Whether vmap is wrong or fails for this model, not merely slower: torch's batch norm, or a failed
        self-check (``verify_batching``)."""
        return self._structure[0] or self.vmap_verdict is not None

    def model_layout(self) -> Layout:
        """Which modules the model is made of and which are in training mode: what the batching checks depend on
        (a layer swapped in, or ``.train()`` / ``.eval()``, after a check invalidates it)."""
        return self.members(self.model).layout()

    def verify_batching(self, batch: TaskBatch) -> None:
        """Before the first batched computation, and again after the model's modules or modes change: check vmap
        against the per-task loop on this model (``self_check``); ``auto`` then keeps to the loop if they differ,
        an explicit ``vmap`` refuses. The model's structure (batch norm, convolutions) is looked up again too, and
        ``check_model`` runs again after any member was added or removed."""
        members = self.members(self.model)
        layout = members.layout()
        if members.slots is not self._model_checked_at:  # (a new walk: something registered or removed)
            self.check_model()
            self._model_checked_at = members.slots
        if layout != self._checked_for:
            self._checked_for, self._checked, self.vmap_verdict = layout, False, None
            self.__dict__.pop("_fused_inputs", None)  # its hits skip this check: they stood for the layout checked
            self._structure = has_torch_batchnorm(self.model), has_conv(self.model)
        if self._checked or not self.self_check or not self.vmapped:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            return  # nothing to compare on NaN or infinite parameters (the run reports its divergence itself)
        with explained_torch_errors():
            fault = data_dependent_fault(self.model) or vmap_fault(self, batch)
        self._checked = True
        if fault is None:
            return
        if self.batching == "vmap":
            raise ConfigError(f"batching 'vmap' is wrong for this model: {fault}; use batching 'auto' or 'loop' "
                              "(docs/compatibility.md)")
        self.vmap_verdict = fault
        print(f"metagrad: batching 'auto' takes the per-task loop for this model: {fault}", file=sys.stderr,
              flush=True)

    def check_model(self) -> None:
        """Refuse a model that this learner would compute wrongly (``MAML``: torch's weight norm at second order):
        at construction, and again when the model's members change (``verify_batching``)."""

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates through inner gradients (second derivatives of the model)."""
        return False

    def _on_cpu(self) -> bool:
        return all(p.device.type == "cpu" for p in self.model.parameters())

    def on_model_device(self, batch: TaskBatch, mb: Tensor | None) -> tuple[TaskBatch, Tensor | None]:
        """``batch`` and its minibatch indices on the model's device: tasks are sampled on the CPU (one random
        stream wherever the model runs) and a learner on a GPU takes them as they come."""
        param = self.members(self.model).first_parameter()
        if param is None or batch.device == param.device:
            return batch, mb
        if batch.device.type == "meta":
            raise TypeError("the TaskBatch holds meta tensors, which have no data; build it from real tensors")
        return batch.to(param.device), None if mb is None else mb.to(param.device)

    def explained(self, batch: TaskBatch, compute: Callable[[], Any]) -> Any:
        """``compute()``, the model checked against ``batch`` first on the learner's first batch (``check_inputs``)
        and again when torch fails later (a batch of another shape or dtype), so that the error names the input."""
        if not self._inputs_checked:
            self.check_inputs(batch)
        try:
            return compute()
        except (RuntimeError, IndexError) as e:
            if not isinstance(e, MetagradError | torch.OutOfMemoryError):
                self.check_inputs(batch)
            raise

    def check_inputs(self, batch: TaskBatch) -> None:
        """A ``ConfigError`` naming the shapes, dtypes and fix where the model cannot read one task's inputs (a dry
        run outside any transform, leaving the model's buffers and torch's random state as they were), or, with
        ``losses.cross_entropy``, where the labels do not index its outputs. Tensor reductions: not on every step."""
        name = type(self.model).__name__
        outs = [self._dry_run(x, split) for split, x in (("", batch.support.x), ("query ", batch.query.x))
                if x.shape[1]]  # the query set too: a model that reads the support may still not read it
        out = outs[0]
        if not isinstance(out, Tensor) and self.loss_fn in (losses.mse, losses.half_mse, losses.cross_entropy):
            raise ConfigError(f"the model ({name}) returns a {type(out).__name__}, not a tensor; "
                              f"losses.{self.loss_fn.__name__} compares one prediction tensor with the targets: "
                              "return the prediction alone (e.g. a wrapper whose forward returns output[0]), or give "
                              "a loss_fn that takes what the model returns")
        if self.loss_fn is losses.cross_entropy and isinstance(out, Tensor) and out.dim() > 0:
            for split, y in (("support", batch.support.y), ("query", batch.query.y)):
                if y.numel() and not y.is_floating_point() and not (0 <= int(y.min()) <= int(y.max()) < out.shape[-1]):
                    raise ConfigError(f"the {split} labels range over {int(y.min())}..{int(y.max())} but the model "
                                      f"({name}) has {out.shape[-1]} outputs; give labels 0..{out.shape[-1] - 1}, or "
                                      "a model with one output per class (ways)")
        self._check_loss(out, batch.support.y[0])
        self._inputs_checked = True

    def _check_loss(self, out: Any, y: Tensor) -> None:
        """``loss_fn`` on the model's output for one task gives one real number that depends on that output, else a
        ``ConfigError`` naming what it gave: a float or ``.item()`` failed in a traceback, a detached or constant
        loss gave meta-gradients of exactly 0, and cross-entropy on float targets read them as probabilities."""
        if not (isinstance(out, Tensor) and out.is_floating_point()):
            return  # a model returning something else: its own loss_fn reads it, or the checks before refused it
        if self.loss_fn is losses.cross_entropy and y.is_floating_point() and y.shape == out.shape:
            sums = y.sum(-1)
            if bool((y < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                raise ConfigError(f"losses.cross_entropy reads float targets as class probabilities, and these are "
                                  f"not (entries >= 0 summing to 1 over the last dimension; {y.dtype} of shape "
                                  f"{list(y.shape)}): integer class labels 0..ways-1 for classification, "
                                  "losses.mse for a regression task")
        probe = out.detach().clone().requires_grad_()
        try:
            with torch.enable_grad():
                loss = self.loss_fn(probe, y)
        except Exception as e:
            if getattr(self.loss_fn, "__module__", None) == losses.__name__:
                raise  # metagrad's own losses name the problem themselves
            raise ConfigError(f"loss_fn fails on the model's output (shape {list(out.shape)}, {out.dtype}) and one "
                              f"task's targets (shape {list(y.shape)}, {y.dtype}): {first_line(e)}") from None
        if not (isinstance(loss, Tensor) and loss.numel() == 1 and loss.is_floating_point()):
            if isinstance(loss, Tensor) and loss.is_floating_point():
                got = f"a tensor of shape {list(loss.shape)} (a reduction='none' loss? give the mean over the examples)"
            else:
                got = f"a tensor of dtype {loss.dtype}" if isinstance(loss, Tensor) else f"a {type(loss).__name__}"
            raise ConfigError(f"loss_fn must return one number per task, a real floating-point tensor (e.g. "
                              f"mg.losses.mse); it returned {got}")
        if not loss.requires_grad:
            raise ConfigError("loss_fn returns a value that does not depend on the model's output (detached, "
                              ".item(), or a constant), so every meta-gradient would be 0; return the tensor "
                              "computed from the prediction")

    def _dry_run(self, x: Tensor, split: str) -> Any:
        """The model's output on one task's inputs ``x`` (of the support or, ``split`` "query ", the query set), or
        a ``ConfigError`` naming their shape and dtype and the fix."""
        param = next(self.model.parameters(), None)
        meta, buffers = self.functional_inputs()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                out, replaced = call_watching_buffers(self.model, meta["model"], buffers, x[0])
        except Exception as e:
            if param is not None and x.is_floating_point() and x.dtype != param.dtype:
                raise ConfigError(f"the batch's inputs are {x.dtype} but the model's parameters {param.dtype} "
                                  f"({first_line(e)}); cast one to the other: batch.to({param.dtype}) or "
                                  f"learner.to({x.dtype})") from None
            if not isinstance(e, RuntimeError) and (where := raised_by_user_code(e)) is not None:
                raise ConfigError(f"the model ({type(self.model).__name__}) raised {first_line(e)} (in "
                                  f"{where.name}, {os.path.basename(where.filename)} line {where.lineno}) on one "
                                  f"task's {split}inputs, of shape {list(x.shape[1:])} and dtype {x.dtype}; "
                                  "metagrad calls model(x) on each task's examples [examples, features...]") from e
            if not _takes_one_input(self.model):
                fix = ("metagrad calls model(x) with one input per example batch; wrap a model that takes more "
                       "(a mask, keyword arguments) in a module whose forward takes x alone")
            elif not x.is_floating_point():
                fix = (f"integer inputs need a model that embeds them (nn.Embedding), else give floats, e.g. "
                       f"x.to({param.dtype if param is not None else torch.float32})")
            else:
                fix = f"give inputs of the size its first layer reads, or a model that reads {list(x.shape[2:])}"
            raise ConfigError(f"the model ({type(self.model).__name__}) cannot read one task's {split}inputs, of "
                              f"shape {list(x.shape[1:])} and dtype {x.dtype} ({first_line(e)}); {fix}") from None
        if replaced:
            raise ConfigError(f"the model ({type(self.model).__name__}) assigns new tensors to its buffers "
                              f"{', '.join(replaced)} as it runs (self.name = ...): metagrad runs it with "
                              "its buffers swapped in (torch.func.functional_call), which puts the old ones back after "
                              "each call, so the new values would be lost; update them in place (self.name.copy_(...), "
                              "kept on the per-task loop) or keep that state outside the model")
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The model at its meta-learned initialization."""
        return self.model(x)

    def save(self, path: str | Path) -> None:
        """Write the meta-parameters to ``path.safetensors`` (+ ``path.json``), atomically."""
        checkpoint.save_learner(path, self)

    def load(self, path: str | Path) -> MetaLearner:
        """Load meta-parameters saved by ``save`` or by the Trainer (``run_dir/last``, ``run_dir/best``); a file of
        another algorithm or shape is refused in one line and leaves this learner as it was. Values are copied into
        this learner's tensors, so they take its dtype and device (as ``load_state_dict``)."""
        return checkpoint.load_learner(path, self)

    # ----------------------------------------------------------------- the inner loop
    def loss_at(self, params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(call(self.model, params, buffers, x), y)

    def inner_loop(self, meta: Meta, buffers: Params, support: Split, steps: int, *,
                   inner: InnerRule | None = None, first_order: bool = False,
                   minibatches: Tensor | None = None, state: Any = None,
                   last: Split | None = None) -> Generator[Params, None, Any]:
        """Yield the parameters before and after each of ``steps`` inner updates on ``support``; the generator's
        return value is the rule's final state (``run_inner`` collects both).

        Differentiable with respect to ``meta`` unless ``first_order`` (then the inner gradients are
        treated as constants, so d(adapted)/d(initial) = I). Only the parameters that ``adapts`` are updated; the
        others enter the inner gradients as they are (differentiable: the meta-gradient reaches them through them).
        ``state``: the rule's state to start from (None: a fresh one). ``last``: the data of the final step instead
        of the support set (Reptile's separate tail); the steps before it use ``minibatches[0..steps-2]``.
        """
        rule = inner if inner is not None else self.inner
        params = meta["model"]
        adapted = {n: params[n] for n in self.adapted_names(params)}
        consts = self.constants(params, adapted, buffers)
        state = rule.init_state(adapted) if state is None else state
        yield params
        for s in range(steps):
            if not adapted:
                yield params
                continue
            x, y = support
            if last is not None and s == steps - 1:
                x, y = last
            elif minibatches is not None:
                x, y = x[minibatches[s]], y[minibatches[s]]
            grads = grad(self.loss_at, create_graph=not first_order)(adapted, consts, x, y)
            if first_order:
                grads = detach(grads)
            adapted, state = rule.step(adapted, grads, state, s, meta["inner"])
            params = {n: adapted.get(n, p) for n, p in params.items()} if len(adapted) < len(params) else adapted
            yield params
        return state

    @staticmethod
    def constants(params: Params, adapted: Params, buffers: Params) -> Params:
        """What an inner gradient holds fixed: the buffers (with the frozen parameters) and the parameters of
        ``params`` that are not ``adapted``."""
        if len(adapted) == len(params):
            return buffers
        return {**buffers, **{n: p for n, p in params.items() if n not in adapted}}

    def adapt(self, meta: Meta, buffers: Params, support: Split, steps: int | None = None, **kw: Any) -> Params:
        """Parameters after ``steps`` inner updates (default: ``inner_steps``)."""
        *_, last = self.inner_loop(meta, buffers, support, self.inner_steps if steps is None else steps, **kw)
        return last

    def minibatch_indices(self, num_tasks: int, support_size: int, steps: int, batch_size: int,
                          generator: torch.Generator | None) -> Tensor | None:
        """Indices ``[tasks, steps, batch]`` of each inner step's minibatch; ``None`` for full-batch steps.

        ``inner_sampling`` cycle: epochs of random permutations of the support set, consumed in order (as Reptile's
        inner loop; a minibatch may span two epochs). replacement: every minibatch a uniformly random subset of
        ``batch_size`` distinct examples, independent of the others (the Reptile code's ``random.sample``)."""
        if batch_size == 0 or batch_size >= support_size or steps == 0:
            return None
        if self.inner_sampling == "replacement":
            noise = torch.rand(num_tasks, steps, support_size, generator=generator)
            return noise.argsort(dim=-1)[..., :batch_size]
        epochs = -(-steps * batch_size // support_size)
        noise = torch.rand(num_tasks, epochs, support_size, generator=generator)
        order = noise.argsort(dim=-1).reshape(num_tasks, -1)[:, : steps * batch_size]
        return order.reshape(num_tasks, steps, batch_size)

    # ----------------------------------------------------------------- mapping over tasks
    def map_tasks(self, fn: Callable[..., Any], batch: TaskBatch, minibatches: Tensor | None = None) -> Any:
        """``fn(task, minibatches)`` for every task of ``batch``, stacked: under vmap or in a per-task loop."""
        if self.vmapped:
            if minibatches is None:
                return vmap(lambda t: fn(t, None), randomness="error")(batch)
            return vmap(fn, randomness="error")(batch, minibatches)
        outs = [fn(batch.task(i), None if minibatches is None else minibatches[i]) for i in range(batch.num_tasks)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)

    # ----------------------------------------------------------------- meta-gradients
    def task_objective(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None) -> Tensor:
        """The outer loss of one task, differentiated with respect to ``meta`` by ``meta_gradient``."""
        raise NotImplementedError

    @property
    def minibatch_steps(self) -> int:
        """Minibatches drawn from each task's support set in training: one per inner step (algorithms whose final
        minibatch is elsewhere or extra say so: MAML's shared tail, Reptile's separate tail)."""
        return self.inner_steps

    def training_minibatches(self, batch: TaskBatch, generator: torch.Generator | None) -> Tensor | None:
        """The minibatch indices ``[tasks, minibatch_steps, inner_batch_size]`` of a training meta-batch."""
        return self.minibatch_indices(batch.num_tasks, batch.support.x.shape[1], self.minibatch_steps,
                                      self.inner_batch_size, generator)

    def sharded(self, batch: TaskBatch, generator: torch.Generator | None,
                shard: slice | None) -> tuple[TaskBatch, Tensor | None]:
        """The inner-loop minibatch indices of the whole meta-batch (so every process draws the same random
        numbers), then this process's ``shard`` of tasks and indices (all of them when None)."""
        mb = self.training_minibatches(batch, generator)
        if shard is None:
            return batch, mb
        return batch.slice(shard.start, shard.stop), None if mb is None else mb[shard]

    def task_threads(self, num_tasks: int) -> int:
        """How many threads ``over_tasks`` uses for ``num_tasks`` tasks (see ``threads``)."""
        if self.use_compile:
            return 1
        if self.threads:
            return min(self.threads, num_tasks)
        if self.vmapped or not self._on_cpu():
            return 1
        return min(torch.get_num_threads(), num_tasks)

    def chunk_size(self, num_tasks: int) -> int:
        """Tasks differentiated at once (see ``task_chunk``); called in the thread that differentiates them."""
        if self.task_chunk:
            return self.task_chunk
        return num_tasks if self.vmapped else loop_chunk()

    def over_tasks(self, fn: Callable[..., Any], batch: TaskBatch, mb: Tensor | None) -> Any:
        """``fn(meta, buffers, batch, mb)``, a mean over tasks, computed on contiguous shards of the tasks by
        ``task_threads`` threads at once, each shard in chunks of ``chunk_size`` tasks, and combined with their
        weights (the same mean, summed in another order); ``fn`` compiled when the learner is."""
        self.verify_batching(batch)
        (meta, buffers), n = self.functional_inputs(), batch.num_tasks
        fn = self.compiled(fn)

        def shard(s: slice) -> Any:
            if (s.start, s.stop) == (0, n):
                return self.in_chunks(fn, meta, buffers, batch, mb)
            return self.in_chunks(fn, meta, buffers, batch.slice(s.start, s.stop), None if mb is None else mb[s])

        def run() -> Any:
            parts = self.in_shards(n, buffers, shard)
            return parts[0][1] if len(parts) == 1 else weighted_sum(((s.stop - s.start) / n, out) for s, out in parts)

        return self.attention_safe(run)

    def in_shards(self, n: int, buffers: Params, job: Callable[[slice], Any]) -> list[tuple[slice, Any]]:
        """``job`` on contiguous shards of ``n`` tasks, ``task_threads`` threads at once where that gives the
        one-thread result. Threads share the model's buffers: a model that updates them as it runs (batch norm's
        running statistics in training mode, a counter) would have them race, in an order that changes from run to
        run, and a model that draws random numbers (dropout in training mode) would draw them in a racing order. So
        the first call (per train/eval setting) runs on one thread and watches the buffers and torch's random
        stream; if either moved, ``threads=0`` keeps to one thread from then on (one line on stderr), explicit
        threads refuse."""
        threads = self.task_threads(n)
        whole = slice(0, n)
        if threads <= 1:
            return [(whole, job(whole))]
        key = self.model_layout()  # per module tree and train/eval setting
        if key not in self._thread_verdicts:
            fault = copy_fault(self.model)
            if fault is None:
                before = buffer_state(buffers)
                stream = random_state(self._on_cpu())
                out = job(whole)
                changed = buffers_moved(before, buffers)
                if changed:
                    fault = (f"it updates its buffers {', '.join(changed)} as it runs, and threads would race on "
                             "them (results changing from run to run)")
                elif random_moved(stream, self._on_cpu()):
                    fault = ("it draws random numbers as it runs (dropout in training mode, say), and threads would "
                             "draw them in an order that changes from run to run")
                self.thread_verdict(key, fault)
                return [(whole, out)]
            self.thread_verdict(key, fault)
        if self._thread_verdicts[key] is not None:
            return [(whole, job(whole))]
        shards = partition(n, threads)
        return list(zip(shards, in_threads([partial(job, s) for s in shards]), strict=True))

    def thread_verdict(self, key: Layout, fault: str | None) -> None:
        """Record whether task threads give this model's one-thread result (``fault``: why not)."""
        self._thread_verdicts[key] = fault
        if fault is None:
            return
        if self.threads > 1:
            raise ConfigError(f"threads {self.threads} cannot run this model: {fault}; set threads to 1 (or 0: "
                              "automatic)")
        print(f"metagrad: task threads off for this model: {fault}", file=sys.stderr, flush=True)

    def attention_safe(self, call: Callable[[], Any]) -> Any:
        """``call()``, run again once on a cure when torch's attention fails (the model's buffers first put back as
        they were before the failed pass): on the math kernel while second derivatives are taken, when a fused
        attention kernel lacks a double backward; with the inference fast path off, when ``nn.MultiheadAttention``
        or ``nn.TransformerEncoderLayer`` in eval mode took it under torch.func (which hides the gradient being taken
        from them) and it has no derivative. Other torch errors that a model's modules cause on these paths become a
        ``ConfigError`` that names the fix."""
        saved = [(b, b.clone()) for b in self.model.buffers()] if not self._attention_probed else []
        try:
            if not (self._math_attention or self._slow_attention):
                out = call()  # no context entered: a compiled W1 meta-gradient is half a millisecond, each 1-2 us
            else:
                with twice_differentiable(self.second_order and self._math_attention), \
                        attention_fast_path(not self._slow_attention):
                    out = call()
        except RuntimeError as e:  # also torch's NotImplementedError (a RuntimeError)
            if not self._slow_attention and needs_slow_attention(e):
                self._slow_attention = True
            elif not self._math_attention and self.second_order and needs_math_attention(e):
                self._math_attention = True
            else:
                if (fault := torch_fault(e)) is None:
                    raise
                raise ConfigError(fault) from e
            with torch.no_grad():  # the failed pass's forward passes moved them (batch norm's running statistics)
                for b, before in saved:
                    b.copy_(before)
            return self.attention_safe(call)
        if not self._attention_probed:  # (nn.Module's setattr costs microseconds)
            self._attention_probed = True  # fused kernels ran (or none was used): no more copies of the buffers
        return out

    def in_chunks(self, fn: Callable[..., Any], meta: Meta, buffers: Params, batch: TaskBatch,
                  mb: Tensor | None) -> Any:
        """``fn`` (a mean over tasks) on ``chunk_size`` tasks at a time, so only their graphs are alive at once."""
        n = batch.num_tasks
        k = self.chunk_size(n)
        if n <= k:
            return fn(meta, buffers, batch, mb)
        return weighted_sum(((min(n, i + k) - i) / n, fn(meta, buffers, batch.slice(i, i + k),
                                                         None if mb is None else mb[i:i + k]))
                            for i in range(0, n, k))  # a generator: each chunk's graph is freed before the next

    def meta_gradient(self, batch: TaskBatch, generator: torch.Generator | None = None,
                      shard: slice | None = None) -> dict[str, float]:
        """Compute the meta-gradient of ``batch`` (or of its tasks ``shard``) into ``.grad`` of the
        meta-parameters, averaged over those tasks, replacing what ``.grad`` held (one call is one meta-step's
        gradient: no ``zero_grad`` needed); return metrics. A NaN or infinite meta-loss is warned of
        (``NonFiniteMetaLoss``)."""
        metrics = self.checked_meta_gradient(batch, generator, shard)
        if not math.isfinite(metrics["meta_loss"]):
            warnings.warn(f"meta_loss is {metrics['meta_loss']}: the meta-gradient in .grad holds NaN or infinite "
                          "values, which an optimizer step would write into the parameters; lower the step sizes, "
                          "or look for a NaN in the data or the loss", NonFiniteMetaLoss, stacklevel=2)
        return metrics

    def checked_meta_gradient(self, batch: TaskBatch, generator: torch.Generator | None = None,
                              shard: slice | None = None) -> dict[str, float]:
        """``meta_gradient`` without the warning, for a caller that acts on a non-finite meta-loss itself (the
        Trainer stops with its own advice)."""
        check_call("meta_gradient", batch, generator)
        batch.check(support=self.inner_steps > 0)
        if self.carried is not None and shard is not None and (shard.start, shard.stop) != (0, batch.num_tasks):
            raise ConfigError(CARRIED_IN_ONE_PROCESS)
        batch, mb = self.on_model_device(*self.sharded(batch, generator, None if self.carried is not None else shard))
        return self.explained(batch, lambda: self.meta_gradient_of(batch, mb))

    def meta_gradient_of(self, batch: TaskBatch, mb: Tensor | None) -> dict[str, float]:
        """``meta_gradient`` of a checked batch on the model's device, with its minibatch indices ``mb``."""
        if self.carried is not None:
            grads, loss = self.carried_gradient(batch, mb)
        elif self.fuses_write(batch.num_tasks):
            return {"meta_loss": float(self.fused_gradient(batch, mb))}
        else:
            grads, loss = self.over_tasks(self.batch_gradient, batch, mb)
        self.write_meta_gradient(grads)
        return {"meta_loss": float(loss)}

    def fuses_write(self, num_tasks: int) -> bool:
        """Whether ``meta_gradient`` takes ``fused_gradient``: compiled in torch.compile's default mode (CUDA graphs
        would not capture a graph that writes into ``.grad``), all the tasks in one chunk."""
        return self.use_compile and self.compile_mode == "default" and self.chunk_size(num_tasks) >= num_tasks

    def fused_gradient(self, batch: TaskBatch, mb: Tensor | None) -> Tensor:
        """The meta-gradient computed and copied into the ``.grad`` fields by one compiled graph (``gradient_into``),
        its mean query loss returned: the copy made by the graph's kernels, not Python's (a compiled W1
        meta-gradient is half a millisecond, the Python write a tenth of it). Fields that do not exist start at 0."""
        # the parameters themselves, not detached copies (dynamo guards the same tensors faster than fresh ones),
        # with grad mode off: torch.func's transforms differentiate all the same, and the graph records no autograd
        meta, buffers, fields = self.fused_inputs(batch)
        with torch.set_grad_enabled(False):  # (torch.no_grad() costs twice as much)
            return self.attention_safe(lambda: self.compiled(self.gradient_into)(meta, buffers, batch, mb, fields))

    def grad_fields(self, module: nn.Module, tree: Params) -> Params:
        """The ``.grad`` fields of ``module``'s parameters named in ``tree``, zero-filled where there is none."""
        fields = {}
        for n, p in self.grad_targets(module, tree).items():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            fields[n] = p.grad
        return fields

    def grad_targets(self, module: nn.Module, tree: Params) -> dict[str, nn.Parameter]:
        """``module``'s parameters named in ``tree`` (what a meta-gradient writes); the others (a parameter frozen
        since an earlier meta-step, or the learned step size of one) lose the ``.grad`` that step wrote, which an
        optimizer would go on applying."""
        targets = {}
        for n, p in self.members(module).parameters():
            if n in tree:
                targets[n] = p
            elif p.grad is not None:
                p.grad = None
        return targets

    def gradient_into(self, meta: Meta, buffers: Params, batch: TaskBatch, mb: Tensor | None,
                      fields: Meta) -> Tensor:
        """``batch_gradient`` with the meta-gradient copied into ``fields`` (``grad_fields``) in the same graph; the
        mean query loss."""
        grads, loss = self.batch_gradient(meta, buffers, batch, mb)
        pairs = [(fields[part][n], g) for part, tree in grads.items() for n, g in tree.items()]
        if pairs:  # none when every parameter is frozen
            torch._foreach_copy_([f for f, _ in pairs], [g for _, g in pairs])
        return loss

    def carried_gradient(self, batch: TaskBatch, mb: Tensor | None) -> tuple[Meta, Tensor]:
        """``batch_gradient`` with the inner rule's state carried (``inner_state="carried"``): the tasks one after
        another in order, each inner loop starting from the state the previous one left, which is kept at the end.
        The tasks' contributions are stacked and combined as the per-task loop combines them."""
        meta, buffers = self.functional_inputs()
        state = self.start_state(self.inner)
        outs = []
        for i in range(batch.num_tasks):
            out, state = self.carried_task(meta, buffers, batch.task(i), None if mb is None else mb[i], state)
            outs.append(out)
        self.carried.store(state)
        return self.combine_tasks(meta, tree_map(lambda *xs: torch.stack(xs), *outs))

    def carried_task(self, meta: Meta, buffers: Params, task: TaskBatch, minibatches: Tensor | None,
                     state: Any) -> tuple[Any, Any]:
        """One task's contribution (what ``combine_tasks`` reads, stacked over tasks) with the inner loop started
        from ``state``, and the state it leaves: defined by the first-order learners that can carry a state."""
        raise ConfigError(f"{type(self).__name__} cannot carry its inner state across tasks; use inner_state 'fresh'")

    def combine_tasks(self, meta: Meta, outs: Any) -> tuple[Meta, Tensor]:
        """The meta-gradient and mean query loss from the stacked outputs of ``carried_task``."""
        raise NotImplementedError

    def start_state(self, rule: InnerRule) -> Any:
        """The state an evaluation's inner loop starts from: a copy-free view of the carried state when the
        learner carries one and ``rule`` is of its inner rule's kind (the step size may differ), else None (fresh).
        Inner rules update functionally, so evaluation never changes the carried state."""
        if self.carried is None or type(rule) is not type(self.inner):
            return None
        return self.carried.value(self.adapted_names(self.trainable()))

    def batch_gradient(self, meta: Meta, buffers: Params, batch: TaskBatch,
                       mb: Tensor | None) -> tuple[Meta, Tensor]:
        """The meta-gradient of the tasks of ``batch`` and their mean query loss, as a pure function of its inputs
        (what the self-check compares; ``compile=True`` compiles it inside ``gradient_into``): the outer loss
        differentiated here."""

        def objective(meta: Meta) -> tuple[Tensor, Tensor]:
            loss = self.map_tasks(lambda t, m: self.task_objective(meta, buffers, t, m), batch, mb).mean()
            return loss, loss

        outer = torch.func.grad if self.vmapped or self.use_compile else grad  # autograd in the loop: less memory
        return outer(objective, has_aux=True)(meta)

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` through ``torch.compile`` when the learner was built with ``compile=True`` (compiled once per
        function and input shapes), else ``fn`` itself. Shapes stay static: dynamo's cache is per function, so a
        second model in the process would otherwise recompile with symbolic shapes, where inductor fails on a 3-d
        convolution's backward (torch 2.13; docs/compatibility_matrix.md once showed it)."""
        if not self.use_compile:
            return fn
        cache = self.__dict__.setdefault("_compiled", {})
        if fn.__name__ not in cache:
            on_cpu = self._on_cpu()
            if on_cpu:
                check_compiler()
            if self.compile_mode == "default" and on_cpu:
                compiled = torch.compile(fn, dynamic=False, options=CPU_COMPILE_OPTIONS)
            else:
                compiled = torch.compile(fn, dynamic=False, mode=self.compile_mode)
            cache[fn.__name__] = _saying_graph_breaks(compiled)
        return cache[fn.__name__]

    def write_meta_gradient(self, grads: Meta) -> None:
        """Write ``grads`` into ``.grad`` of the meta-parameters it holds (frozen ones are left with None)."""
        for module, tree in ((self.model, grads["model"]), (self.inner, grads["inner"])):
            write_grads(self.grad_targets(module, tree), tree)

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, params: Params, buffers: Params, support_x: Tensor, query_x: Tensor,
                transductive: bool = True) -> Tensor:
        """Outputs on the query set. Transductive: the query set is one batch (its batch-norm statistics are
        shared, as in MAML's reported numbers). Non-transductive: each query example is passed with the
        support set alone (Reptile's setting), so its prediction does not depend on the other queries."""
        if transductive:
            return call(self.model, params, buffers, query_x)

        def one(q: Tensor) -> Tensor:
            return call(self.model, params, buffers, torch.cat([support_x, q[None]]))[-1]

        if self.vmap_unsafe or self.batching == "loop":  # loop: never checked under vmap (a GRU, dropout)
            return torch.stack([one(q) for q in query_x])
        return vmap(one)(query_x)

    def adaptation_metrics(self, batch: TaskBatch, steps: int, inner: InnerRule | None = None,
                           inner_batch_size: int = 0, generator: torch.Generator | None = None,
                           chunk: int | None = None, transductive: bool = True,
                           last_only: bool = False) -> dict[str, Tensor]:
        """Query metrics after 0..steps inner updates on each task's support set: ``{name: [tasks, steps+1]}``
        (``last_only``: after ``steps`` alone, ``[tasks, 1]``, skipping the predictions on the way). With a
        ``generator`` the metrics repeat, dropout's draws included, and torch's global generator is left as it was."""
        check_call("adaptation_metrics", batch, generator)
        check_whole("steps", steps, 0)
        check_whole("inner_batch_size", inner_batch_size, 0)
        check_rule(inner)
        batch.check(support=steps > 0)
        rule = inner if inner is not None else self.inner
        mb = self.minibatch_indices(batch.num_tasks, batch.support.x.shape[1], steps, inner_batch_size, generator)
        batch, mb = self.on_model_device(batch, mb)
        with global_stream_from(generator, batch.support.x.device):  # dropout's draws repeat with the generator
            return self.explained(batch, lambda: self.metrics_of(batch, steps, rule, mb, chunk, transductive,
                                                                        last_only))

    def metrics_of(self, batch: TaskBatch, steps: int, rule: InnerRule, mb: Tensor | None, chunk: int | None,
                   transductive: bool, last_only: bool = False) -> dict[str, Tensor]:
        """``adaptation_metrics`` of a checked batch on the model's device, with its minibatch indices ``mb``."""
        self.verify_batching(batch)
        meta, buffers = self.functional_inputs()
        buffers = {k: v.clone() for k, v in buffers.items()}  # evaluating leaves the learner as it was (running stats)
        start = self.start_state(rule)
        if chunk is None:  # tasks per vmap call: bounded so that image tasks do not exhaust memory
            per_task = batch.support.x[0].numel() + batch.query.x[0].numel() * (
                1 if transductive else batch.support.x.shape[1] + 1)
            chunk = int(min(256, max(1, 4e6 // per_task)))

        def one_task(task: TaskBatch, m: Tensor | None) -> Tensor:
            rows = []
            loop = self.inner_loop(meta, buffers, task.support, steps, inner=rule, minibatches=m, state=start)
            for step, params in enumerate(loop):
                if last_only and step < steps:
                    continue
                pred = self.predict(params, buffers, task.support.x, task.query.x, transductive)
                rows.append(torch.stack([fn(pred, task.query.y) for fn in self.metrics.values()]))
            return torch.stack(rows)

        def tasks_between(start: int, stop: int) -> list[Tensor]:
            return [self.map_tasks(one_task, batch.slice(i, min(i + chunk, stop)),
                                   None if mb is None else mb[i:min(i + chunk, stop)])
                    for i in range(start, stop, chunk)]

        parts = self.in_shards(batch.num_tasks, buffers, lambda s: tasks_between(s.start, s.stop))
        values = torch.cat([v for _, out in parts for v in out])
        return {name: values[..., i] for i, name in enumerate(self.metrics)}


def _saying_graph_breaks(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled``, which says after its first call where torch.compile broke its graph: the pieces between the
    breaks run eagerly, often slower than ``compile=False`` (a GRU's meta-gradient: 6.5x), which ran silently."""
    from torch._dynamo.utils import counters

    first = True

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal first
        if not first:
            return compiled(*args, **kwargs)
        before = dict(counters["graph_break"])
        out = compiled(*args, **kwargs)
        first = False
        new = {reason: n - before.get(reason, 0) for reason, n in counters["graph_break"].items()
               if n > before.get(reason, 0)}
        if new:
            reason = " ".join(next(iter(new)).split())[:160]
            print(f"metagrad: compile=True: torch.compile broke the meta-gradient's graph {sum(new.values())} time(s) "
                  f"(first: {reason}); the pieces between breaks run eagerly and may be slower than compile=False",
                  file=sys.stderr)
        return out

    return call
