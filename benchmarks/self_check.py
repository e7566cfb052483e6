"""What the vmap self-check (metagrad.batching) costs, against the training run it protects.

    .venv/bin/python benchmarks/self_check.py [--iterations 20]

For W1 (sinusoid MLP), W2 with batching 'vmap' (Omniglot Conv4; on the CPU ``auto`` takes the loop and never checks)
and an attention model (hand-written attention among 10 examples of a 4-d regression task, 25 tasks, 2 steps):
the first ``meta_gradient`` call with the check and without it (the difference is the check), and the median
meta-iteration after it. Writes results/self_check.{json,md}; ``check_in_iterations`` is the check's cost in
meta-iterations (70,000 in the sinusoid paper run, 40,000 for Omniglot).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import metagrad as mg
from bench import WORKLOADS, loss_of, make_data
from metagrad.tasks import Split, TaskBatch
from report import write_report

RESULTS = Path(__file__).resolve().parent / "results"


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = nn.Linear(4, 32), nn.Linear(4, 32), nn.Linear(4, 32), nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.softmax(self.q(x) @ self.k(x).T / 32**0.5, dim=-1) @ self.v(x))


def setup(name: str, self_check: bool) -> tuple[mg.MetaLearner, TaskBatch]:
    torch.manual_seed(0)
    if name == "attention":
        g = torch.Generator().manual_seed(0)
        xs, xq = torch.randn(25, 10, 4, generator=g), torch.randn(25, 10, 4, generator=g)
        batch = TaskBatch(Split(xs, xs.sum(-1, keepdim=True).sin()), Split(xq, xq.sum(-1, keepdim=True).sin()))
        return mg.MAML(Attention(), inner=mg.SGD(0.1), inner_steps=2, self_check=self_check), batch
    w = WORKLOADS[name]
    model = mg.models.MLP(1, [40, 40], 1) if w["model"] == "mlp" else mg.models.Conv4(1, w["ways"])
    learner = mg.MAML(model, loss_fn=loss_of(w), inner=mg.SGD(w["lr"]), inner_steps=w["steps"],
                      batching="vmap", self_check=self_check)
    xs, ys, xq, yq = make_data(w)
    return learner, TaskBatch(Split(xs, ys), Split(xq, yq))


def first_call(name: str, self_check: bool) -> float:
    learner, batch = setup(name, self_check)
    t = time.perf_counter()
    learner.meta_gradient(batch)
    return time.perf_counter() - t


def measure(name: str, iterations: int) -> dict:
    firsts = {c: statistics.median(first_call(name, c) for _ in range(3)) for c in (False, True)}
    learner, batch = setup(name, True)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    times = []
    for _ in range(iterations + 2):
        t = time.perf_counter()
        opt.zero_grad()
        learner.meta_gradient(batch)
        opt.step()
        times.append(time.perf_counter() - t)
    step = statistics.median(times[2:])
    check = max(0.0, firsts[True] - firsts[False])
    return {"workload": name, "first_call_s": firsts[True], "first_call_unchecked_s": firsts[False],
            "check_s": check, "iteration_s": step, "check_in_iterations": check / step, "vmapped": learner.vmapped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    rows = [measure(name, args.iterations) for name in ("W1", "W2", "attention")]
    lines = ["| workload | first call, checked (s) | unchecked (s) | check (s) | meta-iteration (ms) | check in "
             "meta-iterations |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['first_call_s']:.3f} | {r['first_call_unchecked_s']:.3f} | {r['check_s']:.3f} | "
              f"{1000 * r['iteration_s']:.1f} | {r['check_in_iterations']:.1f} |" for r in rows]
    write_report("self_check", {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, lines)


if __name__ == "__main__":
    main()
