"""Side-by-side speed and memory of meta-learning libraries on the same workloads, data and seed.

    benchmarks/setup.sh                      # once: benchmarks/.venv with metagrad, learn2learn, higher, TorchOpt
    benchmarks/.venv/bin/python benchmarks/bench.py [--passes 3] [--iterations 20] [--only W1,W2]

Every (library, workload) runs in its own process (so that peak memory is its own), ``--passes`` times in
turn; each pass times ``--iterations`` meta-iterations after ``--warmup`` and keeps their median. The
table reports the median of the pass medians with its range, and ratios to the fastest peer. Results go
to ``benchmarks/results/bench.json`` and ``bench.md``. One meta-iteration = meta-gradient over the
meta-batch + one Adam step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from report import provenance, provenance_line

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("learn2learn", "higher", "torchopt")
OURS = ("metagrad", "metagrad-1thread", "metagrad-vmap", "metagrad-compile", "metagrad-cudagraphs",
        "metagrad-recompute")

# name: (description, settings)
WORKLOADS: dict[str, dict] = {
    "W1": dict(desc="sinusoid MLP 1-40-40-1, 10+10 points, 25 tasks, 1 step", model="mlp", tasks=25, shots=10,
               query=10, steps=1, lr=0.01),
    "W2": dict(desc="Omniglot conv4 5-way 1-shot, 15 queries/class, 32 tasks, 1 step", model="conv4", ways=5,
               shots=1, query=15, tasks=32, steps=1, lr=0.4),
    "W3": dict(desc="Omniglot conv4 20-way 1-shot, 5 queries/class, 16 tasks, 5 steps", model="conv4", ways=20,
               shots=1, query=5, tasks=16, steps=5, lr=0.1),
    "W4": dict(desc="Reptile, Omniglot conv4 5-way 10-shot, 5 tasks, 5 Adam steps on minibatches of 10",
               model="conv4", ways=5, shots=10, query=1, tasks=5, steps=5, lr=0.001, reptile=True, orders=("fo",)),
}


# ------------------------------------------------------------------------------------------------ data and models
def make_data(w: dict, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Support and query sets of every task, drawn on the CPU with seed 0 (the same on every device)."""
    g = torch.Generator().manual_seed(0)
    t = w["tasks"]
    if w["model"] == "mlp":
        xs = torch.rand(t, w["shots"], 1, generator=g) * 10 - 5
        xq = torch.rand(t, w["query"], 1, generator=g) * 10 - 5
        return tuple(x.to(device) for x in (xs, torch.sin(xs), xq, torch.sin(xq)))
    n = w["ways"]
    xs = torch.rand(t, n * w["shots"], 1, 28, 28, generator=g)
    xq = torch.rand(t, n * w["query"], 1, 28, 28, generator=g)
    ys = torch.arange(n).repeat_interleave(w["shots"]).expand(t, -1).contiguous()
    yq = torch.arange(n).repeat_interleave(w["query"]).expand(t, -1).contiguous()
    return tuple(x.to(device) for x in (xs, ys, xq, yq))


def peer_model(w: dict, device: str = "cpu") -> nn.Module:
    """The same networks as metagrad's, with torch's BatchNorm (what users of the peers write)."""
    return _peer_model(w).to(device)


def _peer_model(w: dict) -> nn.Module:
    torch.manual_seed(0)
    if w["model"] == "mlp":
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    layers: list[nn.Module] = []
    c = 1
    for _ in range(4):
        layers += [nn.Conv2d(c, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU()]
        c = 64
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, w["ways"]))


def loss_of(w: dict) -> Callable:
    return F.mse_loss if w["model"] == "mlp" else F.cross_entropy


# ------------------------------------------------------------------------------------------------ one step per lib
def step_metagrad(w: dict, first_order: bool, batching: str, recompute: bool = False,
                  compile: bool | str = False, threads: int = 0, task_chunk: int = 0,
                  device: str = "cpu") -> Callable[[], None]:
    import metagrad as mg
    from metagrad.tasks import Split, TaskBatch

    torch.manual_seed(0)
    model = (mg.models.MLP(1, [40, 40], 1) if w["model"] == "mlp" else mg.models.Conv4(1, w["ways"])).to(device)
    learner = mg.MAML(model, loss_fn=loss_of(w), inner=mg.SGD(w["lr"]), inner_steps=w["steps"],
                      first_order=first_order, batching=batching, recompute=recompute, compile=compile,
                      threads=threads, task_chunk=task_chunk)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    xs, ys, xq, yq = make_data(w, device)
    batch = TaskBatch(Split(xs, ys), Split(xq, yq))

    def step() -> None:
        opt.zero_grad()
        learner.meta_gradient(batch)
        opt.step()

    return step


