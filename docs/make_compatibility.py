"""Write the compatibility matrix (docs/compatibility_matrix.md): every piece of tests/compat_models.py x MAML
(second order, 2 steps) / Meta-SGD x (vmap without the check, the default path, task threads, compile), in float64,
as the largest difference from the per-task loop over the gradient's scale.

    .venv/bin/python docs/make_compatibility.py            # about 5 minutes on 2 cores (compile dominates)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

import metagrad as mg  # noqa: E402
from compat_models import ALGOS, PIECES, batch, learner  # noqa: E402
from metagrad.errors import ConfigError  # noqa: E402


def gradient(learn: mg.MetaLearner, name: str) -> dict[str, torch.Tensor]:
    learn.zero_grad()
    learn.meta_gradient(batch(name), torch.Generator().manual_seed(0))
    return {n: p.grad.clone() for n, p in learn.named_parameters()}


def difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    scale = max(float(g.abs().max()) for g in want.values()) or 1.0
    return max(float((got[n] - g).abs().max()) for n, g in want.items()) / scale


def cell(name: str, algo: str, want: dict[str, torch.Tensor], **kw) -> str:
    """The path's difference from the loop, or what stopped it."""
    try:
        raw = kw.get("self_check") is False  # torch's own vmap: also where metagrad refuses it at construction
        learn = learner(name, algo, **{**kw, "batching": "loop"} if raw else kw)
        learn.batching = kw.get("batching", "auto")
        err = difference(gradient(learn, name), want)
    except ConfigError:
        return "refused"
    except Exception as e:
        return f"cannot run ({type(e).__name__})"
    mark = "" if err < 1e-10 else " **wrong**"
    suffix = " (loop)" if kw.get("batching", "auto") == "auto" and not learn.vmapped else ""
    return f"{err:.0e}{mark}{suffix}"


def main() -> None:
    rows = []
    start = time.perf_counter()
    for name in PIECES:
        for algo in ALGOS:
            want = gradient(learner(name, algo, batching="loop", threads=1), name)
            row = [name, algo,
                   cell(name, algo, want, batching="vmap", self_check=False),
                   cell(name, algo, want),
                   cell(name, algo, want, batching="vmap"),
                   cell(name, algo, want, batching="loop", threads=2),
                   cell(name, algo, want, compile=True) if algo == "maml" else ""]
            rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
    head = ["piece", "algorithm", "torch vmap (no check)", "default `auto`", "explicit `vmap`", "task threads",
            "`compile=True`"]
    lines = [
        "# Compatibility matrix (generated)",
        "",
        f"Written by `python docs/make_compatibility.py` (torch {torch.__version__}, "
        f"{time.perf_counter() - start:.0f} s on 2 cores). Each cell: the largest difference of the path's "
        "meta-gradient from the per-task loop's, over "
        "the largest gradient element, in float64 (round-off is below 1e-13). **wrong**: above 1e-10; refused: "
        "ConfigError naming the module; (loop): `auto` took the per-task loop (convolutions on the CPU, torch's "
        "batch norm, or the self-check). Read it with [compatibility.md](compatibility.md).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    (HERE / "compatibility_matrix.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
