"""What the Reptile paper's two studies of the inner loop on 5-shot 5-way Omniglot share (Nichol et al. 2018,
section 6.2 in ``reptile_gradients``, 6.3 in ``reptile_overlap``): the budget, the training tasks, one run, the
test accuracy, the process pool and the results files. Every run is a run directory under ``OUT`` (checkpoints: a
rerun resumes; ``jobs`` runs at once in processes of one thread)."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, files, losses, provenance
from ..algorithms import MetaLearner
from ..analysis.stats import mean_ci95
from ..batch import Split, TaskBatch
from ..build import build_learner, build_outer, build_tasks
from ..config import Config, load_config
from ..errors import CheckpointError, ConfigError, Interrupted, WorkerLost, check_whole
from ..evaluate import held_out_tasks
from ..experiment import STUDY_MARK, stop_when_interrupted, stored_config
from ..settings import check_seed
from ..tables import md_head
from ..tasks.fewshot import FewShotClassification
from ..train import Trainer

WAYS, TEST_SHOTS = 5, 5
DRAWINGS = 20  # drawings of an Omniglot character: the most a task can hold per class
BATCH = 25  # Table 5 / 6: inner batch (and test-time batch)


@dataclass(frozen=True)
class Budget:
    """How much of the paper's protocol a study runs."""

    iterations: int  # outer iterations of every run
    eval_tasks: int  # test tasks of every evaluation (the same tasks for every run)
    curve_points: int  # evaluations along each run of the gradient study (its learning curves)
    sweeps: dict[str, tuple[float, ...]] = field(default_factory=dict)  # overlap study: panel -> swept values
    seed: int = 0
FULL = Budget(iterations=40000, eval_tasks=1000, curve_points=20,
              sweeps={"4a": (2, 3, 4, 5, 6, 8), "4b": (5, 10, 15, 20, 25, 30, 40, 50, 100),
                      "4c": (0.1, 0.25, 0.5, 1.0, 2.0)})