def step_metagrad_reptile(w: dict, batching: str, threads: int = 0, device: str = "cpu") -> Callable[[], None]:
    import metagrad as mg
    from metagrad.tasks import Split, TaskBatch

    torch.manual_seed(0)
    learner = mg.Reptile(mg.models.Conv4(1, w["ways"]).to(device), loss_fn=loss_of(w), inner=mg.Adam(w["lr"]),
                         inner_steps=w["steps"], inner_batch_size=10, batching=batching, threads=threads)
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)  # the paper's interpolation
    xs, ys, xq, yq = make_data(w, device)
    batch, gen = TaskBatch(Split(xs, ys), Split(xq, yq)), torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad()
        learner.meta_gradient(batch, gen)
        opt.step()

    return step


def step_plain_reptile(w: dict, device: str = "cpu") -> Callable[[], None]:
    """Reptile as learn2learn's example writes it (none of the peers has a Reptile class): per task a copy of the
    model, Adam(beta1=0) steps on minibatches, the mean difference as the meta-gradient."""
    import copy

    model = peer_model(w, device)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    xs, ys, _, _ = make_data(w, device)
    loss, gen = loss_of(w), torch.Generator().manual_seed(0)

    def step() -> None:
        opt.zero_grad()
        for i in range(w["tasks"]):
            clone = copy.deepcopy(model)
            inner = torch.optim.Adam(clone.parameters(), lr=w["lr"], betas=(0.0, 0.999))
            for _ in range(w["steps"]):
                idx = torch.randperm(xs.shape[1], generator=gen)[:10].to(device)
                inner.zero_grad()
                loss(clone(xs[i, idx]), ys[i, idx]).backward()
                inner.step()
            for p, q in zip(model.parameters(), clone.parameters(), strict=True):
                p.grad = (p.grad if p.grad is not None else 0) + (p.detach() - q.detach()) / w["tasks"]
        opt.step()

    return step


def step_learn2learn(w: dict, first_order: bool, device: str = "cpu") -> Callable[[], None]:
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(peer_model(w, device), lr=w["lr"], first_order=first_order)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    xs, ys, xq, yq = make_data(w, device)
    loss = loss_of(w)

    def step() -> None:
        opt.zero_grad()
        for i in range(w["tasks"]):
            learner = maml.clone()
            for _ in range(w["steps"]):
                learner.adapt(loss(learner(xs[i]), ys[i]))
            (loss(learner(xq[i]), yq[i]) / w["tasks"]).backward()
        opt.step()

    return step


