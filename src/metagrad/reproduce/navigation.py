"""2D navigation: the MAML paper (5.3, Figure 4, appendix Table 4) and the SG-MRL paper (5, Table 1), on the shared
meta-RL protocol (``reproduce.metarl``): the papers' numbers and the table that prints ours beside them.

MAML-TRPO is also measured as the MAML code measured Table 4 (``rllab_return_curve``: maml_examples/
test_maml_point.py runs VPG with a batch of 4000 steps over 40 environments and averages the completed
episodes, which weighs short, successful ones more); the fixed-episode curve stays the main one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis.stats import format_ci
from ..tables import k_columns, md_head, md_row
from .metarl import Experiment

MAML_TABLE4 = {"maml-trpo": [-40.41, -11.68, -3.33, -3.23], "context": [-42.42, -13.90, -5.17, -3.18]}
SGMRL_TABLE1 = {"sgmrl": -16.901, "maml-vpg": -17.767, "emaml": -17.803}
MAML_METHODS = ("maml-trpo", "fomaml-trpo", "pretrained", "random", "oracle", "context")
SGMRL_METHODS = ("sgmrl", "sgmrl-full", "maml-vpg", "emaml")



def format_table(results: dict[str, Any]) -> str:
    """The papers' tables with ours beside: average return after k steps on the held-out goals, mean ± 95% CI."""
    methods = results["methods"]
    lines = ["2D navigation: average return after k VPG steps on held-out goals (episodes per step and step sizes "
             "below), mean ± 95% CI over goals", ""]
    maml = [m for m in MAML_METHODS if m in methods]
    if maml:
        steps = max(len(methods[m]["curve"]["mean"]) for m in maml)  # methods added with other eval_steps: padded
        lines += ["MAML paper (appendix Table 4; Figure 4)", "",
                  *md_head(["method", "iterations", *k_columns(range(steps))])]
        for m in maml:
            r = methods[m]
            lines.append(md_row([r["label"], r["iterations"], *_cells(r["curve"], steps)]))
            if "curve_rllab" in r:
                lines.append(md_row([f"{r['label']} (the MAML code's measurement)", r["iterations"],
                                     *_cells(r["curve_rllab"], steps)]))
            if m in MAML_TABLE4:
                paper = MAML_TABLE4[m] + [None] * (steps - len(MAML_TABLE4[m]))
                lines.append(md_row([f"{r['label']} (paper)", "500 max",
                                     *(f"{v:.2f}" if v is not None else "-" for v in paper[:steps])]))
        lines.append("")
    sg = [m for m in SGMRL_METHODS if m in methods]
    if sg:
        lines += ["SG-MRL paper (Table 1: meta-test reward after 1 step)", "",
                  *md_head(["method", "iterations", *k_columns([0, 1]), "paper, k = 1"])]
        for m in sg:
            r = methods[m]
            c = r["curve"]
            ours = [format_ci(c["mean"][k], c["ci95"][k]) if len(c["mean"]) > k else "-" for k in (0, 1)]
            paper = f"{SGMRL_TABLE1[m]:.2f}" if m in SGMRL_TABLE1 else "-"
            lines.append(f"| {r['label']} | {r['iterations']} | {ours[0]} | {ours[1]} | {paper} |")
        lines.append("")
    other = [m for m in methods if m not in MAML_METHODS + SGMRL_METHODS]
    if other:
        steps = max(len(methods[m]["curve"]["mean"]) for m in other)
        lines += ["Other methods (no paper number on 2D navigation)", "",
                  *md_head(["method", "iterations", *k_columns(range(steps))])]
        for m in other:
            r = methods[m]
            lines.append(md_row([r["label"], r["iterations"], *_cells(r["curve"], steps)]))
        lines.append("")
    for r in methods.values():
        c = r["curve"]
        lines.append(f"{r['label']}: {c['tasks']} goals x {c['episodes']} episodes per step, test step sizes "
                     f"{c['lr']}; best checkpoint at iteration "
                     f"{r['best_iteration']}; " + (f"{r['seconds_per_iteration']} s per meta-iteration, "
                                                   f"{r['env_steps_per_second']:,} env steps/s overall, "
                                                   f"{r.get('sampling_steps_per_second') or 0:,} while sampling"
                                                   if r["seconds_per_iteration"] else "untrained"))
    return "\n".join(lines)


def _cells(curve: dict[str, list[float]], steps: int | None = None) -> list[str]:
    """A return curve as table cells, mean ± 95% CI after each number of steps ("-" up to ``steps`` cells)."""
    cells = [format_ci(m, c) for m, c in zip(curve["mean"], curve["ci95"], strict=True)]
    return cells + ["-"] * ((steps or 0) - len(cells))


def figures(results: dict[str, Any], out: Path) -> list[Path]:
    """MAML Figure 4: return after k steps, training curves, trajectories (matplotlib imported only here)."""
    from ..rl import plots

    return plots.navigation_figures(results, out)


NAVIGATION = Experiment("navigation", format_table, {"maml_table4": MAML_TABLE4, "sgmrl_table1": SGMRL_TABLE1},
                        rllab_methods=tuple(MAML_TABLE4), figures=figures)  # Table 4's context-vector row: appendix C.2
