"""The MAML paper's multi-task baselines (appendix C.1, Table 2): averaging in parameter space.

500 regressors, each trained from its own random initialization on plenty of data from one sinusoid task, are
averaged parameter by parameter; the average is fine-tuned on K = 5 points with a step size tuned on validation
tasks and tested like the sinusoid reproduction's methods (5-shot MSE after 1, 5, 10 steps). Three variants of the
individual training: no regularization, L2 weight decay, and L2 towards the mean of the regressors trained so far
(the paper trains them one after another; here groups of ``group`` regressors are trained at once under vmap,
each group pulled towards the mean of the groups before it). The paper set the regularization "as high as
possible without significantly deterring performance" (the individual errors stayed under 0.02); ``STRENGTH``
holds ours, chosen that way (the individual MSE is reported beside the results).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.func import stack_module_state
from tqdm import tqdm

from .. import files
from ..algorithms import JointTraining
from ..analysis.stats import format_ci
from ..build import build_tasks
from ..config import load_config
from ..errors import ConfigError, check_whole
from ..experiment import evaluate
from ..functional import params_of
from ..inner import SGD
from ..models import MLP
from ..provenance import stamped
from ..settings import check_seed
from ..tables import k_columns, md_head

VARIANTS = ("none", "l2", "mean")
LABELS = {"none": "multi-task, no reg", "l2": "multi-task, l2 reg", "mean": "multi-task, reg to mean theta"}
PAPER = {"none": [4.19, 3.85, 3.69], "l2": [7.18, 5.69, 5.60], "mean": [2.91, 2.72, 2.71]}  # after 1 / 5 / 10 steps
# coefficient of the summed squared distance: the largest of 1e-3, 1e-2, 1e-1 (l2) and 1e-2, 1e-1, 1 (mean) whose
# regressors still fit their sine waves to about the paper's 0.02 (40 regressors in groups of 10, 4,000 steps:
# l2 0.0044 / 0.021 / 0.42, mean 0.014 / 0.28 / 3.8)
STRENGTH = {"none": 0.0, "l2": 1e-2, "mean": 1e-2}


@dataclass(frozen=True)
class Setting:
    """How the individual regressors are trained and the average tested (paper: 500 regressors)."""

    models: int = 500
    group: int = 10  # regressors trained at once (batched); small, so that "the mean so far" moves along
    steps: int = 4000  # Adam steps per regressor, each on fresh points of its task
    batch: int = 100
    lr: float = 3e-3
    eval_tasks: int = 600
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("models", 1), ("group", 1), ("steps", 1), ("batch", 1), ("eval_tasks", 2)):
            check_whole(name, getattr(self, name), low)
        check_seed("seed", self.seed)
        if not self.lr > 0:
            raise ConfigError(f"lr {self.lr} must be positive (e.g. 3e-3)")


def train_regressors(variant: str, setting: Setting, progress: bool = True) -> tuple[dict[str, torch.Tensor],
                                                                                     float]:
    """The parameters of every regressor ``[models, ...]`` and their mean final training MSE (on one thread:
    the products are too small to share out, and spreading them over busy cores cost 20x, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_regressors(variant, setting, progress)
    finally:
        torch.set_num_threads(threads)


def _train_regressors(variant: str, setting: Setting, progress: bool) -> tuple[dict[str, torch.Tensor], float]:
    cfg = load_config("sinusoid-pretrained")
    tasks = build_tasks(cfg)
    gen = torch.Generator().manual_seed(setting.seed)
    done: list[dict[str, torch.Tensor]] = []
    errors = []
    bar = tqdm(total=setting.models, desc=f"regressors ({variant})", unit="model", disable=not progress,
               file=sys.stderr)
    for start in range(0, setting.models, setting.group):
        g = min(setting.group, setting.models - start)
        torch.manual_seed(setting.seed * 100_003 + start)
        nets = [MLP(1, cfg.hidden, 1, cfg.activation) for _ in range(g)]
        params, _ = stack_module_state(nets)
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        anchor = ({k: torch.cat([d[k] for d in done]).mean(0) for k in params} if done and variant == "mean"
                  else None)
        amp, phase = tasks.sample_params(g, gen)
        opt = torch.optim.Adam(params.values(), lr=setting.lr)  # elementwise: each regressor its own Adam
        lo, hi = cfg.x_range
        for _ in range(setting.steps):
            x = lo + (hi - lo) * torch.rand(g, setting.batch, 1, generator=gen)
            y = amp[:, None, None] * torch.sin(x + phase[:, None, None])
            mse = ((batched_mlp(params, x) - y) ** 2).mean((1, 2))
            loss = mse.sum() + STRENGTH[variant] * _penalty(params, anchor)
            opt.zero_grad()
            loss.backward()
            opt.step()
        errors.append(mse.detach())
        done.append({k: v.detach() for k, v in params.items()})
        bar.update(g)
    bar.close()
    return {k: torch.cat([d[k] for d in done]) for k in done[0]}, float(torch.cat(errors).mean())


def batched_mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``G`` MLPs (``metagrad.models.MLP`` with ReLU, parameters stacked ``[G, ...]``) on their own inputs
    ``[G, B, in]`` with batched matrix products (much faster than vmap over a functional call at this size)."""
    layers = sorted({int(k.split(".")[0]) for k in params})
    for i, layer in enumerate(layers):
        x = torch.baddbmm(params[f"{layer}.bias"][:, None, :], x, params[f"{layer}.weight"].transpose(1, 2))
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def _penalty(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Squared distance of every regressor to the anchor, summed over regressors; without an anchor (variant "l2",
    and the first group of "mean", which has no models before it) plain weight decay towards 0."""
    if anchor is None:
        return sum((v**2).sum() for v in params.values())
    return sum(((v - anchor[k]) ** 2).sum() for k, v in params.items())


def run(out: str | Path, setting: Setting | None = None, progress: bool = True,
        variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Train, average, fine-tune and test each variant; write ``multitask.json`` and print the table. Each variant's
    result is kept as it finishes (``variant-<name>.json``), so that an interrupted study, run again with the same
    setting, goes on with the variants left (the variants are seeded apart: the same numbers)."""
    setting = setting or Setting()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("sinusoid-pretrained").replace(eval_shots=(5,), eval_tasks=setting.eval_tasks)
    results: dict[str, Any] = {"setting": setting.__dict__, "paper": PAPER, "variants": {}}
    for v in variants:
        kept = out / f"variant-{v}.json"  # each variant's result as it finishes: a rerun goes on from there
        saved = files.read_json(kept)
        if saved is not None and saved.get("setting") == setting.__dict__ and "result" in saved:
            results["variants"][v] = saved["result"]
            print(f"{LABELS[v]}: kept from an earlier session ({kept})", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        params, train_mse = train_regressors(v, setting, progress)
        model = MLP(1, cfg.hidden, 1, cfg.activation)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name].mean(0))
        learner = JointTraining(model, inner=SGD(cfg.eval_lr_grid[1]))
        curve = evaluate(learner, cfg)[5]
        results["variants"][v] = {"label": LABELS[v], "strength": STRENGTH[v], "train_mse": round(train_mse, 4),
                                  "seconds": round(time.perf_counter() - t0, 1), "curve": curve,
                                  "average_norm": round(float(sum((p**2).sum() for p in params_of(model).values())
                                                              ** 0.5), 3)}
        files.write_json(kept, {"setting": setting.__dict__, "result": results["variants"][v]})
        print(f"{LABELS[v]}: individual training MSE {train_mse:.4f}, {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    results = stamped(results)
    files.write_json(out / "multitask.json", results)
    table = format_table(results)
    files.write_text(out / "multitask.md", table + "\n")
    print(table)
    return results


def format_table(results: dict[str, Any]) -> str:
    """5-shot MSE after 1, 5, 10 steps of each variant, the paper's Table 2 beside."""
    s = results["setting"]
    lines = [f"Multi-task baselines, parameter averaging (MAML appendix C.1, Table 2): {s['models']} regressors x "
             f"{s['steps']:,} Adam steps of {s['batch']} points; 5-shot MSE after k steps on {s['eval_tasks']} test "
             "tasks, mean ± 95% CI, step size tuned on validation tasks", "",
             *md_head(["method", *k_columns([1, 5, 10]), "paper (1 / 5 / 10)", "individual MSE", "step size"])]
    for v, r in results["variants"].items():
        c = r["curve"]["loss"]
        cells = " | ".join(format_ci(c["mean"][k], c["ci95"][k]) for k in (1, 5, 10))
        paper = " / ".join(f"{x:.2f}" for x in results["paper"][v])
        lines.append(f"| {r['label']} | {cells} | {paper} | {r['train_mse']:.3f} | {r['curve']['lr']} |")
    return "\n".join(lines)