def step_higher(w: dict, first_order: bool, device: str = "cpu") -> Callable[[], None]:
    import higher

    if first_order:
        raise NotImplementedError("higher has no first-order MAML mode")
    model = peer_model(w, device)
    inner = torch.optim.SGD(model.parameters(), lr=w["lr"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys, xq, yq = make_data(w, device)
    loss = loss_of(w)

    def step() -> None:
        opt.zero_grad()
        for i in range(w["tasks"]):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(w["steps"]):
                    diffopt.step(loss(fmodel(xs[i]), ys[i]))
                (loss(fmodel(xq[i]), yq[i]) / w["tasks"]).backward()
        opt.step()

    return step


def step_torchopt(w: dict, first_order: bool, device: str = "cpu") -> Callable[[], None]:
    import torchopt

    if first_order:
        raise NotImplementedError("not written for TorchOpt")
    model = peer_model(w, device)
    inner = torchopt.MetaSGD(model, lr=w["lr"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys, xq, yq = make_data(w, device)
    loss = loss_of(w)

    def step() -> None:
        opt.zero_grad()
        state = torchopt.extract_state_dict(model)
        for i in range(w["tasks"]):
            for _ in range(w["steps"]):
                inner.step(loss(model(xs[i]), ys[i]))
            (loss(model(xq[i]), yq[i]) / w["tasks"]).backward()
            torchopt.recover_state_dict(model, state)
        opt.step()

    return step


def make_step(lib: str, w: dict, first_order: bool, device: str = "cpu") -> Callable[[], None]:
    if w.get("reptile"):
        if lib in ("metagrad", "metagrad-1thread", "metagrad-vmap", "metagrad-loop"):
            batching = {"metagrad-vmap": "vmap", "metagrad-loop": "loop"}.get(lib, "auto")
            return step_metagrad_reptile(w, batching, threads=1 if lib == "metagrad-1thread" else 0, device=device)
        if lib == "learn2learn":
            return step_plain_reptile(w, device)
        raise NotImplementedError(f"{lib}: no Reptile variant")
    variants = {  # the default, batching="auto": vmap, or the per-task loop for convolutions on the CPU
        "metagrad": dict(batching="auto"),  # (there, tasks shared out to one thread per core)
        "metagrad-1thread": dict(batching="auto", threads=1),  # the loop on one Python thread
        "metagrad-loop": dict(batching="loop"),
        "metagrad-vmap": dict(batching="vmap"),
        "metagrad-compile": dict(batching="vmap", compile=True),
        "metagrad-cudagraphs": dict(batching="vmap", compile="reduce-overhead"),  # compiled, then CUDA graphs
        "metagrad-recompute": dict(batching="auto", recompute=True),
    }
    base, _, chunk = lib.partition("-chunk")  # e.g. metagrad-chunk4: task_chunk=4 (tasks differentiated at once)
    if base in variants:
        return step_metagrad(w, first_order, device=device, task_chunk=int(chunk or 0), **variants[base])
    peers = {"learn2learn": step_learn2learn, "higher": step_higher, "torchopt": step_torchopt}
    return peers[lib](w, first_order, device)


# ------------------------------------------------------------------------------------------------ measuring
def measure_one(lib: str, workload: str, first_order: bool, steps: int | None, iterations: int,
                warmup: int, device: str = "cpu") -> dict:
    """Time one (library, workload) in this process: median, min, max ms per meta-iteration, and peak memory
    (the process's RSS on the CPU; on a GPU, the most device memory allocated since this call began)."""
    w = dict(WORKLOADS[workload])
    if steps is not None:
        w["steps"] = steps
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    inner = make_step(lib, w, first_order, device)
    before = rss_mb(reset_peak=not cuda)

    def step() -> None:
        inner()
        if cuda:
            torch.cuda.synchronize()  # device work is asynchronous: wait for it before reading the clock

    t0 = time.perf_counter()
    step()  # the first call (compilation, for metagrad-compile)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - t0))
    out = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "first_s": first}
    if cuda:
        return {**out, "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {**out, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_rss_mb": status_mb("VmHWM") - before}


def rss_mb(reset_peak: bool = False) -> float:
    """The process's resident memory now (what the library, model and data hold before the first step); with
    ``reset_peak``, its high-water mark is reset to it, so that the peak read later is the steps' own (Linux)."""
    if reset_peak:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    return status_mb("VmRSS")


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now; VmHWM: peak resident) in MB."""
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith(field + ":"))
    return int(kb) / 1024


# For the memory curve on the CPU: every tensor over 64 KB gets its own mapping, returned when freed, so that the peak
# RSS follows the bytes alive rather than how glibc's heaps fragment (the same program's peak moved by 90 MB between
# runs without it, 0 with it); metagrad's own malloc setting for task threads is switched off to the same end.
EXACT_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "METAGRAD_MALLOC": "0"}


def run_child(args: list[str], timeout: float = 1800, env: dict[str, str] | None = None) -> dict | str:
    proc = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_peak_gflops(device: str = "cpu", n: int = 4096, repeats: int = 5) -> float:
    """The device's float32 matrix-multiply rate, measured here (the ceiling for dense work)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def product() -> None:
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    product()
    best = min(_timed(product) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternating(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each step's seconds over ``repeats`` rounds that call the steps in turn (so that a change in the machine's
    load falls on all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step))
    return times


def metagrad_gflop(workload: str) -> float:
    """Floating-point work of one metagrad meta-gradient (per-task loop, counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = step_metagrad(WORKLOADS[workload], first_order=False, batching="loop", threads=1)  # the counter sees
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def measure(lib: str, workload: str, order: str, steps: str, a: argparse.Namespace) -> dict | str:
    """One measurement: its own process on the CPU (peak RSS is per process); in this process on a GPU
    (device memory is counted per call, and CUDA starts once). A failure comes back as its last line."""
    if a.device == "cpu":
        return run_child([lib, workload, order, steps, "--iterations", str(a.iterations), "--warmup", str(a.warmup)],
                         env=EXACT_MEMORY_ENV if steps != "-" else None)
    try:
        return measure_one(lib, workload, order == "fo", int(steps) if steps != "-" else None, a.iterations,
                           a.warmup, a.device)
    except Exception as e:  # one library's failure must not stop the others' measurements
        torch.cuda.empty_cache()
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    p.add_argument("--orders", default="so,fo", help="so (second-order), fo (first-order) or both")
    p.add_argument("--libs", default=",".join(OURS + PEERS))
    p.add_argument("--memory-steps", default="1,2,5,10", help="inner steps for the W2 memory curve ('' to skip)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (everything in one process; results/bench_cuda.*)")
    p.add_argument("--results", type=Path, default=None, help="results file stem (default results/bench[_cuda])")
    p.add_argument("--recount", action="store_true",
                   help="only re-measure the matmul peak and the GFLOP counts of results/bench.json")
    p.add_argument("--one", nargs=4, metavar=("LIB", "WORKLOAD", "ORDER", "STEPS"), help=argparse.SUPPRESS)
    a = p.parse_args()
    stem = a.results or RESULTS / ("bench" if a.device == "cpu" else "bench_cuda")
    if a.one:
        lib, workload, order, steps = a.one
        print(json.dumps(measure_one(lib, workload, order == "fo", int(steps) if steps != "-" else None,
                                     a.iterations, a.warmup)))
        return
    if a.recount:
        result = json.loads(stem.with_suffix(".json").read_text())
        result["machine"]["peak_gflops"] = machine_peak_gflops(a.device)
        result["gflop_per_iteration"] = {w: metagrad_gflop(w) for w in result["gflop_per_iteration"]}
        write(result, stem)
        return
    libs = a.libs.split(",")
    workloads = [w for w in WORKLOADS if not a.only or w in a.only.split(",")]
    result = {"machine": machine(a.device), "workloads": {w: WORKLOADS[w]["desc"] for w in workloads},
              "timing": {}, "memory": {}, "gflop_per_iteration": {}, "settings": {**vars(a), "results": str(stem)}}
    for order in a.orders.split(","):
        for w in workloads:
            if order not in WORKLOADS[w].get("orders", ("so", "fo")):
                continue
            for _ in range(a.passes):
                for lib in libs:
                    r = measure(lib, w, order, "-", a)
                    result["timing"].setdefault(f"{w}-{order}", {}).setdefault(lib, []).append(r)
                    print(f"{w} {order} {lib}: {r if isinstance(r, str) else round(r['median_ms'], 2)}",
                          file=sys.stderr, flush=True)
                    write(result, stem, quiet=True)  # what is measured so far survives an interrupted run
    a.iterations, a.warmup = 1, 0  # the peak is reached in the first meta-iteration
    for steps in [s for s in a.memory_steps.split(",") if s]:
        for lib in libs:
            result["memory"].setdefault(steps, {})[lib] = r = measure(lib, "W2", "so", steps, a)
            print(f"memory W2 steps={steps} {lib}: {r}", file=sys.stderr, flush=True)
            write(result, stem, quiet=True)
    result["gflop_per_iteration"] = {w: metagrad_gflop(w) for w in workloads if WORKLOADS[w]["model"] == "conv4"}
    write(result, stem)


def machine(device: str) -> dict:
    info = {**provenance(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device, "peak_gflops": machine_peak_gflops(device)}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write(result: dict, stem: Path, quiet: bool = False) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    if result["timing"] or result["memory"]:
        stem.with_suffix(".md").write_text(format_markdown(result))
        if not quiet:
            print(format_markdown(result))


def summarise(runs: list) -> tuple[float, float, float] | None:
    meds = [r["median_ms"] for r in runs if isinstance(r, dict)]
    return (statistics.median(meds), min(meds), max(meds)) if meds else None


def memory_cell(r: dict | str | None) -> str:
    if not isinstance(r, dict):
        return "-"
    if "peak_cuda_mb" in r:
        return f"{r['peak_cuda_mb']:.0f} MB"
    if "step_rss_mb" in r:
        return f"{r['step_rss_mb']:.0f} MB ({r['peak_rss_mb']:.0f})"
    return f"{r['peak_rss_mb']:.0f} MB"


def format_markdown(result: dict) -> str:
    libs = list(dict.fromkeys(lib for part in ("timing", "memory") for per_lib in result[part].values()
                              for lib in per_lib))
    m = result["machine"]
    lines = [provenance_line(m) if "commit" in m else "", "",
             f"On {m.get('gpu', 'the CPU')} (torch {m['torch']}, {m['threads']} CPU threads).", ""]
    if result["timing"]:
        lines += ["| workload | " + " | ".join(libs) + " | fastest peer / metagrad | fastest peer / metagrad-compile |",
                  "|---|" + "---|" * (len(libs) + 2)]
    failed = []
    for key, per_lib in result["timing"].items():
        cells, peers, ours = [], [], {}
        for lib in libs:
            s = summarise(per_lib.get(lib, []))
            errors = [r for r in per_lib.get(lib, []) if isinstance(r, str) and not r.startswith("NotImplementedError")]
            if s is None and errors:  # a failure, not a variant the library lacks: named, so no ratio hides it
                failed.append(f"{lib} on {key}: {errors[0]}")
            cells.append(("failed" if errors else "-") if s is None else f"{s[0]:.1f} ({s[1]:.1f}-{s[2]:.1f})")
            if s and lib in PEERS:
                peers.append(s[0])
            if s:
                ours[lib] = s[0]
        ratios = [f"{min(peers) / ours[lib]:.2f}x" if peers and lib in ours else "-"
                  for lib in ("metagrad", "metagrad-compile")]
        lines.append(f"| {key} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    if result["timing"]:
        lines += ["", "ms per meta-iteration: median of the pass medians (range over passes). so = second-order, "
                  "fo = first-order; - = no such variant (W4's learn2learn column is a plain torch Reptile loop: "
                  "learn2learn has no Reptile). The fastest peer is taken over the peers that ran.", ""]
        if failed:
            lines += ["Failed (not in the fastest peer):", "", *[f"- {f}" for f in failed], ""]
    for lib in ("metagrad-compile", "metagrad-cudagraphs"):
        compile_s = {key: [r["first_s"] for r in per_lib.get(lib, []) if isinstance(r, dict)]
                     for key, per_lib in result["timing"].items()}
        if any(compile_s.values()):
            lines += [f"{lib}'s one-off compilation (first call): " + ", ".join(
                f"{key} {statistics.median(v):.0f} s" for key, v in compile_s.items() if v), ""]
    if result["memory"]:
        libs = list(next(iter(result["memory"].values())))
        gpu = m.get("device", "cpu") != "cpu"
        what = ("peak GPU memory allocated" if gpu else "growth of the process's RSS from before the first "
                "meta-iteration to its peak, with large tensors mapped apart; in brackets the whole peak RSS")
        lines += [f"Memory of second-order MAML on W2 ({what}):", "",
                  "| W2 inner steps | " + " | ".join(libs) + " |", "|---|" + "---|" * len(libs)]
        for steps, per in result["memory"].items():
            lines.append(f"| {steps} | " + " | ".join(memory_cell(per.get(lib)) for lib in libs) + " |")
        lines.append("")
    peak = m["peak_gflops"]
    for w, gflop in result["gflop_per_iteration"].items():
        s = summarise(result["timing"].get(f"{w}-so", {}).get("metagrad", []))
        if s:
            rate = gflop / (s[0] / 1e3)
            lines.append(f"{w}: {gflop:.1f} GFLOP per iteration, {rate:.1f} GFLOP/s achieved by metagrad = "
                         f"{100 * rate / peak:.0f}% of the measured matmul peak ({peak:.0f} GFLOP/s)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
