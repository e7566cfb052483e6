"""Seconds per meta-iteration of one training run on 1 process (all threads) vs P processes (one thread each).

    .venv/bin/python benchmarks/scaling.py [--config omniglot-maml] [--iterations 30] [--processes 2]

Writes ``benchmarks/results/scaling.json``; the README's table comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from report import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def run(config: str, iterations: int, processes: int, threads: int, extra: list[str]) -> float:
    """Training seconds per iteration (the checkpoint's ``elapsed``, which excludes start-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        train = ["-m", "metagrad", "train", "--config", config, "--out", str(out), "--iterations", str(iterations),
                 "--val-every", "0", "--no-progress", *extra]
        cmd = [sys.executable, *train] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *train]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        return json.loads((out / "last.json").read_text())["elapsed"] / iterations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="omniglot-maml")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a, extra = p.parse_known_args()
    one = run(a.config, a.iterations, 1, a.threads, extra)
    many = run(a.config, a.iterations, a.processes, max(1, a.threads // a.processes), extra)
    result = {"provenance": provenance(), "config": a.config, "extra": extra, "iterations": a.iterations,
              "threads": a.threads,
              "seconds_per_iteration": {"1 process": one, f"{a.processes} processes": many},
              "speedup": one / many}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
