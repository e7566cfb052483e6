"""MuJoCo locomotion: the MAML paper (5.3, Figure 5: half-cheetah forward/backward after 0..3 steps) and the SG-MRL
paper (Table 2: SG-MRL vs MAML after 1-3 steps, VPG inner and outer steps, appendix H settings).

The methods are the navigation reproduction's presets, run with the locomotion settings of the papers (horizon
200, meta-batch 40, 20 episodes per step, inner step 0.1), the SG-MRL study's on Table 2's families also with its
code's environments and policy (``SGMRL_CODE``, ``SGMRL_ENVS``); ``results.json``, resuming and the evaluation are
the same (``metarl.run`` with this module's ``Experiment``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis.stats import format_ci
from ..errors import check_choice
from ..tables import k_columns, md_head, md_row
from .metarl import Experiment

# the MAML paper's Figure 5 and Table 5: average return after 0..3 steps on its 40 test tasks, as the MAML code's
# repository keeps them (cbfinn/maml_rl, icml/icml_{cheetahdirec,cheetah,antdirec,ant}_results_*.pkl, the test
# scripts' "task_avg_returns" that icml/make_*_plots.py draw; its half-cheetah direction row is Table 5's); its tests
# fine-tune pretrained with step 0.2 and random with 1.0 (half-cheetah velocity: 0.02 and 0.1), the oracle not at all
# (a constant line); the context vector is appendix C.2's Table 5
MAML_PAPER = {"cheetah-dir": {"maml-trpo": [-50.69, 293.19, 313.48, 315.65],
                              "pretrained": [-43.03, -24.75, -12.85, 19.57],
                              "random": [-35.73, 21.83, 62.32, 86.18], "oracle": [442.69] * 4,
                              "context": [-40.49, -44.08, -38.27, -42.50]},
              "cheetah-vel": {"maml-trpo": [-129.53, -78.57, -66.62, -60.78],
                              "pretrained": [-158.00, -135.39, -128.47, -133.61],
                              "random": [-254.83, -254.33, -246.79, -230.83], "oracle": [-54.47] * 4},
              "ant-vel": {"maml-trpo": [30.58, 96.74, 100.06, 101.41], "pretrained": [-1.83, 6.11, 8.47, 9.47],
                          "random": [-78.64, -62.81, -48.55, -35.56], "oracle": [107.89] * 4},
              "ant-dir": {"maml-trpo": [8.66, 499.15, 500.68, 499.11], "pretrained": [3.16, 1.27, 6.51, 6.86],
                          "random": [3.11, 9.25, 15.96, 26.11], "oracle": [524.80] * 4}}
# the rows the paper prints (Table 5), labelled "(paper)"; the others "(MAML code)": Figure 5 is a plot
TABLE5 = {("cheetah-dir", "maml-trpo"), ("cheetah-dir", "context")}
# the SG-MRL paper's Table 2: mean meta-test return over 4 seeds, per number of inner steps (trained and adapted with
# that many; string keys, as they come back from results.json); its methods run on its code's environments and
# policy (SGMRL_CODE, SGMRL_ENVS: the same families)
SGMRL_TABLE2 = {"cheetah-dir": {"1": {"sgmrl": 580.143, "maml-vpg": 465.624},
                                "2": {"sgmrl": 580.203, "maml-vpg": 441.247},
                                "3": {"sgmrl": 504.747, "maml-vpg": 477.086}},
                "cheetah-rand-vel": {"1": {"sgmrl": -91.73, "maml-vpg": -92.92},
                                     "2": {"sgmrl": -52.64, "maml-vpg": -56.71},
                                     "3": {"sgmrl": -33.39, "maml-vpg": -32.48}},
                "swimmer-rand-vel": {"1": {"sgmrl": 118.77, "maml-vpg": 104.53},
                                     "2": {"sgmrl": 134.57, "maml-vpg": 108.47},
                                     "3": {"sgmrl": 110.91, "maml-vpg": 90.60}}}
# the SG-MRL code's policy, observation and test step, and what learns here (docs/meta-rl.md): maml_zoo's normalize()
# with scale 10 (actions x 0.1, initial std 1 in the policy's units) and MetaGaussianMLPPolicy's default tanh (the
# paper's text says ReLU, which at its inner step of 0.1 moves the policy 3-5x less and stays flat), gym's
# observations; its Tester adapts with its inner step, 0.1, at every test step (a fixed 0.1 here: with --set
# inner_lr=..., set eval_lr too)
SGMRL_CODE = {"observation": "gym", "action_scale": 0.1, "init_std": 1.0, "activation": "tanh", "eval_lr": (0.1,)}
# its environments (maml_zoo's): half-cheetah direction at gym's 5 simulator steps per action (our cheetah-dir
# family is rllab's, 1 step); its velocity and swimmer families are cheetah-rand-vel and swimmer-rand-vel as they are
SGMRL_ENVS = {"cheetah-dir": {"frame_skip": 5}, "cheetah-rand-vel": {}, "swimmer-rand-vel": {}}
SGMRL_METHODS = ("sgmrl", "sgmrl-full", "maml-vpg", "emaml")
ENVS = ("cheetah-dir", "cheetah-vel", "ant-dir", "ant-vel", "swimmer-vel", "cheetah-rand-vel", "swimmer-rand-vel")
# max_kl 0.02: the TRPO step of the run behind the MAML paper's half-cheetah numbers (maml_rl's
# test_maml_cheetah_direc.py loads maml1_fbs20_mbs40_flr_0.1_mlr0.02/itr_100.pkl: meta-batch 40, 20 episodes,
# inner step 0.1, KL step 0.02, iteration 100)
# compile: the outer step through torch.compile (about a minute once per run, then half-cheetah's TRPO update about
# 3x faster: docs/speed.md, benchmarks/cheetah_speed.py); --set compile=false for short tries
BASE = {"horizon": 200, "meta_batch_size": 40, "episodes": 20, "max_kl": 0.02, "eval_steps": 3,
        "eval_episodes": 20, "eval_tasks": 40, "eval_lr": (0.1, 0.05), "compile": True}
# per family, over BASE: the MAML code's ant runs took a KL step of 0.01 (maml_rl's cluster_maml_trpo_ant.py and the
# checkpoints its test scripts load, maml1_fbs20_mbs40_flr_0.1_mlr0.01 and maml1_fbs40_..._mlr0.01); the ant
# forward/backward task used 40 episodes per step (the paper's section 5.3; its test script too). The ant's episodes
# end early (it falls): the update on valid steps alone (pack_episodes: the same losses, an update's cost in
# proportion to the valid steps, docs/speed.md), where the method allows it; each task's losses average over its
# valid steps, as the MAML code's (its samples are the task's steps, not episodes x horizon slots). Its ant
# direction test (test_maml_ant_direc.py) takes 0.01 x the first step after it, for every method (its other tests
# 0.5 x): MAML 0.1, then 0.001. (The paper's appendix A.2 says 0.1, then 0.05 "in all reinforcement learning
# experiments"; its stored ant direction returns are the test script's: `--set eval_lr=0.1,0.05` tests as the text.)
ANT = {"max_kl": 0.01, "pack_episodes": True, "loss_mean": "steps"}
FAMILY_SETTINGS = {"ant-vel": ANT, "ant-dir": {**ANT, "episodes": 40, "eval_episodes": 40, "eval_lr": (0.1, 0.001),
                                               "eval_later": 0.01}}
# the oracle is not fine-tuned (its preset's eval_lr 0, which BASE's would override): MAML Figure 5 draws it as a
# constant line, its return with the goal as input
ORACLE = {"eval_lr": (0.0,)}


def experiment(env: str) -> Experiment:
    """The locomotion experiment on one task family (``cheetah-dir``, ``cheetah-vel``, ``ant-dir``, ...)."""
    check_choice("locomotion task family", env, tuple(ENVS))
    paper = {"maml": MAML_PAPER.get(env, {}), "sgmrl_table2": SGMRL_TABLE2.get(env, {})}
    method_base = {"oracle": ORACLE}
    if env in SGMRL_ENVS:
        method_base.update({m: {**SGMRL_CODE, **SGMRL_ENVS[env]} for m in SGMRL_METHODS})
    base = {**BASE, "env": env, **FAMILY_SETTINGS.get(env, {})}
    return Experiment(f"locomotion-{env}", format_table, paper, base, figures=figures, method_base=method_base)


def figures(results: dict[str, Any], out: Path) -> list[Path]:
    """MAML Figure 5's panel (return after k steps) and the training curves (matplotlib imported only here)."""
    from ..rl import plots

    paper = {m: row for m in results["methods"] if (row := paper_row(results, m)) is not None}
    return plots.locomotion_figures(results, out, paper, {m: source(results, m) for m in paper})


