"""Shared helpers for the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import metagrad as mg
from metagrad.tasks import Split, TaskBatch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _signal_handlers():
    """Each test starts with the process's Ctrl-C and SIGTERM handlers: a command run in-process that ends in an error
    leaves SIGTERM ignored (as it exits, in a real process), which processes spawned by later tests inherited."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def small_mlp(in_dim: int = 1, hidden: tuple[int, ...] = (8, 8), activation: str = "tanh") -> nn.Module:
    """A small smooth network (tanh) so that finite differences are accurate."""
    return mg.models.MLP(in_dim, hidden, 1, activation)


def sinusoid_batch(tasks: int = 6, shots: int = 5, query: int = 7, seed: int = 0,
                   dtype: torch.dtype = torch.float64) -> TaskBatch:
    return mg.tasks.Sinusoid(shots=shots, query=query).sample(tasks, torch.Generator().manual_seed(seed)).to(dtype)


def cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run ``metagrad argv``, which must stop with exit code 2 and a one-line message; return the message."""
    from metagrad.cli import main

    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def grads_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


__all__ = ["Split", "TaskBatch", "cli_error", "grads_of", "sinusoid_batch", "small_mlp"]


@pytest.fixture(scope="session")
def real_omniglot(tmp_path_factory):
    """The real Omniglot splits from ../shared (decoded once per test session into a private cache)."""
    import os

    from images_fixtures import SHARED_OMNIGLOT
    from metagrad.tasks import images

    if not SHARED_OMNIGLOT.is_dir():
        pytest.skip("the real Omniglot is in ../shared/data/omniglot")
    old = os.environ.get("METAGRAD_CACHE")
    os.environ["METAGRAD_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield images.omniglot_splits(SHARED_OMNIGLOT)
    finally:
        if old is None:
            os.environ.pop("METAGRAD_CACHE", None)
        else:
            os.environ["METAGRAD_CACHE"] = old


def spawned_workers(proc: subprocess.Popen) -> list[int]:
    """The process ids of the spawned multiprocessing workers in ``proc``'s process group."""
    found = subprocess.run(["pgrep", "-g", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def all_ended(pids: list[int], within: float) -> bool:
    """Whether every process in ``pids`` has ended (gone, or a zombie not yet reaped) within ``within`` seconds."""
    def ended(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, IndexError):
            return True

    deadline = time.monotonic() + within
    while not all(map(ended, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(map(ended, pids))


@contextlib.contextmanager
def group_killed_after(proc: subprocess.Popen):
    """Whatever the test finds, nothing it started runs on after it (spawned workers keep the process group)."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def folder_state(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file under ``root`` with its size and modification time, and every folder: equal before and after a
    command that must write nothing."""
    return {str(f.relative_to(root)): None if f.is_dir() else (f.stat().st_size, f.stat().st_mtime_ns)
            for f in root.rglob("*")}
