"""The benchmark harness: every results file says where it was measured, a failed peer is named instead of dropping
silently out of the ratio, and the peer's fastest setting is the one compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402
import navigation_speed  # noqa: E402
import report  # noqa: E402


def test_provenance_names_the_commit_machine_and_command():
    p = report.provenance()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    assert p["commit"] == head.stdout.strip()
    assert p["cores"] >= 1 and p["cpu"] and p["date_utc"][:2] == "20"
    line = report.provenance_line(p)
    assert p["commit"] in line and p["command"] in line


def test_write_report_puts_provenance_in_both_files(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    report.write_report("x", {"value": 1}, ["| a |"])
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["value"] == 1 and data["provenance"]["commit"]
    assert (tmp_path / "x.md").read_text().startswith("Measured at commit " + data["provenance"]["commit"])


def result_with(timing: dict) -> dict:
    return {"machine": {**report.provenance(), "torch": "2", "threads": 2, "device": "cpu", "peak_gflops": 1.0},
            "timing": timing, "memory": {}, "gflop_per_iteration": {}}


def test_failed_peer_is_named_not_dropped_silently():
    md = bench.format_markdown(result_with({"W1-so": {
        "metagrad": [{"median_ms": 2.0}], "higher": [{"median_ms": 10.0}],
        "torchopt": ["ModuleNotFoundError: No module named 'torchopt'"]}}))
    row = next(line for line in md.splitlines() if line.startswith("| W1-so"))
    assert "failed" in row and "5.00x" in row  # the ratio over the peers that ran, the failure in the table
    assert "torchopt on W1-so: ModuleNotFoundError" in md


def test_missing_variant_is_not_a_failure():
    md = bench.format_markdown(result_with({"W1-fo": {
        "metagrad": [{"median_ms": 2.0}], "higher": ["NotImplementedError: higher has no first-order MAML mode"]}}))
    row = next(line for line in md.splitlines() if line.startswith("| W1-fo"))
    assert "failed" not in row and "Failed" not in md


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_peer_row_is_its_fastest_setting(order):
    times = {1: 7.0, 2: 5.5}
    rows = [{"library": "pytorch-maml-rl", "learner_threads": t, "seconds_per_iteration_median": times[t]}
            for t in order]
    best = navigation_speed.fastest(rows)
    assert best["learner_threads"] == 2 and best["seconds_per_iteration_median"] == 5.5
    assert best["other_settings"] == [{"learner_threads": 1, "seconds_per_iteration_median": 7.0}]


def test_peer_row_says_why_it_did_not_run():
    skipped = {"library": "pytorch-maml-rl", "skipped": "no checkout given (--maml-rl PATH)"}
    assert navigation_speed.fastest([skipped, skipped]) == skipped


def test_every_metagrad_name_a_benchmark_imports_exists():
    """Some benchmark scripts run in another environment (pytorch-maml-rl's) and import metagrad by name there: a
    name moved in metagrad fails them only when run, so every ``from metagrad... import`` in benchmarks/ is resolved
    here (one did: ``metagrad.checkpoint.write_json`` moved to ``metagrad.files``)."""
    import ast
    import importlib

    checked = 0
    for script in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "metagrad":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    attr = getattr(module, alias.name, None)
                    if attr is None:
                        importlib.import_module(f"{node.module}.{alias.name}")  # a submodule
                    checked += 1
    assert checked > 10
