"""A run on disk, for supervised and meta-RL configs alike: train from a config into a run directory (or continue
it), load it back, evaluate it. This is what ``metagrad train`` and ``metagrad eval`` do, and what the reproductions
build on.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checkpoint, files
from .algorithms import MetaLearner
from .batch import Split
from .build import build_learner, build_outer, build_tasks, evaluation_tasks
from .choices import IMAGE_FAMILIES
from .config import Config
from .errors import CheckpointError, ConfigError, Interrupted, MetagradError
from .evaluate import Curve, adaptation_curves, held_out_tasks, tune_step_size
from .functional import call
from .loop import RunLoop, trajectory
from .seeds import VAL_EVAL_SEED_OFFSET
from .settings import read_toml
from .train import Trainer, Validation

if TYPE_CHECKING:
    from .rl.config import RLConfig
    from .rl.metarl import MetaRL


def make_trainer(cfg: Config | RLConfig, run_dir: str | Path | None, progress: bool = True, **kw: Any) -> RunLoop:
    """The trainer of ``cfg`` (learner, outer optimizer, tasks or environment): a ``Trainer`` for a supervised
    config, an ``RLTrainer`` for a meta-RL one; ``kw``: ``distributed``, and ``on_iteration`` (supervised)."""
    cfg.validate()  # a config built directly (``mg.Config(outer_lr=-1.0)``) is checked as a loaded one is
    if not isinstance(cfg, Config):
        from .rl.train import RLTrainer, build

        learner, optimizer = build(cfg)
        return RLTrainer(learner, optimizer, cfg, run_dir, progress, **kw)

    learner = build_learner(cfg)
    opt, sched = build_outer(cfg, learner)
    images = cfg.family in IMAGE_FAMILIES
    validation = None  # off: its limits do not apply
    if images and cfg.val_every:  # drawn as training draws tasks, or as the test does (val_as = "test")
        validation = evaluation_tasks(cfg, "val") if cfg.val_as == "test" else build_tasks(cfg, "val")
    if images:  # the evaluation this run will get (and the tuning of its step size): refused now, not after training
        evaluation_tasks(cfg, "test")  # (validation as the test, above, has checked its split already)
        if cfg.tune_eval_lr and not cfg.learn_inner_lr:
            evaluation_tasks(cfg, "val")
    return Trainer(learner, build_tasks(cfg), opt, scheduler=sched, validation=validation, iterations=cfg.iterations,
                   meta_batch_size=cfg.meta_batch_size, seed=cfg.seed, run_dir=run_dir,
                   config=cfg.to_sections(), log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                   val_every=cfg.val_every, val_tasks=cfg.val_tasks, val_as=validation_setting(cfg),
                   transductive=cfg.transductive,
                   time_budget=cfg.time_budget,
                   progress=progress, **kw)


def validation_setting(cfg: Config) -> Validation | None:
    """``val_as = "test"``: validation adapts as the test does, at the smallest of its shots; else None (as
    training)."""
    if cfg.val_as != "test":
        return None
    return Validation(shots=min(cfg.eval_shots), query=cfg.eval_query, steps=cfg.eval_steps,
                      inner_batch_size=cfg.eval_inner_batch_size, lr=tuple(cfg.eval_lr) or None)


def stored_config(data: dict[str, Any]) -> Config | RLConfig:
    """The config kept in a checkpoint's sidecar (by sections; older meta-RL runs kept a flat dict)."""
    from .rl.config import RLConfig

    if all(isinstance(v, dict) for v in data.values()):
        kind = RLConfig if "env" in data else Config
        if kind is RLConfig:
            data = {**data, "env": _stored_physics(data["env"])}
        return kind.from_sections(data, "the run's stored config").validate()
    return RLConfig.from_dict(_stored_physics(data))


