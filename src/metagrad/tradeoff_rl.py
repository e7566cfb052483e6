"""The trade-off paper's meta-RL study (section 2, Figures 1 and 2): DRS against a meta-learner on equal simulator-step
budgets.

For each seed, DRS (one policy on the pooled tasks) and the meta-learner (ProMP for ``--pair ppo``, TRPO-MAML for
``trpo``) train until the same number of environment steps, inner-loop rollouts included, keeping a snapshot at
evenly spaced budgets. Each snapshot is evaluated as the paper does: on meta-test tasks, take up to ``test_updates``
policy-gradient steps (the meta-learners' inner step), each on a few fresh episodes, and record the average return
after t = 0..``test_updates`` steps. Then, per (snapshot, t), the one-sided Welch t-test across seeds gives the
probability that DRS is better. Every stage resumes: training from its ``last`` checkpoint, evaluations and step-size
choices from their JSON files.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import files
from .analysis.stats import welch_probability
from .distributed import Distributed
from .errors import ConfigError, Damaged, flag, suggest
from .experiment import continue_run, load_run
from .provenance import stamped
from .rl.config import RLConfig, preset
from .rl.envs.locomotion import FAMILIES
from .rl.evaluate import adaptation_returns, held_out_goals, meta_test_env, tune_step_size
from .rl.metarl import packable, steps_mean_applies
from .rl.train import build
from .tables import md_head, md_row

PAIRS = {"ppo": ("drs-ppo", "promp"), "trpo": ("drs-trpo", "trpo-maml")}
LABELS = {"drs-ppo": "DRS+PPO", "promp": "ProMP", "drs-trpo": "DRS+TRPO", "trpo-maml": "TRPO-MAML"}
# episode length per environment in the trade-off paper (ProMP's locomotion, Meta-World's ML benchmarks)
HORIZONS = {"navigation2d": 100, "ml1-push": 150, "ml1-reach": 150, "ml10": 150, "ml45": 150}
DEFAULT_HORIZON = 200
# what ``settings="promp"`` changes, as ProMP's code runs (its normalize(): the policy acts in [-10, 10], a tenth of
# the simulator's units, so its initial standard deviation of 1 is 0.1 there; each task's losses averaged over its
# valid steps; the inner KL penalty's coefficient fixed, as its run scripts: adaptive_inner_kl_penalty False)
SETTINGS = ("metagrad", "promp")
# whose test-time step size is chosen on validation tasks from lr_grid: DRS's alone (the kept panels'; the
# meta-learner tests at inner_lr, its training step), each method's, or neither's (both at inner_lr)
TEST_STEPS = ("drs-tuned", "tuned", "fixed")
STUDY_FIX = ("restore it, or delete it to go on with the settings given now (its runs refuse other settings, but for a "
             "larger budget or other step sizes)")
EVALUATION_ONLY = ("test_step", "lr_grid")  # study settings that change how the runs are tested, not the runs
PROMP_ACTION_SCALE = 0.1
# the paper's budget: 21 snapshots, 100 iterations of 40 tasks x 20 episodes x 200 steps apart
PAPER = {"checkpoints": 21, "meta_batch_size": 40, "episodes": 20, "steps_between": 100 * 40 * 20 * 200}


def _named(name: str, value: object) -> str:
    """A study's setting and its value as messages name them: the field, then the option that sets it."""
    return f"{name} {value} ({flag(name)})"


