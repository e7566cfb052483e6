"""How far MAML-TRPO's compiled curvature product on 2D navigation is from what this machine can do, and what the
5x-pytorch-maml-rl goal asks of it.

    .venv/bin/python benchmarks/curvature_roofline.py [--threads 2] [--repeats 5]

One sampled meta-batch (20 tasks x 20 episodes x 100 steps, pytorch-maml-rl's 64x64 tanh policy, curvature on every
episode), in one process: the matrix-product FLOPs of one product (``torch.utils.flop_counter`` on
``outer.curvature_product`` run eagerly, the function ``compile=True`` compiles: forward passes recomputed, the
Fisher by Gauss-Newton; the eager learner's own product, over a kept graph, does about 15% fewer), the compiled
product's seconds, one whole compiled TRPO update with its products counted, the rate of ``bmm`` at the product's
largest shape and of a 1024^3 ``matmul`` (the machine's peak), and the memory bandwidth of a 40 MB ``add``. The 5x
goal's budget for one product is ``(pytorch-maml-rl's seconds / 5 - sampling - the update's other work) /
products``, with pytorch-maml-rl's seconds and the sampling time read from ``results/navigation_speed.json`` (an
earlier run on this machine).
Results: results/curvature_roofline.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from metagrad.rl import outer
from metagrad.rl.config import preset
from metagrad.rl.train import build
from metagrad.rl.trpo import flatten
from report import RESULTS, write_report


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call (compilation, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rates(tasks: int, states: int, width: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of ``bmm`` at ``[tasks, states, width] @ [tasks, width, width]`` and of a 1024^3 ``matmul``; GB/s of
    ``a + b`` on 10M floats into a kept output (two reads, one write)."""
    x, w = torch.randn(tasks, states, width), torch.randn(tasks, width, width)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    p, q, r = torch.randn(10_000_000), torch.randn(10_000_000), torch.empty(10_000_000)
    return {"bmm_gflops": 2 * tasks * states * width * width / seconds(lambda: torch.bmm(x, w), repeats) / 1e9,
            "matmul_peak_gflops": 2 * 1024 ** 3 / seconds(lambda: a @ b, repeats) / 1e9,
            "memory_gbs": 3 * 4 * p.numel() / seconds(lambda: torch.add(p, q, out=r), repeats) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("maml-trpo").replace(hvp_subsample=1.0, seed=1, hidden=(64, 64), activation="tanh", curvature_chunk=0)
    eager, compiled = build(cfg)[0], build(cfg.replace(compile=True))[0]
    compiled.load_state_dict(eager.state_dict())
    tasks = eager.env.sample_tasks(cfg.meta_batch_size, torch.Generator().manual_seed(0))
    trajs, out = eager.sample(tasks, torch.Generator().manual_seed(1))
    v = torch.randn(flatten(eager.meta_params()).shape, generator=torch.Generator().manual_seed(2))
    theta = eager.meta_params()
    path, _ = outer.inner_path(eager, theta, trajs)
    with FlopCounterMode(display=False) as counter:  # what compile=True compiles, run eagerly
        outer.curvature_product(eager, theta, path, [outer.subsample(eager, tr) for tr in trajs],
                                outer.subsample(eager, out), v)
    gflop = counter.get_total_flops() / 1e9
    fast = compiled.kl_hvp(trajs, out)
    product_s = seconds(lambda: fast(v), args.repeats)

    calls, make = [], outer.kl_hvp

    def counted(*a: object) -> Callable:
        inner = make(*a)
        return lambda x: (calls.append(1), inner(x))[1]

    outer.kl_hvp = counted  # the update's products, counted
    state = {k: t.clone() for k, t in compiled.state_dict().items()}  # the update moves the policy in place

    def update() -> None:
        compiled.load_state_dict(state)
        calls.clear()
        compiled.update(trajs, out)

    update_s = seconds(update, args.repeats)
    products = len(calls)
    states = int(out.mask[0].numel())
    machine = rates(out.mask.shape[0], states, cfg.hidden[0], args.repeats)
    earlier = json.loads((RESULTS / "navigation_speed.json").read_text())["rows"]
    ours = next(r for r in earlier if r["library"] == "metagrad (hvp_subsample 1, compile=True)")
    theirs = next(r for r in earlier if r["library"].startswith("pytorch-maml-rl"))["seconds_per_iteration_median"]
    other = update_s - products * product_s
    budget = (theirs / 5 - ours["sampling_seconds_median"] - other) / products
    row = {"threads": args.threads, "product_gflop": round(gflop, 3), "product_seconds": round(product_s, 4),
           "product_gflops": round(gflop / product_s, 1), "update_seconds": round(update_s, 3), "products": products,
           "update_other_seconds": round(other, 3), **{k: round(x, 1) for k, x in machine.items()},
           "pytorch_maml_rl_seconds": theirs, "sampling_seconds": ours["sampling_seconds_median"],
           "product_budget_seconds_for_5x": round(budget, 4),
           "gflops_needed_for_5x": round(gflop / budget, 1) if budget > 0 else None, "torch": torch.__version__}
    needed = row["gflops_needed_for_5x"]
    lines = [f"MAML-TRPO curvature product, 2D navigation (20 x 20 x 100, 64x64 tanh, every episode), compile=True, "
             f"{args.threads} threads, median of {args.repeats}", "",
             "| quantity | value |", "|---|---|",
             f"| matrix-product work of one product | {row['product_gflop']} GFLOP |",
             f"| one compiled product | {row['product_seconds']} s = {row['product_gflops']} GFLOP/s |",
             f"| one compiled TRPO update | {row['update_seconds']} s: {products} products + "
             f"{row['update_other_seconds']} s other |",
             f"| bmm at [{out.mask.shape[0]}, {states}, {cfg.hidden[0]}] @ [{cfg.hidden[0]}, {cfg.hidden[0]}] | "
             f"{row['bmm_gflops']} GFLOP/s |",
             f"| 1024^3 matmul (the machine's peak) | {row['matmul_peak_gflops']} GFLOP/s |",
             f"| memory bandwidth (add, 40 MB) | {row['memory_gbs']} GB/s |",
             f"| pytorch-maml-rl, sampling (results/navigation_speed.json) | {theirs} s, "
             f"{row['sampling_seconds']} s |",
             f"| one product's budget for 5x | {row['product_budget_seconds_for_5x']} s = "
             f"{needed} GFLOP/s of matrix products alone |"]
    write_report("curvature_roofline", row, lines)


if __name__ == "__main__":
    main()
