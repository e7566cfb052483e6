"""Inner-loop update rules as pure functions of (params, grads, state).

A rule is an ``nn.Module`` so that meta-learned hyperparameters (Meta-SGD's per-parameter step sizes)
are ordinary parameters that the outer optimizer updates; ``step`` receives them functionally as
``hyper`` so that meta-gradients reach them. A rule updates the parameters it is given: the learner passes only
those that the inner loop adapts (``MetaLearner(adapt=...)``, trainable ones).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .errors import ConfigError, check_flag
from .functional import Params


def _key(name: str) -> str:
    """Parameter names contain dots, which ``nn.ParameterDict`` keys may not."""
    return name.replace(".", "__")


def schedule_used(lr: Sequence[float], steps: int) -> list[float]:
    """The step sizes ``steps`` inner steps take from schedule ``lr`` (its first ``steps``; all when none is taken),
    as results files and tables report them: a schedule longer than the steps lists values never used."""
    return list(lr[:steps] if steps else lr)


def step_sizes(lr: float | Sequence[float]) -> tuple[float, ...]:
    """The step sizes as a tuple of finite floats >= 0 (0 is allowed at test time: "do not fine-tune" is a
    candidate when tuning), else a ``ConfigError`` naming the value."""
    if isinstance(lr, numbers.Real) or (isinstance(lr, Tensor) and lr.dim() == 0):
        values = [lr]
    elif isinstance(lr, str | bytes) or not isinstance(lr, Iterable):
        raise ConfigError(f"inner_lr {lr!r} must be a number or a sequence of numbers, one per inner step "
                          "(e.g. 0.01 or [0.1, 0.02])")
    else:
        values = list(lr)
    if not values:
        raise ConfigError("inner_lr is empty; give a step size such as 0.01, or one per inner step")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real | Tensor):
            raise ConfigError(f"inner_lr {v!r} is not a number (e.g. 0.01)")
        if isinstance(v, Tensor) and v.requires_grad:
            raise ConfigError(f"inner_lr {float(v.detach()):g} is a tensor that requires grad, but the rule takes "
                              "its value once and never trains it; to meta-learn step sizes use learn=True (e.g. "
                              "mg.SGD(0.01, learn=True): the learner then holds them as parameters)")
        if not 0 <= float(v) < math.inf:
            raise ConfigError(f"inner_lr {float(v)} must be finite and not negative (e.g. 0.01)")
    return tuple(float(v) for v in values)


class InnerRule(nn.Module):
    """Interface of an inner-loop optimizer."""

    def init_state(self, params: Params) -> Any:
        """Optimizer state for a fresh adaptation (one per task)."""
        return None

    def carry(self, params: Params) -> Any:
        """The state at the start of training when it is carried from one inner loop to the next
        (``MetaLearner(inner_state="carried")``): what ``step`` continues across tasks (None: the rule has no state
        to carry). By default the fresh state."""
        return self.init_state(params)

    def step(self, params: Params, grads: Params, state: Any, step: int, hyper: Params) -> tuple[Params, Any]:
        """One update of ``params`` (the adapted parameters); ``hyper`` holds this rule's own parameters in
        functional form (those that are meta-learned: frozen ones may be missing and are then read from the rule)."""
        raise NotImplementedError

    def hyper(self, adapted: Collection[str]) -> Params:
        """This rule's meta-learned parameters that adapting the parameters ``adapted`` uses, frozen ones
        (``requires_grad=False``) left out: what the meta-gradient is taken with respect to (the learner detaches
        them)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def shape(self, adapted: Params) -> None:
        """Create the meta-learned hyperparameters that a rule built without the model's parameters leaves to the
        learner, shaped like the parameters ``adapted`` (called once by the learner, before ``restrict``)."""

    def restrict(self, adapted: Collection[str]) -> None:
        """Drop the meta-learned hyperparameters of parameters outside ``adapted`` (called once by the learner)."""

    def with_lr(self, lr: float | Sequence[float]) -> InnerRule:
        """The same rule with another (fixed) step-size schedule, e.g. a tuned one for evaluation."""
        raise NotImplementedError