@dataclass
class Study:
    """What a study runs; ``to_dict`` is stored in ``study.json`` and must match when a study resumes."""

    env: str = "hopper-rand-params"
    pair: str = "ppo"
    budget: int = 400_000  # environment steps per run
    seeds: int = 5
    checkpoints: int = 4
    meta_batch_size: int = 10
    episodes: int = 10
    hidden: tuple[int, ...] = (64, 64)  # ProMP's policy
    inner_lr: float = 0.1
    test_tasks: int = 10
    test_updates: int = 5
    test_episodes: int = 10
    lr_grid: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2)  # DRS's test-time step size is chosen from these
    eval_seed: int = 12345
    horizon: int = field(default=0)  # 0: the paper's for the environment
    compile: bool = False  # torch.compile the outer steps (speed only: not stored, may change on resume)
    settings: str = "metagrad"  # or "promp": ProMP's code where ours differs (SETTINGS); stored unless the default
    test_step: str = "drs-tuned"  # whose test-time step size is chosen on validation tasks (TEST_STEPS)

    def __post_init__(self) -> None:
        if self.settings not in SETTINGS:
            raise ConfigError(f"unknown settings '{self.settings}'; choose metagrad (the kept panels') or promp "
                              "(ProMP's code: actions in normalize()'s units, valid-step means, a fixed inner KL "
                              "coefficient)")
        if self.test_step not in TEST_STEPS:
            raise ConfigError(f"unknown test_step '{self.test_step}'{suggest(self.test_step, TEST_STEPS)}; choose "
                              f"{', '.join(TEST_STEPS)}")
        if self.pair not in PAIRS:
            raise ConfigError(f"unknown pair '{self.pair}'; choose ppo (DRS+PPO vs ProMP) or trpo (DRS+TRPO vs "
                              "TRPO-MAML)")
        if self.seeds < 2:  # before the general floor below: one rule for every count under 2
            raise ConfigError(f"{_named('seeds', self.seeds)} must be >= 2: the Welch t-test compares the methods "
                              "across seeds")
        for name in ("checkpoints", "meta_batch_size", "episodes", "test_episodes", "horizon"):
            if getattr(self, name) < (0 if name == "horizon" else 1):
                raise ConfigError(f"{_named(name, getattr(self, name))} must be >= {0 if name == 'horizon' else 1}")
        if self.test_tasks < 2:
            raise ConfigError(f"{_named('test_tasks', self.test_tasks)} must be >= 2: the test returns' 95% interval "
                              "needs two")
        if self.test_updates < 0 or not self.inner_lr > 0:
            raise ConfigError("test_updates must be >= 0 and inner_lr positive")
        if not self.lr_grid or not all(0 < v < math.inf for v in self.lr_grid):
            grid = ",".join(f"{v:g}" for v in self.lr_grid) or "(empty)"
            raise ConfigError(f"{_named('lr_grid', grid)} must hold positive step sizes, e.g. 0.025,0.05,0.1,0.2")
        self.horizon = self.horizon or HORIZONS.get(self.env, DEFAULT_HORIZON)
        # each snapshot at least one iteration of either method apart: else they repeat one policy, past the budget
        step = max(preset(m).replace(meta_batch_size=self.meta_batch_size, episodes=self.episodes,
                                     horizon=self.horizon).iteration_steps for m in self.methods)
        if self.budget // self.checkpoints < step:
            fewer = " or fewer checkpoints" if self.budget >= step else ""  # one snapshot fits
            raise ConfigError(f"{_named('budget', f'{self.budget:,}')} puts the {self.checkpoints} snapshots less "
                              f"than one iteration apart (up to {step:,} environment steps: meta_batch_size x episodes "
                              f"x horizon x (inner steps + 1)); give a budget of at least {step * self.checkpoints:,}"
                              f"{fewer}")

    @property
    def methods(self) -> tuple[str, str]:
        """(DRS, meta-learner)."""
        return PAIRS[self.pair]

    def config(self, method: str, seed: int) -> RLConfig:
        """The training configuration of one method and seed; the update on valid steps alone where it applies
        (``pack_episodes``: hopper and walker episodes end early, half or more of their slots are padding)."""
        cfg = preset(method)
        cfg = cfg.replace(
            env=self.env, horizon=self.horizon, hidden=self.hidden, activation="tanh", inner_lr=(self.inner_lr,),
            meta_batch_size=self.meta_batch_size, episodes=self.episodes, seed=seed, iterations=10**9,
            step_budget=self.budget, snapshot_steps=self.budget // self.checkpoints, checkpoint_every=5,
            eval_steps=self.test_updates, eval_episodes=self.test_episodes, eval_tasks=self.test_tasks,
            eval_lr=(self.inner_lr,), eval_lr_grid=self.lr_grid, compile=self.compile,
            pack_episodes=packable(cfg.algo, cfg.hvp_subsample))
        if self.settings == "promp":
            cfg = cfg.replace(inner_kl_target=0.0, **({"loss_mean": "steps"} if steps_mean_applies(cfg.algo) else {}),
                              **({"action_scale": PROMP_ACTION_SCALE} if self.env in FAMILIES else {}))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """What must match on resume, but for ``EVALUATION_ONLY`` (without ``compile``, and without ``settings`` or
        ``test_step`` at their defaults: the studies stored before they existed resume)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if k != "compile" and not (k == "settings" and v == "metagrad")
                and not (k == "test_step" and v == "drs-tuned")}

    def tunes(self, method: str) -> bool:
        """Whether ``method``'s test-time step size is chosen on validation tasks (else it is ``inner_lr``)."""
        return self.test_step == "tuned" or (self.test_step == "drs-tuned" and method.startswith("drs"))


