"""Nothing lost: faults injected into runs (a crash at each step of a checkpoint write, kill -9, SIGTERM, damaged and
missing checkpoints, a torn log line, a full disk, divergence). Every fault leaves a run that resumes to the same
parameters as an uninterrupted one, bit for bit, or stops with one line that names the file and the fix."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_flatten

from conftest import cli_error, folder_state
from metagrad import checkpoint, files
from metagrad.cli import main
from metagrad.config import load_config
from metagrad.errors import CheckpointError
from metagrad.experiment import make_trainer
from test_checkpoint import STEPS, Crash, crash_at

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = {"iterations": 24, "meta_batch_size": 4, "checkpoint_every": 1, "log_every": 1, "val_every": 6,
         "val_tasks": 5}
CLI_SMALL = ["--iterations", "24", "--meta-batch-size", "4", "--checkpoint-every", "1", "--log-every", "1",
             "--val-every", "6", "--val-tasks", "5", "--no-progress"]


def config(**changes):
    return load_config("sinusoid-maml").replace(**{**SMALL, **changes})


def final(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "last")[0]["learner"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k != "elapsed"}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    make_trainer(config(), run, progress=False).fit()
    return run


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_while_writing_a_checkpoint_resumes_to_the_same_run(tmp_path, monkeypatch, straight, step):
    """The process dies inside the checkpoint write of iteration 10 (in-process kill -9 at each step of it)."""
    run = tmp_path / "run"
    saves = {"n": 0}
    real_save = checkpoint.save

    def counting(stem, state, info):
        if Path(stem).name == "last":
            saves["n"] += 1
            if saves["n"] == 10:
                crash_at(monkeypatch, step)
        return real_save(stem, state, info)

    monkeypatch.setattr(checkpoint, "save", counting)
    with pytest.raises(Crash):
        make_trainer(config(), run, progress=False).fit()
    monkeypatch.undo()
    resumed = make_trainer(config(), run, progress=False)
    assert resumed.fit(resume=True).stopped == "done"
    assert same(final(run), final(straight))
    assert log_lines(run) == log_lines(straight)


def launch(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "metagrad", "train", "--config", "sinusoid-maml", "--out", str(run),
                             *CLI_SMALL, "--threads", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_iteration(run: Path, at_least: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if checkpoint.read_info(run / "last")["iteration"] >= at_least:
                return
        except CheckpointError:
            pass
        time.sleep(0.02)


def test_kill_9_at_random_moments_then_resume_gives_the_same_run(tmp_path):
    """Three SIGKILLs at random moments of a run that checkpoints every iteration; each rerun with --resume picks
    up the newest whole checkpoint, the run ends where an uninterrupted one does, and every killed session is
    still in ``segments.jsonl``. The run is long enough that each kill lands while it is training."""
    longer = ("--iterations", "600")
    straight_run = tmp_path / "straight"
    assert launch(straight_run, *longer).wait(timeout=300) == 0
    run, rng = tmp_path / "run", random.Random(0)
    for k in range(3):
        proc = launch(run, *longer, *(["--resume"] if k else []))
        wait_for_iteration(run, 60 + 150 * k, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before the kill: make it longer"
    done = launch(run, *longer, "--resume")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert same(final(run), final(straight_run))
    assert log_lines(run) == log_lines(straight_run)
    segments = [json.loads(ln) for ln in (run / "segments.jsonl").read_text().splitlines()]
    assert [s["stopped"] for s in segments] == ["killed or failed"] * 3 + ["done"]  # a killed session is still recorded
    assert [s["start"] for s in segments] == [0] + [s["end"] for s in segments[:-1]]  # no iteration unaccounted
    assert segments[-1]["end"] == 600 and all(s["end"] > s["start"] for s in segments[:-1])


def test_the_same_run_started_twice_stops_the_second_and_spares_the_first(tmp_path, capsys):
    """A second process on a folder whose run is training (the command started twice) stops with one line that names
    the folder and the holder, before writing anything; the first trains on; once it is killed (-9: the system
    drops the lock), the folder resumes."""
    run, forever = tmp_path / "run", ("--iterations", "100000", "--time-budget", "3")  # bounded if orphaned
    first = launch(run, *forever)
    try:
        wait_for_iteration(run, 3, first)
        err = cli_error(["train", "--config", "sinusoid-maml", "--out", str(run), "--resume", *CLI_SMALL,
                         "--threads", "1", *forever], capsys)
        assert f"{run} is in use by another metagrad run (process {first.pid}, since" in err and "--out" in err
        before = checkpoint.read_info(run / "last")["iteration"]
        with pytest.raises(CheckpointError, match="in use by another metagrad run"):
            make_trainer(config(iterations=100000), run, progress=False).fit(resume=True)
        assert files.lock_note(run / ".lock").startswith(f"process {first.pid},")  # theirs, not overwritten
        wait_for_iteration(run, before + 2, first)
        assert checkpoint.read_info(run / "last")["iteration"] >= before + 2  # the first still trains and saves
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=60)
    at = checkpoint.read_info(run / "last")["iteration"]
    assert make_trainer(config(iterations=at + 2), run, progress=False).fit(resume=True).stopped == "done"
    assert checkpoint.read_info(run / "last")["iteration"] == at + 2


def test_a_run_that_ends_while_another_starts_on_its_folder_is_not_overwritten(tmp_path, monkeypatch):
    """The folder is taken before it is looked at: a run that finishes in the moment between a new command's start
    and its lock is seen as a run (kept, the new command refused), not as an empty folder to start in."""
    from metagrad.loop import RunLoop

    run, real_hold = tmp_path / "run", RunLoop._hold

    def finish_another_run_first(loop):
        monkeypatch.setattr(RunLoop, "_hold", real_hold)
        make_trainer(config(iterations=5), run, progress=False).fit()  # the other command, ending just now
        real_hold(loop)

    monkeypatch.setattr(RunLoop, "_hold", finish_another_run_first)
    with pytest.raises(CheckpointError, match="already holds a run"):
        make_trainer(config(iterations=5), run, progress=False).fit()
    assert checkpoint.read_info(run / "last")["iteration"] == 5


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks")
def test_a_second_ctrl_c_during_the_final_save_lands_after_it(tmp_path, monkeypatch, capsys, straight):
    """A second Ctrl-C that arrives between the checkpoint's two files (its tensors renamed into place, its readable
    copy not yet written) waits until both are written: the copy says the checkpoint's iteration, the abort names
    it, and the resumed run is the uninterrupted one."""
    from metagrad.train import Trainer

    step, replace, run = Trainer.step, files.replace_atomically, tmp_path / "run"
    stopping = []

    def interrupted(self):
        if self.iteration == 5:
            stopping.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    def replace_then_interrupted(path, write):
        replace(path, write)
        if stopping and path.name == "last.safetensors":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "step", interrupted)
    monkeypatch.setattr(files, "replace_atomically", replace_then_interrupted)
    args = ["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--checkpoint-every", "100"]
    assert main(args) == 130  # checkpoints only at the end: the stop's own save is the one interrupted
    err = capsys.readouterr().err
    assert f"aborted by a second Ctrl-C after iteration 6; the last checkpoint ({run / 'last'}, iteration 6)" in err
    assert json.loads((run / "last.json").read_text())["iteration"] == checkpoint.read_info(run / "last")["iteration"]
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert same(final(run), final(straight)) and log_lines(run) == log_lines(straight)


def test_a_run_folder_taken_again_loses_a_killed_writers_temporary_file_not_a_live_ones(tmp_path):
    from test_checkpoint import hold_lock

    run = tmp_path / "run"
    make_trainer(config(iterations=2), run, progress=False).fit()
    killed, live = run / ".last.json.abcd1234.tmp", run / ".paths.pt.efgh5678.tmp"
    for f in (killed, live):
        f.write_text("half")
        os.utime(f, (time.time() - 5, time.time() - 5))  # a kill -9 seconds before the resume (once kept for 60 s)
    holder = hold_lock(live)  # another command writing its paths.pt into the folder
    try:
        make_trainer(config(iterations=3), run, progress=False).fit(resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert not killed.exists() and live.exists()


def test_the_sessions_config_is_written_while_the_run_folder_is_held(tmp_path):
    """``config.toml`` (the latest session's settings) is written under the run's lock, at the session's start:
    written after the lock was dropped, a second command let in meanwhile could interleave its own with it."""
    from metagrad.experiment import train

    run, seen = tmp_path / "run", []

    def look(loop, iteration, metrics):
        if iteration == 1:
            seen.append((files.lock(run / ".lock", wait=False), (run / "config.toml").read_text()))

    cfg = config(iterations=3)
    train(cfg, run, progress=False, on_iteration=look)
    assert seen == [(-1, cfg.to_toml())]  # held by the training session, and the config already there
    train(cfg.replace(iterations=4, time_budget=9.0), run, resume=True, progress=False)
    assert "time_budget = 9.0" in (run / "config.toml").read_text()  # each session writes its own


def test_a_file_system_without_locks_trains_unguarded_with_one_warning(tmp_path, monkeypatch, capsys):
    """Where flock is not supported (ENOLCK on NFS without lockd, ENOSYS on some cluster file systems) runs still
    train, resume and merge results, with one line saying the guard is off."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(files, "_UNLOCKED", [])
    run = tmp_path / "run"
    make_trainer(config(iterations=3), run, progress=False).fit()
    assert make_trainer(config(iterations=5), run, progress=False).fit(resume=True).stopped == "done"
    with files.locked(tmp_path / "results.json"):
        pass
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("metagrad: cannot lock")]
    assert len(warnings) == 1 and "going on without the guard" in warnings[0]
    assert checkpoint.read_info(run / "last")["iteration"] == 5


