"""The engine's argument checks: each wrong argument refused with its fix before anything is built or run."""

from __future__ import annotations

import torch
from torch import nn

from ..batch import TaskBatch
from ..batching import has_torch_batchnorm
from ..choices import BATCHING, COMPILE_MODES, INNER_SAMPLING, INNER_STATE
from ..errors import ConfigError, check_choice, check_flag, check_whole
from ..inner import Adam, InnerRule


def check_arguments(model: object, loss_fn: object, inner: object, inner_steps: int, inner_batch_size: int,
                    batching: str, compile: bool | str, threads: int, task_chunk: int, inner_sampling: str,
                    inner_state: str) -> None:
    """``MetaLearner``'s arguments, each refused with its fix before anything is built."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn {loss_fn!r} must be a function loss(prediction, target) -> scalar, e.g. "
                          "mg.losses.mse or mg.losses.cross_entropy")
    if isinstance(loss_fn, nn.Module) and (held := next(iter(loss_fn.named_parameters()), None)):
        raise ConfigError(f"loss_fn holds parameters ('{held[0]}'), which the meta-gradient does not reach: metagrad "
                          "meta-learns the model's; move them into the model (e.g. its output's log-variance)")
    check_rule(inner)
    if isinstance(inner, Adam) and any(p.is_complex() for p in model.parameters()):
        raise ConfigError("inner rule Adam on complex parameters: its second moments are real-valued only; use "
                          "mg.SGD, or real parameters (torch.view_as_real)")
    check_whole("inner_steps", inner_steps, 0)
    check_whole("inner_batch_size", inner_batch_size, 0, hint="0: whole support set")
    check_whole("threads", threads, 0, hint="0: automatic")
    check_whole("task_chunk", task_chunk, 0, hint="0: automatic")
    check_choice("batching", batching, BATCHING)
    if not isinstance(compile, str):
        check_flag("compile", compile)
    elif compile not in COMPILE_MODES:
        raise ConfigError(f"compile '{compile}' is not a torch.compile mode; choose true or one of "
                          f"{', '.join(COMPILE_MODES)}")
    if threads > 1 and compile:
        raise ConfigError(f"threads {threads} with compile: a compiled meta-gradient runs on one thread of "
                          "Python; set threads to 0 or 1, or compile false")
    check_choice("inner_sampling", inner_sampling, INNER_SAMPLING)
    check_choice("inner_state", inner_state, INNER_STATE)
    if batching == "vmap" and has_torch_batchnorm(model):
        raise ConfigError("batching 'vmap' with torch.nn.BatchNorm gives wrong second-order gradients; "
                          "use batching 'loop', or metagrad.models.TaskBatchNorm, which is exact under vmap")


def check_call(method: str, batch: object, generator: object) -> None:
    """``TypeError`` unless ``batch`` is a ``TaskBatch`` and ``generator`` a ``torch.Generator`` or None (O(1): every
    meta-gradient checks them)."""
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"{method} takes a TaskBatch(Split(support_x, support_y), Split(query_x, query_y)) of tensors "
                        f"[tasks, examples, ...] (tasks.sample(n, generator) makes one), not {type(batch).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator {generator!r} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) "
                        "or None")


def check_rule(inner: object) -> None:
    """``ConfigError`` unless ``inner`` is None or a metagrad inner rule."""
    if inner is not None and not isinstance(inner, InnerRule):
        raise ConfigError(f"inner must be a metagrad inner rule such as mg.SGD(0.01) or mg.Adam(0.001), not "
                          f"{inner!r} (torch.optim optimizers take the outer step)")