def paper_study(env: str, pair: str, seeds: int = 5, settings: str = "metagrad") -> Study:
    """The paper's budget (hours of a cluster per run; here for completeness and for machines that have it)."""
    steps = PAPER["checkpoints"] * PAPER["steps_between"]
    return Study(env=env, pair=pair, budget=steps, seeds=seeds, checkpoints=PAPER["checkpoints"],
                 meta_batch_size=PAPER["meta_batch_size"], episodes=PAPER["episodes"], test_tasks=40, settings=settings)


def run(study: Study, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and compare; write ``tradeoff_rl.json`` and the figures into ``out``; return the results."""
    out = Path(out)
    for method in study.methods:  # environment and algorithm checked before anything runs or is written
        build(study.config(method, 0))
    group = Distributed.from_env()  # under torchrun: every run trains on all processes, then process 0 evaluates
    if group is not None:
        group.shard(study.meta_batch_size)  # too few tasks for the processes: refused before study.json is written
    if group is None or group.is_main:
        _check_resumable(study, out)
    if group is not None:
        finished = False
        try:
            for method in study.methods:
                for seed in range(study.seeds):
                    _train(study, method, seed, out / method / f"seed-{seed}", progress, distributed=group)
            finished = True
        finally:
            group.close(finished)
        if not group.is_main:
            return {}
    test_env = _test_env(study)
    curves: dict[str, np.ndarray] = {}
    steps: dict[str, list[list[int]]] = {}
    for method in study.methods:
        per_seed, seed_steps = [], []
        for seed in range(study.seeds):
            run_dir = out / method / f"seed-{seed}"
            print(f"{LABELS[method]}, seed {seed}: training to {study.budget:,} environment steps -> {run_dir}",
                  file=sys.stderr, flush=True)
            _train(study, method, seed, run_dir, progress)
            curve, at = evaluate_snapshots(study, method, seed, run_dir, test_env)
            per_seed.append(curve)
            seed_steps.append(at)
        curves[method], steps[method] = np.stack(per_seed), seed_steps  # [seeds, checkpoints, updates + 1]
    drs, meta = study.methods
    prob = welch_probability(curves[drs], curves[meta], higher_is_better=True, axis=0)
    results = {"study": study.to_dict(), "labels": [LABELS[drs], LABELS[meta]],
               "checkpoint_steps": [study.budget * (j + 1) // study.checkpoints for j in range(study.checkpoints)],
               "env_steps": steps, "returns": {m: c.tolist() for m, c in curves.items()},
               "p_drs_better": prob.tolist(), "signed": (np.sign(prob - 0.5) * np.abs(1 - 2 * prob)).tolist()}
    results = stamped(results)
    files.write_json(out / "tradeoff_rl.json", results)
    from .rl import plots

    results["figures"] = [str(f) for f in plots.tradeoff_rl_figures(results, out)]
    return results


def _train(study: Study, method: str, seed: int, run_dir: Path, progress: bool, **kw: Any) -> None:
    """One run of the study to its budget, resumed where it stopped; a damaged checkpoint says how to make it anew."""
    try:
        continue_run(study.config(method, seed), run_dir, progress, **kw)
    except Damaged as e:
        raise e.instead(_anew(run_dir)) from None


def _anew(run_dir: Path) -> str:
    """How to make one damaged run of a study again (``metagrad train``'s advice is for a run of its own)."""
    return f"delete {run_dir} and run the command again to train this run anew (the other runs are kept)"


def evaluate_snapshots(study: Study, method: str, seed: int, run_dir: Path,
                       test_env: Any) -> tuple[np.ndarray, list[int]]:
    """Average return over the meta-test tasks after 0..test_updates steps, per snapshot: ``[checkpoints, updates
    + 1]``, and each snapshot's environment steps. A tuned step size (``Study.tunes``) is chosen once per seed on
    validation tasks (at its last snapshot) and kept in ``step_size.json``: a study extended to a larger budget keeps
    that first choice, so that the evaluations of its earlier snapshots stay valid (a study run to the larger budget
    at once chooses at its own last snapshot, which may pick another step size); from another ``lr_grid`` it is
    chosen again, at the same snapshot. An evaluation made at another step size (another ``test_step`` or grid) is
    made again."""
    lr = _tuned_step_size(study, seed, run_dir) if study.tunes(method) else study.inner_lr
    rows, at = [], []
    for j in range(1, study.checkpoints + 1):
        path = run_dir / f"eval-{j:03d}.json"
        data = files.read_json(path)  # (a damaged one is made again)
        if not _kept_evaluation(data, study) or data["lr"] != lr:  # none yet, or another --test-step's: tested again
            learner, info = _snapshot(run_dir, j)
            learner.env = test_env
            t0 = time.perf_counter()
            tasks = held_out_goals(learner, study.test_tasks, study.eval_seed + seed)
            gen = torch.Generator().manual_seed(study.eval_seed + seed + 1)
            values, _ = adaptation_returns(learner, tasks, study.test_updates, study.test_episodes, (lr,), gen)
            data = {"snapshot": j, "env_steps": info["env_steps"], "iteration": info["iteration"], "lr": lr,
                    "tasks": study.test_tasks, "episodes": study.test_episodes, "mean": values.mean(0).tolist(),
                    "seconds": round(time.perf_counter() - t0, 2)}
            files.write_json(path, data)
        rows.append(data["mean"])
        at.append(data["env_steps"])
    return np.asarray(rows), at


def _tuned_step_size(study: Study, seed: int, run_dir: Path) -> float:
    """A run's test-time step size from ``lr_grid``, chosen on validation tasks at its last snapshot (kept, and
    chosen again at that snapshot from another grid)."""
    path = run_dir / "step_size.json"
    kept = files.read_json(path)  # (a damaged one is made again)
    if not (kept and _positive(kept.get("lr")) and isinstance(kept.get("grid"), list)):
        kept = None
    if kept is None or kept["grid"] != list(study.lr_grid):
        snapshot = kept.get("snapshot", study.checkpoints) if kept else study.checkpoints  # (files before 12-05)
        learner, _ = _snapshot(run_dir, snapshot)
        learner.env = _test_env(study, split="train")
        lr = tune_step_size(learner, study.lr_grid, min(study.test_updates, 2), study.test_episodes,
                            study.eval_seed + seed, num_tasks=study.test_tasks, later=1.0, option="--lr-grid A,B,...")
        if kept:  # said where it happens: a study interrupted while choosing again chooses the rest on resume
            print(f"{run_dir}: step size chosen again from lr_grid {list(study.lr_grid)}: {lr:g} (was {kept['lr']:g} "
                  f"from {kept['grid']})", file=sys.stderr)
        kept = {"lr": lr, "grid": list(study.lr_grid), "snapshot": snapshot,
                "chosen_on": "validation tasks (training split)"}
        files.write_json(path, kept)
    return float(kept["lr"])


def _snapshot(run_dir: Path, j: int) -> tuple[Any, dict[str, Any]]:
    """A run's learner at snapshot ``j`` and its checkpoint's info; a damaged snapshot says how to make it again."""
    try:
        learner, _, info = load_run(run_dir, f"snapshot-{j:03d}")
    except Damaged as e:
        raise e.instead(_anew(run_dir)) from None
    return learner, info


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and 0 < value < math.inf


def _kept_evaluation(data: Any, study: Study) -> bool:
    """Whether ``data`` (an ``eval-NNN.json``) holds what ``evaluate_snapshots`` wrote: else it is made again."""
    return (data is not None and _positive(data.get("lr")) and isinstance(data.get("env_steps"), int)
            and isinstance(data.get("mean"), list) and len(data["mean"]) == study.test_updates + 1
            and all(isinstance(v, int | float) for v in data["mean"]))


def _test_env(study: Study, split: str = "test") -> Any:
    """The environment the study's configs build (horizon, action scale), on the benchmark's test split where it has
    one (Meta-World) for ``split`` test."""
    env = build(study.config(study.methods[0], 0))[0].env
    return meta_test_env(env) if split == "test" else env


def _check_resumable(study: Study, out: Path) -> None:
    """Refuse to resume a study with other settings, but for a larger budget at the same snapshot spacing (the runs
    go on from their last checkpoints, the snapshots taken so far kept)."""
    path = out / "study.json"
    if path.exists():
        before, now = files.read_json(path, fix=STUDY_FIX), study.to_dict()
        changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k) and k not in EVALUATION_ONLY)
        if changed and not extends(before, now):  # refused before anything is said to happen
            spacing = before.get("budget", 0) // max(before.get("checkpoints", 1), 1)
            raise ConfigError(f"{out} holds a study with other settings ({', '.join(changed)}); resume it with the "
                              f"same settings (or a larger --budget with --checkpoints keeping its snapshots "
                              f"{spacing:,} steps apart) or choose another --out")
        if before.get("test_step", "drs-tuned") != study.test_step:  # evaluation only: the runs stay as trained
            print(f"{out}: tested again with test_step {study.test_step} (was {before.get('test_step', 'drs-tuned')})",
                  file=sys.stderr)
        if changed:
            print(f"{out}: the study extended from {before['budget']:,} to {study.budget:,} environment steps per "
                  f"run, its snapshots {study.budget // study.checkpoints:,} apart as before", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(path, study.to_dict())


def extends(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether study settings ``now`` continue ``before`` to a larger budget at exactly the same snapshot steps (the
    settings of the evaluation may change too)."""
    same = all(before.get(k) == now.get(k) for k in {*before, *now} - {"budget", "checkpoints", *EVALUATION_ONLY})
    return (same and now["budget"] > before["budget"]
            and before["budget"] * now["checkpoints"] == now["budget"] * before["checkpoints"]
            and before["budget"] % before["checkpoints"] == 0)


def format_table(results: dict[str, Any]) -> str:
    """Mean return across seeds per snapshot and test update, and P(DRS better) from the Welch t-test."""
    drs, meta = PAIRS[results["study"]["pair"]]
    a, b = np.asarray(results["returns"][drs]), np.asarray(results["returns"][meta])
    prob = np.asarray(results["p_drs_better"])
    lines = [f"{results['study']['env']}: {LABELS[drs]} vs {LABELS[meta]}, {results['study']['seeds']} seeds; "
             f"mean return after t test updates (DRS / meta-learner) and P(DRS better), one-sided Welch t-test", "",
             *md_head(["env steps", *(f"t = {t}" for t in range(prob.shape[1]))])]
    for j, steps in enumerate(results["checkpoint_steps"]):
        cells = [f"{a[:, j, t].mean():.1f} / {b[:, j, t].mean():.1f} (P {prob[j, t]:.2f})"  # P(DRS better), no p-value
                 for t in range(prob.shape[1])]
        lines.append(md_row([f"{steps:,}", *cells]))
    return "\n".join(lines)
