"""``python -m metagrad`` and the ``metagrad`` command: the command line, with Ctrl-C during start-up (importing
torch) answered in one line, exit code 130, and a distributed run whose peer died left without the teardown that
can abort it."""

from __future__ import annotations

import os
import sys


def run() -> int:
    """Import the command line and run it; Ctrl-C while importing or reading the options stops quietly."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("metagrad: interrupted", file=sys.stderr, flush=True)
        # straight out: nothing is open yet, and the finalization of a half-imported torch can meet the interrupt
        # again and end the process by SIGINT (exit status -2, seen once in three runs with Ctrl-C after 1 s)
        os._exit(130)
    try:
        code = main()
    except KeyboardInterrupt:  # while the options and presets are read, before a command handles its own
        print("metagrad: interrupted", file=sys.stderr)
        return 130
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
