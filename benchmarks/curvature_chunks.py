"""MAML-TRPO's compiled curvature product with the meta-batch's tasks in chunks (``curvature_chunk``), in one process
on one sampled meta-batch: seconds per product and per TRPO update for each chunk size, alternating repeats.

    .venv/bin/python benchmarks/curvature_chunks.py [--env navigation|cheetah] [--threads 2] [--repeats 5]
        [--chunks 0,10,5,2]

2D navigation (20 x 20 x 100, pytorch-maml-rl's 64x64 tanh) or half-cheetah direction at the MAML paper's meta-batch
(40 x 20 x 200, 2 x 100 ReLU); curvature on every episode. Chunk 0 is the whole meta-batch in one product. Reports
medians after one warm-up call (which holds the compilation) and each product's relative difference from chunk 0's.
Results: results/curvature_chunks_<env>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fisher_product import SETTINGS
from metagrad.rl.config import preset
from metagrad.rl.train import build
from metagrad.rl.trpo import flatten
from report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(SETTINGS), default="navigation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", default="0,10,5,2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("maml-trpo").replace(hvp_subsample=1.0, seed=1, compile=True, **SETTINGS[args.env])
    chunks = [int(c) for c in args.chunks.split(",")]
    learners = {c: build(cfg.replace(curvature_chunk=c))[0] for c in chunks}
    first = learners[chunks[0]]
    state = {k: t.clone() for k, t in first.state_dict().items()}
    tasks = first.env.sample_tasks(cfg.meta_batch_size, torch.Generator().manual_seed(0))
    trajs, out = first.sample(tasks, torch.Generator().manual_seed(1))
    v = torch.randn(flatten(first.meta_params()).shape, generator=torch.Generator().manual_seed(2))
    products, results = {}, {c: {"product": [], "update": []} for c in chunks}

    def update(c: int) -> None:
        learners[c].load_state_dict(state)
        learners[c].update(trajs, out)

    for c, learner in learners.items():  # warm-up: compilation
        learner.load_state_dict(state)
        products[c] = learner.kl_hvp(trajs, out)
        products[c](v)
        update(c)
    learners[chunks[0]].load_state_dict(state)  # the products read the policy's parameters: the sampling ones
    reference = products[chunks[0]](v)
    for _ in range(args.repeats):
        for c in chunks:
            learners[c].load_state_dict(state)
            t = time.perf_counter()
            hv = products[c](v)
            results[c]["product"].append(time.perf_counter() - t)
            t = time.perf_counter()
            update(c)
            results[c]["update"].append(time.perf_counter() - t)
            results[c]["relative_difference"] = float((hv - reference).norm() / reference.norm())
    rows = {c: {"product_seconds": round(statistics.median(r["product"]), 4),
                "update_seconds": round(statistics.median(r["update"]), 3),
                "relative_difference": r["relative_difference"]} for c, r in results.items()}
    base = rows[chunks[0]]["product_seconds"]
    lines = [f"Compiled curvature product in task chunks, {args.env} ({cfg.meta_batch_size} tasks), {args.threads} "
             f"threads, median of {args.repeats} alternating", "",
             "| curvature_chunk | s per product | vs all at once | s per TRPO update | relative difference |",
             "|---|---|---|---|---|"]
    lines += [f"| {c or 'all'} | {r['product_seconds']} | {base / r['product_seconds']:.2f}x | {r['update_seconds']} | "
              f"{r['relative_difference']:.1e} |" for c, r in rows.items()]
    write_report(f"curvature_chunks_{args.env}", {"env": args.env, "threads": args.threads, "rows": rows,
                                                  "torch": torch.__version__}, lines)


if __name__ == "__main__":
    main()
