"""W1 (sinusoid MLP 1-40-40-1, 25 tasks of 10 + 10 points, one inner step, second order) through the public API,
eager and with ``compile=True``, beside the same meta-gradient written in plain torch (vmap over tasks of a nested
``torch.func.grad``), eager and compiled: what ``compile=True`` is worth and what the engine costs over plain code.

    .venv/bin/python benchmarks/compile_w1.py [--passes 3] [--iterations 300]

Each variant runs in a process of its own, as a user runs one of them (warm-up and compilation timed apart, then
``--iterations`` calls); the passes start the variants in turn, in a rotated order, so that the machine's state
falls on all of them alike. The table reports the median of the pass medians, with their range, and metagrad's
time over plain torch's (eager over eager, compiled over compiled) as the median of the passes' ratios, steadier
than either time (the same program differs by up to 20% from one process to the next). The four variants called in
turn in one process, as this benchmark first did, put an eager call before every compiled one, which then took
about twice its own-process time (1.05 vs 0.47 ms ours, 0.95 vs 0.41 plain's, one session).
Results: results/compile_w1.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

import metagrad as mg
from metagrad.tasks import Sinusoid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from report import write_report

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


VARIANTS = {"metagrad": lambda: metagrad_step(False), "metagrad compile=True": lambda: metagrad_step(True),
            "plain vmap": lambda: plain_step(False), "plain vmap + torch.compile": lambda: plain_step(True)}


PAIR = "compiled pair"  # both compiled variants alternating in one process
COMPILED = ["metagrad compile=True", "plain vmap + torch.compile"]


def time_steps(names: list[str], iterations: int) -> dict[str, float]:
    """The variants ``names`` built in this process, warmed up (five calls each, compilation included: its seconds as
    ``warmup_s``), then called in turn ``iterations`` times: the median ms per call of each."""
    steps = {name: VARIANTS[name]() for name in names}
    t = time.perf_counter()
    for _ in range(5):
        for step in steps.values():
            step()
    out = {"warmup_s": time.perf_counter() - t}
    times = bench.alternating(steps, iterations)
    return {**out, **{name: 1000 * statistics.median(v) for name, v in times.items()}}


def in_process(name: str, iterations: int) -> dict[str, float]:
    """``time_steps`` of the variant ``name`` (or of both compiled variants, ``PAIR``) in a fresh Python process."""
    out = subprocess.run([sys.executable, __file__, "--variant", name, "--iterations", str(iterations)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--variant", choices=[*VARIANTS, PAIR], help="time this variant here and print it (internal)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(time_steps(COMPILED if args.variant == PAIR else [args.variant], args.iterations)))
        return
    names = list(VARIANTS)
    passes: dict[str, list[float]] = {name: [] for name in names}
    warmup: dict[str, list[float]] = {name: [] for name in names}
    pairs = []
    for p in range(args.passes):
        for name in names[p % len(names):] + names[:p % len(names)]:
            timed = in_process(name, args.iterations)
            passes[name].append(timed[name])
            warmup[name].append(timed["warmup_s"])
        timed = in_process(PAIR, args.iterations)
        pairs.append({**timed, "ratio": timed[COMPILED[0]] / timed[COMPILED[1]]})
    counterpart = {"metagrad": "plain vmap", "metagrad compile=True": "plain vmap + torch.compile"}
    rows = {}
    for name, ms in passes.items():
        row = {"ms": round(statistics.median(ms), 3), "range": [round(min(ms), 3), round(max(ms), 3)],
               "warmup_s": round(statistics.median(warmup[name]), 2)}
        if name in counterpart:
            ratios = [a / b for a, b in zip(ms, passes[counterpart[name]], strict=True)]
            row |= {"vs_plain": round(statistics.median(ratios), 3),
                    "vs_plain_range": [round(min(ratios), 3), round(max(ratios), 3)]}
        rows[name] = row
    lines = ["| W1, second order | ms per meta-gradient (median, range) | vs the same in plain torch (median of the "
             "passes' ratios, range) | warm-up (s) |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['ms']:.2f} ({r['range'][0]:.2f}-{r['range'][1]:.2f}) | "
              + (f"{r['vs_plain']:.2f}x ({r['vs_plain_range'][0]:.2f}-{r['vs_plain_range'][1]:.2f})"
                 if "vs_plain" in r else "-") + f" | {r['warmup_s']} |"
              for n, r in sorted(rows.items(), key=lambda item: item[0] not in counterpart)]
    ratios = [r["ratio"] for r in pairs]
    lines += ["", f"Both compiled variants alternating in one process ({args.passes} processes): metagrad compile=True "
              f"{statistics.median(r[COMPILED[0]] for r in pairs):.2f} ms, plain vmap + torch.compile "
              f"{statistics.median(r[COMPILED[1]] for r in pairs):.2f} ms; ratio "
              f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})."]
    write_report("compile_w1", {"torch": torch.__version__, "threads": torch.get_num_threads(), "passes": args.passes,
                                "iterations": args.iterations, "rows": rows, "alternating": pairs}, lines)


if __name__ == "__main__":
    main()