def _stored_physics(env: dict[str, Any]) -> dict[str, Any]:
    """A meta-RL config stored before ``physics`` existed ran gymnasium's physics; where its family's own is now
    another (the ant's: rllab's) it reads back as ``gym``, so resuming it under the new default is a config
    difference."""
    from .rl.envs.locomotion import FAMILIES

    family = FAMILIES.get(env.get("env", ""))
    return {**env, "physics": "gym"} if "physics" not in env and family and family.physics != "gym" else env


def saved_config(run_dir: str | Path) -> Config | RLConfig | None:
    """The config a run was trained with (from its last checkpoint), or None where it has none."""
    last = Path(run_dir) / "last"
    return stored_config(_run_info(last, checkpoint.read_info(last))["config"]) if checkpoint.exists(last) else None


def _run_info(stem: Path, info: dict[str, Any]) -> dict[str, Any]:
    """A run checkpoint's info; a file of ``learner.save`` (the meta-parameters alone, no config) named as such."""
    if "config" not in info:
        raise CheckpointError(f"{stem}.safetensors is a learner file (learner.save: the meta-parameters alone), not a "
                              "run's checkpoint; load it with learner.load(path), or train a run with `metagrad train`")
    return info


STUDY_MARK = "reptile-study.json"  # in a run of a Reptile study: its training tasks and the command that continues it


def train(cfg: Config | RLConfig, run_dir: str | Path, resume: bool | str = False, progress: bool = True,
          **kw: Any) -> tuple[Any, Any]:
    """Meta-train into ``run_dir`` (``config.toml``, ``metrics.jsonl``, ``last``/``best`` checkpoints), or continue
    it with ``resume`` (True: its last checkpoint must exist; "auto": continue it if there is one); the step sizes
    may change on resume (recorded in ``metrics.jsonl``). Returns the trainer and its fit result."""
    run_dir = Path(run_dir)
    if resume and (run_dir / STUDY_MARK).exists():
        study = files.read_json(run_dir / STUDY_MARK, fix="restore it, or run the study's command")
        raise ConfigError(f"{run_dir} is a run of the {study['study']} study (its training tasks: {study['tasks']}; "
                          f"its tests and curves are the study's); continue it with the study's command: "
                          f"{study['command']}")
    refuse_another_runs_files(cfg, run_dir)
    trainer = make_trainer(cfg, run_dir, progress, **kw)
    changes = None  # meta-RL's trainer checks the saved config itself (RLTrainer.resume_changes); a supervised one here
    if resume and isinstance(cfg, Config) and (saved := saved_config(run_dir)) is not None:
        if type(saved) is not type(cfg):
            raise CheckpointError(f"{run_dir} holds a {_kind(saved)} run, not a {_kind(cfg)} one; choose another --out")
        changes = cfg.resume_changes(saved, run_dir)
    trainer.session_files["config.toml"] = cfg.to_toml()  # the latest session's config, for reading
    torch.manual_seed(cfg.seed)  # a model's own randomness (dropout) from the run's seed; a resume restores its state
    return trainer, trainer.fit(resume=resume, changes=changes)


def refuse_another_runs_files(cfg: Config | RLConfig, run_dir: Path) -> None:
    """Stop where a folder without checkpoints holds another run's ``config.toml`` (a run whose checkpoints were
    deleted, or a mistyped --out): starting here would overwrite it and its log. The same run's (one killed before
    its first checkpoint, or a config written there to train from) is started, whatever keys it leaves to defaults."""
    path = run_dir / "config.toml"
    if checkpoint.exists(run_dir / "last") or not path.is_file():
        return
    free = type(cfg).FREE_ON_RESUME  # what may differ between the sessions of one run (device, step sizes, ...)

    def identity(c: Config | RLConfig) -> dict[str, Any]:
        return {k: v for k, v in trajectory(c.to_sections()).items() if k not in free}

    try:
        same = identity(stored_config(read_toml(path))) == identity(cfg)
    except (MetagradError, ValueError, TypeError):
        same = False
    if not same:
        log = " (and its log)" if (run_dir / "metrics.jsonl").exists() else ""
        raise CheckpointError(f"{run_dir} holds another run's config.toml{log} but no checkpoint; starting here would "
                              "overwrite it: choose another --out, or move it away")


