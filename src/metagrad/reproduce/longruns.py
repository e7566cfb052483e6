"""The paper runs that take days on 2 cores, kept small and in the repository (``results/long/``) so that they
accumulate a few hours at a time: each row's command continues it where it stopped (every run resumes), each
session appends a segment (iterations, time, commit, machine) to its runs' ``segments.jsonl``, and ``metagrad
status`` writes ``results/long/INDEX.md``: for every row, how much of its budget is done.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..errors import CheckpointError, real_number
from ..tables import md_head

ROOT = Path("results/long")


@dataclass(frozen=True)
class Row:
    """One paper result and the command that produces it here."""

    name: str
    paper: str  # the paper's budget, in words
    folder: str  # under ROOT
    command: str  # run again to continue (it resumes); commands for different methods joined by "; "
    target: int  # our budget: iterations per run, or environment steps per run (``unit``)
    unit: str = "iterations"  # or "env steps"
    runs: int = 1  # runs the budget applies to (methods x seeds)


PAIRS = {"ppo": "DRS+PPO vs ProMP", "trpo": "DRS+TRPO vs TRPO-MAML"}


def tradeoff_row(env: str, title: str, pair: str, budget: int, checkpoints: int, small: bool,
                 figure: str | None) -> Row:
    """The trade-off paper's meta-RL study on ``env`` with one outer-optimizer ``pair`` (5 seeds), at ``budget``
    environment steps per run; ``small``: Meta-World's settings (meta-batch 5 x 5 episodes, 5 test tasks);
    ``figure`` None: the pair's own (Fig. 1 for PPO, Fig. 2 for TRPO)."""
    folder = f"tradeoff-rl-{env}-{pair}"
    sizes = "--meta-batch-size 5 --episodes 5 --test-tasks 5 " if small else ""
    return Row(f"Trade-off {figure or ('Fig. 1' if pair == 'ppo' else 'Fig. 2')}: {title}, {PAIRS[pair]}",
               "336M steps per run, 5 seeds", folder,
               f"metagrad tradeoff rl --env {env} --pair {pair} --budget {budget} --checkpoints {checkpoints} "
               f"--seeds 5 {sizes}--test-episodes 5 --out results/long/{folder}", budget, "env steps", runs=10)


