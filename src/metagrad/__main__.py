"""``python -m metagrad`` and the ``metagrad`` command: the command line, with Ctrl-C (SIGTERM) during start-up
(importing torch) answered in one line, exit code 130 (143), and a distributed run whose peer died left without the
teardown that can abort it."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _importing(frame: FrameType | None) -> bool:
    """Whether the interrupted code runs inside an import (its own, or one torch's C++ started)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _Terminated(KeyboardInterrupt):
    """SIGTERM during start-up, outside an import: ends as Ctrl-C does, with 143."""


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C (or SIGTERM): a KeyboardInterrupt as usual, but inside an import one line and exit code 130 (143) at
    once. Raised there, it aborts the process when torch's C++ called the interrupted code (pybind11
    error_already_set, exit -6, seen in CI), or comes out as another error with a traceback (a RuntimeError from a
    class being defined, exit 1), or meets a half-imported torch's finalization (exit -2); SIGTERM's default action
    ended the process without a word (exit -15). Nothing is being written during an import."""
    if _importing(frame):
        print(f"metagrad: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr, flush=True)
        os._exit(128 + signum)
    if signum == signal.SIGTERM:
        raise _Terminated
    signal.default_int_handler(signum, frame)


def run() -> int:
    """Import the command line and run it; Ctrl-C while importing or reading the options stops quietly."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
        signal.signal(signal.SIGINT, _on_interrupt)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and os.environ.get("WORLD_SIZE", "1") == "1":
        signal.signal(signal.SIGTERM, _on_interrupt)  # (torchrun's SIGTERM must end a blocked process at once)
    from .cli import main

    try:
        code = main()
    except KeyboardInterrupt as e:  # while the options and presets are read, before a command handles its own
        terminated = isinstance(e, _Terminated)
        print(f"metagrad: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    for sig in (signal.SIGINT, signal.SIGTERM):  # done and written: a signal in the interpreter's teardown must not
        signal.signal(sig, signal.SIG_IGN)  # turn a finished command into a failure (exit -2 with nothing said)
    distributed = sys.modules.get("metagrad.distributed")
    if distributed is not None and distributed.peer_failed():
        # the message is out and the checkpoint saved; gloo's threads for the dead peer can abort the interpreter's
        # teardown (exit -6 instead of 2, seen once in CI), so leave without it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(run())
