"""``benchmarks/device_runs.sh rows``: runs side by side on one lent GPU, each stopped with a checkpoint at the
lease's deadline and packed for the way back. Run here on the CPU with this machine's Python."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_runs.sh"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
DEADLINE = 40  # seconds: both rows have imported torch and trained an iteration by then, on a slow CI machine too


def _train(out: Path, iterations: int) -> str:
    return (f"train --config sinusoid-maml --iterations {iterations} --meta-batch-size 2 --checkpoint-every 5 "
            f"--val-every 0 --eval-tasks 5 --threads 1 --out {out}")


def test_rows_runs_side_by_side_stops_the_late_one_with_a_checkpoint_and_packs_both(tmp_path):
    short, long = tmp_path / "short", tmp_path / "long"
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "rows", str(out), "0", str(DEADLINE), _train(short, 3),
                           _train(long, 10**7)], env=env, capture_output=True, text=True, timeout=DEADLINE + 120)
    stopped_at = re.search(r"still running at (\d+) s: SIGTERM", done.stdout)
    assert stopped_at, done.stdout + done.stderr  # the long row outlived the deadline and was stopped
    assert int(stopped_at.group(1)) >= DEADLINE  # not when the short row ended
    assert done.returncode != 0  # and says so in the exit code (130: interrupted)
    segments = [json.loads(line) for line in (long / "segments.jsonl").read_text().splitlines()]
    assert segments[-1]["stopped"] == "interrupted" and segments[-1]["end"] > 0  # stopped with a checkpoint
    assert (long / "last.safetensors").exists()
    assert json.loads((short / "last.json").read_text())["iteration"] == 3  # the short row finished on its own
    with tarfile.open(out / "runs.tar.gz") as packed:
        names = packed.getnames()
    for run in (short, long):
        assert f"{run.as_posix().lstrip('/')}/last.safetensors" in names


def test_rows_refuses_a_command_without_its_out_folder_before_starting_any(tmp_path):
    good = _train(tmp_path / "good", 3)
    done = subprocess.run(["bash", str(SCRIPT), "rows", str(tmp_path / "o"), "1", "5", good,
                           "train --config sinusoid-maml"],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "give the run's --out folder" in done.stderr
    assert not (tmp_path / "good").exists()  # the first row never started (it would have run on unwatched)


def test_slim_takes_results_out_of_what_travels_and_unslim_puts_the_index_back_as_it_was(tmp_path):
    """The device tool sends git's tracked and unignored files (64 MiB at most); results/ stays on disk throughout,
    and the index comes back exactly, staged changes included; twice, or after a commit, it refuses."""
    (tmp_path / "benchmarks").mkdir()
    script = tmp_path / "benchmarks" / "device_runs.sh"
    script.write_bytes(SCRIPT.read_bytes())
    (tmp_path / "results").mkdir()
    for name in ("run.txt", "staged.txt"):
        (tmp_path / "results" / name).write_text("kept")
    (tmp_path / "README.md").write_text("x")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "c"]):
        subprocess.run([*git, *args], check=True)
    (tmp_path / "results" / "staged.txt").write_text("staged")
    (tmp_path / "results" / "new.txt").write_text("new")
    subprocess.run([*git, "add", "results"], check=True)
    (tmp_path / "results" / "staged.txt").write_text("changed again")  # staged and then changed: git rm needs -f

    def travels() -> set[str]:
        listed = subprocess.run([*git, "ls-files", "--cached", "--others", "--exclude-standard"], check=True,
                                capture_output=True, text=True).stdout
        return set(listed.split())

    def index() -> str:
        return subprocess.run([*git, "ls-files", "-s"], check=True, capture_output=True, text=True).stdout

    def verb(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), name], capture_output=True, text=True)

    travelling, staged = travels(), index()
    assert {"results/run.txt", "results/new.txt"} <= travelling
    assert verb("slim").returncode == 0
    assert travels() == {"README.md", "benchmarks/device_runs.sh"}
    assert (tmp_path / "results" / "run.txt").read_text() == "kept"
    assert verb("slim").returncode == 2  # twice: refused, the first one's record kept
    assert verb("unslim").returncode == 0
    assert index() == staged and travels() == travelling
    assert "/results/" not in (tmp_path / ".git" / "info" / "exclude").read_text()
    assert verb("unslim").returncode == 2  # nothing left to undo

    assert verb("slim").returncode == 0
    subprocess.run([*git, "commit", "-qm", "made while slim"], check=True)
    refused = verb("unslim")
    assert refused.returncode == 2 and "git reset --soft" in refused.stderr
