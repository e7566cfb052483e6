"""Long runs accumulate over sessions: each session appends a segment (iterations, time, command, commit, machine),
and the index says how much of each budget is done."""

from __future__ import annotations

import json
import time

import pytest

from metagrad import checkpoint
from metagrad.cli import main
from metagrad.errors import CheckpointError
from metagrad.reproduce import longruns


def test_sessions_append_segments_and_the_index_counts_the_budget(tmp_path, capsys, monkeypatch):
    began = time.monotonic()
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
    rounding = 0.05 * len(segments)  # each segment's seconds are rounded to 0.1: two of 0.1 s may add up to 0.2
    assert sum(s["seconds"] for s in segments) <= time.monotonic() - began + rounding
    assert all(s["seconds"] >= 0 for s in segments)
    row = longruns.Row("a test row", "10 iterations", "row", "metagrad train ...", target=10)
    status = longruns.row_status(row, tmp_path / "long")
    assert status["done"] == 0.8 and status["runs"][0]["segments"] == 2
    piped = longruns.Row("reward +|v - g|", "5 iterations", "none", "metagrad train --out results/long/none",
                         target=5)
    monkeypatch.setattr(longruns, "ROWS", (row, piped))
    assert main(["status", str(tmp_path / "long")]) == 0
    index = (tmp_path / "long" / "INDEX.md").read_text()
    table = [ln.replace("\\|", "") for ln in index.splitlines() if ln.startswith("|")]
    assert len(table) == 4 and len({ln.count("|") for ln in table}) == 1  # a pipe in a name ends no cell
    assert "| a test row | 10 iterations | 1 x 10 iterations | 80% | 8 | - |" in index and "metagrad train ..." in index
    assert "could not be read" not in index
    assert "| reward +v - g | 5 iterations | 1 x 5 iterations | not started |" in table[-1].replace("\\|", "")
    assert f"`metagrad train --out {tmp_path / 'long'}/none`" in index  # continues the runs it counted, not main's
    with open(run / "segments.jsonl", "a") as f:  # lines that are JSON but no segment, or a hand-edited one
        f.write('[1, 2]\n{"seconds": "abc", "commit": 3, "machine": {"host": null}}\n')  # (a TypeError stopped it)
    assert main(["status", str(tmp_path / "long")]) == 0
    assert longruns.row_status(row, tmp_path / "long")["runs"][0]["segments"] == 3
    data = (run / "last.safetensors").read_bytes()
    (run / "last.safetensors").write_bytes(data[:-5000])  # its tensors cut short, the header whole: counted as whole
    assert main(["status", str(tmp_path / "long")]) == 0
    index = (tmp_path / "long" / "INDEX.md").read_text()
    assert "Checkpoints that could not be read" in index and f"- {run}:" in index and "| 0% |" in index
    assert f"checkpoint {run / 'last.safetensors'} is damaged (the file is cut short ({len(data) - 5000} of " \
        f"{len(data)} bytes))" in index
    (run / "best.safetensors").write_bytes(data[:-100])  # best damaged too: not offered as the policy alone
    with pytest.raises(CheckpointError, match=r"best\.safetensors is damaged too: start a new run"):
        checkpoint.read_info(run / "last")
    (run / "last.safetensors").write_bytes(data[:100])  # the header itself cut short
    assert main(["status", str(tmp_path / "long")]) == 0
    assert "the header is cut short" in (tmp_path / "long" / "INDEX.md").read_text()
    runs = [{"iteration": 5, "env_steps": 2e6}, {"iteration": 7, "env_steps": 1.5e6}]
    assert (longruns._iterations(runs), longruns._steps(runs)) == ("5-7 over 2 runs", "3.5M")


def test_the_index_says_the_hours_each_row_needs_at_its_latest_rate():
    """Planning the next segments needed each run's rate read off by hand; a GPU segment's rate is not a CPU one's,
    so the latest segment's is used, and env-step budgets convert at the run's own steps per iteration."""
    segments = [{"start": 0, "end": 100, "seconds": 100.0}, {"start": 100, "end": 150, "seconds": 200.0},
                {"start": 150, "end": 150, "seconds": 5.0}, {"seconds": "abc"}]  # a segment that did not advance
    rate = longruns._last_rate(segments)
    assert rate == 4.0 and longruns._last_rate([{"start": 0, "end": 0, "seconds": 1.0}]) is None
    run = {"iteration": 150, "env_steps": 3_000, "seconds_per_iteration": rate}
    assert longruns.seconds_left(run, 500, "iterations") == 350 * 4.0
    assert longruns.seconds_left(run, 4_000, "env steps") == 50 * 4.0  # 20 steps an iteration
    assert longruns.seconds_left(run, 100, "iterations") == 0.0
    assert longruns.seconds_left({**run, "seconds_per_iteration": None}, 500, "iterations") is None
    status = {"hours_left": 1.25, "unknown_runs": 1, "runs": [run]}
    assert longruns._left(status) == "1.2 h+" and longruns._left({**status, "unknown_runs": 0}) == "1.2 h"
    assert longruns._left({**status, "hours_left": 0.0}) == "done"
    assert longruns._left({**status, "hours_left": None}) == "-"


def test_every_meta_rl_row_command_resumes_its_kept_runs():
    """A row's command must continue its runs: a change of defaults that alters the config it builds (which
    `reproduce` then refuses to resume) fails here. Compares each command's configs with the kept checkpoints'."""
    import shlex

    from metagrad import checkpoint
    from metagrad.cli import build_parser, metarl_request
    from metagrad.experiment import stored_config
    from metagrad.reproduce.metarl import method_configs

    checked = 0
    for command in [c for row in longruns.ROWS for c in row.command.split("; ")]:
        words = shlex.split(command)
        if words[1:3] not in (["reproduce", "locomotion"], ["reproduce", "navigation"]):
            continue
        args = build_parser().parse_args(words[1:])
        experiment, methods, out, sets = metarl_request(args)
        configs = method_configs(experiment, methods, args.full, args.iterations, args.time_budget, sets)
        for method, cfg in zip(methods, configs, strict=True):
            stem = longruns.ROOT / out.removeprefix("results/long/") / method / "last"
            if checkpoint.exists(stem):
                assert cfg.resume_differences(stored_config(checkpoint.read_info(stem)["config"])) == [], \
                    (command, method)
                checked += 1
    assert checked >= 15