def paper_row(results: dict[str, Any], method: str) -> list[float | None] | None:
    """The paper's returns after 0..k steps for ``method``: the MAML code's (Figure 5, Table 5), or the SG-MRL
    paper's Table 2 value at k = the run's inner steps (None before it); None where neither has the method."""
    paper = results.get("paper", {})
    reference = paper.get("maml", {}).get(method)
    if reference is None:
        inner_steps = results["methods"][method]["config"].get("inner_steps", 1)
        value = paper.get("sgmrl_table2", {}).get(str(inner_steps), {}).get(method)
        reference = None if value is None else [None] * inner_steps + [value]
    return reference


def source(results: dict[str, Any], method: str) -> str:
    """Where ``paper_row``'s values for ``method`` come from: "paper" (its tables) or "MAML code" (stored returns)."""
    env = results["experiment"].removeprefix("locomotion-")
    from_code = method in results.get("paper", {}).get("maml", {}) and (env, method) not in TABLE5
    return "MAML code" if from_code else "paper"


def format_table(results: dict[str, Any]) -> str:
    """Return after k steps on held-out tasks (mean ± 95% CI over tasks) per method, the papers' beside."""
    methods = results["methods"]
    env = results["experiment"].removeprefix("locomotion-")
    steps = max(max(len(r["curve"]["mean"]), r["config"].get("inner_steps", 1) + 1) for r in methods.values())
    lines = [f"{env}: average return after k policy-gradient steps on held-out tasks, mean ± 95% CI over tasks", "",
             *md_head(["method", "iterations", *k_columns(range(steps))])]
    for m, r in methods.items():
        c = r["curve"]
        cells = [format_ci(a, b, 1) for a, b in zip(c["mean"], c["ci95"], strict=True)]
        lines.append(md_row([r["label"], r["iterations"], *cells, *["-"] * (steps - len(cells))]))
        reference = paper_row(results, m)
        if reference is not None:
            shown = [str(v) if v is not None else "-" for v in reference] + ["-"] * steps  # as the source gives them
            lines.append(md_row([f"{r['label']} ({source(results, m)})", "", *shown[:steps]]))
    lines.append("")
    for r in methods.values():
        c = r["curve"]
        tested = f" (best checkpoint, iteration {r['best_iteration']})" if r.get("best_iteration") else ""
        lines.append(f"{r['label']}{tested}: {c['tasks']} tasks x {c['episodes']} episodes per step, test step sizes "
                     f"{c['lr']}; " + (f"{r['seconds_per_iteration']} s per meta-iteration, "
                                       f"{r['env_steps_per_second']:,} env steps/s overall, "
                                       f"{r.get('sampling_steps_per_second') or 0:,} while sampling"
                                       if r["seconds_per_iteration"] else "untrained"))
    return "\n".join(lines)