def test_sigterm_saves_and_the_resumed_run_is_the_same(tmp_path):
    straight_run = tmp_path / "straight"
    assert launch(straight_run).wait(timeout=300) == 0
    run = tmp_path / "run"
    proc = launch(run, "--checkpoint-every", "1000")  # only the stop itself saves
    while proc.poll() is None:
        try:
            if len((run / "metrics.jsonl").read_text().splitlines()) >= 4:
                break
        except OSError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a process ended by it (Ctrl-C: 130)
    assert "SIGTERM" in err and "--resume" in err
    stopped_at = checkpoint.read_info(run / "last")["iteration"]
    assert 4 <= stopped_at < 24
    again = launch(run, "--resume", "--checkpoint-every", "1000")
    assert again.wait(timeout=300) == 0
    assert same(final(run), final(straight_run))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "deleted"])
def test_a_damaged_or_missing_checkpoint_stops_resume_in_one_line_and_is_kept(tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert main(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--iterations", "8"]) == 0
    capsys.readouterr()
    path = run / "last.safetensors"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flipped":
        data = bytearray(path.read_bytes())
        data[-7] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    before = path.read_bytes() if path.exists() else None
    best_before = (run / "best.safetensors").read_bytes()
    err = cli_error(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--resume"], capsys)
    assert ("damaged" in err and "last.safetensors" in err) if damage != "deleted" else "no last checkpoint" in err
    assert (path.read_bytes() if path.exists() else None) == before  # never replaced
    assert (run / "best.safetensors").read_bytes() == best_before  # best never overwritten by a fresh start
    advice = f"cp {run / 'best.safetensors'} {path}"
    assert advice in err  # the way on, as a command: follow it and resume from best
    best_at = checkpoint.read_info(run / "best")["iteration"]
    subprocess.run(advice.split(), check=True)
    assert main(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--iterations", "8",
                 "--resume"]) == 0
    assert checkpoint.read_info(run / "last")["iteration"] == 8
    assert [r["iteration"] for r in log_lines(run) if "meta_loss" in r] == list(range(1, 9))
    assert best_at < 8


def test_a_damaged_best_checkpoint_names_another_to_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--iterations", "8"]) == 0
    (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"damaged.*--checkpoint last"):
        checkpoint.load(run / "best")


@pytest.mark.parametrize("damage", ["header", "tail", "foreign", "missing"])
def test_a_damaged_best_is_set_aside_and_the_run_resumes_from_last(tmp_path, capsys, straight, damage):
    """A damaged best stopped `--resume` from a whole last ("best is damaged ... evaluate another checkpoint"), and
    one cut at its end resumed silently and stayed to fail an evaluation later; another program's file was called
    damaged. Now it is kept as best-damaged, said, and the resumed run is the uninterrupted one (its best written
    afresh by the next validation). A deleted best was never written again while nothing beat the remembered value
    (an outside audit): said, and tracked afresh the same way."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    make_trainer(config(), run, progress=False, on_iteration=lambda t, i, m: t.request_stop() if i == 9 else None).fit()
    best = run / "best.safetensors"
    data = best.read_bytes()
    if damage == "header":
        best.write_bytes(data[:10] + b"XXXX" + data[14:])
    elif damage == "tail":
        best.write_bytes(data[:-100])
    elif damage == "missing":
        best.unlink()
    else:
        save_file({"w": torch.zeros(2)}, str(best))
        with pytest.raises(CheckpointError, match="not written by this metagrad"):
            checkpoint.read_info(run / "best")
    make_trainer(config(), run, progress=False).fit(resume=True)
    said = ("best.safetensors is missing, though the run had measured a best; it resumes from its last checkpoint"
            if damage == "missing" else "kept as best-damaged; the run resumes from its last checkpoint")
    assert said in capsys.readouterr().err
    assert same(final(run), final(straight)) and log_lines(run) == log_lines(straight)
    assert checkpoint.load(run / "best")[1]["iteration"] >= 12  # validated afresh after the resume
    if damage != "missing":
        assert (run / "best-damaged.safetensors").read_bytes() != data


def test_a_run_resumed_on_another_thread_count_says_it_continues_otherwise(tmp_path, capsys):
    """Resumed with OMP_NUM_THREADS 2 after 1, a run went on to weights 3.5e-3 away from the uninterrupted run's
    without a word (the count is the machine's, not a setting: said, not refused)."""
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        make_trainer(config(iterations=4), run, progress=False).fit()
        make_trainer(config(iterations=6), run, progress=False).fit(resume=True)
        assert "torch thread" not in capsys.readouterr().err
        torch.set_num_threads(2)
        make_trainer(config(iterations=8), run, progress=False).fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    assert "trained on 1 torch thread(s), this session has 2" in capsys.readouterr().err


def test_a_gpu_run_resumed_on_another_thread_count_says_nothing(tmp_path, capsys, monkeypatch):
    """A GPU's sums do not depend on torch's CPU thread count: the note fired for CUDA runs, where it is untrue."""
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        make_trainer(config(iterations=4), run, progress=False).fit()
        torch.set_num_threads(2)
        trainer = make_trainer(config(iterations=6), run, progress=False)
        assert trainer._computes_on_cpu()
        monkeypatch.setattr(trainer.learner, "_on_cpu", lambda: False)  # as a CUDA learner answers
        assert not trainer._computes_on_cpu()
        monkeypatch.undo()  # (the learner's answer would also restore CUDA's random state)
        monkeypatch.setattr(trainer, "_computes_on_cpu", lambda: False)
        trainer.fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    assert "torch thread" not in capsys.readouterr().err


class Noisy(torch.nn.Module):
    """An MLP with dropout in training mode: its randomness comes from torch's global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def noisy_trainer(run: Path, stop_at: int = 0):
    import metagrad as mg

    torch.manual_seed(0)
    learner = mg.MAML(Noisy(), inner=mg.SGD(0.05), batching="loop", threads=1)
    return mg.Trainer(learner, mg.tasks.Sinusoid(shots=5, query=5), torch.optim.Adam(learner.parameters(), 1e-3),
                      iterations=12, meta_batch_size=3, run_dir=run, log_every=5, checkpoint_every=1,
                      progress=False, on_iteration=lambda t, i, m: t.request_stop() if i == stop_at else None)


def test_a_model_with_its_own_randomness_resumes_bit_for_bit(tmp_path):
    """Dropout draws from torch's global generator, which the checkpoint keeps with the task stream's; and the
    meta-losses since the last log line are kept too, so the line after the resume averages the same iterations."""
    noisy_trainer(tmp_path / "straight").fit()
    noisy_trainer(tmp_path / "split", stop_at=7).fit()
    torch.manual_seed(123)  # another draw in between, as a new process would start elsewhere
    torch.rand(5)
    noisy_trainer(tmp_path / "split").fit(resume=True)
    assert checkpoint.read_info(tmp_path / "split" / "last")["iteration"] == 12
    assert same(final(tmp_path / "split"), final(tmp_path / "straight"))
    assert log_lines(tmp_path / "split") == log_lines(tmp_path / "straight")
    assert [r["iteration"] for r in log_lines(tmp_path / "straight")] == [5, 10, 12]


def test_resume_never_starts_over_on_its_own(tmp_path, capsys):
    err = cli_error(["train", "--config", "sinusoid-maml", "--out", str(tmp_path / "empty"), "--resume"], capsys)
    assert "nothing to resume" in err and "drop --resume" in err
    (tmp_path / "file").write_text("x")
    err = cli_error(["train", "--config", "sinusoid-maml", "--out", str(tmp_path / "file")], capsys)
    assert "is a file" in err


def test_a_run_resumed_with_the_other_kind_of_config_is_refused_and_kept(tmp_path):
    """A supervised run resumed with a meta-RL config, and the reverse, stop before anything is restored."""
    from metagrad.experiment import train
    from metagrad.rl.config import RLConfig
    supervised = load_config("sinusoid-maml").replace(iterations=1, meta_batch_size=2)
    rl = RLConfig().replace(hidden=(8,), meta_batch_size=2, episodes=2, horizon=5, iterations=1)
    for first, then, words in ((supervised, rl, "holds a supervised run, not a meta-RL one"),
                               (rl, supervised, "holds a meta-RL run, not a supervised one")):
        run = tmp_path / type(first).__name__
        train(first, run, progress=False)
        before = (run / "last.safetensors").read_bytes()
        with pytest.raises(CheckpointError, match=words):
            train(then, run, resume=True, progress=False)
        assert (run / "last.safetensors").read_bytes() == before


def test_a_meta_rl_best_copied_over_last_is_refused_and_no_copy_is_advised(tmp_path, capsys):
    """A meta-RL best (or snapshot) holds the policy's weights alone. Copied over last, as the advice for a
    supervised run with no last says, --resume stopped in a KeyError traceback; it is refused naming why, with the
    files kept, and a meta-RL run with no last is not told to copy its best."""
    from metagrad.experiment import train
    from metagrad.rl.config import RLConfig

    rl = RLConfig().replace(hidden=(8,), meta_batch_size=2, episodes=2, horizon=5, iterations=2)
    run = tmp_path / "rl"
    train(rl, run, progress=False)
    shutil.copy(run / "best.safetensors", run / "last.safetensors")
    before = folder_state(run)
    with pytest.raises(CheckpointError, match=r"holds a policy's weights alone .* cannot resume from it"):
        train(rl.replace(iterations=3), run, resume=True, progress=False)
    assert {**folder_state(run), ".lock": None} == {**before, ".lock": None}  # (the lock's note names its taker)
    (run / "last.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no last checkpoint to continue from") as refused:
        train(rl.replace(iterations=3), run, resume=True, progress=False)
    assert "cp " not in str(refused.value)


def test_a_torn_last_log_line_does_not_stop_resume(tmp_path, straight):
    run = tmp_path / "run"
    make_trainer(config(), run, progress=False,
                 on_iteration=lambda t, i, m: t.request_stop() if i == 9 else None).fit()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 10, "meta_lo')  # a crash in the middle of a line
    make_trainer(config(), run, progress=False).fit(resume=True)
    assert same(final(run), final(straight)) and log_lines(run) == log_lines(straight)


def test_a_full_disk_stops_in_one_line(tmp_path, monkeypatch, capsys):
    """A full disk fails the write of a checkpoint's bytes (or their flush to disk) with an OSError that names no
    file; it is named, in one line, and the previous checkpoint stays whole. (safetensors' own writer raised its
    SafetensorError there, which ended in a traceback: checkpoints are written by files.replace_atomically.)"""
    run = tmp_path / "run"
    assert main(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--iterations", "2"]) == 0

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    err = cli_error(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--iterations", "4",
                     "--resume"], capsys)
    assert "No space left on device" in err and str(run) in err and "free space" in err
    monkeypatch.undo()
    assert checkpoint.read_info(run / "last")["iteration"] == 2 and not list(run.glob(".*.tmp"))


def test_divergence_names_a_finite_checkpoint_and_resumes_with_a_smaller_step(tmp_path, capsys):
    """A NaN stops the run with what to do; the last checkpoint holds no NaN or infinity, and resuming it with
    other step sizes is allowed and recorded in metrics.jsonl."""
    run = tmp_path / "run"
    args = ["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL]
    assert main([*args, "--iterations", "6"]) == 0
    err = cli_error([*args, "--inner-lr", "1e12", "--resume"], capsys)  # the inner step overflows: NaN
    assert "diverged" in err and f"{run / 'last'}, iteration 6" in err and "--resume" in err
    state, info = checkpoint.load(run / "last")
    assert info["iteration"] == 6 and all(_finite(v) for v in state.values())
    segments = [json.loads(line) for line in (run / "segments.jsonl").read_text().splitlines()]
    assert [(s["start"], s["end"], s["stopped"]) for s in segments] == [(0, 6, "done"),
                                                                        (6, 6, "diverged at iteration 7")]
    assert main([*args, "--inner-lr", "0.01", "--outer-lr", "0.0005", "--resume"]) == 0
    resumed = [x for x in log_lines(run) if "resumed_with" in x]
    assert resumed[-1]["iteration"] == 6 and resumed[-1]["resumed_with"]["outer_lr"] == [0.001, 0.0005]
    assert checkpoint.read_info(run / "last")["iteration"] == 24
    early = [*args, "--iterations", "2", "--out", str(tmp_path / "early")]
    err = cli_error([*early, "--inner-lr", "1e12"], capsys)  # diverges in its first iteration
    assert "nothing was learned yet" in err and "--resume" in err
    assert main([*early, "--resume"]) == 0  # from the starting point the run keeps, with the smaller step
    assert checkpoint.read_info(tmp_path / "early" / "last")["iteration"] == 2


def _finite(tree) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tree_flatten(tree)[0]
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_a_state_with_nan_or_inf_is_not_saved(tmp_path, capsys):
    trainer = make_trainer(config(iterations=2), tmp_path / "run", progress=False)
    trainer.fit()
    with torch.no_grad():
        next(trainer.learner.parameters())[0] = float("inf")
    assert trainer.save("last") is None and "not saving last" in capsys.readouterr().err
    assert _finite(checkpoint.load(tmp_path / "run" / "last")[0])


def test_an_unwritable_eval_output_fails_before_the_evaluation(tmp_path, capsys, monkeypatch):
    """An output that cannot be written was found only after the evaluation's work. A file where its folder should
    be, and a folder that refuses new files even to root (sysfs), each stop before any evaluation runs."""
    import metagrad.experiment

    run = tmp_path / "run"
    assert main(["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL, "--iterations", "2"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(metagrad.experiment, "evaluate", lambda *a, **k: pytest.fail("evaluated first"))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    err = cli_error(["eval", str(run), "--output", str(tmp_path / "blocker" / "eval.json")], capsys)
    assert "blocker" in err
    if sys.platform.startswith("linux") and Path("/sys/kernel").is_dir():
        err = cli_error(["eval", str(run), "--output", "/sys/eval.json"], capsys)
        assert "/sys" in err and "ermission denied" in err


def _default_sigint() -> None:
    """Ctrl-C's default action in the child, as in a terminal: a test run started in the background of a
    non-interactive shell ignores SIGINT, and the child would inherit that (Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_torch_loads(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the child has mapped torch's libraries: metagrad's own start-up is then under way (the interpreter's,
    before it, took 0.05 to over 0.3 s on this machine under load)."""
    maps, end = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if "torch/lib" in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.002)
    raise AssertionError(f"the command did not start importing torch within {timeout} s")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the child's memory map in /proc (Linux)")
@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.6, 1.0, 1.5])
@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, ("interrupted", "Ctrl-C")),
                                             (signal.SIGTERM, 143, ("terminated", "interrupted"))])
def test_a_stop_during_start_up_is_one_line(tmp_path, delay, sig, code, said):
    """Ctrl-C while the command is still importing torch (or just after, reading its options) ends with exit code
    130, no traceback (it once ended by SIGINT, -2, in one run of three: a half-imported torch's finalization).
    ``delay`` counts from the moment torch's libraries are mapped, not from the launch: within Python's own start-up
    (runpy finding the module) the interpreter prints its traceback before any of metagrad runs, and a fixed delay
    from the launch can land there on a loaded machine (torch's libraries mapped 0.15 to 0.39 s after the launch
    with two other jobs on the 2 cores). SIGTERM, as a scheduler stops a job, the same with 143 (it ended the
    process without a word, -15, while torch was imported)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metagrad", "train", "--out", str(tmp_path / "r"), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    wait_until_torch_loads(proc)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err, err
    assert any(word in err for word in said), err


CTRL_C_CHILD = """
import signal, sys
from metagrad.__main__ import _on_interrupt
signal.signal(signal.SIGINT, _on_interrupt)
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "import":
    import interrupts_its_import  # its first line raises SIGINT
else:
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        sys.exit(7)
"""


@pytest.mark.parametrize("where, code", [("import", 130), ("elsewhere", 7)])
def test_ctrl_c_inside_an_import_leaves_at_once_and_elsewhere_raises(tmp_path, where, code):
    """The start-up handler, deterministically: a Ctrl-C inside an import exits 130 in one line (raised there, it
    aborted the process from torch's C++, exit -6, once in CI), anywhere else it is the usual KeyboardInterrupt
    that the commands turn into a saved, resumable stop."""
    (tmp_path / "interrupts_its_import.py").write_text("import signal\nsignal.raise_signal(signal.SIGINT)\n")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CTRL_C_CHILD, str(tmp_path), where], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert ("metagrad: interrupted" in done.stderr) == (where == "import") and "Traceback" not in done.stderr


def test_a_resumed_command_line_run_saves_every_tensor_of_an_uninterrupted_one(tmp_path):
    """Including torch's global generator, from which a model's dropout draws: a run seeds it from its config (it
    was left at the process's random start, so two runs of one command differed there), the self-check leaves it
    alone, and a resume restores it."""
    from safetensors.torch import load_file

    args = ["train", "--config", "sinusoid-maml", "--no-progress", "--threads", "1"]
    assert main([*args, "--iterations", "4", "--out", str(tmp_path / "straight")]) == 0
    torch.manual_seed(999)  # as another process would start
    assert main([*args, "--iterations", "2", "--out", str(tmp_path / "resumed")]) == 0
    torch.manual_seed(12345)  # and another before the resume
    assert main([*args, "--iterations", "4", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and "/torch_rng" in a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_resuming_with_fewer_iterations_than_done_says_nothing_was_trained(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--iterations", "4", "--meta-batch-size", "2", "--no-progress", "--out", run]) == 0
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--iterations", "2", "--no-progress"]) == 0
    assert "at iteration 4, past --iterations 2: nothing trained" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before


def test_a_finished_run_whose_step_anneals_over_its_iterations_is_not_told_to_raise_them(tmp_path, capsys):
    """A finished Reptile-style run (outer step annealed to 0 over its iterations) said "give a larger --iterations
    to continue it", which the resume then refused without saying why."""
    run = str(tmp_path / "run")
    args = ["--config", "sinusoid-reptile", "--iterations", "3", "--val-every", "0", "--no-progress", "--out", run]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["train", "--out", run, "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "it is finished" in out and "anneals the outer step to 0" in out and "give a larger" not in out
    err = cli_error(["train", "--out", run, "--resume", "--iterations", "6", "--no-progress"], capsys)
    assert "iterations 3 in the run, 6 given (outer_lr_schedule 'linear' anneals" in err


def test_a_resumed_run_says_what_this_session_trained(tmp_path, capsys):
    """`trained 4 iterations in 3.2 s (77 it/s)` after a session of 2 read as 4 in 3.2 s at a rate that did not
    divide: the span, this session's count and the total time are said apart."""
    run = str(tmp_path / "run")
    assert main(["train", "--iterations", "2", "--meta-batch-size", "2", "--no-progress", "--out", run]) == 0
    assert "trained 2 iterations in " in capsys.readouterr().out
    assert main(["train", "--out", run, "--resume", "--iterations", "5", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "trained iterations 2 -> 5 (3 this session) in " in said and " s in all (" in said, said
    assert "it/s this session)" in said


def test_resuming_a_finished_run_with_other_settings_leaves_its_files_as_trained(tmp_path, capsys):
    """Nothing trains, so its config.toml keeps the step size it was trained with and its logs gain no line."""
    run = tmp_path / "run"
    assert main(["train", "--iterations", "3", "--meta-batch-size", "2", "--no-progress", "--out", str(run)]) == 0
    files = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}  # noqa: E731
    before = files()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--iterations", "3", "--inner-lr", "0.5",
                 "--no-progress"]) == 0
    assert "at iteration 3, at --iterations 3: nothing trained (its files unchanged)" in capsys.readouterr().out
    assert files() == before and "config.toml" in before



def test_a_best_newer_than_the_last_checkpoint_is_removed_when_resumed_with_other_settings(tmp_path, capsys):
    """A kill between a new best and the last checkpoint leaves a best from iterations the resumed session trains
    again: resumed as it was, they write the same best again; resumed with other settings it would be another
    trajectory's, so it is removed (said and logged) and the best is tracked afresh."""
    run, early = tmp_path / "run", tmp_path / "early"
    make_trainer(config(iterations=12), run, progress=False).fit()
    early.mkdir()
    for path in checkpoint.paths(run / "last"):
        early.joinpath(path.name).write_bytes(path.read_bytes())
    make_trainer(config(), run, progress=False).fit(resume=True)
    best, info = checkpoint.load(run / "best")
    assert info["iteration"] > 12  # a validation after 12 improved

    def kill_before_last() -> None:  # `last` of iteration 12 beside the newer `best`
        for path in early.iterdir():
            run.joinpath(path.name).write_bytes(path.read_bytes())

    kill_before_last()
    make_trainer(config(), run, progress=False).fit(resume=True)
    again, again_info = checkpoint.load(run / "best")
    assert again_info["iteration"] == info["iteration"] and same(again["learner"], best["learner"])
    kill_before_last()
    capsys.readouterr()
    make_trainer(config(iterations=14, val_every=100, time_budget=60), run, progress=False).fit(resume=True)
    assert checkpoint.read_info(run / "best")["iteration"] == info["iteration"]  # the budget shapes no iterate
    kill_before_last()
    make_trainer(config(iterations=14, val_every=14, outer_lr=0.0005), run, progress=False).fit(resume=True)
    assert f"removed {run / 'best'} (iteration {info['iteration']})" in capsys.readouterr().err
    assert checkpoint.read_info(run / "best")["iteration"] == 14  # the first validation after the resume
    assert {"iteration": 12, "best_removed": info["iteration"]} in log_lines(run)


@pytest.mark.parametrize(("first", "by"), [(signal.SIGTERM, "a second SIGTERM"),
                                           (signal.SIGINT, "SIGTERM after Ctrl-C")])
def test_a_second_signal_aborts_in_one_line_that_names_the_checkpoint_that_stays(tmp_path, monkeypatch, capsys,
                                                                                  straight, first, by):
    """The first signal asks for a stop after the iteration; a SIGTERM after it aborts inside it: exit code 143, the
    last checkpoint named, and the command that continues it (it ended as a bare "interrupted", code 130). torchrun
    escalates a doubled Ctrl-C to SIGTERM: the abort names both (it read "a second Ctrl-C")."""
    from metagrad.train import Trainer

    step, run = Trainer.step, tmp_path / "run"

    def stopped_twice(self):
        if self.iteration == 5:
            os.kill(os.getpid(), first)
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self)

    monkeypatch.setattr(Trainer, "step", stopped_twice)
    args = ["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL]
    assert main(args) == 143
    err = capsys.readouterr().err
    assert f"aborted by {by} in iteration 6; the last checkpoint ({run / 'last'}, iteration 5) stays" in err
    assert "continue with: metagrad train" in err and err.rstrip().endswith("--resume"), err
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert same(final(run), final(straight)) and log_lines(run) == log_lines(straight)


def test_resume_attempts_killed_before_a_checkpoint_leave_one_resumed_with_line(tmp_path):
    """Each resume logs the settings it changed; one killed before its first checkpoint trained nothing that stays,
    so its line goes when the run is resumed again (two attempts left two lines)."""
    from metagrad.experiment import train

    run = tmp_path / "run"
    train(config(iterations=4), run, progress=False)

    def killed(trainer, iteration, metrics):
        raise Crash

    for _ in range(2):
        with pytest.raises(Crash):
            train(config(iterations=6, checkpoint_every=100), run, resume=True, progress=False, on_iteration=killed)
    train(config(iterations=6, checkpoint_every=100), run, resume=True, progress=False)
    notes = [ln for ln in log_lines(run) if "resumed_with" in ln]
    assert len(notes) == 1 and notes[0]["iteration"] == 4 and notes[0]["resumed_with"]["iterations"] == [4, 6]


def test_a_folder_with_another_runs_config_and_no_checkpoint_is_not_overwritten(tmp_path, capsys):
    """A run whose checkpoints are gone (or a mistyped --out) kept its config.toml and log; a new run of other
    settings there overwrote both without a word (eval's hint led there). The same run killed before its first
    checkpoint still starts over."""
    from metagrad.cli import main
    from metagrad.experiment import train

    run = tmp_path / "run"
    run.mkdir()  # as a run killed (-9) before its first checkpoint leaves it: the same command starts it over
    (run / "config.toml").write_text(config(iterations=4, time_budget=5).to_toml())
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "meta_loss": 1.0}) + "\n")
    train(config(iterations=4), run, progress=False)
    assert checkpoint.exists(run / "last")
    for f in run.glob("*.safetensors"):
        f.unlink()
    for f in run.glob("*.json"):
        f.unlink()
    kept = {name: (run / name).read_text() for name in ("config.toml", "metrics.jsonl")}
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "it holds a run's config.toml: the run saved no checkpoint yet" in err
    assert f"metagrad train --config {run / 'config.toml'} --out {run}" in err
    with pytest.raises(CheckpointError, match=r"holds another run.s config\.toml \(and its log\) but no checkpoint"):
        train(config(iterations=4, inner_steps=2), run, progress=False)
    assert {name: (run / name).read_text() for name in kept} == kept
    assert main(["eval", str(tmp_path)]) == 2
    assert "holds no run (no checkpoint, no config.toml); give a run's folder" in capsys.readouterr().err
    old = tmp_path / "old"  # a config.toml from before keys were added (they take their defaults): eval's hint works
    old.mkdir()
    (old / "config.toml").write_text("\n".join(ln for ln in config(iterations=2).to_toml().splitlines()
                                               if not ln.startswith(("val_as", "device", "distinct_characters"))))
    assert main(["train", "--config", str(old / "config.toml"), "--out", str(old), "--no-progress"]) == 0
    mine = tmp_path / "mine"  # a config written into the folder to train from
    mine.mkdir()
    (mine / "config.toml").write_text('[task]\nfamily = "linreg"\n[train]\niterations = 2\n')
    assert main(["train", "--config", str(mine / "config.toml"), "--out", str(mine), "--no-progress"]) == 0


def _full_disk_at(name: str):
    """``os.write`` as on a disk that fills inside a write to file ``name``: half its bytes land, then ENOSPC (the
    unbuffered write that ``files.append_line`` makes; Python's buffered one held bytes that the cleanup's flush
    then failed to write, which tore the line)."""
    real_write = os.write

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) != name:
            return real_write(fd, data)
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="names the file of a descriptor from /proc (Linux)")
def test_a_full_disk_while_appending_a_log_line_leaves_no_torn_line_and_names_the_file(tmp_path, monkeypatch,
                                                                                         capsys):
    """The session's record in segments.jsonl is its last write: a full disk there stopped with an error that named
    no file and left half a line."""
    run = tmp_path / "run"
    args = ["train", "--config", "sinusoid-maml", "--out", str(run), *CLI_SMALL]
    assert main([*args, "--iterations", "2"]) == 0
    before = (run / "segments.jsonl").read_bytes()
    monkeypatch.setattr(files.os, "write", _full_disk_at("segments.jsonl"))
    err = cli_error([*args, "--iterations", "3", "--resume"], capsys)
    assert "No space left on device" in err and str(run / "segments.jsonl") in err and "free space" in err
    assert "any checkpoint it wrote is whole: run the command again, with --resume once it has written one" in err
    assert (run / "segments.jsonl").read_bytes() == before
    monkeypatch.undo()
    assert main([*args, "--iterations", "4", "--resume"]) == 0
    segments = [json.loads(ln) for ln in (run / "segments.jsonl").read_text().splitlines()]
    assert [(s["start"], s["end"]) for s in segments] == [(0, 2), (2, 3), (3, 4)]  # the lost record recovered


def test_a_torn_line_left_in_a_log_is_dropped_before_the_next_is_appended(tmp_path):
    """A writer killed inside a line (or a disk that filled outside Python) left a fragment; the session record
    appended after it joined it, and a line that does not parse lost that session from the run's history."""
    log = tmp_path / "segments.jsonl"
    log.write_text('{"start": 0, "end": 2}\n{"start": 2, "en')
    files.append_line(log, '{"start": 2, "end": 3}')
    assert [json.loads(ln) for ln in log.read_text().splitlines()] == [{"start": 0, "end": 2}, {"start": 2, "end": 3}]
    log.write_text('{"sta')  # nothing whole: the fragment alone goes
    files.append_line(log, "{}")
    assert log.read_text() == "{}\n"
    log.write_text('{"start": 0}\n{"start": 2}')  # a whole line without its newline (edited by hand) stays
    files.append_line(log, "{}")
    assert log.read_text() == '{"start": 0}\n{"start": 2}\n{}\n'


def test_a_damaged_json_file_is_named_with_its_fix_or_made_again(tmp_path, capsys):
    """A results file damaged from outside (metagrad replaces its files whole) gave a JSONDecodeError traceback:
    ``files.read_json`` names it and what to do, or, for a file its caller makes again, says so and gives None."""
    path = tmp_path / "study.json"
    assert files.read_json(path, fix="restore it") is None  # none yet
    path.write_text('{"env": "navigation2d",\n')
    with pytest.raises(CheckpointError, match=rf"{path} is damaged \(not JSON: .*\); restore it$"):
        files.read_json(path, fix="restore it")
    assert files.read_json(path) is None
    err = capsys.readouterr().err
    assert f"{path} is damaged (not JSON" in err and "making it again" in err
    path.write_bytes(b"\xff\xfe{")  # not even text
    assert files.read_json(path) is None
    path.write_text("[1, 2]")  # JSON, but not the object every results file is
    with pytest.raises(CheckpointError, match=rf"{path} is damaged \(a JSON list, not an object\); restore it$"):
        files.read_json(path, fix="restore it")
    assert files.read_json(path) is None
    path.write_text('{"a": 1}')
    assert files.read_json(path, fix="restore it") == {"a": 1}


def test_an_interrupted_figure_leaves_the_one_before(tmp_path, monkeypatch):
    """Figures are written as every results file, atomically: Ctrl-C inside matplotlib's write left a 124-byte
    PNG that no viewer opens."""
    from metagrad.plots import plt, save_figure

    path = tmp_path / "welch.png"
    save_figure(plt.subplots()[0], path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    fig = plt.subplots()[0]

    def torn(target, **kw):
        target.write(b"\x89PNG\r\n\x1a\n")  # the first bytes, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(fig, "savefig", torn)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["welch.png"]
    for suffix, start in ((".pdf", b"%PDF"), (".svg", b"<?xml")):  # the format its suffix names
        assert save_figure(plt.subplots()[0], path.with_suffix(suffix)).read_bytes().startswith(start)


def test_sigterm_outside_a_training_loop_ends_as_ctrl_c_does(monkeypatch, capsys):
    """Between runs, or while they are tested, SIGTERM ended the process without a word (exit -15); it now ends the
    command in one line with 143, and the handler before is put back."""
    import metagrad.cli as cli

    def terminated_while_testing(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the handler raises before this ends)
        return 0

    monkeypatch.setattr(cli, "cmd_status", terminated_while_testing)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["status"]) == 143
    assert "metagrad status: interrupted (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    # a command that ends in an error ignores SIGTERM while it exits (torchrun's must not cut the line short): kept
    monkeypatch.setattr(cli, "cmd_status", lambda args: cli_error_raised())
    try:
        assert main(["status"]) == 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def cli_error_raised() -> int:
    raise CheckpointError("a peer stopped")


def test_a_damaged_files_error_crosses_a_process_pool_whole_and_keeps_its_fault():
    """``Damaged`` did not unpickle (its arguments were not the message), so a study worker's error became a
    BrokenProcessPool; ``instead`` replaces the fix alone, also where the fault holds a semicolon."""
    import pickle

    from metagrad.errors import Damaged

    e = Damaged("checkpoint runs/a;b/last.safetensors", "bad header; cut short", "start a new run")
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), str(again), again.fault) == (Damaged, str(e), e.fault)
    assert str(e.instead("retrain it")) == ("checkpoint runs/a;b/last.safetensors is damaged (bad header; cut short); "
                                            "retrain it")


def test_a_best_from_before_a_setting_existed_counts_as_the_same_trajectory():
    """A best written after the last checkpoint is removed when the resumed session's settings differ; a config
    stored before a setting existed (meta-RL's discount_from) read as different, and the best was removed."""
    from metagrad.loop import same_trajectory

    now = {"algo": {"algo": "maml", "discount_from": "step"}, "train": {"outer_lr": 0.1}}
    assert same_trajectory({"algo": {"algo": "maml"}, "train": {"outer_lr": 0.1}}, now)
    assert not same_trajectory({"algo": {"algo": "maml"}, "train": {"outer_lr": 0.2}}, now)
