"""Long runs accumulate over sessions: each session appends a segment (iterations, time, command, commit, machine),
and the index says how much of each budget is done."""

from __future__ import annotations

import json

from metagrad.cli import main
from metagrad.reproduce import longruns


def test_sessions_append_segments_and_the_index_counts_the_budget(tmp_path, capsys, monkeypatch):
    run = tmp_path / "long" / "row" / "maml"
    base = ["train", "--config", "sinusoid-maml", "--out", str(run), "--meta-batch-size", "2", "--no-progress"]
    monkeypatch.setattr("sys.argv", ["metagrad", *base, "--iterations", "3"])
    assert main([*base, "--iterations", "3"]) == 0
    monkeypatch.setattr("sys.argv", ["metagrad", *base, "--iterations", "8", "--resume"])
    assert main([*base, "--iterations", "8", "--resume"]) == 0
    segments = [json.loads(ln) for ln in (run / "segments.jsonl").read_text().splitlines()]
    assert [(s["start"], s["end"], s["stopped"]) for s in segments] == [(0, 3, "done"), (3, 8, "done")]
    assert segments[1]["command"].startswith("metagrad train --config sinusoid-maml") and "--resume" in \
        segments[1]["command"]
    assert segments[0]["machine"]["cpus"] >= 1 and segments[0]["machine"]["processes"] == 1
    assert all(s["seconds"] >= 0 for s in segments)
    row = longruns.Row("a test row", "10 iterations", "row", "metagrad train ...", target=10)
    status = longruns.row_status(row, tmp_path / "long")
    assert status["done"] == 0.8 and status["runs"][0]["segments"] == 2
    monkeypatch.setattr(longruns, "ROWS", (row,))
    assert main(["status", str(tmp_path / "long")]) == 0
    index = (tmp_path / "long" / "INDEX.md").read_text()
    assert "| a test row | 10 iterations | 1 x 10 iterations | 80% |" in index and "metagrad train ..." in index
