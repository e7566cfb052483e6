"""Where and how a result was made, stored beside runs and reproductions: the machine, the commit, the command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Where a result was measured (stored beside runs and reproductions): the host, its cores, the threads and
    processes (``torchrun``'s world) of the run, and the software."""
    import torch  # here, not at the top: the torch-free studies (compare, trade-off closed forms) stamp files too

    dist = torch.distributed
    processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return {"host": platform.node(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "processes": processes,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def commit() -> str | None:
    """The git commit of this metagrad (``+dirty`` with uncommitted changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command() -> str | None:
    """The ``metagrad ...`` command line of this process (None when metagrad was called from Python)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return "metagrad " + shlex.join(sys.argv[1:]) if "metagrad" in (argv0.name, argv0.parent.name) else None


def stamped(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with where they were made (``machine``, ``commit``, ``command``), as every results file records
    it: a file copied out of its folder still says which code and command produced it."""
    return {**results, "machine": machine(), "commit": commit(), "command": command()}
