"""The run loop that supervised and meta-RL training share: iterate until done, a budget, the time budget or a
signal; ``last`` checkpoints and ``metrics.jsonl`` in the run directory; resume on the same trajectory; a progress
bar; Ctrl-C and SIGTERM that save before stopping; under ``torchrun`` every process stops at the same iteration.

A trainer says only how to take one step (``step``), what its state is (``state`` / ``load_state`` for tensors,
``info`` / ``load_info`` for counters), and what to do after a step (``after_step``: logs, validation, snapshots).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from tqdm import tqdm

from . import checkpoint, files, provenance
from . import distributed as processes
from .distributed import Distributed
from .errors import CheckpointError, ConfigError, Damaged, Interrupted, TrainingDiverged, check_whole


class RunLoop:
    """Iterations of ``step`` with checkpoints, logs, resume, progress and signals (see the module docstring).

    Args:
        run_dir: where ``last`` (and the trainer's other checkpoints) and ``metrics.jsonl`` go (None: nothing).
        iterations: the iteration budget; ``time_budget``: minutes of this session (0: none).
        checkpoint_every: iterations between ``last`` checkpoints (also saved when the run stops).
        config: stored in every checkpoint's sidecar (what ``metagrad eval`` and resume read back).
        distributed: the process group under ``torchrun``; process 0 writes, all stop together.
        on_iteration: called as ``on_iteration(loop, iteration, metrics)`` after each iteration.
    """

    def __init__(self, run_dir: str | Path | None, *, iterations: int, time_budget: float = 0.0,
                 checkpoint_every: int = 1000, config: dict[str, Any] | None = None, progress: bool = True,
                 distributed: Distributed | None = None,
                 on_iteration: Callable[[Any, int, dict[str, float]], None] | None = None):
        check_whole("iterations", iterations, 0)
        check_whole("checkpoint_every", checkpoint_every, 1)
        if not (isinstance(time_budget, int | float) and math.isfinite(time_budget) and time_budget >= 0):
            raise ConfigError(f"time_budget {time_budget!r} must be a number of minutes >= 0 (0: no limit)")
        if distributed is None and processes.launched_world() > 1 and not processes.joined():
            raise ConfigError(
                f"this process is one of WORLD_SIZE={processes.launched_world()} that torchrun started, but its "
                "trainer has no process group: each would train the whole run alone. `metagrad train`, `reproduce "
                "navigation|locomotion` and `tradeoff rl` share the work under torchrun; run other commands as one "
                "process; in Python pass distributed=Distributed.from_env() (metagrad.distributed), or unset "
                "WORLD_SIZE to train alone")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.iterations, self.time_budget, self.checkpoint_every = iterations, time_budget, checkpoint_every
        self.config = config or {}
        self._resume_changes: dict[str, Any] = {}
        self.dist = distributed
        self.writes = distributed is None or distributed.is_main  # one process writes checkpoints and logs
        self.progress = progress and self.writes
        self.on_iteration = on_iteration
        self.iteration = 0
        self.elapsed = 0.0  # training seconds of the whole run, across resumes
        self.session_iterations = 0  # iterations trained by this session's ``run``
        self._stop_requested = False
        self.stop_signal: int | None = None  # the signal that stopped the run (SIGINT or SIGTERM), for the exit code
        self.abort_signal: int | None = None  # a second one, which aborted the iteration under way
        self._closing = False  # past the last iteration: saving and finishing
        self._segment: dict[str, Any] | None = None  # this session, kept in each checkpoint until it is recorded
        self._lock: int | None = None  # the open lock file while this process holds the run directory
        self.session_files: dict[str, str] = {}  # name -> text, written once the run directory is held
        self.last_metrics: dict[str, float] = {}  # the last iteration's, e.g. the outer step size it took

    # ------------------------------------------------------------------ what a trainer supplies
    def step(self) -> dict[str, float]:
        """One iteration; its metrics."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """The tensors a checkpoint holds (learner, optimizer, RNG states)."""
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def resume_changes(self, info: dict[str, Any]) -> dict[str, Any]:
        """Check the config of the checkpoint to resume (its sidecar ``info``) against this run's before anything is
        restored: a CheckpointError where it may not change; else the changes to log (here none are known)."""
        return {}

    def info(self) -> dict[str, Any]:
        """Counters stored in a checkpoint's sidecar besides the iteration, elapsed time and config."""
        return {}

    def load_info(self, info: dict[str, Any]) -> None:
        """Counters back from a sidecar."""

    def before_training_on(self) -> None:
        """Called when a resumed run is about to train on (not when it was finished): a trainer's own preparations."""

    best_resumes = True  # whether a ``best`` holds a whole state a run can go on from (meta-RL's: weights alone)

    def remembers_best(self) -> bool:
        """Whether the run has measured a best so far (a resumed run: as its last checkpoint recorded)."""
        return False

    def forget_best(self) -> None:
        """Track the best checkpoint afresh: the next measured iteration is the best so far."""

    def after_step(self, metrics: dict[str, float], seconds: float, bar: tqdm) -> None:
        """Logs, progress, validation, snapshots after an iteration (``seconds``: its duration)."""
        bar.update(1)

    def budget_reached(self) -> bool:
        """A budget other than the iterations ended the run (e.g. environment steps)."""
        return False

    def make_bar(self) -> tqdm:
        return tqdm(total=self.iterations, initial=self.iteration, disable=not self.progress, unit="it",
                    dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def finish(self, stopped: str) -> None:
        """After the loop, with ``last`` saved (``stopped``: done, time_budget or interrupted)."""

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, state: dict[str, Any] | None = None, iteration: int | None = None) -> Path | None:
        """Write checkpoint ``run_dir/name`` (default: the full state at this iteration); process 0 only. A state
        holding a NaN or an infinity is not written: the checkpoint before it stays, to resume from."""
        if self.run_dir is None:
            return None
        stem = self.run_dir / name
        state = state if state is not None else self.state()
        if not _finite(state):
            print(f"metagrad: not saving {name} at iteration {self.iteration}: the state holds NaN or infinite "
                  "values; the previous checkpoint stays", file=sys.stderr)
            return None
        if self.writes:
            segment = {"segment": self._open_segment()} if self._segment is not None else {}
            checkpoint.save(stem, state, {"iteration": self.iteration if iteration is None else iteration,
                                          "elapsed": self.elapsed, **self.info(), "config": self.config, **segment})
        return stem

    def restore(self, name: str = "last") -> None:
        """Continue from a checkpoint of this run directory; metric lines logged after it are dropped."""
        assert self.run_dir is not None
        state, info = checkpoint.load(self.run_dir / name)
        self.load_state(state)
        self.iteration, self.elapsed = info["iteration"], info["elapsed"]
        self.load_info(info)
        self._truncate_metrics()

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (process 0)."""
        if self.run_dir is None or not self.writes:
            return
        files.append_line(self.run_dir / "metrics.jsonl", json.dumps(record))

    def _truncate_metrics(self) -> None:
        """Keep the lines up to the resumed iteration (a line torn by a crash is dropped), less the ``resumed_with``
        of an earlier resume at this iteration: that session left no checkpoint, this one says what it changes."""
        path = self.run_dir / "metrics.jsonl" if self.run_dir and self.writes else None
        if path is None or not path.exists():
            return
        keep = [ln for ln in path.read_text(errors="replace").splitlines() if _kept(ln, self.iteration)]
        files.write_text(path, "".join(ln + "\n" for ln in keep))

    def checkpoint_due(self) -> bool:
        return self.run_dir is not None and (self.iteration % self.checkpoint_every == 0
                                             or self.iteration == self.iterations or self.budget_reached())

    # ------------------------------------------------------------------ the loop
    def request_stop(self) -> None:
        """Stop after the current iteration, with a checkpoint (what Ctrl-C and SIGTERM do)."""
        self._stop_requested = True

    def run(self, resume: bool | str = False, changes: dict[str, Any] | None = None) -> tuple[str, int, float]:
        """Iterate until done, a budget or a stop request; ``(stopped, start iteration, session seconds)`` with
        ``stopped`` one of done, time_budget, interrupted. ``resume``: False (a new run), True (continue the run in
        ``run_dir``, which must have a ``last`` checkpoint) or "auto" (continue it if there is one, else start);
        ``changes``: settings that differ from the checkpoint's, recorded in ``metrics.jsonl`` when resuming."""
        if not (resume is True or resume is False or resume == "auto"):
            raise ConfigError(f"resume {resume!r} must be False (a new run), True (continue the run in run_dir) or "
                              "'auto' (continue it if there is one)")
        try:
            return self._run(resume, changes)
        finally:
            if self._lock is not None:
                os.close(self._lock)  # closing drops the lock (so does the process's death, even by kill -9)
                self._lock = None

    def _run(self, resume: bool | str, changes: dict[str, Any] | None) -> tuple[str, int, float]:
        """``run`` while this process holds the run directory (taken in ``_prepare``, dropped by ``run``)."""
        resumed = self._prepare(resume)
        if resumed and (self.iteration >= self.iterations or self.budget_reached()):  # finished: files stay as are
            self.finish("done")
            return "done", self.iteration, 0.0
        if self.writes and self.run_dir is not None:
            for name, text in self.session_files.items():  # under the lock: two sessions never interleave them
                files.write_text(self.run_dir / name, text)
        if resumed and (changes or self._resume_changes):
            self.log({"iteration": self.iteration, "resumed_with": changes or self._resume_changes})
        if resumed:
            self._set_aside_damaged_best()
            self._drop_later_best()
            self.before_training_on()
        start_iteration, session_start = self.iteration, time.perf_counter()
        self._segment = {"start": start_iteration, "clock": session_start, "command": provenance.command(),
                         "commit": provenance.commit(), "machine": provenance.machine()}
        if not resumed:  # a run's first file: a kill before its first checkpoint leaves a run to resume, not a
            if self.dist is not None:  # folder that holds only a `best` or a snapshot and refuses every rerun
                self.dist.any(False)  # every process has looked at the folder before process 0 writes to it
                self.start_together()
            self.save("last")
        stopped, saved_at = "done", self.iteration
        bar = self.make_bar()
        with self._signals_save(), self._aborted(bar):
            while self.iteration < self.iterations and not self.budget_reached():
                t0 = time.perf_counter()
                try:
                    metrics = self.step()
                except TrainingDiverged as e:
                    self._stop_diverged(e, self.iteration + 1, start_iteration, session_start, saved_at)
                self.iteration += 1
                self.session_iterations += 1
                seconds = time.perf_counter() - t0
                self.elapsed += seconds
                self.last_metrics = metrics
                self.after_step(metrics, seconds, bar)
                if self.checkpoint_due():
                    self._save_finite(start_iteration, session_start, saved_at)
                    saved_at = self.iteration
                if self.on_iteration is not None:
                    self.on_iteration(self, self.iteration, metrics)
                reason = self._stop_reason(session_start)
                if reason:
                    stopped = reason
                    break
            self._closing = True  # the final save is in the signals' care too: a second one aborts after it
            if stopped == "done" and self._stop_reason(session_start) == "interrupted":
                stopped = "interrupted"  # a signal after the final iteration's check: the caller must stop too
            bar.close()
            if saved_at != self.iteration:  # a finished run saved its final iteration in the loop
                self._save_finite(start_iteration, session_start, saved_at)
            self.finish(stopped)
        session = time.perf_counter() - session_start
        self._record_segment(start_iteration, session, stopped)
        return stopped, start_iteration, session

    def _save_finite(self, start_iteration: int, session_start: float, saved_at: int) -> None:
        """Save ``last``, or stop as diverged where the state holds NaN or infinite values (a step that overflowed
        without a non-finite metric: the run went on, and a finished one said "done" over its starting point)."""
        state = self.state()
        if not _finite(state):
            e = TrainingDiverged(f"the parameters after iteration {self.iteration} hold NaN or infinite values; lower "
                                 f"{self.step_sizes(self.last_metrics.get('outer_lr'))}")
            self._stop_diverged(e, self.iteration, start_iteration, session_start, saved_at)
        self.save("last", state)

    def _stop_diverged(self, e: TrainingDiverged, at: int, start_iteration: int, session_start: float,
                       saved_at: int) -> NoReturn:
        """Record the session as diverged at iteration ``at`` (its end the last checkpoint) and stop, saying how to
        go on."""
        with contextlib.suppress(OSError):  # the session's record; a full disk must not hide the cause
            self._record_segment(start_iteration, time.perf_counter() - session_start, f"diverged at iteration {at}",
                                 end=saved_at)
        raise type(e)(f"{e}; {self._after_divergence()}") from None

    def step_sizes(self, outer_lr: float | None = None) -> str:
        """The step sizes a divergence asks to lower, with their values (a trainer names its own; ``outer_lr``: the
        outer step size the diverged step took, where the optimizer's has moved on with the schedule)."""
        return "the step sizes"

    def start_together(self) -> None:
        """Every process of the group starts from process 0's learner: a model initialised without a seed differs
        from process to process, and nothing else would bring them together."""
        assert self.dist is not None
        learner = self.state().get("learner")
        if isinstance(learner, dict):  # the learner's state_dict: views of its parameters and buffers
            self.dist.broadcast([t for t in learner.values() if isinstance(t, torch.Tensor)])

    def segment_info(self) -> dict[str, Any]:
        """What a trainer adds to a segment's record (e.g. environment steps)."""
        return {}

    def _open_segment(self, stopped: str = "killed or failed") -> dict[str, Any]:
        """This session's segment record as of now; each checkpoint keeps it, so that a session killed before it
        could append its record (kill -9, a machine taken away, a full disk) is still recorded when the run
        resumes."""
        assert self._segment is not None
        s = self._segment
        return {"start": s["start"], "end": self.iteration, "seconds": round(time.perf_counter() - s["clock"], 1),
                "stopped": stopped, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.segment_info(),
                "command": s["command"], "commit": s["commit"], "machine": s["machine"]}

    def _record_segment(self, start: int, seconds: float, stopped: str, end: int | None = None) -> None:
        """Append this session to ``segments.jsonl``: iterations, time, how it stopped, the command, the commit and
        the machine that produced it (a long run accumulates over sessions; each says where it came from). ``end``:
        the iteration the run keeps, where it is not the current one (a diverged session's last checkpoint)."""
        if self.run_dir is None or not self.writes:
            return
        record = {**self._open_segment(stopped), "start": start, "seconds": round(seconds, 1)}
        if end is not None:
            record["end"] = end
        self._segment = None
        _append_segment(self.run_dir, record)

    def _recover_segment(self, info: dict[str, Any]) -> None:
        """Record the segment that made the ``last`` checkpoint if its session died before recording it."""
        segment = info.get("segment")
        if segment is not None and self.writes and _recorded_end(self.run_dir) < info["iteration"]:
            _append_segment(self.run_dir, {**segment, "end": info["iteration"]})

    def _prepare(self, resume: bool | str) -> bool:
        """Take the run directory (``_hold``), then resume from ``last`` (True when it did), or refuse to overwrite
        another run or to start one over; create the run directory."""
        if self.run_dir is None:
            return False
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise CheckpointError(f"--out {self.run_dir} is a file; give a folder for the run")
        if resume is True and not self.run_dir.exists():
            raise self._nothing_to_resume()  # before the folder is made
        lock = self.run_dir / ".lock"
        fresh = self.writes and not lock.exists()
        if self.writes:  # held before the checks: a run that finishes meanwhile is not taken for an empty folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._hold()
            # killed writers' half-written files (a live one's stays: its writer holds its lock, taken a moment
            # after the file is made; where locks are kept, as the run's own shows, one second guards that moment)
            files.remove_stale_temps(self.run_dir, min_age=1.0 if self._lock is not None else 60.0)
        try:
            return self._resume_or_start(resume)
        except Exception:
            if fresh:  # a refused command leaves the folder as it found it (no lock file left in a study's folder)
                lock.unlink(missing_ok=True)
            raise

    def _resume_or_start(self, resume: bool | str) -> bool:
        """Resume from ``last`` (True), or refuse to overwrite another run or to start one over (False: a new run)."""
        assert self.run_dir is not None
        if checkpoint.exists(self.run_dir / "last"):
            if not resume:
                it = checkpoint.read_info(self.run_dir / "last")["iteration"]
                raise CheckpointError(f"{self.run_dir} already holds a run (iteration {it}); pass --resume "
                                      "(Python: fit(resume=True)) to continue it or choose another --out (run_dir)")
            info = checkpoint.read_info(self.run_dir / "last")
            self._resume_changes = self.resume_changes(info)
            self.restore("last")
            self._recover_segment(info)
            self._say_if_threads_differ(info)
            return True
        saved = sorted(p.name for p in self.run_dir.glob("*") if p.name == "last.json" or p.suffix == ".safetensors"
                       ) if self.run_dir.exists() else []
        if saved:  # a run whose last checkpoint is gone: starting over would overwrite its history and best
            best = self.run_dir / "best.safetensors"
            restart = (f"to continue from its best checkpoint, cp {best} {self.run_dir / 'last.safetensors'} and "
                       "resume; " if best.exists() and self.best_resumes else "")
            raise CheckpointError(f"{self.run_dir} holds a run ({', '.join(saved)}) but no last checkpoint to "
                                  f"continue from; {restart}or choose another --out (or delete the folder to start "
                                  "over)")
        if resume is True:
            raise self._nothing_to_resume()
        if self.writes:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)  # the log of a run that saved nothing
        return False

    def _say_if_threads_differ(self, info: dict[str, Any]) -> None:
        """torch's thread count orders its float sums: a run resumed on another count goes on to other (equally
        valid) numbers than an uninterrupted one. Said, with how to match it; not refused (a run may move machine)."""
        before = ((info.get("segment") or {}).get("machine") or {}).get("threads")
        now = torch.get_num_threads()
        if isinstance(before, int) and before != now and self.writes and self._computes_on_cpu():
            print(f"metagrad: {self.run_dir} was trained on {before} torch thread(s), this session has {now}: its "
                  f"sums are ordered otherwise, so it continues to slightly other numbers than an uninterrupted "
                  f"run (OMP_NUM_THREADS={before}, or torch.set_num_threads({before}), continues it exactly)",
                  file=sys.stderr)

    def _computes_on_cpu(self) -> bool:
        """Whether the run's sums are the CPU's (a GPU's do not depend on torch's thread count)."""
        return True

    def _set_aside_damaged_best(self) -> None:
        """A ``best`` that fails its check (a disk error, a copy cut short, another program's file) must not stop a
        run from resuming from a whole ``last``, nor stay to fail an evaluation after it trains on: it is kept as
        ``best-damaged`` (nothing overwritten), said, and the best tracked afresh; so is a ``best`` that is missing.
        (A finished run's files stay as they are; evaluating its best then names the damage.)"""
        best = self.run_dir / "best" if self.run_dir is not None else None
        if best is None or not self.writes:
            return
        if not checkpoint.exists(best):  # deleted: not written again until a later iteration beats the remembered one
            if self.remembers_best():
                self.forget_best()
                print(f"metagrad: {checkpoint.paths(best)[0]} is missing, though the run had measured a best; it "
                      "resumes from its last checkpoint and tracks its best afresh", file=sys.stderr)
            return
        try:
            checkpoint.load(best)
        except CheckpointError as e:
            aside = set_aside(best, "best-damaged")
            self.forget_best()
            reason = e.problem if isinstance(e, Damaged) else str(e).split("; ")[0]
            print(f"metagrad: {reason}: kept as {aside.name}; the run resumes from its last checkpoint and tracks its "
                  "best afresh", file=sys.stderr)

    def _drop_later_best(self) -> None:
        """A ``best`` newer than the ``last`` resumed from (the run was killed between the two) came from iterations
        this session trains again: with the settings that shape them unchanged it writes the same best again; with
        others (a step size, compile) the file is another trajectory's, so it is removed and the best tracked afresh
        (the one it had replaced is lost)."""
        best = self.run_dir / "best" if self.run_dir is not None else None
        if best is None or not checkpoint.exists(best):
            return
        try:
            info = checkpoint.read_info(best)
        except CheckpointError:  # damaged, or set aside meanwhile by the process that writes (a distributed run)
            return
        if info["iteration"] <= self.iteration or same_trajectory(info.get("config", {}), self.config):
            return
        if self.writes:
            for path in checkpoint.paths(best):
                path.unlink(missing_ok=True)
            print(f"metagrad: removed {best} (iteration {info['iteration']}): it was written after the last "
                  f"checkpoint (iteration {self.iteration}) with other settings; the best is kept afresh from here",
                  file=sys.stderr)
        self.forget_best()
        self.log({"iteration": self.iteration, "best_removed": info["iteration"]})

    def _nothing_to_resume(self) -> CheckpointError:
        inside = checkpoint.runs_inside(self.run_dir) if self.run_dir is not None else ""
        return CheckpointError(f"nothing to resume in {self.run_dir} (no last checkpoint: no run started there)"
                               + (inside or "; drop --resume to start a new run there"))

    def _hold(self) -> None:
        """Take the run directory for this process before writing to it: the same command started twice (two
        terminals, a scheduler's retry while the first still runs) stops with one line instead of interleaving two
        runs' checkpoints and logs. An advisory lock on ``.lock``, which the system drops when the holder dies; on
        Windows and on file systems without locks (said once) the run goes on unguarded."""
        assert self.run_dir is not None
        fd = files.lock(self.run_dir / ".lock", wait=False)
        if fd is None:
            return
        if fd < 0:
            holder = files.lock_note(self.run_dir / ".lock") or "another process"
            raise CheckpointError(f"{self.run_dir} is in use by another metagrad run ({holder}); wait for it to end "
                                  "or stop it (Ctrl-C saves), or choose another --out")
        self._lock = fd
        with contextlib.suppress(OSError):  # who holds it, for the message above: a courtesy (a full disk may refuse)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)

    def _after_divergence(self) -> str:
        """What to do after a diverged step: resume from the last (finite) checkpoint with smaller step sizes."""
        if self.run_dir is None or not checkpoint.exists(self.run_dir / "last"):
            return "start again with a smaller step size"
        it = checkpoint.read_info(self.run_dir / "last")["iteration"]
        if it == 0:
            return (f"nothing was learned yet ({self.run_dir / 'last'} holds the starting point): run the same "
                    "command with a smaller step size and --resume, or start anew with another --out")
        return (f"the last checkpoint ({self.run_dir / 'last'}, iteration {it}) holds finite values: continue from "
                "it with a smaller step size, e.g. the same command with --outer-lr halved and --resume (in Python: "
                "a trainer built with the smaller step, fit(resume=True)); if that diverges at once, the checkpoint's "
                "values are already too far out: start a new run, another --out, with the smaller step")

    def _stop_reason(self, session_start: float) -> str | None:
        """"interrupted" (a signal), "time_budget", or None; every process of a group agrees."""
        over_time = bool(self.time_budget) and time.perf_counter() - session_start > 60 * self.time_budget
        stop = self._stop_requested
        if self.dist is not None:  # a signal that lands during the exchange stays asked for, for the next one
            stop, over_time = self.dist.any(stop), self.dist.any(over_time)
            self._stop_requested = self._stop_requested or stop
        if stop:
            return "interrupted"
        return "time_budget" if over_time else None

    @contextlib.contextmanager
    def _aborted(self, bar: tqdm) -> Iterator[None]:
        """A second signal (``_signals_save``) as ``Interrupted``: the checkpoint that stays, the signal's exit code."""
        try:
            yield
        except KeyboardInterrupt:
            if not self._stop_requested:
                raise
            bar.close()
            first = signal_name(self.stop_signal or signal.SIGINT)
            second = signal_name(self.abort_signal) if self.abort_signal is not None else first
            by = f"a second {first}" if second == first else f"{second} after {first}"
            last = self.run_dir / "last" if self.run_dir is not None else None
            kept = (f"; the last checkpoint ({last}, iteration {checkpoint.read_info(last)['iteration']}) stays"
                    if last is not None and checkpoint.exists(last) else "")
            when = f"after iteration {self.iteration}" if self._closing else f"in iteration {self.iteration + 1}"
            raise Interrupted(f"aborted by {by} {when}{kept}",
                              signum=self.abort_signal or self.stop_signal or signal.SIGINT) from None

    @contextlib.contextmanager
    def _signals_save(self) -> Iterator[None]:
        """While training, Ctrl-C or SIGTERM asks the loop to stop after the current iteration (and save); a second
        one aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: object) -> None:
            if self._stop_requested:
                self.abort_signal = signum
                raise KeyboardInterrupt  # a second signal aborts at once
            self.request_stop()
            self.stop_signal = signum
            name = signal_name(signum)
            print(f"\nmetagrad: {name}: stopping after this iteration and saving ({name} again to abort)",
                  file=sys.stderr)

        previous = {s: signal.signal(s, handle) for s in files.STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def signal_name(signum: int) -> str:
    """Ctrl-C for SIGINT, else the signal's name (SIGTERM)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _finite(state: Any) -> bool:
    """Whether every floating-point tensor in a (nested) state is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(_finite(v) for v in state)
    return True


# settings that leave the trained iterates as they are: a checkpoint written under other values is the same run's
BOOKKEEPING = frozenset({"time_budget", "log_every", "checkpoint_every", "iterations", "val_every", "step_budget",
                         "snapshot_steps", "val_as"})


def trajectory(config: dict[str, Any]) -> dict[str, Any]:
    """The values of a sectioned config that shape the trained iterates (not its [eval], not ``BOOKKEEPING``)."""
    return {k: v for section, entries in config.items() if section != "eval" and isinstance(entries, dict)
            for k, v in entries.items() if k not in BOOKKEEPING}


def same_trajectory(stored: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a checkpoint's stored config and ``config`` shape the same iterates, over the keys both hold: a key
    added to metagrad since the checkpoint was written is at its default there, the behaviour it had."""
    old, new = trajectory(stored), trajectory(config)
    return all(old[k] == new[k] for k in old.keys() & new.keys())


