"""W1 (sinusoid MLP 1-40-40-1, 25 tasks of 10 + 10 points, one inner step, second order) through the public API,
eager and with ``compile=True``, beside the same meta-gradient written in plain torch (vmap over tasks of a nested
``torch.func.grad``), eager and compiled: what ``compile=True`` is worth and what the engine costs over plain code.

    .venv/bin/python benchmarks/compile_w1.py [--passes 3] [--iterations 300]

Each variant runs in this process after its warm-up (compilation included there, timed apart), the four called in
turn at every iteration; the table reports the median of the pass medians, with their range.
Results: results/compile_w1.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

import metagrad as mg
from metagrad.tasks import Sinusoid

RESULTS = Path(__file__).resolve().parent / "results"


def metagrad_step(compile: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    learner = mg.MAML(mg.models.MLP(1, [40, 40], 1), inner=mg.SGD(0.01), compile=compile)
    batch = Sinusoid().sample(25, torch.Generator().manual_seed(0))
    return lambda: learner.meta_gradient(batch)


def plain_step(compile: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = mg.models.MLP(1, [40, 40], 1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    batch = Sinusoid().sample(25, torch.Generator().manual_seed(0))

    def loss(p, x, y):
        return ((functional_call(model, p, (x,)) - y) ** 2).mean()

    def task(p, xs, ys, xq, yq):
        g = grad(loss)(p, xs, ys)
        return loss({k: p[k] - 0.01 * g[k] for k in p}, xq, yq)

    def meta(p, xs, ys, xq, yq):
        return vmap(task, (None, 0, 0, 0, 0))(p, xs, ys, xq, yq).mean()

    fn = grad(meta)
    if compile:
        fn = torch.compile(fn)
    args = (params, batch.support.x, batch.support.y, batch.query.x, batch.query.y)
    return lambda: fn(*args)


def time_round_robin(steps: dict[str, Callable[[], None]], iterations: int) -> dict[str, float]:
    """Median ms per call of each step, the steps called in turn at every iteration, so that the machine's state
    (load, clock, caches after another job) falls on all of them alike: timed one after another, 300 calls each,
    the first variant of a pass measured 1.49x plain vmap where in turn it was 1.10x."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iterations):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    variants = {"metagrad": lambda: metagrad_step(False), "metagrad compile=True": lambda: metagrad_step(True),
                "plain vmap": lambda: plain_step(False), "plain vmap + torch.compile": lambda: plain_step(True)}
    steps, warm = {}, {}
    for name, make in variants.items():
        steps[name] = make()
        t = time.perf_counter()
        for _ in range(5):
            steps[name]()
        warm[name] = round(time.perf_counter() - t, 2)
    passes = {name: [] for name in variants}
    for _ in range(args.passes):
        for name, ms in time_round_robin(steps, args.iterations).items():
            passes[name].append(ms)
    rows = {name: {"ms": round(statistics.median(v), 3), "range": [round(min(v), 3), round(max(v), 3)],
                   "warmup_s": warm[name]} for name, v in passes.items()}
    base = rows["plain vmap"]["ms"]
    lines = ["| W1, second order | ms per meta-gradient (median, range) | vs plain vmap | warm-up (s) |",
             "|---|---|---|---|"]
    lines += [f"| {n} | {r['ms']:.2f} ({r['range'][0]:.2f}-{r['range'][1]:.2f}) | {r['ms'] / base:.2f}x | "
              f"{r['warmup_s']} |" for n, r in rows.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_w1.json").write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                                          "passes": args.passes, "iterations": args.iterations,
                                                          "rows": rows}, indent=1))
    (RESULTS / "compile_w1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
