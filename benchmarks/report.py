"""Where the benchmark scripts put what they measured: ``results/<name>.json`` and ``results/<name>.md``, each with
where it was measured (``provenance``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent
LOAD_AT_IMPORT = os.getloadavg()[0]  # the scripts import this module first: the machine's load before they ran


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    """Where and when a result was measured: the commit (and whether its code, ``src`` or ``benchmarks`` but their
    results, had changes), the UTC time, the CPU, its cores, the load average before the run, the command line."""
    dirty = [line for line in _git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks",
                                   ":!benchmarks/results").splitlines()]
    return {"commit": _git("rev-parse", "--short", "HEAD") or "unknown", "uncommitted_changes": bool(dirty),
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "load_average_1min": round(LOAD_AT_IMPORT, 2),
            "command": " ".join(["python", *sys.argv])}


def provenance_line(p: dict) -> str:
    """``provenance()`` as the first line of a Markdown report."""
    changes = " with uncommitted changes" if p["uncommitted_changes"] else ""
    return (f"Measured at commit {p['commit']}{changes}, {p['date_utc']} UTC, on {p['cpu']} ({p['cores']} cores, "
            f"load {p['load_average_1min']} before the run): `{p['command']}`")


def write_report(name: str, data: dict, lines: list[str]) -> None:
    """``data`` as ``results/<name>.json``, ``lines`` as ``results/<name>.md`` (both with their provenance); the
    lines printed too."""
    RESULTS.mkdir(exist_ok=True)
    p = provenance()
    (RESULTS / f"{name}.json").write_text(json.dumps({"provenance": p, **data}, indent=1))
    text = "\n".join([provenance_line(p), "", *lines]) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
