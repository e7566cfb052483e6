"""The Trainer: the meta-training loop with validation, checkpoints, resume, logging, progress and signals.

A run is determined by its learner, task distribution, optimizer and seed: the task sampler draws from
one ``torch.Generator`` whose state is checkpointed with everything else, so a resumed run continues
the same trajectory as an uninterrupted one. Ctrl-C finishes the current iteration, saves and returns.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import checkpoint
from .algorithms import MetaLearner
from .distributed import Distributed
from .errors import CheckpointError, TrainingDiverged
from .tasks.base import TaskBatch, TaskDistribution

VAL_SEED_OFFSET = 1_000_003  # validation tasks come from their own stream, never the training one


@dataclass
class FitResult:
    """How a ``fit`` ended."""

    iteration: int
    seconds: float  # training time of the whole run, across resumes
    iterations_per_second: float  # of this session
    stopped: str  # "done", "time_budget" or "interrupted"
    best_val: float | None
    sampling_seconds: float  # of ``seconds``, the time spent sampling meta-batches (data loading)


class Trainer:
    """Meta-trains ``learner`` on ``tasks``.

    Args:
        optimizer / scheduler: the outer optimizer over ``learner.parameters()`` and its step-size schedule.
        run_dir: where ``last``/``best`` checkpoints and ``metrics.jsonl`` go (None: nothing written).
        config: saved in every checkpoint's sidecar (what ``metagrad eval`` rebuilds the learner from).
        validation: where validation tasks come from (default: ``tasks``; a held-out split for images).
        val_every / val_tasks: validate on fixed held-out tasks; the best is kept (highest query accuracy
            for classifiers, else lowest query loss).
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
                 time_budget: float = 0.0, progress: bool = True, distributed: Distributed | None = None,
                 on_iteration: Callable[[Trainer, int, dict[str, float]], None] | None = None):
        self.learner, self.tasks, self.optimizer, self.scheduler = learner, tasks, optimizer, scheduler
        self.iterations, self.meta_batch_size = iterations, meta_batch_size
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config or {}
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.validation = validation if validation is not None else tasks
        self.val_every, self.val_tasks = val_every, val_tasks
        self.time_budget, self.on_iteration = time_budget, on_iteration
        self.dist = distributed
        self.writes = distributed is None or distributed.is_main  # one process writes checkpoints and logs
        self.progress = progress and self.writes
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.elapsed = 0.0
        self.sampling = 0.0  # seconds spent sampling tasks, across resumes
        self.best_val: float | None = None
        self._val_batch: TaskBatch | None = None
        self._stop_requested = False

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "rng": self.generator.get_state()}

    def save(self, name: str) -> Path:
        assert self.run_dir is not None
        stem = self.run_dir / name
        if not self.writes:
            return stem
        checkpoint.save(stem, self.state(), {"iteration": self.iteration, "elapsed": self.elapsed,
                                             "sampling": self.sampling, "best_val": self.best_val,
                                             "config": self.config})
        return stem

    def restore(self, name: str = "last") -> None:
        """Continue from a checkpoint of this run directory."""
        assert self.run_dir is not None
        state, info = checkpoint.load(self.run_dir / name)
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"])
        self.iteration, self.elapsed, self.best_val = info["iteration"], info["elapsed"], info["best_val"]
        self.sampling = info.get("sampling", 0.0)
        self._truncate_metrics()

    def request_stop(self) -> None:
        """Stop after the current iteration, with a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> FitResult:
        """Train until ``iterations`` (or the time budget, or Ctrl-C); checkpoints on the way and at the end."""
        if self.run_dir is not None:
            has_last = checkpoint.exists(self.run_dir / "last")
            if resume and has_last:
                self.restore("last")
            elif has_last:
                it = checkpoint.read_info(self.run_dir / "last")["iteration"]
                raise CheckpointError(f"{self.run_dir} already holds a run (iteration {it}); pass --resume to "
                                      "continue it or choose another --out")
            if self.writes:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        start_iteration, session_start = self.iteration, time.perf_counter()
        stopped = "done"
        self._window: list[float] = []
        self._postfix: dict[str, str] = {}
        bar = tqdm(total=self.iterations, initial=self.iteration, disable=not self.progress, unit="it",
                   dynamic_ncols=True, mininterval=0.5, file=sys.stderr)
        with self._sigint_saves():
            while self.iteration < self.iterations:
                t0 = time.perf_counter()
                metrics = self.step()
                self.iteration += 1
                self.elapsed += time.perf_counter() - t0
                bar.update(1)
                self._bookkeeping(metrics, bar)
                if self.on_iteration is not None:
                    self.on_iteration(self, self.iteration, metrics)
                reason = self._stop_reason(session_start)
                if reason:
                    stopped = reason
                    break
        bar.close()
        if self.run_dir is not None and stopped != "done":
            self.save("last")
        done = self.iteration - start_iteration
        session = time.perf_counter() - session_start
        return FitResult(self.iteration, self.elapsed, done / session if session > 0 else 0.0, stopped,
                         self.best_val, self.sampling)

    def _bookkeeping(self, metrics: dict[str, float], bar: tqdm) -> None:
        """Logs, progress, validation and checkpoints due after this iteration."""
        self._window.append(metrics["meta_loss"])
        if self.iteration % self.log_every == 0 or self.iteration == self.iterations:
            mean = sum(self._window) / len(self._window)
            self._log({"iteration": self.iteration, "meta_loss": mean,
                       "outer_lr": self.optimizer.param_groups[0]["lr"], "elapsed": round(self.elapsed, 3)})
            self._postfix["meta_loss"] = f"{mean:.4f}"
            bar.set_postfix(self._postfix, refresh=False)
            self._window.clear()
        if self.val_every and self.iteration % self.val_every == 0 and self.writes:
            self._postfix["val"] = f"{self._validate():.4f}"
            bar.set_postfix(self._postfix, refresh=False)
        if self.run_dir is not None and (self.iteration % self.checkpoint_every == 0
                                         or self.iteration == self.iterations):
            self.save("last")

    def _stop_reason(self, session_start: float) -> str | None:
        """"interrupted" (Ctrl-C), "time_budget", or None; every process of a group agrees."""
        over_time = bool(self.time_budget) and time.perf_counter() - session_start > 60 * self.time_budget
        if self.dist is not None:
            self._stop_requested, over_time = (self.dist.any(self._stop_requested), self.dist.any(over_time))
        if self._stop_requested:
            return "interrupted"
        return "time_budget" if over_time else None

    def step(self) -> dict[str, float]:
        """One meta-iteration: sample a meta-batch, form the meta-gradient, take the outer step."""
        t0 = time.perf_counter()
        batch = self.tasks.sample(self.meta_batch_size, self.generator)
        self.sampling += time.perf_counter() - t0
        self.optimizer.zero_grad()
        if self.dist is None:
            metrics = self.learner.meta_gradient(batch, self.generator)
        else:
            shard = self.dist.shard(batch.num_tasks)
            metrics = self.learner.meta_gradient(batch, self.generator, shard=shard)
            weight = (shard.stop - shard.start) / batch.num_tasks
            self.dist.reduce_gradients(self.learner, weight)
            metrics = self.dist.reduce_metrics(metrics, weight)
        if not math.isfinite(metrics["meta_loss"]):
            last = f"; the last checkpoint is {self.run_dir / 'last'}" if self.run_dir else ""
            raise TrainingDiverged(
                f"meta-loss is {metrics['meta_loss']} at iteration {self.iteration + 1}: training diverged; "
                f"lower the outer step size (outer_lr, now {self.optimizer.param_groups[0]['lr']:g}) or the "
                f"inner step size{last}")
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    # ------------------------------------------------------------------ validation and logs
    def validation_metrics(self) -> dict[str, float]:
        """Mean query metrics after the training number of inner steps on fixed validation tasks."""
        if self._val_batch is None:
            gen = torch.Generator().manual_seed(self.seed + VAL_SEED_OFFSET)
            self._val_batch = self.validation.sample(self.val_tasks, gen)
        values = self.learner.adaptation_metrics(self._val_batch, self.learner.inner_steps)
        return {name: float(v[:, -1].mean()) for name, v in values.items()}

    def _validate(self) -> float:
        metrics = self.validation_metrics()
        maximize = "accuracy" in metrics
        val = metrics["accuracy"] if maximize else metrics["loss"]
        improved = self.best_val is None or (val > self.best_val if maximize else val < self.best_val)
        if improved:
            self.best_val = val
            if self.run_dir is not None:
                self.save("best")
        self._log({"iteration": self.iteration, **{f"val_{k}": v for k, v in metrics.items()}, "best": improved})
        return val

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is None or not self.writes:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
        path = self.run_dir / "metrics.jsonl" if self.run_dir and self.writes else None
        if path is None or not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines() if json.loads(ln)["iteration"] <= self.iteration]
        path.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------ Ctrl-C
    @contextlib.contextmanager
    def _sigint_saves(self) -> Iterator[None]:
        """While training, Ctrl-C asks the loop to stop after the current iteration (and save)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: object) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt  # a second Ctrl-C aborts at once
            self.request_stop()
            print("\nmetagrad: stopping after this iteration and saving (Ctrl-C again to abort)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
