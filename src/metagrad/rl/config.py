"""The meta-RL run's configuration: its own fields (environment, policy, outer step) on the one config system of
``metagrad.settings``, so that TOML files, ``replace``, checks and CLI options work as for supervised runs.

Defaults are the MAML paper's 2D navigation (appendix A.2). Each paper's setting of each method is a preset file in
``configs/`` (``maml-trpo-navigation.toml``, ...), with comments on where each value comes from; ``preset(method)``
reads one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, check_whole, suggest
from ..seeds import VAL_SEED_OFFSET
from ..settings import Settings, check_outer_lr, opt, preset_names
from .envs.locomotion import OBSERVATIONS, PHYSICS
from .envs.navigation import REWARDS
from .metarl import (
    LEARNER_SETTINGS,
    SCORE_ALGOS,
    check_settings,
)
from .policy import ACTIVATIONS, POLICIES

SECTIONS = ("env", "policy", "algo", "train", "eval")
OUTER_LR_SCHEDULES = ("constant", "linear", "plateau", "grad-norm")
PRESET_SUFFIX = "-navigation"  # method presets: configs/<method>-navigation.toml


@dataclass
class RLConfig(Settings):
    """Everything that determines a meta-RL run (with its seed)."""

    SECTIONS: ClassVar[tuple[str, ...]] = SECTIONS
    HELD_OUT_SEEDS: ClassVar[dict[int, str]] = {0: "the test tasks", 1: "the test episodes",
                                                VAL_SEED_OFFSET: "the tasks that choose the test-time step size",
                                                VAL_SEED_OFFSET + 1: "those tasks' episodes"}
    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"iterations", "time_budget", "checkpoint_every",
                                                          "step_budget", "snapshot_steps", "outer_lr", "inner_lr",
                                                          "max_kl", "compile", "env_workers", "pack_episodes",
                                                          "outer_lr_schedule",
                                                          "outer_lr_patience", "outer_lr_factor",
                                                          "outer_lr_growth", "outer_lr_window", "outer_lr_warmup"})
    APPLIES: ClassVar[dict[str, tuple[str, tuple[Any, ...]]]] = {
        **dict.fromkeys(("max_kl", "cg_iters", "cg_damping", "backtrack", "max_backtracks", "hvp", "hvp_subsample",
                         "curvature_chunk"), ("outer", ("trpo",))),
        **dict.fromkeys(("ppo_epochs", "ppo_clip", "inner_kl_coef", "inner_kl_target"), ("outer", ("ppo",))),
        **dict.fromkeys(("outer_optimizer", "outer_lr"), ("outer", ("vpg", "ppo"))),
        "emaml_weight": ("algo", ("emaml",)), "score_baseline": ("algo", SCORE_ALGOS),
        "eval_lr_grid": ("tune_eval_lr", (True,)),
        **dict.fromkeys(("goal_range", "reward", "normalized_actions"), ("env", ("navigation2d",))),
        "outer_lr_patience": ("outer_lr_schedule", ("plateau",)),
        "outer_lr_factor": ("outer_lr_schedule", ("plateau", "grad-norm")),
        **dict.fromkeys(("outer_lr_growth", "outer_lr_window", "outer_lr_warmup"),
                        ("outer_lr_schedule", ("grad-norm",))),
        "eval_lr": ("tune_eval_lr", (False,))}

    # [env]
    env: str = opt("navigation2d", "env", "environment: navigation2d; MuJoCo cheetah-dir, cheetah-vel, "
                   "cheetah-rand-vel, ant-vel, ant-dir, swimmer-vel, swimmer-rand-vel, walker-rand-vel, "
                   "hopper-rand-params, walker-rand-params; Meta-World ml1-reach, ml1-push, ml10, ml45 (train "
                   "split); or gym:<id> (a gymnasium env with set_task)")
    goal_range: tuple[float, ...] = opt((-0.5, 0.5), "env", "navigation goals uniform in [low, high]^2")
    horizon: int = opt(100, "env", "steps per episode, H")
    reward: str = opt("distance", "env", "navigation reward: distance (minus the distance to the goal, the papers' "
                      "code) or squared (minus its square, the papers' text)")
    oracle: bool = opt(False, "env", "append the goal to the observation (the oracle baseline)")
    frame_skip: int = opt(0, "env", "MuJoCo simulator steps per action, each of the physics' time step (0: the "
                          "family's own: 1 for cheetah-dir and cheetah-vel as rllab's, the MAML code's, and for the "
                          "ant on rllab's physics (0.02 s); gym's own for the others: 5 half-cheetah and ant on gym's "
                          "physics, 4 swimmer, hopper and walker; the SG-MRL and ProMP code stepped gym's "
                          "half-cheetah with 5)")
    observation: str = opt("auto", "env", "MuJoCo locomotion observation: auto (the family's own: rllab's, with the "
                           "torso's centre of mass, for cheetah-dir, cheetah-vel, ant-*, swimmer-vel as the MAML "
                           "code; the simulator's for the others), rllab, or gym (gymnasium's, as ProMP's and the "
                           "SG-MRL code's environments)")
    physics: str = opt("auto", "env", "MuJoCo simulator settings: auto (the family's own: rllab's for ant-vel and "
                       "ant-dir, as the MAML code; gymnasium's for the others), gym (gymnasium's model: the ant at 5 "
                       "x 0.01 s per action), or rllab (rllab's ant.xml: 0.02 s per action, softer contacts; the ant "
                       "families only)")
    action_scale: float = opt(1.0, "env", "MuJoCo locomotion: the simulator's action is the policy's times this "
                              "(0.1: the SG-MRL and ProMP code's normalize() with scale 10, the policy acting in "
                              "[-10, 10] for the simulator's [-1, 1])")
    normalized_actions: bool = opt(True, "env", "navigation: the policy acts in [-1, 1], scaled to the velocity "
                                   "limit (rllab's normalize(), what the MAML code trains with)")
    # [policy]
    policy: str = opt("auto", "policy", "auto (gaussian for continuous actions, categorical for discrete), "
                      "gaussian, categorical")
    hidden: tuple[int, ...] = opt((100, 100), "policy", "hidden layer sizes")
    activation: str = opt("relu", "policy", "hidden activation: relu, tanh")
    init_std: float = opt(1.0, "policy", "initial standard deviation of the Gaussian policy")
    context: int = opt(0, "policy", "size of a learned context vector z appended to the observation (the MAML "
                       "paper's context-vector baseline, with adapt = context; 0: none)")
    # [algo]
    algo: str = opt("maml", "algo", "maml, fomaml, sgmrl, sgmrl-fo (first-order SG-MRL), emaml, promp (LVC inner "
                    "step), joint (pretrained / DRS)")
    outer: str = opt("trpo", "algo", "outer step: trpo, vpg (gradient ascent with outer_optimizer) or ppo (clipped, "
                     "ppo_epochs steps of outer_optimizer)")
    inner_lr: tuple[float, ...] = opt((0.1,), "algo", "inner step size(s), alpha")
    inner_steps: int = opt(1, "algo", "inner VPG steps during meta-training")
    adapt: tuple[str, ...] = opt((), "algo", "parameters the inner steps adapt, as module or parameter names, e.g. "
                                 "context (empty: all); the outer step trains all of them")
    episodes: int = opt(20, "algo", "episodes per task and inner step, K")
    gamma: float = opt(0.99, "algo", "discount factor")
    gae_lambda: float = opt(1.0, "algo", "GAE lambda (1: returns minus the baseline)")
    baseline: str = opt("linear", "algo", "linear (feature baseline of Duan et al., refit per task), "
                        "linear-previous (each task predicted with the previous task's fit, as rllab before the MAML "
                        "code's own fit) or none")
    discount_from: str = opt("step", "algo", "step (the reward at s weighs gamma^(s-t) in step t's advantage, as "
                             "every policy-gradient code) or start (gamma^s, eq. 4 of the SG-MRL paper: the gradient "
                             "of the discounted return, SG-MRL unbiased for gamma < 1)")
    normalize_inner: bool = opt(True, "algo", "normalize the advantages of the inner step per task")
    loss_mean: str = opt("slots", "algo", "what each task's losses average over: slots (episodes x horizon, the "
                         "steps after an episode's end as zeros) or steps (its valid steps, as the papers' code: a "
                         "task whose episodes end early weighs as much and takes the same inner step)")
    normalize_outer: bool = opt(True, "algo", "normalize the advantages of the outer objective per task "
                                 "(must be false for sgmrl and sgmrl-fo, whose gradient holds only with raw ones: "
                                 "--no-normalize-outer; their presets set it)")
    max_kl: float = opt(0.01, "algo", "TRPO: KL bound of a meta-step")
    cg_iters: int = opt(10, "algo", "TRPO: conjugate-gradient iterations")
    cg_damping: float = opt(1e-5, "algo", "TRPO: damping added to the KL Hessian")
    backtrack: float = opt(0.8, "algo", "TRPO: line-search shrink factor")
    max_backtracks: int = opt(15, "algo", "TRPO: line-search steps")
    hvp: str = opt("exact", "algo", "TRPO Hessian-vector products through the inner step: exact or finite-difference")
    hvp_subsample: float = opt(1.0, "algo", "TRPO: fraction of each task's episodes used for the Hessian-vector "
                               "products (1: all; the gradient and the KL check always use all); hvp exact only")
    curvature_chunk: int = opt(4, "algo", "TRPO with compile=True: tasks per compiled curvature product, summed "
                               "over the chunks (their activations stay in the caches: 1.2-1.3x faster products "
                               "than all at once, benchmarks/curvature_chunks.py; 0: all tasks at once)")
    pack_episodes: bool = opt(False, "algo", "the update on each task's valid steps alone: the same losses, fewer "
                              "slots where episodes end early (the ant falls, hopper and walker too); refused with "
                              "SG-MRL or hvp_subsample < 1; on where it applies in reproduce locomotion on the ant "
                              "and the trade-off study")
    score_baseline: str = opt("none", "algo", "SG-MRL score term: none (eq. 13) or batch (minus the other tasks' "
                              "mean return; still unbiased)")
    emaml_weight: float = opt(1.0, "algo", "E-MAML: weight of the exploration term")
    ppo_epochs: int = opt(5, "algo", "PPO: optimizer steps per meta-batch")
    ppo_clip: float = opt(0.3, "algo", "PPO: likelihood ratios clipped to [1 - clip, 1 + clip]")
    inner_kl_coef: float = opt(5e-4, "algo", "PPO: initial penalty on the KL of each inner step's pre-update policy")
    inner_kl_target: float = opt(0.01, "algo", "PPO: that KL's target; the penalty halves or doubles to keep it "
                                 "within a factor 1.5 (0: fixed penalty)")
    # [train]
    iterations: int = opt(500, "train", "meta-iterations")
    compile: bool = opt(False, "train", "torch.compile TRPO's curvature products: about a minute once, then each "
                        "conjugate-gradient step 2-3x faster")
    env_workers: int = opt(1, "train", "processes that step the simulator copies (MuJoCo locomotion, Meta-World): "
                           "the same episodes on more cores (1: this process)")
    step_budget: int = opt(0, "train", "stop once this many environment steps have been taken, inner-loop rollouts "
                           "included (0: no limit; the run ends within one meta-batch of it)")
    snapshot_steps: int = opt(0, "train", "keep checkpoint snapshot-<j> when the j-th multiple of this many "
                              "environment steps is passed (0: none)")
    meta_batch_size: int = opt(20, "train", "tasks per meta-iteration")
    outer_optimizer: str = opt("adam", "train", "optimizer of outer 'vpg' and 'ppo': adam or sgd")
    outer_lr: float = opt(0.001, "train", "step size of outer 'vpg' and 'ppo'")
    outer_lr_schedule: str = opt("constant", "train", "outer 'vpg' and 'ppo': constant; linear (annealed to 0 over "
                                 "the run); plateau (times outer_lr_factor whenever the training return after "
                                 "adaptation, the best checkpoint's measure, has not passed its best for "
                                 "outer_lr_patience iterations); or grad-norm (times outer_lr_factor when the "
                                 "outer gradient norm's mean over outer_lr_window iterations passes outer_lr_growth "
                                 "times its lowest since outer_lr_warmup or the last lowering): MAML-VPG falls back "
                                 "at a constant 0.001, docs/meta-rl.md")
    outer_lr_patience: int = opt(50, "train", "plateau: iterations without a new best before the step is lowered")
    outer_lr_factor: float = opt(0.1, "train", "plateau, grad-norm: what each lowering multiplies the step by")
    outer_lr_growth: float = opt(3.0, "train", "grad-norm: how many times its lowest windowed mean the gradient "
                                 "norm's must pass to lower the step")
    outer_lr_window: int = opt(10, "train", "grad-norm: iterations the gradient norm is averaged over")
    outer_lr_warmup: int = opt(50, "train", "grad-norm: iterations before the lowest mean is tracked (the norm "
                               "moves most while the policy first learns)")
    seed: int = opt(0, "train", "seed of the initialization, tasks and episodes")
    checkpoint_every: int = opt(10, "train", "iterations between checkpoints (also at the end)")
    # [eval]
    eval_steps: int = opt(4, "eval", "adaptation steps at test time")
    eval_episodes: int = opt(40, "eval", "episodes per test-time step and task")
    eval_lr: tuple[float, ...] = opt((), "eval", "test-time step sizes (the last repeats; empty: the trained "
                                     "inner_lr, times eval_later after the first step)")
    eval_tasks: int = opt(400, "eval", "held-out test tasks")
    eval_seed: int = opt(12345, "eval", "seed of the test tasks and episodes (the same for every method)")
    tune_eval_lr: bool = opt(False, "eval", "choose the first test-time step size on validation tasks from "
                             "eval_lr_grid (halved after the first step; for the pretrained and random baselines)")
    eval_lr_grid: tuple[float, ...] = opt((0.02, 0.05, 0.1, 0.2, 0.5, 1.0), "eval", "step sizes tried by "
                                          "tune_eval_lr")
    eval_later: float = opt(0.5, "eval", "with tune_eval_lr or no eval_lr: the steps after the first, as a fraction "
                            "of the first (the MAML code's tests: 0.5; its ant direction test: 0.01)")

    def test_lr(self) -> list[float]:
        """The test-time step sizes when none is tuned: ``eval_lr``, or the trained first step then ``eval_later``
        times it (the MAML paper's tests: alpha, then alpha / 2)."""
        return list(self.eval_lr) or [self.inner_lr[0], self.inner_lr[0] * self.eval_later]

    def validate(self) -> RLConfig:
        """Check every value; raise ``ConfigError`` naming the first bad one and the fix."""
        self.check_types()
        check_settings({name: getattr(self, name) for name in LEARNER_SETTINGS})  # the learner's, as MetaRL's
        self.check_choices({"policy": POLICIES, "activation": tuple(ACTIVATIONS), "reward": REWARDS,
                            "outer_optimizer": ("adam", "sgd"), "observation": ("auto", *OBSERVATIONS),
                            "physics": ("auto", *PHYSICS), "outer_lr_schedule": OUTER_LR_SCHEDULES})
        self.check_at_least({"horizon": 1, "iterations": 0, "meta_batch_size": 1, "checkpoint_every": 1,
                             "eval_steps": 0, "eval_episodes": 1, "eval_tasks": 2, "step_budget": 0,
                             "snapshot_steps": 0, "context": 0, "outer_lr_patience": 1,
                             "outer_lr_window": 1, "outer_lr_warmup": 0})
        for name in ("outer_lr", "init_std", "action_scale"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} {getattr(self, name)} must be a positive number")
        check_outer_lr(self.outer_lr)
        for name in ("eval_lr", "eval_lr_grid"):
            values = getattr(self, name)
            if (not values and name == "eval_lr_grid") or any(not (v >= 0 and math.isfinite(v)) for v in values):
                raise ConfigError(f"{name} {list(values)} must hold step sizes >= 0, e.g. 0.1")
        if not 0 < self.outer_lr_factor < 1:
            raise ConfigError(f"outer_lr_factor {self.outer_lr_factor} must lie in (0, 1), e.g. 0.1")
        if not self.outer_lr_growth > 1:
            raise ConfigError(f"outer_lr_growth {self.outer_lr_growth} must be above 1, e.g. 3")
        if self.outer_lr_schedule != "constant" and self.outer not in ("vpg", "ppo"):
            raise ConfigError(f"outer_lr_schedule {self.outer_lr_schedule} is for outer 'vpg' and 'ppo'; outer "
                              f"'{self.outer}' steps by max_kl: set outer_lr_schedule to constant")
        check_whole("frame_skip", self.frame_skip, 0, "0: the task family's own")
        check_whole("env_workers", self.env_workers, 1, "1: the simulators in this process")
        if not 0 < self.eval_later <= 1:
            raise ConfigError(f"eval_later {self.eval_later} must lie in (0, 1] (0.5: half the first test step)")
        if len(self.goal_range) != 2 or not self.goal_range[0] < self.goal_range[1]:
            raise ConfigError(f"goal_range {list(self.goal_range)} must be [low, high] with low < high")
        if self.score_baseline == "batch" and self.algo in SCORE_ALGOS and self.meta_batch_size < 2:
            raise ConfigError("score_baseline batch subtracts the other tasks' mean score, and meta_batch_size 1 has "
                              "none; give meta_batch_size 2 or more, or score_baseline none")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden {list(self.hidden)} must hold positive layer sizes")
        for name in ("step_budget", "snapshot_steps"):
            if 0 < getattr(self, name) < self.iteration_steps:
                raise ConfigError(f"{name} {getattr(self, name):,} is less than one meta-iteration's environment steps "
                                  f"(up to {self.iteration_steps:,}: meta_batch_size x episodes x horizon x (inner "
                                  f"steps + 1)); give at least {self.iteration_steps} or 0 (none)")
        return super().validate()

    def ignored(self, name: str) -> str:
        """``Settings.ignored``, ``curvature_chunk`` of TRPO without compile (it chunks compiled products), and
        ``eval_later`` beside the step sizes given (it scales a tuned or the trained step)."""
        if name == "curvature_chunk" and self.outer == "trpo" and not self.compile:
            return "sizes compiled curvature products; this config's compile is false"
        if name == "eval_later" and self.eval_lr and not self.tune_eval_lr:
            return (f"scales a tuned or the trained first step; this config tests at eval_lr {list(self.eval_lr)} "
                    "(give the later steps there)")
        return super().ignored(name)

    @property
    def iteration_steps(self) -> int:
        """The environment steps of one meta-iteration, inner-loop rollouts included (fewer where episodes end early):
        meta_batch_size x episodes x horizon x (inner steps + 1; joint training has none)."""
        inner = 0 if self.algo == "joint" else self.inner_steps
        return self.meta_batch_size * self.episodes * self.horizon * (inner + 1)

    def resume_differences(self, saved: Settings) -> list[str]:
        """As every config's, but the schedule may switch among constant, plateau and grad-norm on resume (and the
        budget change) only while neither is linear, which anneals over the budget."""
        differences = super().resume_differences(saved)
        schedules = {self.outer_lr_schedule, getattr(saved, "outer_lr_schedule", "constant")}
        if "linear" in schedules:
            differences += [n for n in ("outer_lr_schedule", "iterations") if getattr(saved, n) != getattr(self, n)]
        return differences


def method_names() -> list[str]:
    """The methods that have a preset (``configs/<method>-navigation.toml``)."""
    return [n.removesuffix(PRESET_SUFFIX) for n in preset_names() if n.endswith(PRESET_SUFFIX)]


def preset(method: str) -> RLConfig:
    """A method's configuration by name (``maml-trpo``, ``promp``, ...): its preset file on 2D navigation."""
    from ..config import load_config

    names = method_names()
    if method not in names:
        raise ConfigError(f"unknown method '{method}'{suggest(method, names)}; choose one of {', '.join(names)}")
    cfg = load_config(method + PRESET_SUFFIX)
    assert isinstance(cfg, RLConfig)
    return cfg