def _kept(line: str, iteration: int) -> bool:
    """Whether a ``metrics.jsonl`` line stays when the run resumes at ``iteration`` (``_truncate_metrics``)."""
    at = _line_iteration(line)
    return at < iteration or (at == iteration and "resumed_with" not in json.loads(line))


def _line_iteration(line: str) -> float:
    """The iteration of a ``metrics.jsonl`` line; a torn or foreign line counts as past every iteration."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def linear_to_zero(iteration: int, iterations: int) -> float:
    """The factor of a step size annealed linearly from 1 at iteration 0 to 0 at ``iterations`` (both worlds'
    ``outer_lr_schedule`` linear)."""
    return max(0.0, 1.0 - iteration / max(iterations, 1))


def set_base_lrs(optimizer: torch.optim.Optimizer, scheduler: Any, base_lrs: list[float]) -> None:
    """Give a resumed optimizer the configured step sizes where they differ from its checkpoint's (the user lowered
    them after a divergence); a schedule keeps its shape over the new base (the current step size scaled as the
    base is: exact for ``LambdaLR``, ``StepLR`` and the other multiplicative schedules)."""
    saved = list(scheduler.base_lrs) if scheduler is not None else [g["lr"] for g in optimizer.param_groups]
    if saved == base_lrs:
        return
    for i, (group, base) in enumerate(zip(optimizer.param_groups, base_lrs, strict=True)):
        if scheduler is None:
            group["lr"] = base
        else:
            old = scheduler.base_lrs[i]
            scheduler.base_lrs[i] = group["initial_lr"] = base
            group["lr"] = group["lr"] * base / old if old else base


def set_aside(stem: Path, name: str) -> Path:
    """Rename checkpoint ``stem``'s files to ``name`` (``name-again``... where that is taken: nothing is
    overwritten); the new stem."""
    aside = stem.with_name(name)
    while any(p.exists() for p in checkpoint.paths(aside)):  # the tensors or the readable header copy
        aside = aside.with_name(aside.name + "-again")
    for src, dst in zip(checkpoint.paths(stem), checkpoint.paths(aside), strict=True):
        if src.exists():
            os.replace(src, dst)
    return aside


def _append_segment(run_dir: Path, record: dict[str, Any]) -> None:
    files.append_line(run_dir / "segments.jsonl", json.dumps(record))


def _recorded_end(run_dir: Path) -> int:
    """The iteration the recorded segments reach (0 with none; a line torn by a crash is skipped)."""
    path = run_dir / "segments.jsonl"
    for line in reversed(path.read_text(errors="replace").splitlines() if path.exists() else []):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(line)["end"])
    return 0
