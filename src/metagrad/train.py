"""The supervised Trainer: meta-training steps with validation on the shared run loop (``metagrad.loop``), which owns
checkpoints, resume, logging, progress and signals.

A run is determined by its learner, task distribution, optimizer and seed: the task sampler draws from one
``torch.Generator`` whose state is checkpointed with everything else, so a resumed run continues the same
trajectory as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import checkpoint
from .algorithms import MetaLearner
from .algorithms.base import CARRIED_IN_ONE_PROCESS
from .batch import TaskBatch
from .distributed import Distributed
from .errors import CheckpointError, ConfigError, TrainingDiverged, check_memory, check_whole
from .evaluate import held_out_tasks
from .loop import RunLoop, set_aside, set_base_lrs
from .seeds import VAL_SEED_OFFSET
from .settings import check_seed
from .tasks.base import TaskDistribution

DATA_COPIES = 4  # a meta-batch's data is held a few times over (sampled, batched, cast, in the graph)


@dataclass
class FitResult:
    """How a ``fit`` ended."""

    iteration: int
    seconds: float  # training time of the whole run, across resumes
    iterations_per_second: float  # of this session
    stopped: str  # "done", "time_budget" or "interrupted"
    best_val: float | None
    sampling_seconds: float  # of ``seconds``, the time spent sampling meta-batches (data loading)


@dataclass(frozen=True)
class Validation:
    """Validation adapted as the test is (rather than as training): ``shots`` support and ``query`` query examples per
    task (per class for images), ``steps`` steps on minibatches of ``inner_batch_size`` (0: the whole support set),
    step sizes ``lr`` (None: the training ones). Where training is an easier setting than the test (Reptile trains
    on 10 shots and tests on 1), validation as training saturates and picks its best checkpoint by noise."""

    shots: int
    query: int
    steps: int
    inner_batch_size: int = 0
    lr: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name, low in (("shots", 1), ("query", 1), ("steps", 0), ("inner_batch_size", 0)):
            check_whole(f"Validation {name}", getattr(self, name), low)
        if self.lr is None:
            return
        lrs = (self.lr,) if isinstance(self.lr, int | float) else self.lr  # one step size for every step
        if not (isinstance(lrs, tuple | list) and lrs and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in lrs)):
            raise ConfigError(f"Validation lr {self.lr!r} must be None (the training step sizes), a step size or a "
                              "tuple of them, each finite and >= 0, e.g. lr=0.01 or lr=(0.1, 0.05)")
        object.__setattr__(self, "lr", tuple(float(v) for v in lrs))


def check_parts(learner: object, tasks: object, optimizer: object, scheduler: object, validation: object) -> None:
    """``TypeError`` naming the argument that is not what the Trainer takes; ``ConfigError`` for a scheduler of
    another optimizer (its schedule would never reach the one that trains)."""
    if not isinstance(learner, MetaLearner):
        raise TypeError(f"learner must be a metagrad MetaLearner (e.g. mg.MAML(model)), not {type(learner).__name__}")
    for name, value in (("tasks", tasks), ("validation", validation)):
        if (value is not None or name == "tasks") and not callable(getattr(value, "sample", None)):
            raise TypeError(f"{name} must be a task distribution with sample(num_tasks, generator) (e.g. "
                            f"mg.tasks.Sinusoid()), not {type(value).__name__}; held_out_tasks(...) gives a fixed "
                            "TaskBatch for evaluation, not a distribution to train on")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer over the learner's parameters (e.g. "
                        f"torch.optim.Adam(learner.parameters(), 1e-3)), not {optimizer!r}")
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ConfigError("the scheduler was built on another optimizer, so its schedule would never change the one "
                          "that trains; build it on this one, e.g. StepLR(optimizer, ...)")


def check_optimizer(learner: MetaLearner, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer that holds none of the learner's trainable parameters (built from another model): it
    would take its steps elsewhere and the run would train nothing."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = [p for p in learner.parameters() if p.requires_grad]
    if trainable and not any(id(p) in held for p in trainable):
        raise ConfigError("the optimizer holds none of the learner's trainable parameters, so no step would change "
                          "them; build it from learner.parameters(), e.g. torch.optim.Adam(learner.parameters(), 1e-3)")
    rule = [n for n, p in learner.inner.named_parameters() if p.requires_grad and id(p) not in held]
    if rule:  # built from model.parameters(): the learned step sizes get gradients and never move
        raise ConfigError(f"the optimizer holds the model's parameters but not the inner rule's learned ones "
                          f"({', '.join(rule[:2])}{', ...' if len(rule) > 2 else ''}), so they would never be trained; "
                          "build it from learner.parameters(), e.g. torch.optim.Adam(learner.parameters(), 1e-3)")
    left = [n for n, p in learner.model.named_parameters() if p.requires_grad and id(p) not in held]
    if left:  # meta-gradients computed for parameters that never move: a slip, or meant as freezing
        warnings.warn(f"the optimizer holds only part of the model's trainable parameters: "
                      f"{', '.join(left[:3])}{', ...' if len(left) > 3 else ''} get meta-gradients but never move; "
                      "build it from learner.parameters(), or freeze those (requires_grad_(False)) if that is meant",
                      stacklevel=3)


def task_settings(tasks: TaskDistribution) -> dict[str, Any] | None:
    """A metagrad task distribution's settings (shots, query, ranges, ways...; not its data, fingerprinted apart),
    which a resumed run must share; None for a user's own class, whose attributes may be anything."""
    if not type(tasks).__module__.startswith("metagrad."):
        return None
    names = [f.name for f in dataclasses.fields(tasks)] if dataclasses.is_dataclass(tasks) else list(vars(tasks))
    plain = {n: getattr(tasks, n) for n in names if not n.startswith("_")
             and not isinstance(getattr(type(tasks), n, None), functools.cached_property)}
    return {n: list(v) if isinstance(v, tuple) else v for n, v in plain.items()
            if isinstance(v, (bool, int, float, str, tuple)) or v is None}