class SGD(InnerRule):
    """Gradient descent with a fixed step size, a per-step schedule, or (``learn=True``) meta-learned step sizes as
    in Meta-SGD (the MAML paper's "step size may be meta-learned").

    A schedule shorter than the number of steps repeats its last value (e.g. ``[0.1, 0.05]``). With ``learn=True``
    every element of every parameter in ``params`` has its own step size, initialised from ``lr``: one for all steps
    when ``lr`` is one value (``lr.<name>`` shaped like the parameter), else one per inner step of the schedule
    (``lr.<name>`` of shape ``[len(lr), *parameter.shape]``; later steps use the last one). Without ``params`` the
    learner it is given to shapes them from the parameters its inner loop adapts (build the outer optimizer from
    the learner's parameters afterwards, as usual); such a rule serves one learner.
    """

    def __init__(self, lr: float | Sequence[float] = 0.01, learn: bool = False,
                 params: Params | nn.Module | None = None):
        super().__init__()
        check_flag("learn", learn)
        self.schedule = step_sizes(lr)
        self.learn = learn
        self.lr = nn.ParameterDict()
        self.pending = learn  # learned step sizes not shaped yet: from ``params``, or by the learner (``shape``)
        if learn and params is not None:
            if isinstance(params, nn.Module):
                params = dict(params.named_parameters())
            if not (isinstance(params, Mapping) and all(isinstance(n, str) and isinstance(p, Tensor)
                                                        for n, p in params.items())):
                raise ConfigError(f"params {type(params).__name__} must be the model, or its parameters by name "
                                  "(dict(model.named_parameters())), to shape the learned step sizes")
            self._make(params)
        self.shaped_by_learner = False

    def shape(self, adapted: Params) -> None:
        if self.shaped_by_learner:
            raise ConfigError("this SGD(learn=True) was shaped by another learner, whose step sizes it holds; give "
                              "each learner its own rule (copy.deepcopy(inner) before the first learner takes it)")
        if self.pending:
            self._make(adapted)
            self.shaped_by_learner = True
        elif self.learn:
            self._check_shapes(adapted)

    def _check_shapes(self, adapted: Params) -> None:
        """Step sizes built from ``params`` must have the adapted parameters' shapes (those of another model would
        fail inside torch at the first inner step, or broadcast silently)."""
        for name, p in adapted.items():
            lr = self.lr.get(_key(name))
            wanted = (len(self.schedule), *p.shape) if self.per_step else tuple(p.shape)
            if lr is not None and tuple(lr.shape) != wanted:
                raise ConfigError(f"the learned inner step sizes of '{name}' have shape {list(lr.shape)}, the "
                                  f"parameter {list(p.shape)}: SGD(learn=True, params=...) was built from another "
                                  "model's parameters; build it from this model's, or leave params out (the learner "
                                  "then shapes them)")

    def _make(self, adapted: Params) -> None:
        """The learned step sizes, one per element of each parameter in ``adapted``, initialised from the schedule."""
        keys = [_key(n) for n in adapted]
        if len(set(keys)) < len(keys):
            a, b = next((a, b) for a in adapted for b in adapted if a < b and _key(a) == _key(b))
            raise ConfigError(f"parameters '{a}' and '{b}' would share one learned step size (both are stored as "
                              f"'{_key(a)}'); rename one of them")
        self.lr.update({_key(n): nn.Parameter(self._initial(p.detach())) for n, p in adapted.items()})
        self.pending = False

    def _missing(self, name: str) -> ConfigError:
        if self.pending:
            return ConfigError(f"no learned inner step size for parameter '{name}': this SGD(learn=True) has not been "
                               "shaped yet; give it to a learner (mg.MAML(model, inner=...)) or build it with params=")
        return ConfigError(f"no learned inner step size for parameter '{name}'; build SGD(lr, learn=True, params=...) "
                           "from the parameters that the inner loop adapts")

    @property
    def per_step(self) -> bool:
        """Whether the learned step sizes have one slice per inner step (a schedule of several step sizes)."""
        return self.learn and len(self.schedule) > 1

    def _initial(self, p: Tensor) -> Tensor:
        """Real step sizes also for a complex parameter (a complex one would rotate its gradient once trained)."""
        if len(self.schedule) == 1:
            return torch.full_like(p, self.schedule[0], dtype=p.real.dtype)
        return torch.stack([torch.full_like(p, v, dtype=p.real.dtype) for v in self.schedule])

    def lr_at(self, step: int) -> float:
        return self.schedule[min(step, len(self.schedule) - 1)]

    def slot(self, step: int) -> int:
        """The index of the learned step sizes that inner step ``step`` uses (per-step ones)."""
        return min(step, len(self.schedule) - 1)

    def step_size(self, name: str, step: int, hyper: Params) -> Tensor | float:
        """The step size of parameter ``name`` at inner step ``step``: learned (from ``hyper``, or the rule's own
        value when it is frozen) or the schedule's."""
        if not self.learn:
            return self.lr_at(step)
        key = _key(name)
        lr = hyper.get("lr." + key)
        if lr is None:
            if key not in self.lr:
                raise self._missing(name)
            lr = self.lr[key].detach()
        return lr[self.slot(step)] if self.per_step else lr

    def step(self, params: Params, grads: Params, state: Any, step: int, hyper: Params) -> tuple[Params, Any]:
        if self.learn:
            return {n: p - self.step_size(n, step, hyper) * grads[n] for n, p in params.items()}, state
        lr = self.lr_at(step)
        return {n: p - lr * grads[n] for n, p in params.items()}, state

    def hyper(self, adapted: Collection[str]) -> Params:
        if not self.learn:
            return {}
        out = {}
        for n in adapted:
            key = _key(n)
            if key not in self.lr:
                raise self._missing(n)
            if self.lr[key].requires_grad:
                out["lr." + key] = self.lr[key]
        return out

    def restrict(self, adapted: Collection[str]) -> None:
        if not self.learn:
            return
        keep = {_key(n) for n in adapted}
        missing = sorted(n for n in adapted if _key(n) not in self.lr)
        if missing:
            raise ConfigError(f"no learned inner step size for the adapted parameter(s) {', '.join(missing)}; build "
                              "SGD(lr, learn=True, params=...) from the model's parameters")
        for key in [k for k in self.lr if k not in keep]:
            del self.lr[key]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Learned step sizes saved with another number of inner_lr values (one, or one per step) do not fit: say so
        in one line rather than as a size mismatch."""
        if self.learn:
            for key, lr in self.lr.items():
                saved = state_dict.get(f"{prefix}lr.{key}")
                if saved is None or saved.shape == lr.shape:
                    continue
                param_dim = lr.dim() - self.per_step  # the saved values were per step if they have one more dim
                count = saved.shape[0] if saved.dim() == param_dim + 1 else 1
                if count != len(self.schedule):
                    raise ConfigError(f"the learned inner step sizes were saved for {count} inner_lr value(s), this "
                                      f"learner has {len(self.schedule)}; keep inner_lr as it was trained (one value: "
                                      "one step size for all steps; several: one per step)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def with_lr(self, lr: float | Sequence[float]) -> SGD:
        if self.learn:
            raise ConfigError("this learner meta-learns its inner step sizes; do not override them at evaluation")
        return SGD(lr)

    def extra_repr(self) -> str:
        return f"lr={list(self.schedule)}, learn={self.learn}"


class AdamState(NamedTuple):
    """Adam's first and second moments, and the number of steps behind them when the state is carried across
    inner loops (None: a fresh state, whose steps are the inner loop's own step index)."""

    m: Params
    v: Params
    t: int | None = None


class Adam(InnerRule):
    """Adam for the inner loop; Reptile uses ``betas=(0, 0.999)``: beta1 = 0 is the Reptile paper's, 0.999 Adam's
    default (as its code leaves it).

    The state is fresh for every task (``init_state``), or carried across tasks and meta-iterations (``carry``, as
    the Reptile paper's code let its TensorFlow Adam run on): then the bias correction counts every step the moments
    have seen, while a per-step schedule of step sizes still follows the inner loop's own step index.
    """

    def __init__(self, lr: float | Sequence[float] = 0.001, betas: tuple[float, float] = (0.0, 0.999),
                 eps: float = 1e-8):
        super().__init__()
        self.schedule = step_sizes(lr)
        if not (isinstance(betas, Sequence) and len(betas) == 2 and all(isinstance(b, numbers.Real) for b in betas)
                and all(0 <= b < 1 for b in betas)):
            raise ConfigError(f"betas {betas!r} must be two numbers in [0, 1) (e.g. (0.0, 0.999): beta1 = 0 the "
                              "Reptile paper's, 0.999 Adam's default, as its code)")
        if not (isinstance(eps, numbers.Real) and 0 < eps < math.inf):
            raise ConfigError(f"eps {eps!r} must be a positive number (e.g. 1e-8): it keeps a step finite where a "
                              "gradient is 0")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def init_state(self, params: Params) -> AdamState:
        return AdamState({n: torch.zeros_like(p) for n, p in params.items()},
                         {n: torch.zeros_like(p) for n, p in params.items()})

    def carry(self, params: Params) -> AdamState:
        return self.init_state(params)._replace(t=0)

    def step(self, params: Params, grads: Params, state: Any, step: int, hyper: Params) -> tuple[Params, Any]:
        b1, b2 = self.betas
        m, v, done = state
        t = step + 1 if done is None else done + 1
        lr = self.schedule[min(step, len(self.schedule) - 1)]
        m = {n: b1 * m[n] + (1 - b1) * grads[n] for n in params}
        v = {n: b2 * v[n] + (1 - b2) * grads[n] * grads[n] for n in params}
        c1, c2 = 1 - b1**t, 1 - b2**t
        new = {n: p - lr * (m[n] / c1) / (_sqrt0(v[n] / c2) + self.eps) for n, p in params.items()}
        return new, AdamState(m, v, None if done is None else t)

    def with_lr(self, lr: float | Sequence[float]) -> Adam:
        return Adam(lr, self.betas, self.eps)

    def extra_repr(self) -> str:
        return f"lr={list(self.schedule)}, betas={self.betas}, eps={self.eps}"


def _sqrt0(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with derivative 0 at 0, not infinity: a gradient entry that is exactly 0 (a ReLU
    unit dead on a task's support set) made the second-order meta-gradient NaN (0 x inf)."""
    positive = x > 0
    return torch.where(positive, x, 1).sqrt() * positive


def make_inner(name: str, lr: float | Sequence[float], learn: bool = False, params: Params | None = None) -> InnerRule:
    """Build an inner rule by name: ``sgd`` or ``adam`` (Adam with beta1 = 0, as in Reptile)."""
    if name == "sgd":
        return SGD(lr, learn=learn, params=params)
    if name == "adam":
        if learn:
            raise ConfigError("learn_inner_lr works with inner_optimizer 'sgd' only")
        return Adam(lr)
    raise ConfigError(f"unknown inner_optimizer '{name}'; choose 'sgd' or 'adam'")
