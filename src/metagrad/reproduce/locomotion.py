"""MuJoCo locomotion: the MAML paper (5.3, Figure 5: half-cheetah forward/backward after 0..3 steps) and the SG-MRL
paper (Table 2: SG-MRL vs MAML after one step, VPG inner and outer steps, appendix H settings).

The methods are the navigation reproduction's presets, run with the locomotion settings of the papers (horizon
200, meta-batch 40, 20 episodes per step, inner step 0.1), the SG-MRL study's on half-cheetah also with its code's
environment and policy (``SGMRL_CODE``); ``results.json``, resuming and the evaluation are the same (``metarl.run``
with this module's ``Experiment``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis.stats import format_ci
from ..errors import ConfigError
from .metarl import Experiment

# the MAML paper's half-cheetah forward/backward average return after 0..3 steps (appendix, Table 5)
MAML_PAPER = {"cheetah-dir": {"maml-trpo": [-50.69, 293.19, 313.48, 315.65],
                              "context": [-40.49, -44.08, -38.27, -42.50]}}  # context vector: appendix C.2
# the SG-MRL paper's Table 2, one inner update (trained and adapted with 1 step), mean over 4 seeds; its methods run
# on its code's environment and policy (SGMRL_CODE)
SGMRL_TABLE2 = {"cheetah-dir": {"sgmrl": 580.143, "maml-vpg": 465.624},
                "cheetah-vel": {"sgmrl": -91.73, "maml-vpg": -92.92}}
# what the SG-MRL code ran for Table 2's half-cheetah rows, and what learns here (docs/meta-rl.md): gym's
# half-cheetah at 5 simulator steps per action and gym's observation, maml_zoo's normalize() with scale 10 (actions
# x 0.1, initial std 1 in the policy's units) and MetaGaussianMLPPolicy's default tanh (the paper's text says ReLU,
# which at its inner step of 0.1 moves the policy 3-5x less and stays flat)
SGMRL_CODE = {"frame_skip": 5, "observation": "gym", "action_scale": 0.1, "init_std": 1.0, "activation": "tanh"}
SGMRL_METHODS = ("sgmrl", "sgmrl-full", "maml-vpg", "emaml")
ENVS = ("cheetah-dir", "cheetah-vel", "ant-dir", "ant-vel", "swimmer-vel")
# max_kl 0.02: the TRPO step of the run behind the MAML paper's half-cheetah numbers (maml_rl's
# test_maml_cheetah_direc.py loads maml1_fbs20_mbs40_flr_0.1_mlr0.02/itr_100.pkl: meta-batch 40, 20 episodes,
# inner step 0.1, KL step 0.02, iteration 100)
BASE = {"horizon": 200, "meta_batch_size": 40, "episodes": 20, "max_kl": 0.02, "eval_steps": 3,
        "eval_episodes": 20, "eval_tasks": 40, "eval_lr": (0.1, 0.05)}


def experiment(env: str) -> Experiment:
    """The locomotion experiment on one task family (``cheetah-dir``, ``cheetah-vel``, ``ant-dir``, ...)."""
    if env not in ENVS:
        raise ConfigError(f"unknown locomotion task family '{env}'; choose one of {', '.join(ENVS)}")
    paper = {"maml": MAML_PAPER.get(env, {}), "sgmrl_table2": SGMRL_TABLE2.get(env, {})}
    method_base = {m: SGMRL_CODE for m in SGMRL_METHODS} if env in SGMRL_TABLE2 else {}
    return Experiment(f"locomotion-{env}", format_table, paper, {**BASE, "env": env}, figures=figures,
                      method_base=method_base)


def figures(results: dict[str, Any], out: Path) -> list[Path]:
    """MAML Figure 5's panel (return after k steps) and the training curves (matplotlib imported only here)."""
    from ..rl import plots

    return plots.locomotion_figures(results, out)


def format_table(results: dict[str, Any]) -> str:
    """Return after k steps on held-out tasks (mean ± 95% CI over tasks) per method, the papers' beside."""
    methods, paper = results["methods"], results.get("paper", {})
    env = results["experiment"].removeprefix("locomotion-")
    steps = max(len(r["curve"]["mean"]) for r in methods.values())
    lines = [f"{env}: average return after k policy-gradient steps on held-out tasks, mean ± 95% CI over tasks", "",
             "| method | iterations | " + " | ".join(f"k = {s}" for s in range(steps)) + " |",
             "|" + "---|" * (steps + 2)]
    for m, r in methods.items():
        c = r["curve"]
        cells = [format_ci(a, b, 1) for a, b in zip(c["mean"], c["ci95"], strict=True)]
        lines.append(f"| {r['label']} | {r['iterations']} | " + " | ".join(cells + ["-"] * (steps - len(cells)))
                     + " |")
        reference = paper.get("maml", {}).get(m)
        if reference is None and m in paper.get("sgmrl_table2", {}):
            reference = [None, paper["sgmrl_table2"][m]]
        if reference is not None:
            shown = [f"{v:.1f}" if v is not None else "-" for v in reference] + ["-"] * steps
            lines.append(f"| {r['label']} (paper) | | " + " | ".join(shown[:steps]) + " |")
    lines.append("")
    for r in methods.values():
        c = r["curve"]
        lines.append(f"{r['label']}: {c['tasks']} tasks x {c['episodes']} episodes per step, test step sizes "
                     f"{c['lr']}; " + (f"{r['seconds_per_iteration']} s per meta-iteration, "
                                       f"{r['env_steps_per_second']:,} env steps/s overall, "
                                       f"{r.get('sampling_steps_per_second') or 0:,} while sampling"
                                       if r["seconds_per_iteration"] else "untrained"))
    return "\n".join(lines)
