"""``python -m metagrad`` and the ``metagrad`` command: the command line, with Ctrl-C during start-up (importing
torch) answered in one line, exit code 130."""

from __future__ import annotations

import sys


def run() -> int:
    """Import the command line and run it; Ctrl-C while importing stops quietly."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("metagrad: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(run())
