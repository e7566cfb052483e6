"""The ``metagrad`` command: ``train``, ``eval``, ``reproduce``, ``tradeoff``, ``compare``, ``curves`` and ``status``.

User errors (bad values, missing files, diverged runs) print one line and exit with code 2;
Ctrl-C during training saves a checkpoint and exits with code 130 (after SIGTERM: 143).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import select
import signal
import sys
import threading
from typing import TYPE_CHECKING

from ..errors import Interrupted, MetagradError, WorkerLost
from .parser import EXIT_INTERRUPTED, EXIT_USAGE, build_parser
from .reproduce import cmd_reproduce, metarl_request
from .studies import cmd_compare, cmd_curves, cmd_status, cmd_tradeoff
from .train import cmd_eval, cmd_train

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["bars_off", "build_parser", "main", "metarl_request", "run_command"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with bars_off(getattr(args, "no_progress", False)), sigterm_as_interrupt():
        return run_command(args)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which handles it itself): ends the command as Ctrl-C does, with 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` while a command runs (it ended the process without a word between runs or
    while they were tested); the handler before is put back after."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get("WORLD_SIZE", "1") != "1":
        yield  # (under torchrun, whose SIGTERM must end a process blocked in a collective at once)
        return

    def terminated(_signum: int, _frame: object) -> None:
        raise Terminated

    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is terminated:  # not if an error's exit set it aside (run_command)
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


@contextlib.contextmanager
def bars_off(quiet: bool) -> Iterator[None]:
    """tqdm's ``TQDM_DISABLE`` while a command runs with --no-progress: it reaches the bars the command does not
    draw itself (the data loaders' decoding), and ends with the command."""
    before = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if quiet and before is None:
            del os.environ["TQDM_DISABLE"]
        elif quiet:
            os.environ["TQDM_DISABLE"] = before


def run_command(args: argparse.Namespace) -> int:
    """The command's function; a known failure ends as one line on stderr and an exit code."""
    try:
        return {"train": cmd_train, "eval": cmd_eval, "reproduce": cmd_reproduce, "tradeoff": cmd_tradeoff,
                "compare": cmd_compare, "curves": cmd_curves, "status": cmd_status}[args.command](args)
    except Interrupted as e:
        print(f"metagrad {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except MetagradError as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # exiting with this line: torchrun's SIGTERM must not cut it
        print(f"metagrad {args.command}: error: {e}{_resumes(args.command) if isinstance(e, WorkerLost) else ''}",
              file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full or read-only disk, an unwritable folder: the file and the reason, in one line
        if isinstance(e, BrokenPipeError) and stdout_gone():  # its reader left (`metagrad eval RUN | head`): done
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
            return 0
        where = f" ({e.filename})" if e.filename else ""
        print(f"metagrad {args.command}: error: cannot write or read{where}: {e.strerror or e}; {os_fix(e)}"
              f"{_resumes(args.command) if e.errno in FULL else ''}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # outside a training loop (which says so itself): between runs, building them
        how = " (SIGTERM)" if isinstance(e, Terminated) else ""
        print(f"metagrad {args.command}: interrupted{how}{_resumes(args.command)}", file=sys.stderr)
        return 128 + signal.SIGTERM if how else EXIT_INTERRUPTED
    except RuntimeError as e:  # torch's allocation failures (its OutOfMemoryError is a RuntimeError too)
        wanted = out_of_memory(e)
        if wanted is None:
            raise
        print(f"metagrad {args.command}: error: out of memory{wanted}; lower the sizes that set it (shots, query, "
              "hidden, meta_batch_size, inner_steps, eval_query or task_chunk)", file=sys.stderr)
        return EXIT_USAGE


def stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has left (``poll`` flags it): a broken pipe elsewhere is an
    error. Without ``poll`` (Windows) every broken pipe is taken for stdout's."""
    if not hasattr(select, "poll"):
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # (no file descriptor behind sys.stdout)
        return False


def out_of_memory(e: RuntimeError) -> str | None:
    """For torch's failure to allocate: how much it asked for (e.g. " (asked for 32.0 GB at once)"); else None."""
    text = str(e)
    if type(e).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    return f" (asked for {int(asked[1]) / 1e9:,.1f} GB at once)" if asked else ""


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a disk, a quota or a file size limit that filled mid-run


def _resumes(command: str) -> str:
    """What a run stopped by a full disk or an interrupt keeps: its checkpoints are written whole or not at all."""
    if command == "train":
        return " (any checkpoint it wrote is whole: run the command again, with --resume once it has written one)"
    if command in ("reproduce", "tradeoff"):
        return " (any checkpoint it wrote is whole: run the command again and it resumes)"
    return ""


def os_fix(e: OSError) -> str:
    """What to do about a failed read or write: the fix its cause calls for."""
    if e.errno in FULL:
        return "free space (or raise the file size limit), or choose another folder"
    if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "a file stands where a folder is needed, or a folder where a file is: choose another path"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write to"
    if e.errno == errno.EPIPE:
        return "a process it wrote to has ended: see the lines before this one for why"
    return "check the path, free space, or choose another folder"
