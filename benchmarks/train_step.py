"""Where a `metagrad train` iteration goes on W1 (sinusoid MLP 1-40-40-1, 25 tasks, one inner step, second order):
the meta-gradient, the outer optimizer's step, sampling the tasks, and the rest of the run loop, eager and compiled,
with the outer Adam stepping tensor by tensor (torch's CPU default) or fused (what a compiled run uses).

    .venv/bin/python benchmarks/train_step.py [--iterations 2000] [--passes 3] [--threads 1]

Each variant runs in its own process, built from the `sinusoid-maml` preset as `metagrad train` builds it (its
config, learner, optimizer and `Trainer`); the loop's own time is `Trainer.fit`'s minus its parts, timed apart in
the same process, and `Trainer.fit`'s per-iteration time is the difference of two fits, of N/4 and N iterations,
so that its set-up (checkpoints, the commit) is apart. Results: results/train_step.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report

VARIANTS = {"eager, per-tensor Adam": (False, False), "eager, fused Adam": (False, True),
            "compiled, per-tensor Adam": (True, False), "compiled, fused Adam (a compiled run's)": (True, True)}


def one(compile: bool, fused: bool, iterations: int) -> dict[str, float]:
    """Milliseconds per iteration of each part, in this process."""
    from metagrad.build import build_learner, build_outer, build_tasks
    from metagrad.config import load_config
    from metagrad.train import Trainer

    cfg = load_config("sinusoid-maml").replace(compile=compile)
    learner = build_learner(cfg)
    opt = torch.optim.Adam(learner.parameters(), lr=cfg.outer_lr, **({"fused": True} if fused else {}))
    assert build_outer(cfg, learner)[0].defaults.get("fused") == (True if compile else None)  # what train builds
    tasks = build_tasks(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = tasks.sample(cfg.meta_batch_size, gen)
    for _ in range(50):
        learner.meta_gradient(batch)
        opt.step()

    def per_iteration(fn) -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        return (time.perf_counter() - start) / iterations * 1e3

    kept = copy.deepcopy((learner.state_dict(), opt.state_dict()))
    parts = {"meta-gradient": per_iteration(lambda: learner.meta_gradient(batch)),
             "outer step": per_iteration(opt.step),
             "sampling": per_iteration(lambda: tasks.sample(cfg.meta_batch_size, gen))}
    learner.load_state_dict(kept[0])  # the outer steps above, all along one gradient, carried the model far away
    opt.load_state_dict(kept[1])  # (2,000 of them made the fits below diverge)

    def fit_seconds(n: int) -> float:
        trainer = Trainer(learner, tasks, opt, iterations=n, meta_batch_size=cfg.meta_batch_size, progress=False)
        start = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - start

    short, long = fit_seconds(iterations // 4), fit_seconds(iterations)  # the difference: per iteration, no set-up
    parts["Trainer.fit"] = (long - short) / (iterations - iterations // 4) * 1e3
    parts["run loop"] = parts["Trainer.fit"] - sum(parts[k] for k in ("meta-gradient", "outer step", "sampling"))
    parts["set-up (ms, once)"] = short * 1e3 - parts["Trainer.fit"] * (iterations // 4)
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each variant's process (default 1)")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(one(*VARIANTS[args.variant], args.iterations)))
        return
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for i in range(args.passes):
        order = list(VARIANTS)[i % len(VARIANTS):] + list(VARIANTS)[:i % len(VARIANTS)]
        for v in order:
            out = subprocess.run([sys.executable, __file__, "--variant", v, "--iterations", str(args.iterations),
                                  "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            runs[v].append(json.loads(out.strip().splitlines()[-1]))
    cols = ["meta-gradient", "outer step", "sampling", "run loop", "Trainer.fit", "set-up (ms, once)"]
    med = {v: {c: statistics.median(r[c] for r in rs) for c in cols} for v, rs in runs.items()}
    lines = [f"W1 through `metagrad train`'s objects, ms per iteration (median of {args.passes} passes, "
             f"{args.iterations} iterations each, torch {torch.__version__}, {torch.get_num_threads()} threads)", "",
             "| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {v} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |" for v, m in med.items()]
    write_report("train_step", {"iterations": args.iterations, "passes": args.passes, "runs": runs, "median": med},
                 lines)


if __name__ == "__main__":
    main()
