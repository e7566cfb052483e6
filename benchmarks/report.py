"""Where the benchmark scripts put what they measured: ``results/<name>.json`` and ``results/<name>.md``."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, data: object, lines: list[str]) -> None:
    """``data`` as ``results/<name>.json``, ``lines`` as ``results/<name>.md``; the lines printed too."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