class TrainingTasks:
    """Training tasks whose support set holds ``shots`` drawings per class (up to all 20 of an Omniglot character).

    The query set is one more drawing per class when one is left; with all 20 in the support set it repeats one of
    them per class. Reptile and shared-tail FOMAML train on the support set alone: the query set only feeds the
    logged loss (separate-tail runs use ``FewShotClassification`` itself, whose query set is the tail).
    """

    def __init__(self, images: Any, ways: int, shots: int, rotations: bool = True):
        self.whole = shots >= DRAWINGS
        self.base = FewShotClassification(images, ways, shots - 1 if self.whole else shots, 1, rotations=rotations)

    def __str__(self) -> str:
        shots = self.base.shots + self.whole
        return (f"{shots} drawings per class in the support set" + (", the query set one of them" if self.whole else
                                                                     ", one more in the query set"))

    def sample(self, num_tasks: int, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        batch = self.base.sample(num_tasks, generator)
        if not self.whole:
            return batch
        support = Split(torch.cat([batch.support.x, batch.query.x], 1), torch.cat([batch.support.y, batch.query.y], 1))
        return TaskBatch(support, batch.query)


def base_config(data_root: str | None, budget: Budget, download: bool = False) -> Config:
    """What every run of both studies shares: 5-way Omniglot with Conv4, the paper's test protocol (5-shot tasks,
    minibatches of 25, non-transductive), one task per outer step, plain outer SGD annealed linearly to 0."""
    return load_config("omniglot-reptile").replace(
        data_root=data_root or "", download=download, ways=WAYS, meta_batch_size=1, outer_optimizer="sgd",
        outer_lr_schedule="linear",
        iterations=budget.iterations, seed=budget.seed, val_every=0, log_every=max(1, budget.iterations // 20),
        checkpoint_every=max(1, budget.iterations // 10), eval_shots=(TEST_SHOTS,), eval_query=1,
        eval_inner_batch_size=BATCH, eval_tasks=budget.eval_tasks, transductive=False)


def train_run(cfg: Config, tasks: Any, run_dir: Path, progress: bool, study: str,
              on_iteration: Callable[[Trainer, int], None] | None = None, time_budget: float = 0.0) -> Trainer:
    """Meta-train ``cfg`` on the training tasks ``tasks`` into ``run_dir``, continuing it if it has a checkpoint
    (which must come from the same config); stop with a checkpoint after ``time_budget`` minutes (0: no limit).
    The run directory is marked as the study's (``experiment.STUDY_MARK``): ``metagrad train --resume`` refuses it,
    since it would rebuild the tasks from the config (which cannot say that a support set holds all 20 drawings) and
    leave the study's tests and curves behind."""
    finished = False
    if checkpoint.exists(run_dir / "last"):
        info = checkpoint.read_info(run_dir / "last")
        changed = cfg.resume_differences(stored_config(info["config"]))
        if changed:
            raise CheckpointError(f"{run_dir} was trained with another config (differs in: {', '.join(changed)}); "
                                  "choose another output folder")
        finished = info["iteration"] >= cfg.iterations
    run_dir.mkdir(parents=True, exist_ok=True)
    what = str(tasks) if isinstance(tasks, TrainingTasks) else (f"{cfg.shots} drawings per class in the support set, "
                                                               f"{cfg.query} in the query set")
    command = provenance.command() or f"metagrad reproduce {study} with the options and --out that made it"
    if not finished:  # a finished run keeps the mark of the command that trained it
        files.write_json(run_dir / STUDY_MARK, {"study": study, "tasks": what, "command": command})
    learner = build_learner(cfg)
    opt, sched = build_outer(cfg, learner)
    stop = WORKER.get("stop")  # set by the pool's main process when a signal stopped it, or once it is gone

    def after(trainer: Trainer, iteration: int, _metrics: dict[str, float]) -> None:
        if on_iteration is not None:
            on_iteration(trainer, iteration)
        if stop is not None and stop.value:
            trainer.request_stop()  # after this iteration, with a checkpoint, as on a signal of its own

    trainer = Trainer(learner, tasks, opt, scheduler=sched, iterations=cfg.iterations,
                      meta_batch_size=cfg.meta_batch_size, seed=cfg.seed, run_dir=run_dir, config=cfg.to_sections(),
                      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, val_every=0,
                      progress=progress, on_iteration=after, time_budget=time_budget)
    return stop_when_interrupted(lambda: (trainer, trainer.fit(resume="auto")), run_dir)[0]


@torch.no_grad()
def test_accuracy(learner: MetaLearner, cfg: Config, batch: TaskBatch) -> tuple[float, float]:
    """Mean test accuracy after ``cfg.eval_steps`` inner steps on each task's support set (minibatches of
    ``eval_inner_batch_size``, from the carried inner state when the learner carries one), and its 95% half-width.

    The same adaptation as ``MetaLearner.adaptation_metrics``, but only the final parameters are tested: the curve
    over every step costs several times more at 50 steps in the non-transductive mode."""
    meta, buffers = learner.functional_inputs()
    start = learner.start_state(learner.inner)
    mb = learner.minibatch_indices(batch.num_tasks, batch.support.x.shape[1], cfg.eval_steps,
                                   cfg.eval_inner_batch_size, torch.Generator().manual_seed(cfg.eval_seed))
    correct = []
    for i in range(batch.num_tasks):
        task = batch.task(i)
        params = learner.adapt(meta, buffers, task.support, cfg.eval_steps, state=start,
                               minibatches=None if mb is None else mb[i])
        pred = learner.predict(params, buffers, task.support.x, task.query.x, cfg.transductive)
        correct.append(losses.accuracy(pred, task.query.y))
    mean, half = mean_ci95(torch.stack(correct))
    return float(mean), float(half)


def test_tasks(cfg: Config) -> TaskBatch:
    """The fixed 5-shot test tasks that every run of a study is tested on."""
    return held_out_tasks(build_tasks(cfg.replace(shots=TEST_SHOTS, query=1), "test"), cfg.eval_tasks, TEST_SHOTS,
                          cfg.eval_seed, query=cfg.eval_query)
# --------------------------------------------------------------------------- helpers
WORKER: dict[str, Any] = {}  # a study's training images and test tasks, once per process


def load_data(base: Config, threads: int | None = None, stop: Any = None, parent: int | None = None) -> None:
    """Load the training images and the fixed test tasks into ``WORKER`` (a process pool's initializer); ``stop``:
    the pool's shared flag that tells its workers to stop their runs and start no other; ``parent``: the pool's
    process, watched from the start."""
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(stop, parent), daemon=True).start()
    if threads is not None:
        torch.set_num_threads(threads)
    WORKER["images"] = build_tasks(base, "train").images
    WORKER["tests"] = test_tasks(base)
    WORKER["stop"] = stop


def _watch_parent(stop: Any, parent: int) -> None:
    """A pool worker's watch: once the study's main process is gone (kill -9), the run under way stops after its
    iteration with a checkpoint (``stop``), and the worker ends instead of training on, an orphan, for hours."""
    while os.getppid() == parent:
        time.sleep(1)
    stop.value = 1
    while WORKER.get("busy"):  # the run's last iteration and its save
        time.sleep(0.05)
    os._exit(1)


def deadline_for(time_budget: float) -> float | None:
    """``time.time()`` at which a study with ``time_budget`` minutes stops (None: no limit)."""
    if not time_budget >= 0:
        raise ConfigError(f"time_budget {time_budget} must be >= 0 minutes (0: no limit)")
    return time.time() + 60 * time_budget if time_budget else None


def minutes_left(deadline: float | None) -> float | None:
    return None if deadline is None else (deadline - time.time()) / 60


def _call(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    """One run in a pool's worker; once any run is interrupted or fails, the others that had not started do not."""
    fn, args = job
    stop = WORKER.get("stop")
    WORKER["busy"] = True  # (before the check: the parent's watch never ends a run it let start)
    try:
        if stop is not None and stop.value:
            raise Interrupted("another run of the study stopped first")
        return fn(*args)
    except BaseException:
        if stop is not None:
            stop.value = 1
        raise
    finally:
        WORKER["busy"] = False


def map_runs(fn: Callable[..., Any], work: list[tuple[Any, ...]], base: Config, jobs: int) -> list[Any]:
    """``fn(*args)`` for every ``args`` in ``work``, in order: here, or ``jobs`` at a time in fresh processes of
    one thread each (the runs are independent; each keeps its own checkpoints). A stop reaches every run under way,
    whether the signal came to every process (a terminal's Ctrl-C) or to this one alone (``kill``, ``docker stop``)
    or this one was killed: each stops after its iteration with a checkpoint, no other starts, and the first error
    is raised here."""
    if jobs < 1:
        raise ConfigError(f"jobs {jobs} must be >= 1")
    if jobs == 1:
        load_data(base)
        return [fn(*args) for args in work]
    # here first (fetched once, if asked): a missing or wrong data folder is one line, not a pool broken in its
    # workers' start-up and taken for a lost process
    load_data(base)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.RawValue("b", 0)  # (no lock: a worker killed holding one would hang the others)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=load_data,
                               initargs=(base, 1, stop, os.getpid()))
    try:
        futures = [pool.submit(_call, (fn, args)) for args in work]
        pool.submit(int)  # a wake-up after the last spawn: CPython 3.11's pool missed a worker killed before the next
        wait(futures, return_when=FIRST_EXCEPTION)
        stop.value = 1  # all done, or one failed: the others stop (a broken pool's SIGTERM may be ignored)
    except BaseException:
        stop.value = 1
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
    return outcomes(futures)


def outcomes(futures: list[Future]) -> list[Any]:
    """The pooled runs' results in order; else the first error that is not a stop (a failed run stops those under
    way: their ``Interrupted`` came after it), else the first stop; a lost worker process as ``WorkerLost``."""
    errors = [e for f in futures if (e := f.exception()) is not None]
    if not errors:
        return [f.result() for f in futures]
    first = next((e for e in errors if not isinstance(e, Interrupted)), errors[0])
    if isinstance(first, BrokenProcessPool):
        raise WorkerLost(f"a process of the study's pool stopped in the middle of its runs ({first})") from first
    raise first


def study_budget(default: Budget, full: bool, iterations: int | None, eval_tasks: int | None = None,
            seed: int | None = None) -> Budget:
    """The paper's budget (``full``) or the default, with ``iterations`` outer iterations, ``eval_tasks`` test tasks
    and the ``seed`` of every run where given."""
    budget = FULL if full else default
    given = {k: v for k, v in (("iterations", iterations), ("eval_tasks", eval_tasks), ("seed", seed)) if v is not None}
    for name, low in (("iterations", 1), ("eval_tasks", 2)):
        if name in given:
            check_whole(name, given[name], low)
    if seed is not None:
        check_seed("seed", seed)
    return replace(budget, **given)


def findings_table(r: dict[str, Any]) -> list[str]:
    if not r.get("complete", True):
        return ["Partial: the time budget ended the study before every run finished; the same command continues it "
                "(the paper's findings are checked once all runs are done)."]
    b = r["budget"]
    short = []
    if b["iterations"] < FULL.iterations:
        short.append(f"{b['iterations']:,} of the paper's {FULL.iterations:,} iterations")
    if b["eval_tasks"] < FULL.eval_tasks:
        short.append(f"{b['eval_tasks']:,} test tasks, not {FULL.eval_tasks:,}")
    note = f" ({'; '.join(short)}; `--full` runs the paper's budget)" if short and not r["full"] else ""
    lines = [f"The paper's findings{note}; \"within noise\": the direction holds, but a difference that decides it is "
             "smaller than the 95% half-width of that difference, the means taken as independent:", "",
             *md_head(["paper", "ours", "holds here"])]
    for f in r["findings"]:
        lines.append(f"| {f['paper']} | {f['ours']} | {f.get('verdict', 'yes' if f['holds'] else 'no')} |")
    return lines


def noise(*half_widths: float) -> float:
    """The 95% half-width of a sum or difference of independent means with these half-widths (the runs are
    tested on the same tasks, so this overstates the noise of a paired difference)."""
    return math.sqrt(sum(h * h for h in half_widths))


def verdict(holds: bool, unclear: Sequence[str] = (), against: Sequence[str] = ()) -> str:
    """``no`` when a finding's direction fails; ``partly`` naming the cases that clearly go against it; ``yes, within
    noise`` naming the differences that decide it but do not clear their noise (``noise``); else ``yes``."""
    if not holds:
        return "no"
    if against:
        return f"partly, not: {'; '.join(against)}"
    return f"yes, within noise: {'; '.join(unclear)}" if unclear else "yes"


def write_study(out: Path, name: str, results: dict[str, Any], table: str,
           figure: Callable[[dict[str, Any], Path], Path]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    results = provenance.stamped(results)
    files.write_json(out / f"{name}.json", results)
    files.write_text(out / f"{name}.md", table + "\n")
    path = figure(results, out / f"{name}.png")
    print(table)
    print(f"\nresults: {out / (name + '.json')}\nfigure:  {path}")
    return results


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text.replace("+..+", "-to-").replace("+", "-"))


def weights_label(weights: Sequence[float]) -> str:
    return ", ".join(f"{w:.3g}" for w in weights)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