def continue_run(cfg: Config | RLConfig, run_dir: str | Path, progress: bool = True, **kw: Any) -> tuple[Any, Any]:
    """``train`` with resume, as the reproductions run each method: a rerun continues where it stopped; Ctrl-C or
    SIGTERM saves and raises ``Interrupted`` with what to run."""
    return stop_when_interrupted(lambda: train(cfg, run_dir, resume="auto", progress=progress, **kw), run_dir)


def stop_when_interrupted(fit: Callable[[], tuple[Any, Any]], run_dir: str | Path) -> tuple[Any, Any]:
    """``fit()`` (a trainer and its fit result) for a reproduction, whose rerun continues the run: a stop by Ctrl-C or
    SIGTERM, or an abort by a second one, raises ``Interrupted`` saying so, with the signal's exit code."""
    again = "run the same command again to continue"
    try:
        trainer, result = fit()
    except Interrupted as e:  # a second signal: aborted mid-iteration
        raise e.then(again) from None
    if result.stopped == "interrupted":
        raise Interrupted(f"interrupted at iteration {result.iteration}; checkpoint saved in {run_dir}; {again}",
                          trainer.stop_signal or signal.SIGINT)
    return trainer, result


def _kind(cfg: Config | RLConfig) -> str:
    return "supervised" if isinstance(cfg, Config) else "meta-RL"


def _no_run_yet(run_dir: Path) -> str:
    """What to do about a folder with no checkpoint at all: a path that is not there, a run that saved nothing yet
    (its config.toml says how to train it), or a folder that holds no run."""
    if not run_dir.exists():
        return f": there is no folder {run_dir}; check the path"
    if (run_dir / "config.toml").is_file():
        return (f" (it holds a run's config.toml: the run saved no checkpoint yet); train it with `metagrad train "
                f"--config {run_dir / 'config.toml'} --out {run_dir}`")
    return f": {run_dir} holds no run (no checkpoint, no config.toml); give a run's folder"


def load_run(run_dir: str | Path, which: str = "last", data_root: str | None = None) -> tuple[
        MetaLearner | MetaRL, Config | RLConfig, dict[str, Any]]:
    """The learner of a run directory (checkpoint ``last`` or ``best``), its config and checkpoint info;
    ``data_root``: where a few-shot run's images are now, if not at its recorded data root."""
    stem = Path(run_dir) / which
    if Path(run_dir).is_file() or Path(run_dir).suffix in (".safetensors", ".json"):
        folder, name = Path(run_dir).parent, Path(run_dir).with_suffix("").name
        raise CheckpointError(f"{run_dir} is a file, not a run folder: give the folder and the checkpoint apart, "
                              f"e.g. `metagrad eval {folder} --checkpoint {name}`")
    if not checkpoint.exists(stem):
        found = sorted(p.stem for p in Path(run_dir).glob("*.safetensors")) if Path(run_dir).is_dir() else []
        if found:
            raise CheckpointError(f"no '{which}' checkpoint in {run_dir}; it holds {', '.join(found)}")
        raise CheckpointError(f"no '{which}' checkpoint in {run_dir}" + (checkpoint.runs_inside(run_dir)
                                                                          or _no_run_yet(Path(run_dir))))
    state, info = checkpoint.load(stem)
    cfg = stored_config(_run_info(stem, info)["config"])
    if isinstance(cfg, Config) and cfg.device != "cpu" and not torch.cuda.is_available():
        print(f"metagrad: {run_dir} trained on {cfg.device}; no GPU here, so it is read onto the CPU",
              file=sys.stderr)
        cfg = cfg.replace(device="cpu")
    if data_root is not None:
        if not isinstance(cfg, Config) or cfg.family not in IMAGE_FAMILIES:
            raise ConfigError(f"--data-root applies to few-shot runs; {run_dir} needs no data folder")
        cfg = cfg.replace(data_root=data_root)
    if isinstance(cfg, Config):
        check_data(cfg, info, run_dir)
        learner: MetaLearner | MetaRL = build_learner(cfg)
    else:
        from .rl.train import build

        learner, _ = build(cfg)
    learner.load_state_dict(state["learner"])
    return learner, cfg, info


