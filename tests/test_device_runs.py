"""``benchmarks/device_runs.sh rows``: runs side by side on one lent GPU, each stopped with a checkpoint at the
lease's deadline and packed for the way back. Run here on the CPU with this machine's Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_runs.sh"


def _train(out: Path, iterations: int) -> str:
    return (f"train --config sinusoid-maml --iterations {iterations} --meta-batch-size 2 --checkpoint-every 5 "
            f"--val-every 0 --eval-tasks 5 --threads 1 --out {out}")


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_rows_runs_side_by_side_stops_the_late_one_with_a_checkpoint_and_packs_both(tmp_path):
    short, long = tmp_path / "short", tmp_path / "long"
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "rows", str(out), "0", "25", _train(short, 3),
                           _train(long, 10**7)], env=env, capture_output=True, text=True, timeout=180)
    assert "SIGTERM" in done.stdout, done.stdout + done.stderr  # the long row outlived the deadline
    assert done.returncode != 0  # and says so in the exit code (130: interrupted)
    segments = [json.loads(line) for line in (long / "segments.jsonl").read_text().splitlines()]
    assert segments[-1]["stopped"] == "interrupted" and segments[-1]["end"] > 0  # stopped with a checkpoint
    assert (long / "last.safetensors").exists()
    assert json.loads((short / "last.json").read_text())["iteration"] == 3  # the short row finished on its own
    with tarfile.open(out / "runs.tar.gz") as packed:
        names = packed.getnames()
    for run in (short, long):
        assert f"{run.as_posix().lstrip('/')}/last.safetensors" in names


def test_rows_refuses_a_command_without_its_out_folder(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "rows", str(tmp_path / "o"), "1", "5", "train --config sinusoid-maml"],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "give the run's --out folder" in done.stderr


def test_slim_takes_results_out_of_what_travels_and_unslim_puts_it_back(tmp_path):
    """The device tool sends git's tracked and unignored files (64 MiB at most); results/ stays on disk throughout."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "device_runs.sh").write_bytes(SCRIPT.read_bytes())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.txt").write_text("kept")
    (tmp_path / "README.md").write_text("x")
    git = ["git", "-C", str(tmp_path)]
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run([*git, *args], check=True)

    def travels() -> set[str]:
        listed = subprocess.run([*git, "ls-files", "--cached", "--others", "--exclude-standard"], check=True,
                                capture_output=True, text=True).stdout
        return set(listed.split())

    before = travels()
    assert "results/run.txt" in before
    subprocess.run(["bash", str(tmp_path / "benchmarks" / "device_runs.sh"), "slim"], check=True, capture_output=True)
    assert travels() == before - {"results/run.txt"} and (tmp_path / "results" / "run.txt").read_text() == "kept"
    subprocess.run(["bash", str(tmp_path / "benchmarks" / "device_runs.sh"), "unslim"], check=True, capture_output=True)
    assert travels() == before
    assert subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout == ""
    assert "/results/" not in (tmp_path / ".git" / "info" / "exclude").read_text()
