"""The supervised run's configuration (``Config``) and ``load_config``, which reads supervised and meta-RL configs.

Fields, TOML sections, the CLI options and their help come from ``metagrad.settings`` (the one config system that
the meta-RL ``RLConfig`` shares); this module holds the supervised fields and their checks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import choices
from .choices import IMAGE_FAMILIES
from .errors import ConfigError
from .seeds import HALF_RANGE_SEED_OFFSET, VAL_EVAL_SEED_OFFSET
from .settings import Settings, check_outer_lr, opt, preset_path, read_toml

if TYPE_CHECKING:
    from .rl.config import RLConfig

SECTIONS = ("task", "model", "algo", "train", "eval")
RL_SECTIONS = {"env", "policy"}  # a config file with one of these sections is a meta-RL run's


@dataclass
class Config(Settings):
    """Everything that determines a supervised run; a run is reproducible from its config (and seed)."""

    SECTIONS: ClassVar[tuple[str, ...]] = SECTIONS
    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"time_budget", "log_every", "checkpoint_every", "val_every",
                                                          "val_as",
                                                          "self_check", "download", "outer_lr", "inner_lr",
                                                          "compile", "device", "data_root"})
    HELD_OUT_SEEDS: ClassVar[dict[int, str]] = {
        0: "the test tasks", VAL_EVAL_SEED_OFFSET: "the tasks that choose the test-time step size",
        HALF_RANGE_SEED_OFFSET: "the half-range test tasks (MAML Figure 2)",
        HALF_RANGE_SEED_OFFSET + 1: "the half-range figure's task"}
    APPLIES: ClassVar[dict[str, tuple[str, tuple[Any, ...]]]] = {
        **dict.fromkeys(("amplitude", "phase", "x_range", "grid", "oracle"), ("family", ("sinusoid",))),
        **dict.fromkeys(("ways", "data_root", "transductive"), ("family", IMAGE_FAMILIES)),
        **dict.fromkeys(("rotations", "distinct_characters", "download"), ("family", ("omniglot",))),
        "dim": ("family", ("linreg",)), "hidden": ("model", ("mlp", "mlp-bn")), "activation": ("model", ("mlp",)),
        **dict.fromkeys(("filters", "pool"), ("model", ("conv4",))), "eval_lr_grid": ("tune_eval_lr", (True,))}

    # [task]
    family: str = opt("sinusoid", "task", "task family: sinusoid, linreg (meta-linear regression, trade-off paper "
                      "eq. 13), omniglot, miniimagenet")
    shots: int = opt(10, "task", "support examples per task during meta-training (K; per class for images)")
    query: int = opt(10, "task", "query examples per task during meta-training (per class for images)")
    ways: int = opt(5, "task", "classes per task (N) for image classification")
    data_root: str = opt("", "task", "image dataset folder (empty: $METAGRAD_DATA/<family>)")
    download: bool = opt(False, "task", "Omniglot: fetch the two official zip files into data_root when they are "
                         "missing (checksums verified, partial downloads resumed)")
    rotations: bool = opt(True, "task", "Omniglot: characters rotated by 90, 180, 270 degrees are new classes")
    distinct_characters: bool = opt(False, "task", "Omniglot with rotations: a task's N classes are N distinct "
                                    "characters, each turned by a random multiple of 90 degrees (the MAML code); "
                                    "false: any N of the rotated classes (the Reptile code)")
    amplitude: tuple[float, ...] = opt((0.1, 5.0), "task", "sinusoid amplitude range [low, high]")
    phase: tuple[float, ...] = opt((0.0, math.pi), "task", "sinusoid phase range [low, high] (radians)")
    x_range: tuple[float, ...] = opt((-5.0, 5.0), "task", "sinusoid input range [low, high]")
    grid: int = opt(0, "task", "if > 0, inputs lie on this many equally spaced points and the query is the "
                    "whole grid (Reptile's variant: 50)")
    oracle: bool = opt(False, "task", "append the task to the input (oracle baseline: a sinusoid's "
                                  "amplitude and phase)")
    dim: int = opt(1, "task", "input dimension p of linreg tasks (the paper's Figure 3: 1)")
    # [model]
    model: str = opt("mlp", "model", "network: mlp, linear (y = theta^T x, no bias; for linreg), conv4 (few-shot "
                     "images), mlp-bn (images, non-convolutional)")
    hidden: tuple[int, ...] = opt((40, 40), "model", "hidden layer sizes (mlp, mlp-bn)")
    activation: str = opt("relu", "model", "hidden activation of mlp (relu, tanh)")
    filters: int = opt(64, "model", "conv4 filters per layer (64 for Omniglot, 32 for MiniImagenet)")
    pool: bool = opt(False, "model", "conv4: 2x2 max-pooling (MiniImagenet) instead of stride-2 convolutions")
    context: int = opt(0, "model", "if > 0, a learned context vector of this many numbers is concatenated to every "
                       "input (images: this many extra channels, each a free map of the image's size; conv4), the "
                       "MAML paper's appendix C.2 baseline; adapt it alone with adapt = context (0: off)")
    # [algo]
    algo: str = opt("maml", "algo", "algorithm: maml, fomaml (first-order MAML), reptile, joint (pretrained/DRS)")
    inner_lr: tuple[float, ...] = opt((0.01,), "algo", "inner step size, or one per inner step (the last repeats)")
    inner_steps: int = opt(1, "algo", "inner-loop steps during meta-training")
    inner_optimizer: str = opt("sgd", "algo", "inner-loop rule: sgd, or adam (beta1 = 0, as Reptile)")
    inner_batch_size: int = opt(0, "algo", "examples per inner step (0, or the support set's size or more: the whole "
                                "support set)")
    learn_inner_lr: bool = opt(False, "algo", "meta-learn a step size per parameter element and inner step "
                               "(Meta-SGD); maml/fomaml")
    recompute: bool = opt(False, "algo", "maml/fomaml with sgd: keep one inner step's graph at a time and recompute "
                          "the rest in the backward pass (less memory over many steps, about 2x the compute)")
    adapt: tuple[str, ...] = opt((), "algo", "parameters the inner loop adapts, as module or parameter names, e.g. "
                                 "classifier (ANIL); the others get the meta-gradient only (empty: all; joint: "
                                 "what evaluation fine-tunes)")
    inner_sampling: str = opt("cycle", "algo", "how inner-loop minibatches are drawn from the support set: cycle "
                              "(epochs of random permutations, consumed in order) or replacement (each minibatch a "
                              "random subset drawn anew; Reptile paper 6.3); also at evaluation")
    inner_state: str = opt("fresh", "algo", "inner optimizer state: fresh for every task, or carried (one Adam state "
                           "runs on across the tasks, in order, and the meta-iterations, as the Reptile paper's code; "
                           "evaluation starts from it and leaves it unchanged); carried: reptile/fomaml with adam")
    tail: str = opt("", "algo", "data of the final minibatch (Reptile paper 6.3): separate (the query set, drawn "
                    "apart from the support set; on grid tasks the whole grid, support points included) or shared "
                    "(the next minibatch from the support set); maml/fomaml: the outer loss's, reptile: the last "
                    "inner step's; empty: separate for maml/fomaml, shared for reptile")
    combination: tuple[float, ...] = opt((), "algo", "reptile: the weight of each inner step's update in the outer "
                                         "update, one per inner step (Reptile paper 6.2): 0,1 is two-step FOMAML "
                                         "(g2), 1,1 two-step Reptile, 0.5,0.5 their average (empty: all ones)")
    # [train]
    iterations: int = opt(70000, "train", "meta-iterations (outer steps)")
    meta_batch_size: int = opt(25, "train", "tasks per meta-iteration")
    outer_optimizer: str = opt("adam", "train", "outer optimizer: adam, or sgd (plain step, as Reptile's)")
    outer_lr: float = opt(0.001, "train", "outer step size (Reptile: epsilon)")
    outer_lr_schedule: str = opt("constant", "train", "constant, or linear (annealed to 0 over the run)")
    seed: int = opt(0, "train", "seed of the initialization and the task sampler")
    batching: str = opt("auto", "train", "vmap (tasks batched), loop (per-task reference), auto")
    compile: bool = opt(False, "train", "torch.compile the meta-gradient: tens of seconds once, then several times "
                        "faster for small models (sinusoid MLP)")
    self_check: bool = opt(True, "train", "before batching tasks with vmap, check once that it gives this model's "
                           "meta-gradient exactly (float64, 2 tasks, against the per-task loop); auto falls back to "
                           "the loop if not, vmap refuses (docs/compatibility.md)")
    threads: int = opt(0, "train", "threads that differentiate shards of the meta-batch at once (0: one per core "
                       "for the per-task loop on the CPU, e.g. Conv4; 1: one thread, torch's kernels use the cores)")
    task_chunk: int = opt(0, "train", "tasks differentiated at once (0: all under vmap, e.g. on a GPU; 1-8 in the "
                          "per-task loop); smaller uses less memory, e.g. 4 for many inner steps on a GPU")
    device: str = opt("cpu", "train", "where the model and its meta-batches live: cpu, cuda or cuda:N (tasks are "
                      "sampled on the CPU, the same ones on either; a run may move when it resumes)")
    log_every: int = opt(100, "train", "iterations between metric lines in metrics.jsonl")
    checkpoint_every: int = opt(2000, "train", "iterations between checkpoints (also saved at the end)")
    val_every: int = opt(2000, "train", "iterations between validations; the best is kept (0: never)")
    val_tasks: int = opt(200, "train", "validation tasks")
    val_as: str = opt("training", "train", "how validation adapts: training (the training shots and inner steps on "
                      "the whole support set) or test (the smallest eval_shots, eval_query, eval_steps, "
                      "eval_inner_batch_size and eval_lr, as the test runs)")
    # [eval]
    eval_shots: tuple[int, ...] = opt((5, 10, 20), "eval", "support sizes K to evaluate")
    eval_query: int = opt(100, "eval", "query examples per test task (per class for images)")
    eval_steps: int = opt(10, "eval", "adaptation steps at test time (curves report 0..eval_steps)")
    eval_tasks: int = opt(600, "eval", "test tasks (the MAML code's 600; the Reptile code tests 10,000)")
    eval_lr: tuple[float, ...] = opt((), "eval", "test-time step size(s) (empty: the training inner_lr)")
    tune_eval_lr: bool = opt(False, "eval", "choose the test-time step size on validation tasks (pretrained)")
    eval_lr_grid: tuple[float, ...] = opt((0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), "eval",
                                          "step sizes tried by tune_eval_lr (0: no fine-tuning)")
    eval_inner_batch_size: int = opt(0, "eval", "examples per test-time step (0, or the support set's size or more: "
                                     "the whole support set)")
    eval_seed: int = opt(12345, "eval", "seed of the test tasks (the same tasks for every method)")
    transductive: bool = opt(True, "eval", "batch-norm statistics over the whole query set (MAML's numbers); "
                             "false: support set + one query example at a time (Reptile's)")

    def ignored(self, name: str) -> str:
        """``Settings.ignored``, the query sizes of grid tasks (their query set is the whole grid), the training
        minibatches of joint training (no inner loop), and validation's settings where there is none."""
        if name in ("query", "eval_query") and self.family == "sinusoid" and self.grid:
            return f"is not used on grid tasks: their query set is the whole grid ({self.grid} points)"
        if name == "inner_batch_size" and self.algo == "joint":
            return "is not used by algo joint: it trains without an inner loop (evaluation's is eval_inner_batch_size)"
        if name == "inner_sampling" and self.algo == "joint" and not self.eval_inner_batch_size:
            return ("is not used by algo joint with eval_inner_batch_size 0: it trains without an inner loop and "
                    "evaluation takes the whole support set at every step")
        if name in ("val_tasks", "val_as") and not self.val_every:
            return "is not used with val_every 0 (no validation)"
        return super().ignored(name)

    def free_on_resume(self) -> set[str]:
        """The iteration budget may change unless the outer step size is annealed over it; the inner step sizes
        may not when they are learned (the checkpoint's learned values would be kept and the new ones only logged)."""
        free = super().free_on_resume() | (set() if self.budget_fixed() else {"iterations"})
        return free - {"inner_lr"} if self.learn_inner_lr else free

    # ------------------------------------------------------------------ validation
    def validate(self) -> Config:
        """Check every value; raise ``ConfigError`` naming the first bad one."""
        self.check_types()
        self.check_values()
        self.check_combinations()
        check_device(self.device)
        return super().validate()

    def check_values(self) -> None:
        """Each value on its own: a known name, a count, a step size, a range."""
        self.check_choices({"family": choices.FAMILIES, "model": choices.MODELS, "activation": choices.ACTIVATIONS,
                            "algo": choices.ALGOS, "inner_optimizer": choices.INNER_RULES,
                            "outer_optimizer": choices.OUTER_OPTIMIZERS, "outer_lr_schedule": ("constant", "linear"),
                            "batching": choices.BATCHING, "inner_sampling": choices.INNER_SAMPLING,
                            "inner_state": choices.INNER_STATE, "tail": ("", *choices.TAILS),
                            "val_as": ("training", "test")})
        self.check_at_least({"ways": 2, "filters": 1, "shots": 1, "query": 1, "grid": 0, "inner_steps": 0,
                             "inner_batch_size": 0, "iterations": 0, "meta_batch_size": 1, "log_every": 1,
                             "checkpoint_every": 1, "val_every": 0, "val_tasks": 1, "eval_query": 1, "eval_steps": 0,
                             "eval_tasks": 2, "eval_inner_batch_size": 0, "dim": 1, "threads": 0, "task_chunk": 0,
                             "context": 0})
        for v in self.inner_lr:
            if not v > 0:
                raise ConfigError(f"inner_lr {v} must be positive (e.g. 0.01)")
        for name in ("eval_lr", "eval_lr_grid"):
            for v in getattr(self, name):
                if not v >= 0:
                    raise ConfigError(f"{name} {v} must be >= 0 (0: no fine-tuning)")
        if not self.inner_lr:
            raise ConfigError("inner_lr is empty; give a step size such as 0.01")
        check_outer_lr(self.outer_lr)
        for name in ("amplitude", "phase", "x_range"):
            v = getattr(self, name)
            if len(v) != 2 or v[0] > v[1] or (name == "x_range" and v[0] == v[1]):
                strict = "<" if name == "x_range" else "<="  # one input for every point: no function to learn
                raise ConfigError(f"{name} {list(v)} must be [low, high] with low {strict} high")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden {list(self.hidden)} must hold positive layer sizes")
        if not self.eval_shots or min(self.eval_shots) < 1:
            raise ConfigError(f"eval_shots {list(self.eval_shots)} must hold positive sizes, e.g. 5,10,20")

    def check_combinations(self) -> None:
        """Values that each make sense alone but not together (an option of one algorithm or family on another)."""
        if self.family == "linreg" and (self.grid or self.oracle):
            raise ConfigError("grid and oracle apply to the sinusoid family only; set grid = 0 and oracle = false "
                              "for linreg")
        if self.recompute and (self.algo not in ("maml", "fomaml") or self.inner_optimizer != "sgd"):
            raise ConfigError("recompute works with algo maml or fomaml and inner_optimizer sgd")
        if self.inner_sampling == "replacement" and not (self.inner_batch_size or self.eval_inner_batch_size):
            raise ConfigError("inner_sampling 'replacement' draws minibatches, and inner_batch_size 0 and "
                              "eval_inner_batch_size 0 take the whole support set at every step; give "
                              f"{'eval_' * (self.algo == 'joint')}inner_batch_size (e.g. 25) or leave inner_sampling "
                              "out")
        if self.tail and self.algo == "joint":
            raise ConfigError(f"tail '{self.tail}' applies to maml, fomaml and reptile; leave it empty for joint")
        if self.combination and self.algo != "reptile":
            raise ConfigError(f"combination {list(self.combination)} weighs Reptile's inner steps; it needs algo "
                              f"reptile, not {self.algo}")
        if self.combination and (len(self.combination) != self.inner_steps
                                 or not all(math.isfinite(w) for w in self.combination)):
            raise ConfigError(f"combination {list(self.combination)} needs one finite weight per inner step "
                              f"(inner_steps {self.inner_steps}), e.g. 0,1 for two-step FOMAML")
        if self.inner_state == "carried" and (self.algo not in ("reptile", "fomaml")
                                              or self.inner_optimizer != "adam"):
            raise ConfigError("inner_state 'carried' works with algo reptile or fomaml and inner_optimizer adam "
                              "(a stateful inner rule whose state can run on across tasks)")
        if self.learn_inner_lr and self.algo not in ("maml", "fomaml"):
            raise ConfigError(f"learn_inner_lr works with maml or fomaml, not {self.algo} (its meta-gradient does not "
                              "pass through the inner step sizes, so they would never be learned)")
        if self.learn_inner_lr and (self.eval_lr or self.tune_eval_lr):
            given = "eval_lr" if self.eval_lr else "tune_eval_lr"
            raise ConfigError(f"{given}: this run learns its step sizes (learn_inner_lr) and tests with them; leave "
                              f"{given} out")
        if self.tune_eval_lr and not self.eval_lr_grid:
            raise ConfigError("tune_eval_lr chooses from eval_lr_grid, which is empty; give the step sizes to try, "
                              "e.g. 0.01,0.1,0.4")
        if self.eval_lr and self.tune_eval_lr:
            raise ConfigError(f"eval_lr {list(self.eval_lr)} and tune_eval_lr: tune_eval_lr chooses the test-time "
                              "step size; give one of them")
        if self.val_as == "test" and self.tune_eval_lr:
            raise ConfigError("val_as 'test' validates with the test's step size, which tune_eval_lr chooses only "
                              "after training; give eval_lr, or leave val_as 'training'")
        if (self.family in IMAGE_FAMILIES) != (self.model in choices.IMAGE_MODELS):
            raise ConfigError(f"model '{self.model}' does not fit family '{self.family}'; use conv4 or mlp-bn for "
                              "images, mlp or linear otherwise")
        for name, k in (("shots", self.shots), ("eval_shots", max(self.eval_shots))):
            if self.grid and k > self.grid:
                raise ConfigError(f"{name} {k} exceed grid {self.grid}: a task's support points are drawn from the "
                                  f"grid's {self.grid} points; raise grid or lower {name}")


