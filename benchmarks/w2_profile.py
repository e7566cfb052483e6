"""Where one thread's time goes on W2, and the variants tried for the 2x goal (docs/speed.md, "On the CPU").

    .venv/bin/python benchmarks/w2_profile.py [--repeats 5]

One thread, W2's 32 tasks (Omniglot Conv4 5-way 1-shot, second order):
1. `torch.profiler` over one `learner.meta_gradient` (the public API, the per-task loop), grouped into convolutions,
   batch norm, elementwise work and the rest;
2. the same meta-gradient in plain autograd with NCHW against `channels_last` tensors, against convolutions taken as
   `unfold` + matmul (MKL's GEMM instead of oneDNN's small convolutions), and the one-task meta-gradient compiled
   without vmap (`torch.compile(grad(meta_loss))`) against it eager: best of alternating repeats.
Writes benchmarks/results/w2_profile.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from report import write_report

GROUPS = {"convolutions": ("convolution", "conv"), "batch norm": ("batch_norm",),
          "elementwise (ReLU, arithmetic, copies)": ("clamp", "threshold", "mul", "add", "sub", "div", "copy", "neg")}


def profile_public(w: dict) -> dict[str, float]:
    """Self time by group over one meta-gradient through `mg.MAML(...).meta_gradient`, in % of the total."""
    from torch.profiler import ProfilerActivity, profile

    step = bench.step_metagrad(w, first_order=False, batching="loop", threads=1)
    for _ in range(2):
        step()
    t = time.perf_counter()
    step()
    seconds = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU]) as p:
        step()
    shares = {g: 0.0 for g in [*GROUPS, "other"]}
    for e in p.key_averages():
        group = next((g for g, keys in GROUPS.items() if any(k in e.key for k in keys)), "other")
        shares[group] += e.self_cpu_time_total
    total = sum(shares.values())
    return {"seconds": seconds, **{g: 100 * v / total for g, v in shares.items()}}


def unfold_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` as im2col (`F.unfold`) and one matrix product (stride and padding as the layer's; W2's layers have
    no groups or dilation)."""
    n, _, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    cols = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))
    out = conv.weight.reshape(conv.out_channels, -1) @ cols + conv.bias[:, None]
    return out.reshape(n, conv.out_channels, (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1)


def check_unfold(w: dict) -> None:
    """Stop unless the `unfold` convolutions give the layers' own outputs on W2's query images."""
    conv = bench._peer_model(w)[0]
    x = bench.make_data(w)[2][0]
    with torch.no_grad():
        gap = float((unfold_conv(conv, x) - conv(x)).abs().max())
    if gap > 1e-4:
        raise SystemExit(f"unfold + matmul differs from the convolution by {gap:.1e}")


def per_task_loop(w: dict, channels_last: bool, unfold: bool = False) -> Callable[[], None]:
    """The 32 tasks' second-order meta-gradients in plain autograd, optionally in `channels_last` layout or with
    the convolutions as `unfold` + matmul."""
    model = bench._peer_model(w)
    for m in model.modules() if unfold else ():
        if isinstance(m, torch.nn.Conv2d):
            m.forward = partial(unfold_conv, m)
    xs, ys, xq, yq = bench.make_data(w)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    xs, xq = ([x.contiguous(memory_format=layout) for x in batch] for batch in (xs, xq))  # one [N, C, H, W] per task
    params = dict(model.named_parameters())

    def run() -> None:
        for i in range(w["tasks"]):
            loss = F.cross_entropy(functional_call(model, params, (xs[i],)), ys[i])
            g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            adapted = {k: v - w["lr"] * d for (k, v), d in zip(params.items(), g, strict=True)}
            F.cross_entropy(functional_call(model, adapted, (xq[i],)), yq[i]).backward()
    return run


def one_task_functional(w: dict, compiled: bool) -> Callable[[], None]:
    """The same meta-gradients as nested `torch.func.grad` of one task, eager or compiled (no vmap)."""
    model = bench._peer_model(w)
    xs, ys, xq, yq = bench.make_data(w)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def meta_loss(p: dict, x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        g = grad(lambda q: F.cross_entropy(functional_call(model, q, (x1,)), y1))(p)
        return F.cross_entropy(functional_call(model, {k: p[k] - w["lr"] * g[k] for k in p}, (x2,)), y2)

    fn = torch.compile(grad(meta_loss)) if compiled else grad(meta_loss)

    def run() -> None:
        for i in range(w["tasks"]):
            fn(params, xs[i], ys[i], xq[i], yq[i])
    return run


def best_of(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Each variant called once to warm up (compilation included), then in turn ``repeats`` times: best seconds."""
    for run in variants.values():
        run()
    return {name: min(v) for name, v in bench.alternating(variants, repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from metagrad.threads import keep_freed_memory

    keep_freed_memory()  # as metagrad's task threads run
    w = bench.WORKLOADS["W2"]
    check_unfold(w)
    result = {"torch": torch.__version__, "profile": profile_public(w),
              "layout": best_of({"NCHW": per_task_loop(w, False), "channels_last": per_task_loop(w, True),
                                 "unfold + matmul": per_task_loop(w, False, unfold=True)}, args.repeats),
              "one_task": best_of({"eager autograd loop": per_task_loop(w, False),
                                   "compiled grad(meta_loss)": one_task_functional(w, True)}, args.repeats)}
    prof = result["profile"]
    lines = [f"W2, one thread, one meta-gradient through the public API: {prof['seconds']:.2f} s; self time: "
             + ", ".join(f"{g} {prof[g]:.0f}%" for g in [*GROUPS, "other"]), "",
             "| variant | best seconds for the 32 tasks |", "|---|---|"]
    lines += [f"| {name} | {s:.2f} |" for part in ("layout", "one_task") for name, s in result[part].items()]
    write_report("w2_profile", result, lines)


if __name__ == "__main__":
    main()
