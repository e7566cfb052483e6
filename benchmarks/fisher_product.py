"""The compiled TRPO curvature product of MAML-TRPO (``learner.kl_hvp`` with ``compile=True``) with its Fisher part
taken two ways, in one process on the same sampled meta-batch: by double backward through the policy (what metagrad
compiled before) and by Gauss-Newton, ``J^T H J`` (what it compiles now for Gaussian policies;
``metagrad.rl.outer.fisher_product``). Eager products keep the double backward over a kept graph (as fast there).

    .venv/bin/python benchmarks/fisher_product.py [--env cheetah|navigation] [--threads 2] [--repeats 3]

Half-cheetah direction at the MAML paper's meta-batch (40 tasks x 20 episodes x 200 steps, 2 x 100 ReLU) or 2D
navigation (20 x 20 x 100, pytorch-maml-rl's 64 x 64 tanh). Reports seconds per product (median of ``--repeats``
after the first, which holds any compilation) and the relative difference of the two products.
Results: results/fisher_product_<env>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metagrad.rl import outer
from metagrad.rl.config import preset
from metagrad.rl.train import build
from metagrad.rl.trpo import flatten
from report import write_report

SETTINGS = {"cheetah": {"env": "cheetah-dir", "horizon": 200, "meta_batch_size": 40, "episodes": 20},
            "navigation": {"hidden": (64, 64), "activation": "tanh"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(SETTINGS), default="cheetah")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset("maml-trpo").replace(hvp_subsample=1.0, seed=1, compile=True, **SETTINGS[args.env])
    learners = {name: build(cfg)[0] for name in ("double backward", "Gauss-Newton")}
    learners["Gauss-Newton"].load_state_dict(learners["double backward"].state_dict())
    first = learners["double backward"]
    tasks = first.env.sample_tasks(cfg.meta_batch_size, torch.Generator().manual_seed(0))
    trajs, out = first.sample(tasks, torch.Generator().manual_seed(1))
    v = torch.randn(flatten(first.meta_params()).shape, generator=torch.Generator().manual_seed(2))
    rows, products = {}, {}
    for name, fisher in (("double backward", outer.kl_hessian_product), ("Gauss-Newton", outer.fisher_product)):
        outer.fisher_product, kept = fisher, outer.fisher_product
        try:
            t = time.perf_counter()
            product = learners[name].kl_hvp(trajs, out)
            products[name] = product(v)
            setup = time.perf_counter() - t
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                product(v)
                times.append(time.perf_counter() - t)
        finally:
            outer.fisher_product = kept
        rows[name] = {"seconds": round(statistics.median(times), 3), "all": [round(x, 3) for x in times],
                      "setup_and_first_seconds": round(setup, 2)}
    a, b = products["double backward"], products["Gauss-Newton"]
    diff = float((a - b).norm() / a.norm())
    lines = [f"TRPO curvature product, {args.env}, compile=True, {args.threads} threads: seconds per product (median "
             f"of {args.repeats}; relative difference {diff:.1e})", "",
             "| Fisher part | s per product | runs | setup + first product (s) |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['seconds']} | {', '.join(map(str, r['all']))} | {r['setup_and_first_seconds']} |"
              for n, r in rows.items()]
    write_report(f"fisher_product_{args.env}", {"env": args.env, "threads": args.threads, "relative_difference": diff,
                                                "rows": rows, "torch": torch.__version__}, lines)


if __name__ == "__main__":
    main()