def check_device(device: str) -> None:
    """``device`` is written as torch names the CPU or a GPU (whether this machine has it is ``usable_device``'s
    question: a run trained on a GPU is still read on a CPU machine)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device '{device}' is not one of cpu, cuda, cuda:N (e.g. cuda:0)")


def usable_device(device: str) -> str:
    """``device`` if torch can use it on this machine, else a ``ConfigError`` naming the fix."""
    if device == "cpu":
        return device
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device '{device}': torch sees no GPU on this machine (torch.cuda.is_available() is "
                          "False); use device cpu")
    if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device '{device}': this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def load_config(name_or_path: str | Path) -> Config | RLConfig:
    """Read a TOML config file, or a preset by name (``sinusoid-maml``, ``maml-trpo-navigation``), and validate it:
    a supervised ``Config``, or a meta-RL ``RLConfig`` when the file has an [env] or [policy] section."""
    path = preset_path(name_or_path)
    data = read_toml(path)
    if RL_SECTIONS & set(data):
        from .rl.config import RLConfig

        return RLConfig.from_sections(data, str(path)).validate()
    refuse_rl_keys(data, str(path))
    return Config.from_sections(data, str(path)).validate()


def refuse_rl_keys(data: dict[str, Any], source: str) -> None:
    """A file without [env] or [policy] is read as a supervised config: a key only meta-RL configs have says that a
    meta-RL file lacks its [env] section, not that the key is unknown."""
    from .rl.config import RLConfig

    rl = {f.name for f in fields(RLConfig)} - {f.name for f in fields(Config)}
    for section, entries in data.items():
        if rl_only := [k for k in entries if k in rl] if isinstance(entries, dict) else []:
            raise ConfigError(f"{source}: '{rl_only[0]}' in [{section}] is a meta-RL key, and a file without an [env] "
                              "or [policy] section is read as a supervised config; give a meta-RL config its [env] "
                              "section (e.g. env = \"navigation2d\")")