ROWS = (
    Row("Half-cheetah forward/backward, MAML-TRPO, seed 0, curvature on every episode: the side-by-side run "
        "(pytorch-maml-rl's continues with benchmarks/maml_rl_cheetah.py into "
        "side-by-side-cheetah-dir/pytorch-maml-rl; the README's Table 5 row is seed 1's, below)",
        "100-500 iterations of 40 tasks x 20 episodes",
        "side-by-side-cheetah-dir/metagrad", "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo "
        "--iterations 500 --time-budget 60 --set hvp_subsample=1.0 --set compile=true --out "
        "results/long/side-by-side-cheetah-dir/metagrad",
        500),
    Row("Half-cheetah forward/backward, MAML-TRPO with curvature on a quarter of the episodes (hvp_subsample 0.25): "
        "it plateaus (after one step +5 over iterations 41-128, against +61 at 41-50 with every episode)",
        "500 iterations", "locomotion-cheetah-dir", "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo "
        "--iterations 500 --time-budget 120 --set hvp_subsample=0.25 --set compile=true --out "
        "results/long/locomotion-cheetah-dir",
        500),
    Row("Half-cheetah forward/backward, MAML-TRPO with rllab's older baseline order (each task's advantages from "
        "the previous task's linear fit; --set baseline=linear-previous; the MAML code fits each task's own, as ours): "
        "one change against the run of record",
        "100 iterations (to compare with the run of record's first 100)", "cheetah-dir-baseline-previous",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo --iterations 100 --time-budget 60 --set "
        "hvp_subsample=1.0 --set compile=true --set baseline=linear-previous --out "
        "results/long/cheetah-dir-baseline-previous", 100),
    Row("Half-cheetah forward/backward, MAML-TRPO, the control of the row above (the same command and seed with the "
        "default baseline; the run of record was sampled by older code, its random stream differs from iteration 1)",
        "100 iterations", "cheetah-dir-baseline-own",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo --iterations 100 --time-budget 60 --set "
        "hvp_subsample=1.0 --set compile=true --out results/long/cheetah-dir-baseline-own", 100),
    Row("Half-cheetah forward/backward, MAML-TRPO stepping along the gradient, scaled to the KL bound (--set "
        "cg_iters=1: where the MAML code's float32 finite-difference curvature products leave its conjugate gradient, "
        "docs/maml_code_trpo.py): one change against the control", "100 iterations", "cheetah-dir-cg1",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo --iterations 100 --time-budget 60 --set "
        "hvp_subsample=1.0 --set compile=true --set cg_iters=1 --out results/long/cheetah-dir-cg1", 100),
    Row("MAML Table 5: half-cheetah forward/backward, MAML-TRPO, the control's command with seed 1 (the README's row; "
        "first the spread between seeds, against which one-seed differences are read; still climbing at 100 "
        "iterations, so on to the paper's 500)",
        "100 iterations, then 500", "cheetah-dir-seed-1",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo --iterations 500 --seed 1 --time-budget "
        "60 --set hvp_subsample=1.0 --set compile=true --out results/long/cheetah-dir-seed-1", 500),
    Row("Half-cheetah forward/backward, MAML-TRPO, the control's command with seed 2 (the spread between seeds, "
        "against which one-seed differences are read)", "100 iterations", "cheetah-dir-seed-2",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-trpo --iterations 100 --seed 2 --time-budget "
        "60 --set hvp_subsample=1.0 --set compile=true --out results/long/cheetah-dir-seed-2", 100),
    Row("MAML Fig. 5: half-cheetah goal velocity, MAML-TRPO, pretrained, oracle (and random)", "500 iterations",
        "locomotion-cheetah-vel", "metagrad reproduce locomotion --env cheetah-vel --algo maml-trpo,pretrained,"
        "oracle,random --iterations 500 --time-budget 120 --set hvp_subsample=1.0 --set compile=true --out "
        "results/long/locomotion-cheetah-vel", 500, runs=3),
    Row("MAML Fig. 5: ant goal velocity, MAML-TRPO, pretrained, oracle (and random), on rllab's ant.xml as the MAML "
        "code (0.02 s per action, softer contacts); each task's losses averaged over its K x H slots (the run began "
        "before the preset took the MAML code's mean over valid steps; 97% of its slots are valid by iteration 150)",
        "500 iterations", "locomotion-ant-vel", "metagrad reproduce locomotion --env ant-vel --algo "
        "maml-trpo,pretrained,oracle,random --iterations 500 --time-budget 120 --set hvp_subsample=1.0 --set "
        "compile=true --set pack_episodes=true --set loss_mean=slots --out results/long/locomotion-ant-vel", 500,
        runs=3),
    Row("Ant goal velocity, MAML-TRPO on gymnasium's ant (5 x 0.01 s per action; the row above before it took "
        "rllab's ant.xml): no adaptation in 347 iterations, stopped", "500 iterations",
        "ant-vel-gym-physics", "metagrad reproduce locomotion --env ant-vel --algo maml-trpo --iterations 500 "
        "--time-budget 120 --set hvp_subsample=1.0 --set compile=true --set pack_episodes=true --set physics=gym "
        "--set max_kl=0.02 --set loss_mean=slots --out results/long/ant-vel-gym-physics", 500),
    Row("MAML Fig. 5: ant direction, MAML-TRPO, pretrained, oracle (and random), on rllab's ant.xml, 40 episodes "
        "per step (the paper's for this task), losses averaged over valid steps; MAML-TRPO on to iteration 575, the "
        "checkpoint the MAML code's test loads", "500 iterations (the MAML code's test: 575 of 800)",
        "locomotion-ant-dir", "metagrad reproduce locomotion --env ant-dir --algo maml-trpo --iterations 575 "
        "--time-budget 120 --set hvp_subsample=1.0 --set compile=true --set pack_episodes=true --out "
        "results/long/locomotion-ant-dir; metagrad reproduce locomotion --env ant-dir --algo pretrained,oracle,random "
        "--iterations 500 --time-budget 120 --set hvp_subsample=1.0 --set compile=true --set pack_episodes=true "
        "--out results/long/locomotion-ant-dir", 500, runs=3),
    Row("SG-MRL Table 2: half-cheetah direction on its code's environment and policy (gym's half-cheetah, 5 "
        "simulator steps per action; actions scaled by 0.1 as its normalize(), initial std 1 in those units; tanh "
        "hidden units, its code's default), 1 step, SG-MRL and MAML (VPG)", "500 epochs, 4 seeds",
        "sgmrl-cheetah-dir-scaled-tanh", "metagrad reproduce locomotion --env cheetah-dir --algo sgmrl,maml-vpg "
        "--iterations 500 --time-budget 120 --set frame_skip=5 --set observation=gym --set action_scale=0.1 --set "
        "init_std=1.0 --set activation=tanh --set compile=true --out results/long/sgmrl-cheetah-dir-scaled-tanh",
        500, runs=2),
    Row("SG-MRL Table 2 as above, MAML (VPG), seed 1 (the paper: 4 seeds)", "500 epochs",
        "sgmrl-cheetah-dir-scaled-tanh-seed-1", "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg "
        "--iterations 500 --time-budget 120 --seed 1 --set frame_skip=5 --set observation=gym --set action_scale=0.1 "
        "--set init_std=1.0 --set activation=tanh --set compile=true --out "
        "results/long/sgmrl-cheetah-dir-scaled-tanh-seed-1", 500),
    Row("SG-MRL Table 2 as above, MAML (VPG), seed 2", "500 epochs", "sgmrl-cheetah-dir-scaled-tanh-seed-2",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 2 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --out results/long/sgmrl-cheetah-dir-scaled-tanh-seed-2", 500),
    Row("SG-MRL Table 2 as above, MAML (VPG), seed 3 (the paper's fourth)", "500 epochs",
        "sgmrl-cheetah-dir-scaled-tanh-seed-3",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 3 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --out results/long/sgmrl-cheetah-dir-scaled-tanh-seed-3", 500),
    Row("SG-MRL Table 2 as above, MAML (VPG), seed 0 again with the outer step lowered tenfold after 20 iterations "
        "without a new best training return (outer_lr_schedule plateau: the fall-back's remedy from the start)",
        "500 epochs", "sgmrl-cheetah-dir-plateau",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 0 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --set outer_lr_schedule=plateau --set outer_lr_patience=20 "
        "--out results/long/sgmrl-cheetah-dir-plateau", 500),
    Row("SG-MRL Table 2 as above, MAML (VPG), seeds 0-3 again with the outer step lowered tenfold when the outer "
        "gradient norm's 10-iteration mean passes 3x its lowest after iteration 50 (outer_lr_schedule grad-norm: "
        "on the constant-step logs it fires near every seed's peak, docs/fallback_triggers.py)",
        "500 epochs, 4 seeds", "sgmrl-cheetah-dir-grad-norm",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 0 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --set outer_lr_schedule=grad-norm --out results/long/sgmrl-cheetah-dir-grad-norm/seed-0; "
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 1 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --set outer_lr_schedule=grad-norm --out results/long/sgmrl-cheetah-dir-grad-norm/seed-1; "
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 2 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --set outer_lr_schedule=grad-norm --out results/long/sgmrl-cheetah-dir-grad-norm/seed-2; "
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --seed 3 "
        "--set frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=tanh "
        "--set compile=true --set outer_lr_schedule=grad-norm --out results/long/sgmrl-cheetah-dir-grad-norm/seed-3",
        500, runs=4),
    Row("SG-MRL Table 2, half-cheetah direction, 2 inner steps (the row's second line), MAML (VPG), on the 1-step "
        "rows' environment and policy (the study's defaults: gym's half-cheetah at 5 simulator steps per action, "
        "actions scaled by 0.1, tanh), step 0.1 at every inner and test step", "500 epochs, 4 seeds",
        "sgmrl-cheetah-dir-k2",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --set "
        "inner_steps=2 --set compile=true --out results/long/sgmrl-cheetah-dir-k2", 500),
    Row("SG-MRL Table 2, half-cheetah direction, 3 inner steps (the row's third line), MAML (VPG), as the 2-step line",
        "500 epochs, 4 seeds", "sgmrl-cheetah-dir-k3",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --set "
        "inner_steps=3 --set compile=true --out results/long/sgmrl-cheetah-dir-k3", 500),
    Row("SG-MRL Table 2: swimmer goal velocity as its code's library (maml_zoo) defines it (reward +|v - g|), 1 step, "
        "MAML (VPG) (the SG-MRL code's SG-MRL is its MAML-VPG)", "500 epochs, 4 seeds", "sgmrl-swimmer-rand-vel",
        "metagrad reproduce locomotion --env swimmer-rand-vel --algo maml-vpg --iterations 500 --time-budget 120 "
        "--set compile=true --out results/long/sgmrl-swimmer-rand-vel", 500),
    Row("SG-MRL Table 2: half-cheetah goal velocity as maml_zoo defines it (g ~ U[0, 3], 5 simulator steps per "
        "action), 1 step, MAML (VPG)", "500 epochs, 4 seeds", "sgmrl-cheetah-rand-vel",
        "metagrad reproduce locomotion --env cheetah-rand-vel --algo maml-vpg --iterations 500 --time-budget 120 "
        "--set compile=true --out results/long/sgmrl-cheetah-rand-vel", 500),
    Row("SG-MRL Table 2: half-cheetah goal velocity as above, 2 inner steps (the row's second line), MAML (VPG)",
        "500 epochs, 4 seeds", "sgmrl-cheetah-rand-vel-k2",
        "metagrad reproduce locomotion --env cheetah-rand-vel --algo maml-vpg --iterations 500 --time-budget 100 "
        "--set inner_steps=2 --set compile=true --out results/long/sgmrl-cheetah-rand-vel-k2", 500),
    Row("SG-MRL Table 2: half-cheetah goal velocity as above, 3 inner steps (the row's third line), MAML (VPG)",
        "500 epochs, 4 seeds", "sgmrl-cheetah-rand-vel-k3",
        "metagrad reproduce locomotion --env cheetah-rand-vel --algo maml-vpg --iterations 500 --time-budget 100 "
        "--set inner_steps=3 --set compile=true --out results/long/sgmrl-cheetah-rand-vel-k3", 500),
    Row("SG-MRL Table 2 as above with ReLU (the paper's text) and actions in the simulator's units: flat (training "
        "returns near -45 over 172-193 iterations)", "500 epochs", "sgmrl-cheetah-dir",
        "metagrad reproduce locomotion --env cheetah-dir --algo sgmrl,maml-vpg --iterations 500 --time-budget 120 "
        "--set frame_skip=5 --set observation=gym --set action_scale=1.0 --set init_std=0.1 --set activation=relu "
        "--set compile=true --out results/long/sgmrl-cheetah-dir", 500,
        runs=2),
    Row("SG-MRL Table 2, MAML (VPG) with its code's action scale but ReLU: flat (training returns near -0.6 over 174 "
        "iterations, where tanh passes +100 after one step by iteration 25)", "500 epochs", "sgmrl-cheetah-dir-scaled",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 120 --set "
        "frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=relu --set "
        "compile=true --out results/long/sgmrl-cheetah-dir-scaled", 500),
    Row("SG-MRL Table 2, MAML (VPG) with its code's action scale, ReLU and an inner step of 0.35 (ReLU's first inner "
        "step at 0.1 moves the mean action 3-5x less than tanh's; docs/inner_step_by_activation.py): one change, and "
        "ReLU learns (+215 after one step over iterations 51-60, where 0.1 stays flat)", "500 epochs",
        "sgmrl-cheetah-dir-scaled-relu-lr",
        "metagrad reproduce locomotion --env cheetah-dir --algo maml-vpg --iterations 500 --time-budget 25 --set "
        "frame_skip=5 --set observation=gym --set action_scale=0.1 --set init_std=1.0 --set activation=relu --set "
        "inner_lr=0.35 --set eval_lr=0.35,0.175 --set compile=true --out results/long/sgmrl-cheetah-dir-scaled-relu-lr",
        500),
    Row("MAML Table 4: 2D navigation, MAML-TRPO (curvature on a quarter of the episodes, which learns as every "
        "episode does here), pretrained, oracle (and random)", "500 iterations max", "navigation",
        "metagrad reproduce navigation --algo maml-trpo --full --time-budget 40 --set hvp_subsample=0.25 --out "
        "results/long/navigation; metagrad reproduce navigation --algo pretrained,oracle,random --full --time-budget 8 "
        "--out results/long/navigation", 500, runs=3),
    Row("SG-MRL Table 1: 2D navigation after one step, SG-MRL (first order), MAML (VPG), E-MAML (VPG)",
        "500 iterations", "navigation-sgmrl", "metagrad reproduce navigation --algo sgmrl,maml-vpg,emaml --full "
        "--time-budget 7 --out results/long/navigation-sgmrl", 500, runs=3),
    Row("MAML Table 4: 2D navigation, the context-vector baseline (appendix C.2)", "500 iterations max",
        "navigation-context", "metagrad reproduce navigation --algo context --full --time-budget 60 --set "
        "hvp_subsample=0.25 --out results/long/navigation-context", 500),
    Row("MAML Table 5: half-cheetah forward/backward, the context-vector baseline (appendix C.2)", "100-500 "
        "iterations", "locomotion-cheetah-dir-context", "metagrad reproduce locomotion --env cheetah-dir --algo "
        "context --iterations 500 --time-budget 120 --set hvp_subsample=1.0 --set compile=true --out "
        "results/long/locomotion-cheetah-dir-context", 500),
    Row("Reptile Fig. 3 (6.2): inner-gradient combinations, 5-shot 5-way Omniglot", "40K iterations per "
        "combination", "reptile-gradients", "metagrad reproduce reptile-gradients --jobs 2 --time-budget 120 "
        "--data-root ../shared/data/omniglot --no-progress --out results/long/reptile-gradients", 40_000, runs=10),
    Row("Reptile Fig. 4 (6.3): shared- and separate-tail first-order MAML and Reptile, cycling or sampling with "
        "replacement, over the inner iterations (4a), the inner batch (4b) and the outer step size (4c), 5-shot 5-way "
        "Omniglot (4c first with --panels 4c, then 4a-b)",
        "40K iterations per setting", "reptile-overlap", "metagrad reproduce reptile-overlap --jobs 2 --time-budget 60 "
        "--data-root ../shared/data/omniglot --no-progress --out results/long/reptile-overlap", 1_500, runs=69),
    Row("MAML Table 1: Omniglot 5-way 1-shot, MAML with the non-convolutional network (256-128-64-64)", "60K "
        "iterations of 32 tasks", "omniglot-maml-nonconv", "metagrad reproduce omniglot --algo maml-nonconv --ways 5 "
        "--shots 1 --time-budget 110 --data-root ../shared/data/omniglot --no-progress --out "
        "results/long/omniglot-maml-nonconv", 60_000),
    Row("MAML Table 1: Omniglot 5-way 5-shot, MAML with the non-convolutional network (256-128-64-64)", "60K "
        "iterations of 32 tasks", "omniglot-maml-nonconv-5shot", "metagrad reproduce omniglot --algo maml-nonconv "
        "--ways 5 --shots 5 --time-budget 100 --data-root ../shared/data/omniglot --no-progress --out "
        "results/long/omniglot-maml-nonconv-5shot", 60_000),
    Row("MAML Table 3: Omniglot 5-way 1-shot, the context-vector baseline (appendix C.2)", "60K iterations of 32 "
        "tasks", "omniglot-context", "metagrad reproduce omniglot --algo context --ways 5 --shots 1 --time-budget 110 "
        "--data-root ../shared/data/omniglot --no-progress --out results/long/omniglot-context", 60_000),
    Row("MAML Table 3: Omniglot 5-way 5-shot, the context-vector baseline (appendix C.2)", "60K iterations of 32 "
        "tasks", "omniglot-context-5shot", "metagrad reproduce omniglot --algo context --ways 5 --shots 5 "
        "--time-budget 110 --data-root ../shared/data/omniglot --no-progress --out "
        "results/long/omniglot-context-5shot", 60_000),
    Row("MAML Table 1: Omniglot 5-way 1-shot, MAML (on a lent GPU with --device cuda --compile, 16.5 ms per "
        "iteration on one H200 beside two other runs; 0.70 s on one core here)", "60K iterations of 32 tasks",
        "omniglot-maml-1shot",
        "metagrad reproduce omniglot --algo maml --ways 5 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-maml-1shot", 60_000),
    Row("Reptile Table 2 (MAML's code): Omniglot 5-way 1-shot, first-order MAML", "60K iterations of 32 tasks",
        "omniglot-fomaml-1shot",
        "metagrad reproduce omniglot --algo fomaml --ways 5 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-fomaml-1shot", 60_000),
    Row("MAML Table 1: Omniglot 5-way 5-shot, MAML", "60K iterations of 32 tasks", "omniglot-maml-5shot",
        "metagrad reproduce omniglot --algo maml --ways 5 --shots 5 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-maml-5shot", 60_000),
    Row("Reptile Table 2 (MAML's code): Omniglot 5-way 5-shot, first-order MAML", "60K iterations of 32 tasks",
        "omniglot-fomaml-5shot",
        "metagrad reproduce omniglot --algo fomaml --ways 5 --shots 5 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-fomaml-5shot", 60_000),
    Row("ANIL on Omniglot 5-way 1-shot (the ANIL paper reports 20-way only)", "60K iterations of 32 tasks (MAML's)",
        "omniglot-anil", "metagrad reproduce omniglot --algo anil --ways 5 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-anil", 60_000),
    Row("Reptile Table 2: Omniglot 5-way, Reptile with Adam's state carried (its 1- and 5-shot tests are of one "
        "run)", "100K iterations of 5 tasks", "omniglot-reptile", "metagrad reproduce omniglot --algo reptile --ways 5 "
        "--shots 1 --time-budget 110 --data-root ../shared/data/omniglot --no-progress --out "
        "results/long/omniglot-reptile", 100_000),
    Row("MAML Table 1: Omniglot 20-way 1-shot, MAML (a run for a lent GPU: 61 ms per iteration on one H200 with "
        "--device cuda --compile beside two other runs, 4.8 s on one core here)", "60K iterations of 16 tasks",
        "omniglot-maml-20way",
        "metagrad reproduce omniglot --algo maml --ways 20 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-maml-20way", 60_000),
    Row("MAML Table 1: Omniglot 20-way 5-shot, MAML (a run for a lent GPU)",
        "60K iterations of 16 tasks", "omniglot-maml-20way-5shot",
        "metagrad reproduce omniglot --algo maml --ways 20 --shots 5 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-maml-20way-5shot", 60_000),
    Row("Reptile Table 2 (MAML's code): Omniglot 20-way 1-shot, first-order MAML (a run for a lent GPU)",
        "60K iterations of 16 tasks", "omniglot-fomaml-20way",
        "metagrad reproduce omniglot --algo fomaml --ways 20 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-fomaml-20way", 60_000),
    Row("Reptile Table 2 (MAML's code): Omniglot 20-way 5-shot, first-order MAML (a run for a lent GPU)",
        "60K iterations of 16 tasks", "omniglot-fomaml-20way-5shot",
        "metagrad reproduce omniglot --algo fomaml --ways 20 --shots 5 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-fomaml-20way-5shot", 60_000),
    Row("ANIL on Omniglot 20-way 1-shot, the ANIL paper's setting (96.2; a run for a lent GPU)",
        "60K iterations of 16 tasks (MAML's)", "omniglot-anil-20way",
        "metagrad reproduce omniglot --algo anil --ways 20 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-anil-20way", 60_000),
    Row("ANIL on Omniglot 20-way 5-shot, the ANIL paper's setting (98.0; a run for a lent GPU)",
        "60K iterations of 16 tasks (MAML's)", "omniglot-anil-20way-5shot",
        "metagrad reproduce omniglot --algo anil --ways 20 --shots 5 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-anil-20way-5shot", 60_000),
    Row("Reptile Table 2: Omniglot 20-way 1-shot, Reptile (358 iterations in 374 s on one core here: about 2.5 days "
        "in all)", "200K iterations of 5 tasks", "omniglot-reptile-20way",
        "metagrad reproduce omniglot --algo reptile --ways 20 --shots 1 --time-budget 110 --data-root "
        "../shared/data/omniglot --no-progress --out results/long/omniglot-reptile-20way", 200_000),
    *(tradeoff_row(env, title, pair, budget, checkpoints, small, figure)
      for env, title, budget, checkpoints, small, pairs, figure in (
          ("hopper-rand-params", "Hopper Rand Params", 300_000, 3, False, ("ppo", "trpo"), "Figs. 1-2"),
          ("ml1-reach", "ML1-Reach", 60_000, 3, True, ("ppo", "trpo"), "Figs. 1-2"),
          ("cheetah-rand-vel", "HalfCheetah Rand Vel", 2_000_000, 4, False, ("ppo", "trpo"), None),
          ("ml10", "ML10", 240_000, 12, True, ("ppo", "trpo"), "Figs. 1-2"),  # extended 60k -> 240k
          ("ml45", "ML45", 240_000, 12, True, ("ppo", "trpo"), "Figs. 1-2"),  # extended 60k -> 240k
          ("walker-rand-params", "Walker Rand Params", 300_000, 3, False, ("ppo", "trpo"), "Figs. 1-2"),
          ("walker-rand-vel", "Walker Rand Vel", 300_000, 3, False, ("ppo", "trpo"), "Figs. 1-2"),
          ("ml1-push", "ML1-Push", 60_000, 3, True, ("ppo", "trpo"), "Figs. 1-2"))
      for pair in pairs),
    *(Row(f"Trade-off Figs. 1-2: {title}, {PAIRS[pair]} as ProMP's code runs them (`--settings promp`: the policy in "
          "normalize()'s units, each task's losses over its valid steps, a fixed inner KL coefficient): what the kept "
          "panel's differences from it are worth", "336M steps per run, 5 seeds", f"tradeoff-rl-{env}-{pair}-promp",
          f"metagrad tradeoff rl --env {env} --pair {pair} --budget {budget} --checkpoints {checkpoints} --seeds 5 "
          f"--test-episodes 5 --settings promp --out results/long/tradeoff-rl-{env}-{pair}-promp", budget,
          "env steps", runs=10)
      for env, title, pair, budget, checkpoints in (
          *((env, title, pair, 300_000, 3) for env, title in (("hopper-rand-params", "Hopper Rand Params"),
                                                              ("walker-rand-params", "Walker Rand Params"),
                                                              ("walker-rand-vel", "Walker Rand Vel"))
            for pair in ("ppo", "trpo")),
          ("cheetah-rand-vel", "HalfCheetah Rand Vel", "ppo", 6_000_000, 12),  # extended 2M -> 4M -> 6M
          ("cheetah-rand-vel", "HalfCheetah Rand Vel", "trpo", 4_000_000, 8))),
)


def run_progress(run: Path) -> dict[str, Any]:
    """Iterations, environment steps and time of one run, from its checkpoint and segments."""
    try:
        info = checkpoint.read_info(run / "last")
    except CheckpointError as e:
        return {"run": str(run), "error": str(e)}
    segments = []
    if (run / "segments.jsonl").exists():
        for line in (run / "segments.jsonl").read_text().splitlines():
            try:
                segment = json.loads(line)
            except ValueError:
                continue
            if isinstance(segment, dict):
                segments.append(segment)
    machines = [s["machine"] for s in segments if isinstance(s.get("machine"), dict)]
    seconds = [real_number(s.get("seconds")) for s in segments]  # a line edited by hand may hold anything
    return {"run": str(run), "iteration": info["iteration"], "env_steps": info.get("env_steps"),
            "seconds": round(sum(t for t in seconds if math.isfinite(t)) or info.get("elapsed", 0.0)),
            "seconds_per_iteration": _last_rate(segments),
            "segments": len(segments),
            "commits": sorted({s["commit"] for s in segments if isinstance(s.get("commit"), str) and s["commit"]}),
            "hosts": sorted({m["host"] for m in machines if isinstance(m.get("host"), str) and m["host"]})}


def _last_rate(segments: list[dict[str, Any]]) -> float | None:
    """Seconds per iteration in the run's latest segment that advanced it (its machine and load are the likeliest
    for the next one); None where no segment says."""
    for s in reversed(segments):
        start, end, seconds = (real_number(s.get(k)) for k in ("start", "end", "seconds"))
        if all(math.isfinite(v) for v in (start, end, seconds)) and end > start and seconds > 0:
            return seconds / (end - start)
    return None


def seconds_left(run: dict[str, Any], target: int, unit: str) -> float | None:
    """Seconds until ``run`` reaches ``target`` at its latest segment's rate (env steps converted at its steps per
    iteration so far); 0 when it has; None where its rate is unknown."""
    iteration, rate = run.get("iteration") or 0, run.get("seconds_per_iteration")
    steps = run.get("env_steps") or 0
    left = target - (steps if unit == "env steps" else iteration)
    if left <= 0:
        return 0.0
    if rate is None or (unit == "env steps" and not (steps and iteration)):
        return None
    return rate * (left * iteration / steps if unit == "env steps" else left)


def row_status(row: Row, root: Path = ROOT) -> dict[str, Any]:
    """How much of a row's budget is done (over all its runs), and the hours its begun runs need to finish."""
    runs = [run_progress(r) for r in checkpoint.runs_in(root / row.folder)]
    key = "env_steps" if row.unit == "env steps" else "iteration"
    done = sum(min(r.get(key) or 0, row.target) for r in runs)
    left = [t for r in runs if "error" not in r and (t := seconds_left(r, row.target, row.unit)) is not None]
    finished = done >= row.target * row.runs  # (a random baseline's run, never trained, counts for none)
    return {"row": row.name, "paper": row.paper, "budget": f"{row.runs} x {row.target:,} {row.unit}",
            "done": round(done / (row.target * row.runs), 3), "runs": runs,
            "hours_left": 0.0 if finished else sum(left) / 3600 if left else None,
            "unknown_runs": 0 if finished else max(row.runs - len(left), 0),  # not begun, or no rate to go by
            "command": row.command.replace(f"--out {ROOT}/", f"--out {root}/")}  # continues the runs it counted


def index(root: Path = ROOT) -> str:
    """``INDEX.md``: every long row, its budget, how much of it is done, and the command that continues it."""
    lines = ["# Long paper runs: where each stands", "", "Written by `metagrad status`. Each command resumes its "
             "runs where they stopped; run it again for another segment (its `--time-budget` bounds a session).", "",
             "Time left: at each begun run's latest segment's rate, on its machine (\"+\": runs not begun, or "
             "without a rate, add more).", "",
             *md_head(["result", "paper's budget", "ours", "done", "iterations so far", "environment steps",
                       "wall time", "time left", "segments"])]
    details, damaged = [], []
    for row in ROWS:
        s = row_status(row, root)
        damaged += [f"- {r['run']}: {r['error']}" for r in s["runs"] if "error" in r]
        hours = sum(r.get("seconds", 0) for r in s["runs"]) / 3600
        segments = sum(r.get("segments", 0) for r in s["runs"])
        name = row.name.replace("|", "\\|")  # a pipe in a name (|v - g|) would end its table cell
        done = f"{100 * s['done']:.0f}%" if s["runs"] else "not started"
        lines.append(f"| {name} | {row.paper} | {s['budget']} | {done} | "
                     f"{_iterations(s['runs'])} | {_steps(s['runs'])} | {hours:.1f} h | {_left(s)} | {segments} |")
        details += [f"- {row.name}: `{s['command']}`"]
    warning = ["", "Checkpoints that could not be read (their runs count as not begun above):", "", *damaged] \
        if damaged else []
    return "\n".join([*lines, *warning, "", "Commands:", "", *details, ""])


def _left(status: dict[str, Any]) -> str:
    """``done``, the hours left (``+`` where runs not begun or without a rate add more), or ``-`` (no rate)."""
    hours = status["hours_left"]
    if hours is None:
        return "-"
    return "done" if hours == 0 else f"{hours:.1f} h" + ("+" if status["unknown_runs"] else "")


def _iterations(runs: list[dict[str, Any]]) -> str:
    """The runs' iterations: one number, ``N each``, or ``low-high over K runs``."""
    its = sorted(r["iteration"] for r in runs if "iteration" in r)
    if not its:
        return "-"
    if len(its) == 1:
        return f"{its[0]:,}"
    return f"{its[0]:,} each" if its[0] == its[-1] else f"{its[0]:,}-{its[-1]:,} over {len(its)} runs"


def _steps(runs: list[dict[str, Any]]) -> str:
    """All the runs' environment steps together (``-`` for supervised runs, which have none)."""
    total = sum(r.get("env_steps") or 0 for r in runs)
    return f"{total / 1e6:,.1f}M" if total else "-"