def _first_difference(key: str, saved: Any, mine: Any) -> tuple[str, Any, Any]:
    """The setting a resumed Trainer changed: ``key``, or its first differing entry (``learner first_order``)."""
    if isinstance(saved, dict) and isinstance(mine, dict):
        for name in [*saved, *(n for n in mine if n not in saved)]:
            if saved.get(name) != mine.get(name):
                return f"{key} {name}", saved.get(name), mine.get(name)
    return key, saved, mine


def check_sizes(learner: MetaLearner, tasks: TaskDistribution, meta_batch_size: int) -> None:
    """Refuse, before allocating, sizes that cannot fit in this machine's memory: a meta-batch's data, and the
    graph of a second-order inner loop, which keeps at least the adapted parameters and their gradient per step."""
    one = tasks.sample(1, torch.Generator().manual_seed(0))  # its own generator: the run's stream is untouched
    per_task = sum(t.numel() * t.element_size() for t in (*one.support, *one.query))
    check_memory(DATA_COPIES * per_task * meta_batch_size, f"meta_batch_size {meta_batch_size:,} "
                 f"({per_task:,} bytes of data per task)", "lower --meta-batch-size")
    if learner.second_order and not getattr(learner, "recompute", False):
        params = sum(p.numel() * p.element_size() for p in learner.parameters())
        check_memory(2 * params * learner.inner_steps, f"inner_steps {learner.inner_steps:,} through second "
                     f"derivatives (each step's graph keeps the adapted parameters and their gradient: 2 x {params:,} "
                     "bytes)", "lower inner_steps, or use first order or recompute=True")