def check_data(cfg: Config, info: dict[str, Any], run_dir: str | Path) -> None:
    """Refuse to read a run against other images than it was trained on (its checkpoint's fingerprint of the
    training split; a data folder missing an alphabet reshuffles the split, its test classes then seen in training)."""
    trained = (info.get("data") or {}).get("tasks")
    if trained is None or cfg.family not in IMAGE_FAMILIES:
        return
    here = build_tasks(cfg).fingerprint
    if here != trained:
        raise CheckpointError(f"the {cfg.family} data at {cfg.data_root or '$METAGRAD_DATA'} is not what {run_dir} "
                              f"was trained on (training images' fingerprint {trained}, here {here}): its test classes "
                              "may have been seen in training; point data_root at the data it was trained on")


def evaluation_lrs(learner: MetaLearner, cfg: Config, shots: int) -> tuple[float, ...] | None:
    """Test-time step sizes for ``shots``: tuned on validation tasks, given, or the training ones (None)."""
    if cfg.learn_inner_lr:
        return None
    if cfg.tune_eval_lr:
        val = held_out_tasks(evaluation_tasks(cfg, "val"), cfg.val_tasks, shots, cfg.eval_seed + VAL_EVAL_SEED_OFFSET,
                             query=cfg.eval_query)
        best, _ = tune_step_size(learner, val, cfg.eval_steps, cfg.eval_lr_grid, cfg.eval_inner_batch_size,
                                 transductive=cfg.transductive, seed=cfg.eval_seed + VAL_EVAL_SEED_OFFSET)
        return (best,)
    return tuple(cfg.eval_lr) or None


def evaluate(learner: MetaLearner, cfg: Config, shots: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """Adaptation curves on ``cfg.eval_tasks`` test tasks for every K in ``shots`` (default: eval_shots)."""
    tasks = evaluation_tasks(cfg, "test")
    out: dict[int, dict[str, Any]] = {}
    for k in shots or list(cfg.eval_shots):
        lrs = evaluation_lrs(learner, cfg, k)
        inner = learner.inner.with_lr(lrs) if lrs else None
        batch = held_out_tasks(tasks, cfg.eval_tasks, k, cfg.eval_seed, query=cfg.eval_query)
        curves: dict[str, Curve] = adaptation_curves(learner, batch, cfg.eval_steps, inner=inner,
                                                     inner_batch_size=cfg.eval_inner_batch_size, seed=cfg.eval_seed,
                                                     transductive=cfg.transductive)
        lr_used = "learned" if cfg.learn_inner_lr else list(lrs or cfg.inner_lr)  # the schedule: figures go further
        out[k] = {"lr": lr_used, **{name: asdict(c) for name, c in curves.items()}}
    return out


@torch.no_grad()
def predictions(learner: MetaLearner, support: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                steps: list[int], lr: tuple[float, ...] | None = None) -> dict[int, torch.Tensor]:
    """The model's outputs on ``x`` after each number of adaptation ``steps`` on one task's support set."""
    inner = learner.inner.with_lr(lr) if lr else learner.inner
    meta, buffers = learner.functional_inputs()
    device = next(learner.model.parameters()).device
    support, x = Split(*(t.to(device) for t in support)), x.to(device)
    out = {}
    loop = learner.inner_loop(meta, buffers, support, max(steps), inner=inner, state=learner.start_state(inner))
    for s, params in enumerate(loop):
        if s in steps:
            out[s] = call(learner.model, params, buffers, x).cpu()
    return out