class Trainer(RunLoop):
    """Meta-trains ``learner`` on ``tasks``.

    Args:
        optimizer / scheduler: the outer optimizer over ``learner.parameters()`` and its step-size schedule.
        run_dir: where ``last``/``best`` checkpoints and ``metrics.jsonl`` go (None: nothing written).
        config: saved in every checkpoint's sidecar (what ``metagrad eval`` rebuilds the learner from).
        validation: where validation tasks come from (default: ``tasks``; a held-out split for images).
        val_every / val_tasks: validate on fixed held-out tasks; the best is kept (highest query accuracy
            for classifiers, else lowest query loss).
        val_as: how validation adapts (a ``Validation``, e.g. the test's shots and steps); None: as training does
            (the task distribution's shots, the learner's inner steps, each on the whole support set).
        transductive: validation's batch-norm mode (models with per-task batch norm): the test's.
        time_budget: minutes after which the run stops with a checkpoint (0: none).
        distributed: shard each meta-batch over the processes of a ``torch.distributed`` group.
        on_iteration: called as ``on_iteration(trainer, iteration, metrics)`` after each iteration.
    """

    def __init__(self, learner: MetaLearner, tasks: TaskDistribution, optimizer: torch.optim.Optimizer, *,
                 iterations: int, meta_batch_size: int,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, seed: int = 0,
                 validation: TaskDistribution | None = None,
                 run_dir: str | Path | None = None, config: dict[str, Any] | None = None,
                 log_every: int = 100, checkpoint_every: int = 1000, val_every: int = 0, val_tasks: int = 100,
                 val_as: Validation | None = None, transductive: bool = True, time_budget: float = 0.0,
                 progress: bool = True,
                 distributed: Distributed | None = None,
                 on_iteration: Callable[[Trainer, int, dict[str, float]], None] | None = None):
        super().__init__(run_dir, iterations=iterations, time_budget=time_budget, checkpoint_every=checkpoint_every,
                         config=config, progress=progress, distributed=distributed, on_iteration=on_iteration)
        if distributed is not None and not learner._on_cpu():
            raise ConfigError("device cuda under torchrun is not supported: its processes would share one GPU; "
                              "train on one GPU in one process, or on the CPU under torchrun")
        for name, value, low in (("meta_batch_size", meta_batch_size, 1), ("log_every", log_every, 1),
                                 ("val_every", val_every, 0), ("val_tasks", val_tasks, 1)):
            check_whole(name, value, low)
        check_seed("seed", seed)
        check_parts(learner, tasks, optimizer, scheduler, validation)
        self.learner, self.tasks, self.optimizer, self.scheduler = learner, tasks, optimizer, scheduler
        self.meta_batch_size, self.seed = meta_batch_size, seed
        check_optimizer(learner, optimizer)
        check_sizes(learner, tasks, meta_batch_size)
        if distributed is not None:
            distributed.shard(meta_batch_size)  # too few tasks for the processes: refused before a file is written
            if getattr(learner, "carried", None) is not None:
                raise ConfigError(CARRIED_IN_ONE_PROCESS)
        self.log_every = log_every
        self.validation = validation if validation is not None else tasks
        if val_as is not None and not isinstance(val_as, Validation):
            raise TypeError(f"val_as must be a metagrad Validation (e.g. Validation(shots=1, query=15, steps=3)), not "
                            f"{type(val_as).__name__}")
        if val_as is not None and val_as.lr is not None:
            learner.inner.with_lr(val_as.lr)  # refused now (e.g. a learner that learns its step sizes), not mid-run
        self.val_every, self.val_tasks, self.val_as, self.transductive = val_every, val_tasks, val_as, transductive
        self.generator = torch.Generator().manual_seed(seed)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]  # the configured ones, kept when resuming
        self.sampling = 0.0  # seconds spent sampling tasks, across resumes
        self.best_val: float | None = None
        self._val_batch: TaskBatch | None = None
        self._window: list[float] = []
        self._postfix: dict[str, str] = {}

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The learner, optimizer and scheduler, the task stream's generator, and torch's global generator (what a
        model's own randomness, e.g. dropout, draws from): a resumed run continues bit for bit."""
        return {**checkpoint.training_state(self.learner, self.optimizer),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "rng": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": None if self.learner._on_cpu() else torch.cuda.get_rng_state(self._device())}

    def load_state(self, state: dict[str, Any]) -> None:
        checkpoint.restore_training(self.learner, self.optimizer, state, f"the checkpoint in {self.run_dir}")
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        set_base_lrs(self.optimizer, self.scheduler, self.base_lrs)
        self.generator.set_state(state["rng"])
        if state.get("torch_rng") is not None:  # checkpoints before it was kept lack it
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and not self.learner._on_cpu():
            torch.cuda.set_rng_state(state["cuda_rng"], self._device())

    def _device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def _computes_on_cpu(self) -> bool:
        return self.learner._on_cpu()

    def info(self) -> dict[str, Any]:
        """Counters, the meta-losses since the last log line (so that the first line after a resume averages
        the same iterations as an uninterrupted run's), and the settings a resumed run must share."""
        return {"sampling": self.sampling, "best_val": self.best_val, "loss_window": self._window,
                "trainer": self._settings(), "val_transductive": self.transductive, "data": self.data_fingerprints(),
                "val_as": self._val_as_record(), "layers": checkpoint.layers(self.learner),
                "step_sizes": self._step_sizes()}

    def data_fingerprints(self) -> dict[str, str]:
        """The training and validation images' fingerprints (image tasks; others have none), which a resumed run
        must share."""
        return {name: tasks.fingerprint for name, tasks in (("tasks", self.tasks), ("validation", self.validation))
                if isinstance(getattr(tasks, "fingerprint", None), str)}

    def _val_as_record(self) -> dict[str, Any] | None:
        """``val_as`` as a checkpoint's sidecar keeps it (JSON: tuples become lists)."""
        return json.loads(json.dumps(asdict(self.val_as))) if self.val_as else None

    def _validates_as(self, info: dict[str, Any]) -> bool:
        """Whether a checkpoint was validated as this session validates (batch-norm mode, ``val_as``): only then is
        its best a measure here."""
        return info.get("val_transductive", True) == self.transductive and info.get("val_as") == self._val_as_record()

    def _settings(self) -> dict[str, Any]:
        """What a resumed Trainer must share with the run: the meta-batch, seed and schedule, the learner's
        algorithm (``MetaLearner.defining``) and the task distribution's settings."""
        return {"meta_batch_size": self.meta_batch_size, "seed": self.seed,
                "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
                "learner": self.learner.defining(), "tasks": task_settings(self.tasks)}

    def _step_sizes(self) -> dict[str, Any]:
        """The step sizes a resumed run may change (recorded as ``resumed_with`` in metrics.jsonl)."""
        schedule = getattr(self.learner.inner, "schedule", None)
        inner = None if getattr(self.learner.inner, "learn", False) or schedule is None else list(schedule)
        return {"inner_lr": inner, "outer_lr": [float(lr) for lr in self.base_lrs]}

    def resume_changes(self, info: dict[str, Any]) -> dict[str, Any]:
        """A Trainer built otherwise than the run's (Python API: the command line checks the whole config) is
        refused: its meta-batch size, seed or schedule would continue the run as another one, silently."""
        checkpoint.check_layers(self.run_dir / "last", info.get("layers"), self.learner)
        saved, mine = dict(info.get("trainer") or {}), self._settings()
        if (saved.get("learner") or {}).get("learner") == "JointTraining":  # runs from before 2026-12-08 kept a
            saved["learner"] = {**saved["learner"], "inner_batch_size": 0}  # preset's minibatch it never used
        for key, value in saved.items():  # runs from before 2026-12-06 recorded no learner or tasks
            if mine.get(key) != value:
                what, theirs, ours = _first_difference(key, value, mine.get(key))
                raise CheckpointError(f"{self.run_dir} was trained with {what} {theirs!r}, this Trainer has {ours!r}; "
                                      "resume with the run's own, or give another run_dir")
        here = self.data_fingerprints()
        for key, value in (info.get("data") or {}).items():  # runs from before 2026-12-06 recorded none
            if key in here and here[key] != value:
                raise CheckpointError(f"{self.run_dir} was trained on other images than these (its {key} images' "
                                      f"fingerprint {value}, these {here[key]}): resume with the data it was trained "
                                      "on (--data-root), or start a new run (another --out)")
        steps = info.get("step_sizes") or {}
        return {k: v for k, v in self._step_sizes().items() if k in steps and steps[k] != v}

    def load_info(self, info: dict[str, Any]) -> None:
        self.best_val, self.sampling = info["best_val"], info.get("sampling", 0.0)
        if not self._validates_as(info):
            self.best_val = None  # validated otherwise (batch-norm mode, shots, steps): its best is no measure here
        self._window = list(info.get("loss_window", []))

    def remembers_best(self) -> bool:
        return self.best_val is not None

    def forget_best(self) -> None:
        self.best_val = None

    def before_training_on(self) -> None:
        """Keep a ``best`` validated otherwise than this session validates (another ``val_as`` or batch-norm mode) as
        ``best-before-<its iteration>`` (evaluations may have been made of it), so that the best tracked afresh does
        not overwrite it without a word; a name already taken is never overwritten."""
        best = self.run_dir / "best" if self.run_dir is not None else None
        if best is None or not self.writes or not self.val_every or not checkpoint.exists(best):
            return
        info = checkpoint.read_info(best)
        if self._validates_as(info):
            return
        aside = set_aside(best, f"best-before-{self.iteration}")
        self.forget_best()
        print(f"metagrad: {self.run_dir} now validates otherwise; its best so far (iteration {info['iteration']}) is "
              f"kept as {aside.name} (metagrad eval {self.run_dir} --checkpoint {aside.name}), and the best is tracked "
              "afresh", file=sys.stderr)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool | str = False, changes: dict[str, Any] | None = None) -> FitResult:
        """Train until ``iterations`` (or the time budget, or Ctrl-C); checkpoints on the way and at the end
        (``resume`` and ``changes``: see ``RunLoop.run``)."""
        stopped, start_iteration, session = self.run(resume, changes)
        done = self.iteration - start_iteration
        return FitResult(self.iteration, self.elapsed, done / session if session > 0 else 0.0, stopped,
                         self.best_val, self.sampling)

    def after_step(self, metrics: dict[str, float], seconds: float, bar: tqdm) -> None:
        """Logs, progress and validation due after this iteration."""
        bar.update(1)
        self._window.append(metrics["meta_loss"])
        if self.iteration % self.log_every == 0 or self.iteration == self.iterations:
            mean = sum(self._window) / len(self._window)
            self.log({"iteration": self.iteration, "meta_loss": mean, "outer_lr": metrics["outer_lr"],
                      "elapsed": round(self.elapsed, 3)})
            self._postfix["meta_loss"] = f"{mean:.4f}"
            bar.set_postfix(self._postfix, refresh=False)
            self._window.clear()
        if self.val_every and self.iteration % self.val_every == 0 and self.writes:
            self._postfix["val"] = f"{self._validate():.4f}"
            bar.set_postfix(self._postfix, refresh=False)

    def step(self) -> dict[str, float]:
        """One meta-iteration: sample a meta-batch, form the meta-gradient, take the outer step."""
        t0 = time.perf_counter()
        batch = self.tasks.sample(self.meta_batch_size, self.generator)
        self.sampling += time.perf_counter() - t0
        # no zero_grad: meta_gradient replaces the .grad fields, and a compiled one writes into the same tensors each
        # iteration (zero_grad's None had it allocate fresh ones; no faster measurably on W1, one thread)
        # (checked_meta_gradient: a non-finite meta-loss is stopped on below, with advice, not warned of)
        if self.dist is None:
            metrics = self.learner.checked_meta_gradient(batch, self.generator)
        else:
            shard = self.dist.shard(batch.num_tasks)
            metrics = self.learner.checked_meta_gradient(batch, self.generator, shard=shard)
            weight = (shard.stop - shard.start) / batch.num_tasks
            self.dist.reduce_gradients(self.learner, weight)
            metrics = self.dist.reduce_metrics(metrics, weight)
        if not math.isfinite(metrics["meta_loss"]):
            raise TrainingDiverged(f"meta-loss is {metrics['meta_loss']} at iteration {self.iteration + 1}: training "
                                   f"diverged; lower {self.step_sizes()}")
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]  # what steps
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            raise TrainingDiverged(
                f"the meta-gradient holds NaN or infinite values at iteration {self.iteration + 1} (meta-loss "
                f"{metrics['meta_loss']:.4g}); the parameters are left as they were: lower {self.step_sizes()}, or "
                "look for a non-differentiable point in the model or the inner rule")
        used = self.optimizer.param_groups[0]["lr"]  # this iteration's outer step size, before the schedule moves on
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return {**metrics, "outer_lr": used}

    def step_sizes(self, outer_lr: float | None = None) -> str:
        """The step sizes a divergence asks to lower, with their values (either may be the cause: a large outer step
        blows the parameters up a few iterations before the inner loop's gradients overflow)."""
        inner = self.learner.inner
        lr = self.optimizer.param_groups[0]["lr"] if outer_lr is None else outer_lr
        return (f"the outer step size (outer_lr, now {lr:g}) or the inner one "
                f"(inner_lr: {type(inner).__name__}({inner.extra_repr()}))")

    # ------------------------------------------------------------------ validation
    def validation_metrics(self) -> dict[str, float]:
        """Mean query metrics on fixed validation tasks, after the training number of inner steps or as ``val_as``
        says."""
        val, seed = self.val_as, self.seed + VAL_SEED_OFFSET
        if self._val_batch is None:  # from a generator of its own: the evaluation's below starts afresh every time,
            # so a resumed session's first validation draws what an uninterrupted run's later ones do
            self._val_batch = (held_out_tasks(self.validation, self.val_tasks, val.shots, seed, query=val.query)
                               if val else self.validation.sample(self.val_tasks, torch.Generator().manual_seed(seed)))
        gen = torch.Generator().manual_seed(seed)
        values = self.learner.adaptation_metrics(
            self._val_batch, val.steps if val else self.learner.inner_steps,
            inner=self.learner.inner.with_lr(val.lr) if val and val.lr else None,
            inner_batch_size=val.inner_batch_size if val else 0, generator=gen, transductive=self.transductive,
            last_only=True)
        return {name: float(v[:, -1].mean()) for name, v in values.items()}

    def _validate(self) -> float:
        metrics = self.validation_metrics()
        maximize = "accuracy" in metrics
        val = metrics["accuracy"] if maximize else metrics["loss"]
        improved = self.best_val is None or (val > self.best_val if maximize else val < self.best_val)
        if improved:
            self.best_val = val
            self.save("best")
        self.log({"iteration": self.iteration, **{f"val_{k}": v for k, v in metrics.items()}, "best": improved})
        return val
