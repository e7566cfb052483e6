"""Meta-RL training: a short seeded run improves the post-adaptation return; resume continues the same run;
the navigation reproduction end to end; bad input stops with one line and exit code 2."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metagrad import checkpoint
from metagrad.cli import main
from metagrad.errors import ConfigError
from metagrad.rl.config import RLConfig
from metagrad.rl.evaluate import return_curve
from metagrad.rl.train import RLTrainer, build

ROOT = Path(__file__).resolve().parents[2]
SRC = str(ROOT / "src")
PNG = b"\x89PNG\r\n\x1a\n"  # a PNG file's first bytes


def test_short_maml_trpo_run_improves_the_post_adaptation_return():
    cfg = RLConfig().replace(hidden=(32, 32), meta_batch_size=10, episodes=10, horizon=50, iterations=10)
    learner, optimizer = build(cfg)
    before, _, _ = return_curve(learner, 20, 1, 10, (0.1,), seed=7)
    result = RLTrainer(learner, optimizer, cfg, progress=False).fit()
    after, _, _ = return_curve(learner, 20, 1, 10, (0.1,), seed=7)
    assert result.iteration == 10 and result.env_steps > 10 * 2 * 10 * 10 * 40
    gain = after["mean"][1] - before["mean"][1]
    assert gain > 2 * (after["ci95"][1] + before["ci95"][1]), (before, after)


def _tiny(**kw):
    return RLConfig().replace(hidden=(8,), meta_batch_size=3, episodes=2, horizon=10, checkpoint_every=1, **kw)


@pytest.mark.parametrize("outer", ["trpo", "vpg"])
def test_resume_continues_the_same_trajectory(tmp_path, outer):
    cfg = _tiny(iterations=3, outer=outer, algo="maml" if outer == "trpo" else "sgmrl",
                normalize_outer=outer == "trpo")
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "straight", progress=False).fit()
    short = cfg.replace(iterations=2)
    learner, opt = build(short)
    RLTrainer(learner, opt, short, tmp_path / "resumed", progress=False).fit()
    learner, opt = build(cfg)
    result = RLTrainer(learner, opt, cfg, tmp_path / "resumed", progress=False).fit(resume=True)
    assert result.iteration == 3
    a, _ = checkpoint.load(tmp_path / "straight" / "last")
    b, _ = checkpoint.load(tmp_path / "resumed" / "last")
    for k, v in a["learner"].items():
        assert torch.equal(v, b["learner"][k]), k
    logged = [json.loads(ln) for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    lines = [ln for ln in logged if "return_post" in ln]
    assert [ln["iteration"] for ln in lines] == [1, 2, 3]
    resumed = [ln for ln in logged if "return_post" not in ln]
    assert resumed == [{"iteration": 2, "resumed_with": {"iterations": [2, 3]}}]
    info = checkpoint.read_info(tmp_path / "resumed" / "best")
    assert info["best_return"] == pytest.approx(max(ln["return_post"] for ln in lines), abs=1e-4)


class _Killed(BaseException):
    """Stands for kill -9: nothing of the run's own handling runs after it."""


def test_a_run_killed_before_its_first_checkpoint_resumes_to_the_same_run(tmp_path, monkeypatch):
    """`best` is written in the first iteration, the first periodic `last` only at checkpoint_every: a kill in
    between must leave a run that a rerun continues (it left a folder that refused every rerun), and the
    continued run must equal an uninterrupted one."""
    cfg = _tiny(iterations=4).replace(checkpoint_every=10)
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "straight", progress=False).fit()
    step = RLTrainer.step

    def dies_in_the_second_iteration(self):
        if self.iteration == 1:
            raise _Killed
        return step(self)

    monkeypatch.setattr(RLTrainer, "step", dies_in_the_second_iteration)
    learner, opt = build(cfg)
    with pytest.raises(_Killed):
        RLTrainer(learner, opt, cfg, tmp_path / "killed", progress=False).fit()
    assert checkpoint.exists(tmp_path / "killed" / "best")
    monkeypatch.setattr(RLTrainer, "step", step)
    learner, opt = build(cfg)
    assert RLTrainer(learner, opt, cfg, tmp_path / "killed", progress=False).fit(resume="auto").iteration == 4
    for name in ("last", "best"):
        a, _ = checkpoint.load(tmp_path / "straight" / name)
        b, _ = checkpoint.load(tmp_path / "killed" / name)
        assert all(torch.equal(v, b["learner"][k]) for k, v in a["learner"].items()), name
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "killed")]
    assert [json.loads(ln)["return_post"] for ln in lines[0]] == [json.loads(ln)["return_post"] for ln in lines[1]]


def test_a_resumed_vpg_run_steps_at_a_lowered_outer_step_with_its_adam_moments(tmp_path):
    """The fall-back remedy of docs/meta-rl.md: resume with ``outer_lr`` lowered; the optimizer steps at the new size
    and keeps its moments (the same run continued at 0.001 and at 0.0001 differ by the step's ratio, not its sign)."""
    cfg = _tiny(iterations=2, outer="vpg", algo="maml")
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "run", progress=False).fit()
    start, _ = checkpoint.load(tmp_path / "run" / "last")
    moves = {}
    for lr in (1e-3, 1e-4):  # each from a copy of the run at iteration 2: the same state, episodes and gradient
        run = shutil.copytree(tmp_path / "run", tmp_path / f"lr-{lr:g}")
        lowered = cfg.replace(iterations=3, outer_lr=lr)
        learner, opt = build(lowered)
        RLTrainer(learner, opt, lowered, run, progress=False).fit(resume=True, changes={"outer_lr": [1e-3, lr]})
        assert [g["lr"] for g in opt.param_groups] == [lr] and opt.state_dict()["state"][0]["step"] == 3
        end, _ = checkpoint.load(run / "last")
        moves[lr] = torch.cat([(end["learner"][k] - v).flatten() for k, v in start["learner"].items()])
    ratio = moves[1e-4].norm() / moves[1e-3].norm()
    assert 0.05 < ratio < 0.2 and torch.nn.functional.cosine_similarity(moves[1e-3], moves[1e-4], dim=0) > 0.9


def _straight_and_resumed(cfg: RLConfig, stop: int, tmp_path: Path) -> list[dict]:
    """Run ``cfg`` straight, and again stopped after ``stop`` iterations and resumed; assert that both took the same
    outer steps and ended bit-identical; the straight run's logged iterations."""
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "straight", progress=False).fit()
    short = cfg.replace(iterations=stop)
    learner, opt = build(short)
    RLTrainer(learner, opt, short, tmp_path / "resumed", progress=False).fit()
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "resumed", progress=False).fit(resume=True)
    logged, resumed = ([json.loads(ln) for ln in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                       for run in ("straight", "resumed"))
    assert [m["outer_lr"] for m in resumed if "outer_lr" in m] == [m["outer_lr"] for m in logged]
    a, _ = checkpoint.load(tmp_path / "straight" / "last")
    b, _ = checkpoint.load(tmp_path / "resumed" / "last")
    assert all(torch.equal(v, b["learner"][k]) for k, v in a["learner"].items())
    return logged


def _plateau_lrs(returns: list[float], lr: float, patience: int, factor: float) -> list[float]:
    """The plateau rule written out: the step of each iteration, from the training returns logged before it."""
    lrs, best, best_at, lowered, scale = [], None, 0, 0, 1.0
    for i, r in enumerate(returns):
        if best is None or r > best:
            best, best_at = r, i
        lrs.append(lr * scale)
        if i + 1 - max(best_at, lowered) >= patience:
            scale, lowered = scale * factor, i + 1
    return lrs


def test_the_plateau_schedule_lowers_the_outer_step_after_patience_iterations_without_a_new_best(tmp_path):
    """The remedy of MAML-VPG's fall-back in one run: each iteration's step is the configured one times the factor
    for every ``patience`` iterations that passed without a new best training return; a resumed run takes the same
    steps as a straight one."""
    cfg = _tiny(iterations=12, outer="vpg", algo="maml", outer_lr_schedule="plateau", outer_lr_patience=2,
                outer_lr_factor=0.5)
    logged = _straight_and_resumed(cfg, 5, tmp_path)
    lrs = [m["outer_lr"] for m in logged]
    assert lrs == pytest.approx(_plateau_lrs([m["return_post"] for m in logged], 1e-3, 2, 0.5), rel=1e-4)
    assert min(lrs) < 1e-3  # the rule fired (a run that set a new best at every iteration would test nothing)


def _grad_norm_lrs(norms: list[float], lr: float, window: int, warmup: int, growth: float,
                   factor: float) -> list[float]:
    """The grad-norm rule written out: the step of each iteration, from the gradient norms logged before it."""
    lrs, scale, start, lowest = [], 1.0, 0, None
    for i in range(len(norms)):
        lrs.append(lr * scale)
        recent = norms[max(start, i + 1 - window): i + 1]
        if i + 1 <= warmup or len(recent) < window:
            continue
        mean = sum(recent) / window
        if lowest is not None and mean > growth * lowest:
            scale, start, lowest = scale * factor, i + 1, None
        else:
            lowest = mean if lowest is None else min(lowest, mean)
    return lrs


def test_the_grad_norm_schedule_lowers_the_outer_step_when_the_gradient_norm_grows(tmp_path):
    """The fall-back's early sign (docs/meta-rl.md): the step is lowered when the windowed mean of the outer gradient
    norm passes ``outer_lr_growth`` times its lowest since warm-up or the last lowering; a resumed run takes the same
    steps as a straight one and ends bit-identical (the rule's window and lowest mean travel in the checkpoint)."""
    cfg = _tiny(iterations=20, outer="vpg", algo="maml", outer_lr_schedule="grad-norm", outer_lr_window=2,
                outer_lr_warmup=2, outer_lr_growth=1.2, outer_lr_factor=0.5)
    logged = _straight_and_resumed(cfg, 15, tmp_path)  # resumed after the first lowering, its lowest mean set again
    lrs = [m["outer_lr"] for m in logged]
    assert lrs == pytest.approx(_grad_norm_lrs([m["grad_norm"] for m in logged], 1e-3, 2, 2, 1.2, 0.5), rel=1e-4)
    assert len(set(lrs)) >= 3  # the rule fired more than once: then again after starting afresh


def test_the_trigger_replay_of_docs_fires_where_the_grad_norm_schedule_lowers_the_step(tmp_path):
    """docs/fallback_triggers.py reads a rule's first firing off a constant-step log; on a run's own log (identical
    to its constant-step run up to the firing) its grad-norm rule fires at the iteration after which the trainer
    lowered the step."""
    spec = importlib.util.spec_from_file_location("triggers", ROOT / "docs" / "fallback_triggers.py")
    triggers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(triggers)
    cfg = _tiny(iterations=12, outer="vpg", algo="maml", outer_lr_schedule="grad-norm", outer_lr_window=2,
                outer_lr_warmup=2, outer_lr_growth=1.2)
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path, progress=False).fit()
    rows = triggers.read(tmp_path)
    fired = triggers.grad_norm(1.2, 2, warmup=2)(rows)
    assert fired is not None and fired + 1 < len(rows)
    assert [r["outer_lr"] for r in rows[: fired + 2]] == [1e-3] * (fired + 1) + [1e-4]


def test_the_linear_schedule_anneals_the_outer_step_to_zero_over_the_run(tmp_path):
    cfg = _tiny(iterations=4, outer="ppo", algo="maml", outer_lr_schedule="linear", outer_lr=0.01)
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "run", progress=False).fit()
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["outer_lr"] for m in logged] == pytest.approx([0.01, 0.0075, 0.005, 0.0025])


def test_outer_step_schedules_are_checked_and_may_switch_to_plateau_on_resume():
    with pytest.raises(ConfigError, match="outer_lr_schedule plateau is for outer 'vpg' and 'ppo'"):
        RLConfig().replace(outer_lr_schedule="plateau").validate()
    with pytest.raises(ConfigError, match=r"outer_lr_factor 1\.0 must lie in"):
        RLConfig().replace(outer="vpg", outer_lr_factor=1.0).validate()
    with pytest.raises(ConfigError, match=r"outer_lr_growth 1\.0 must be above 1"):
        RLConfig().replace(outer="vpg", outer_lr_schedule="grad-norm", outer_lr_growth=1.0).validate()
    with pytest.raises(ConfigError, match="outer_lr_window"):
        RLConfig().replace(outer="vpg", outer_lr_window=0).validate()
    with pytest.raises(ConfigError, match="outer_lr_schedule 'cosine'"):
        RLConfig().replace(outer="vpg", outer_lr_schedule="cosine").validate()
    saved = RLConfig().replace(outer="vpg")
    assert saved.replace(outer_lr_schedule="plateau", outer_lr_patience=20).resume_differences(saved) == []
    assert saved.replace(outer_lr_schedule="grad-norm", outer_lr_growth=2.5).resume_differences(saved) == []
    assert saved.replace(outer_lr_schedule="linear").resume_differences(saved) == ["outer_lr_schedule"]
    linear = saved.replace(outer_lr_schedule="linear")
    assert linear.replace(iterations=900).resume_differences(linear) == ["iterations"]


def test_reproduce_navigation_end_to_end(tmp_path, capsys):
    out = tmp_path / "nav"
    sets = ["--set", "hidden=8", "--set", "meta_batch_size=2", "--set", "episodes=2", "--set", "horizon=10",
            "--set", "eval_episodes=2", "--set", "eval_lr_grid=0.1,0.5"]
    assert main(["reproduce", "navigation", "--algo", "maml-trpo,random,sgmrl", "--iterations", "1",
                 "--eval-tasks", "4", "--out", str(out), "--no-progress", *sets]) == 0
    text = capsys.readouterr().out
    assert "| MAML-TRPO (paper) | 500 max | -40.41 | -11.68 | -3.33 | -3.23 | - |" in text
    assert "SG-MRL (first order)" in text and "-16.90" in text
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"maml-trpo", "random", "sgmrl"}
    assert len(results["methods"]["maml-trpo"]["curve"]["mean"]) == 5
    assert results["methods"]["random"]["curve"]["lr"][0] in (0.1, 0.5)  # tuned on validation goals
    for name in ("return_curves.png", "training_curves.png", "trajectories.png"):
        assert (out / name).read_bytes()[:8] == PNG
    table = (out / "table.md").read_text()  # the table printed
    assert table in text and "| MAML-TRPO (paper) | 500 max | -40.41 | -11.68 | -3.33 | -3.23 | - |" in table
    # a second command adds a method to the same table; the others are kept
    assert main(["reproduce", "navigation", "--algo", "emaml,drs-ppo", "--iterations", "1", "--eval-tasks", "4",
                 "--out", str(out), "--no-progress", *sets]) == 0
    assert set(json.loads((out / "results.json").read_text())["methods"]) == {"maml-trpo", "random", "sgmrl",
                                                                             "emaml", "drs-ppo"}
    text = capsys.readouterr().out  # a method without a paper number has its row too
    assert "Other methods (no paper number on 2D navigation)" in text and "| DRS+PPO | 1 | " in text
    # a method tested on other tasks is refused before it trains (the table set the two side by side)
    assert main(["reproduce", "navigation", "--algo", "pretrained", "--iterations", "1", "--eval-tasks", "6",
                 "--out", str(out), "--no-progress", *sets]) == 2
    assert "would be tested with eval_tasks 6 (theirs 4): test it as" in capsys.readouterr().err
    assert not (out / "pretrained").exists()
    # --redraw: the table and figures again from results.json, its papers' numbers refreshed; nothing trained
    results = json.loads((out / "results.json").read_text())
    results["paper"]["maml_table4"]["maml-trpo"] = [-1.0, -2.0, -3.0, -4.0]  # as an older version recorded them
    (out / "results.json").write_text(json.dumps(results))
    (out / "table.md").unlink()
    (out / "return_curves.png").unlink()
    logs = {m: (out / m / "metrics.jsonl").read_bytes() for m in ("maml-trpo", "sgmrl")}
    assert main(["reproduce", "navigation", "--redraw", "--out", str(out)]) == 0
    assert "| MAML-TRPO (paper) | 500 max | -40.41 | -11.68 | -3.33 | -3.23 | - |" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["paper"]["maml_table4"]["maml-trpo"][0] == -40.41
    assert "| MAML-TRPO (paper) | 500 max | -40.41 | -11.68 | -3.33 | -3.23 | - |" in (out / "table.md").read_text()
    assert (out / "return_curves.png").read_bytes()[:8] == PNG
    assert {m: (out / m / "metrics.jsonl").read_bytes() for m in logs} == logs
    assert main(["reproduce", "locomotion", "--env", "ant-vel", "--redraw", "--out", str(out)]) == 2
    assert "holds experiment 'navigation', not 'locomotion-ant-vel'" in capsys.readouterr().err
    assert main(["reproduce", "navigation", "--redraw", "--out", str(tmp_path / "empty")]) == 2
    assert "no results.json in " in capsys.readouterr().err


def test_reproduce_locomotion_end_to_end(tmp_path, capsys):
    """MAML Figure 5's protocol on half-cheetah direction: the table beside the paper's appendix numbers, the
    results file, and the figures (return after k steps with the paper's values, training curves)."""
    out = tmp_path / "cheetah"
    sets = ["--set", "hidden=8", "--set", "meta_batch_size=2", "--set", "episodes=2", "--set", "horizon=10",
            "--set", "eval_episodes=2", "--set", "compile=false"]  # neither method tunes its test step size: no
    # eval_lr_grid; compile=false: the default's compilation takes longer than these runs
    assert main(["reproduce", "locomotion", "--env", "cheetah-dir", "--algo", "maml-trpo,oracle", "--iterations",
                 "1", "--eval-tasks", "4", "--out", str(out), "--no-progress", *sets]) == 0
    text = capsys.readouterr().out
    assert "| MAML-TRPO (paper) | | -50.69 | 293.19 | 313.48 | 315.65 |" in text
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"maml-trpo", "oracle"}
    assert all(len(r["curve"]["mean"]) == 4 for r in results["methods"].values())
    for name in ("return_curves.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG
    table = (out / "table.md").read_text()  # the table printed
    assert table in text and "| MAML-TRPO (paper) | | -50.69 | 293.19 | 313.48 | 315.65 |" in table
    assert not (out / "trajectories.png").exists()  # positions are navigation's
    # resumed with a longer budget: the log gains a resume note, which the figures skip
    assert main(["reproduce", "locomotion", "--env", "cheetah-dir", "--algo", "maml-trpo", "--iterations", "2",
                 "--eval-tasks", "4", "--out", str(out), "--no-progress", *sets]) == 0
    log = [json.loads(line) for line in (out / "maml-trpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "return_post" in r] == [1, 2] and any("resumed_with" in r for r in log)
    assert "figure:  " + str(out / "training_curves.png") in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--set", "env=mujoco-nav"], "--set env=mujoco-nav would train another environment than 'navigation2d'"),
    (["--set", "horizon=-5"], "horizon -5 must be a whole number >= 1"),
    (["--set", "policy=categorical"], "a categorical policy cannot serve a continuous action space of shape [2]"),
    (["--algo", "maml-trpp"], "unknown method 'maml-trpp' (did you mean 'maml-trpo'?)"),
    (["--set", "gamma=2"], "gamma 2.0 must lie in [0, 1]"),
    (["--set", "gae_lambda=2"], "gae_lambda 2.0 must lie in [0, 1]"),
    (["--set", "inner_lrr=0.1"], "unknown config key 'inner_lrr' (did you mean 'inner_lr'?)"),
    (["--set", "algo=joint"], "--set algo=joint would make --algo maml-trpo another method"),
    (["--set", "hidden="], "--set takes KEY=VALUE, got 'hidden=' (a value is missing"),
    (["--batching", "loop"], "--batching loop does not apply to navigation"),
])
def test_bad_input_stops_with_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    code = main(["reproduce", "navigation", "--iterations", "1", "--out", str(tmp_path), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_gym_environments_without_gymnasium_name_the_extra_and_core_imports(tmp_path):
    """Core metagrad (and metagrad.rl) import without gymnasium; a gym: environment says what to install."""
    block = "import sys; sys.modules['gymnasium'] = None\n"
    env = {**os.environ, "PYTHONPATH": SRC}
    code = block + "import metagrad, metagrad.rl\nfrom metagrad.cli import main\nraise SystemExit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "train", "--config", "maml-trpo-navigation", "--env",
                           "gym:metagrad/Navigation2D-v0", "--out", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "metagrad train: error: this needs gymnasium; install the rl extra: pip install 'metagrad[rl]'"]


def test_readme_meta_rl_example_runs(capsys):
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "metagrad.rl" in b)
    assert "for it in range(10):" in block

    def run(code: str) -> list[float]:
        exec(compile(code, "README.md", "exec"), {})
        line = capsys.readouterr().out.strip()
        return [float(v) for v in line.split(":")[1].strip(" []").split(",")]

    means = run(block)
    untrained = run(block.replace("for it in range(10):", "for it in range(0):"))  # the same test, no meta-training
    assert len(means) == 3 and means[1] > means[0]  # one step of adaptation helps after meta-training
    assert means[1] > untrained[1] + 1.0, (means, untrained)  # and meta-training made that step worth more


def test_the_sgmrl_study_runs_its_codes_environments_and_policy(tmp_path):
    """SG-MRL Table 2's methods get the SG-MRL code's settings (what learns there) on its three families; MAML-TRPO
    keeps the MAML code's, and an explicit --set still wins."""
    from metagrad.reproduce.locomotion import SGMRL_CODE, SGMRL_ENVS, SGMRL_TABLE2, experiment
    from metagrad.reproduce.metarl import method_config

    exp = experiment("cheetah-dir")
    code = {**SGMRL_CODE, "frame_skip": 5}  # maml_zoo's half-cheetah steps 5 x 0.01 s; the family's own is rllab's 1
    for method, expected in (("maml-vpg", code), ("sgmrl", code),
                             ("maml-trpo", {"frame_skip": 0, "observation": "auto", "action_scale": 1.0,
                                            "activation": "relu", "eval_lr": (0.1, 0.05)})):
        cfg = method_config(method, False, 1, None, {}, exp.settings(method))
        assert {k: getattr(cfg, k) for k in expected} == expected, method
    mine = method_config("sgmrl", False, 1, None, {"activation": "relu"}, exp.settings("sgmrl"))
    assert mine.activation == "relu" and mine.action_scale == 0.1
    assert set(experiment("ant-dir").method_base) == {"oracle"}  # the SG-MRL code's: for Table 2's families only
    assert SGMRL_ENVS.keys() == SGMRL_TABLE2.keys()  # the SG-MRL settings for exactly Table 2's families
    for env in ("cheetah-rand-vel", "swimmer-rand-vel"):  # maml_zoo's as they are: their own frame skip (5, 4)
        cfg = method_config("maml-vpg", False, 1, None, {}, experiment(env).settings("maml-vpg"))
        assert cfg.frame_skip == 0 and cfg.activation == "tanh" and cfg.action_scale == 0.1
    # through the command: the stored config of a one-iteration run has them
    assert main(["reproduce", "locomotion", "--env", "cheetah-dir", "--algo", "maml-vpg", "--iterations", "1",
                 "--eval-tasks", "2", "--out", str(tmp_path), "--no-progress", "--set", "hidden=8", "--set",
                 "meta_batch_size=2", "--set", "episodes=2", "--set", "horizon=10", "--set", "eval_episodes=2",
                 "--set", "compile=false"]) == 0
    stored = json.loads((tmp_path / "results.json").read_text())["methods"]["maml-vpg"]["config"]
    assert {k: stored[k] for k in code} == {k: list(v) if isinstance(v, tuple) else v for k, v in code.items()}


def test_locomotion_compiles_by_default():
    """`reproduce locomotion` takes its outer steps through torch.compile unless told otherwise (3x faster TRPO
    updates on half-cheetah, docs/speed.md); navigation does not (its compilation outlasts short runs)."""
    from metagrad.reproduce.locomotion import ENVS, experiment
    from metagrad.reproduce.metarl import method_config
    from metagrad.reproduce.navigation import NAVIGATION

    for env in ENVS:
        for method in ("maml-trpo", "maml-vpg", "oracle"):
            assert method_config(method, False, 1, None, {}, experiment(env).settings(method)).compile, (env, method)
    assert not method_config("maml-trpo", False, 1, None, {"compile": "false"},
                             experiment("cheetah-dir").settings("maml-trpo")).compile
    assert not method_config("maml-trpo", False, 1, None, {}, NAVIGATION.settings("maml-trpo")).compile


def test_the_locomotion_oracle_is_not_fine_tuned():
    """MAML Figure 5 draws the oracle (goal as input) as a constant line: its test steps are of size 0, as on 2D
    navigation, while the other methods keep the experiment's step sizes (or tune their own)."""
    from metagrad.reproduce.locomotion import experiment
    from metagrad.reproduce.metarl import method_config
    from metagrad.reproduce.navigation import NAVIGATION

    for exp in (experiment("cheetah-vel"), experiment("cheetah-dir"), experiment("ant-vel"), NAVIGATION):
        assert method_config("oracle", False, 1, None, {}, exp.settings("oracle")).eval_lr == (0.0,), exp.name
    maml = method_config("maml-trpo", False, 1, None, {}, experiment("cheetah-vel").settings("maml-trpo"))
    assert maml.eval_lr == (0.1, 0.05)


def test_tuned_test_steps_take_eval_later_after_the_first(monkeypatch):
    """With tune_eval_lr the steps after the first are ``eval_later`` times the tuned one, in the tuning too (the MAML
    code's ant direction test: 0.01)."""
    from metagrad.rl import evaluate

    later_seen = []

    def tune(learner, grid, steps, episodes, seed, later=0.5):
        later_seen.append(later)
        return 0.2

    monkeypatch.setattr(evaluate, "tune_step_size", tune)
    monkeypatch.setattr(evaluate, "return_curve", lambda learner, tasks, steps, episodes, lr, seed, keep: (lr, 0, 0))
    for later in (0.5, 0.01):
        lr, _, _ = evaluate.evaluate(SimpleNamespace(env=None), RLConfig(tune_eval_lr=True, eval_later=later))
        assert lr == [0.2, 0.2 * later] and later_seen[-1] == later
    with pytest.raises(ConfigError, match="eval_later"):
        RLConfig(eval_later=0.0).validate()


def test_figure5_legend_names_the_source_of_the_numbers_beside(tmp_path, monkeypatch):
    """The figure's open markers were all labelled "(paper)", the MAML code's stored returns too."""
    from metagrad.reproduce.locomotion import experiment, figures
    from metagrad.rl import plots

    legends = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: legends.append(
        [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]) or path)
    curve = {"mean": [1.0] * 4, "ci95": [0.5] * 4}
    methods = {m: {"label": m.upper(), "curve": curve, "config": {}} for m in ("maml-trpo", "context")}
    for env in ("cheetah-dir", "ant-vel"):
        figures({"experiment": f"locomotion-{env}", "paper": experiment(env).paper, "methods": methods}, tmp_path)
    assert legends == [["MAML-TRPO", "MAML-TRPO (paper)", "CONTEXT", "CONTEXT (paper)"],
                       ["MAML-TRPO", "MAML-TRPO (MAML code)", "CONTEXT"]]


def test_figure5_numbers_stand_beside_every_method_on_every_family():
    """MAML Figure 5's numbers (the MAML code's stored test returns) print beside MAML, pretrained, random and the
    oracle on each family, one row per method, as the MAML code's; half-cheetah direction's MAML and context rows are
    Table 5's, the paper's."""
    from metagrad.reproduce.locomotion import experiment, format_table

    def result(label: str) -> dict:
        curve = {"mean": [1.0] * 4, "ci95": [0.5] * 4, "tasks": 2, "episodes": 2, "lr": [0.1]}
        return {"label": label, "iterations": 3, "config": {}, "curve": curve, "seconds_per_iteration": 0}

    methods = {m: result(m.upper()) for m in ("maml-trpo", "pretrained", "oracle", "random")}
    for env in ("cheetah-dir", "cheetah-vel", "ant-vel", "ant-dir"):
        table = format_table({"experiment": f"locomotion-{env}", "paper": experiment(env).paper,
                              "methods": methods}).splitlines()
        rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in table
                if "(paper)" in line or "(MAML code)" in line}
        in_paper = {"maml-trpo"} if env == "cheetah-dir" else set()
        assert rows.keys() == {f"{m.upper()} ({'paper' if m in in_paper else 'MAML code'})" for m in methods}, env
        assert len(set(rows["ORACLE (MAML code)"])) == 1, env  # a constant line
    cheetah_dir = format_table({"experiment": "locomotion-cheetah-dir", "paper": experiment("cheetah-dir").paper,
                                "methods": {"maml-trpo": result("MAML-TRPO"), "context": result("CONTEXT")}})
    assert "| MAML-TRPO (paper) | | -50.69 | 293.19 | 313.48 | 315.65 |" in cheetah_dir
    assert "| CONTEXT (paper) | | -40.49 | -44.08 | -38.27 | -42.5 |" in cheetah_dir
    assert rows["MAML-TRPO (MAML code)"] == ["8.66", "499.15", "500.68", "499.11"]  # ant direction, as the code gives


def test_table2_numbers_stand_beside_the_step_count_a_run_trained_with():
    """The SG-MRL paper's Table 2 row for n inner steps is printed under k = n, and only for runs trained with n."""
    from metagrad.reproduce.locomotion import SGMRL_TABLE2, format_table

    def result(steps: int) -> dict:
        curve = {"mean": [1.0] * 4, "ci95": [0.5] * 4, "tasks": 2, "episodes": 2, "lr": [0.1]}
        return {"label": "MAML (VPG)", "iterations": 3, "config": {"inner_steps": steps}, "curve": curve,
                "seconds_per_iteration": 0}

    paper = {"maml": {}, "sgmrl_table2": SGMRL_TABLE2["swimmer-rand-vel"]}
    for steps, value in ((1, "104.53"), (2, "108.47"), (3, "90.6")):
        table = format_table({"experiment": "locomotion-swimmer-rand-vel", "paper": paper,
                              "methods": {"maml-vpg": result(steps)}})
        row = next(line for line in table.splitlines() if "(paper)" in line).split("|")[3:-1]
        assert [c.strip() for c in row] == ["-"] * steps + [value] + ["-"] * (3 - steps)


def test_a_run_whose_trpo_steps_are_all_rejected_says_so_once(tmp_path, capsys):
    """A KL bound far too large: every line search fails and the policy never moves; the trainer says so."""
    cfg = _tiny(iterations=12, max_kl=1e30)
    learner, opt = build(cfg)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    RLTrainer(learner, opt, cfg, tmp_path / "run", progress=False).fit()
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in before.items())
    err = capsys.readouterr().err
    assert err.count("TRPO rejected the outer step in 10 iterations in a row (iteration 10)") == 1
    assert "check max_kl 1e+30" in err
    short = cfg.replace(iterations=6)  # stopped at 6 and resumed: the count goes on from the checkpoint
    learner, opt = build(short)
    RLTrainer(learner, opt, short, tmp_path / "resumed", progress=False).fit()
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "resumed", progress=False).fit(resume=True)
    assert capsys.readouterr().err.count("in 10 iterations in a row (iteration 10)") == 1


def test_a_run_of_a_tuned_preset_evaluates_at_the_step_given_and_compares_on_returns(tmp_path, capsys):
    """``--eval-lr`` on a preset that tunes its test step (pretrained) is the step tested (it was ignored);
    ``metagrad compare`` of two meta-RL evaluations takes their returns by default; a damaged ``last`` of a meta-RL
    run does not send the user to copy ``best`` (the policy alone) over it."""
    run = tmp_path / "run"
    tiny = ["--meta-batch-size", "4", "--episodes", "4", "--horizon", "20", "--hidden", "16,16", "--no-progress"]
    assert main(["train", "--config", "pretrained-navigation", "--iterations", "2", "--out", str(run), *tiny]) == 0
    for lr, name in ((0.3, "a.json"), (0.05, "b.json")):
        assert main(["eval", str(run), "--eval-lr", str(lr), "--eval-tasks", "4", "--eval-episodes", "4",
                     "--output", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name).read_text())["curves"]["4"]["lr"] == [lr]
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["metric"] == "return"
    (run / "last.safetensors").write_bytes(b"damaged")
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds the policy alone" in err and "cp " not in err


def test_a_reproduction_refuses_another_environment_under_its_papers_numbers():
    """`locomotion --env cheetah-dir --set env=cheetah-vel` trained half-cheetah velocity and printed the direction
    task's paper row beside it."""
    from metagrad.reproduce import locomotion as loco
    from metagrad.reproduce.metarl import method_config

    exp = loco.experiment("cheetah-dir")
    with pytest.raises(ConfigError, match="--set env=cheetah-vel would train another environment than 'cheetah-dir'"):
        method_config("maml-trpo", False, 1, None, {"env": "cheetah-vel"}, exp.settings("maml-trpo"))
    with pytest.raises(ConfigError, match="than 'navigation2d'"):
        method_config("maml-trpo", False, 1, None, {"env": "cheetah-dir"})
    assert method_config("maml-trpo", False, 1, None, {"env": "cheetah-dir"}, exp.settings("maml-trpo")).env == \
        "cheetah-dir"


def test_a_results_file_keeps_one_experiment_and_tables_and_figures_take_uneven_methods(tmp_path, capsys):
    """Another experiment's results.json is refused before any training (it was relabelled and mixed in after the
    run); a budget given by --set is refused (the methods' --iterations overrode it, and random init trained);
    the navigation table pads a method evaluated over fewer steps; a method's paths.pt written before its result
    is not drawn; no two methods of one figure share a colour."""
    from metagrad.reproduce.navigation import format_table
    from metagrad.rl.plots import colors_for, navigation_figures

    out = tmp_path / "cheetah"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"experiment": "locomotion-cheetah-vel", "methods": {}}))
    assert main(["reproduce", "navigation", "--algo", "random", "--out", str(out)]) == 2
    assert "holds experiment 'locomotion-cheetah-vel', not 'navigation'" in capsys.readouterr().err
    assert main(["reproduce", "navigation", "--algo", "random", "--set", "iterations=5", "--out",
                 str(tmp_path / "n")]) == 2
    assert "--set iterations=5: give the budget as --iterations" in capsys.readouterr().err
    assert main(["reproduce", "navigation", "--algo", "random", "--iterations", "5", "--out", str(tmp_path / "n")]) == 2
    assert "--iterations: random init trains nothing" in capsys.readouterr().err
    assert main(["reproduce", "navigation", "--redraw", "--compile", "--out", str(tmp_path / "n")]) == 2
    assert "--redraw draws the stored results again and trains nothing: --compile" in capsys.readouterr().err
    from metagrad.reproduce.metarl import method_configs
    from metagrad.reproduce.navigation import NAVIGATION

    tuned = [c.tune_eval_lr for c in method_configs(NAVIGATION, ["pretrained", "random"])]
    given = method_configs(NAVIGATION, ["pretrained", "random"], overrides={"eval_lr": "0.3"})
    assert tuned == [True, True] and [(c.eval_lr, c.tune_eval_lr) for c in given] == [((0.3,), False)] * 2

    def result(label, steps):
        curve = {"mean": [-10.0] * steps, "ci95": [1.0] * steps, "tasks": 2, "episodes": 2, "lr": [0.1]}
        return {"label": label, "iterations": 3, "best_iteration": 3, "config": {}, "curve": curve,
                "seconds_per_iteration": 1.0, "env_steps_per_second": 10}

    results = {"experiment": "navigation", "paper": {}, "methods": {"maml-trpo": result("MAML", 4),
                                                                    "random": result("random init", 2)}}
    table = format_table(results)
    assert "| random init | 3 | -10.00 ± 1.00 | -10.00 ± 1.00 | - | - |" in table
    nav = tmp_path / "nav"
    (nav / "sgmrl").mkdir(parents=True)
    (nav / "sgmrl" / "paths.pt").write_bytes(b"being written")
    assert navigation_figures(results, nav) == [nav / "return_curves.png"]  # no metrics.jsonl: no training curves
    assert not (nav / "trajectories.png").exists()
    (nav / "maml-trpo").mkdir()  # a whole paths.pt of a method with its result is drawn
    torch.save({"paths": [torch.zeros(1, 4, 2), torch.ones(1, 4, 2)], "goals": torch.ones(1, 2)},
               nav / "maml-trpo" / "paths.pt")
    assert navigation_figures(results, nav) == [nav / "return_curves.png", nav / "trajectories.png"]
    assert (nav / "trajectories.png").read_bytes()[:8] == PNG
    colors = colors_for(["maml-trpo", "promp", "trpo-maml", "pretrained", "drs-ppo", "drs-trpo"])
    assert len(set(colors.values())) == 6 and colors["maml-trpo"] == "tab:green"


def test_a_step_budget_raised_on_resume_writes_the_snapshot_its_last_iteration_passed(tmp_path):
    """The session that stopped at its budget passed a snapshot multiple beyond it (skipped then: past the budget);
    resumed with a larger budget, that snapshot is written from the restored state, as the uninterrupted run has it;
    the budgets and snapshot spacing shape no iterate, so the best checkpoint stays."""
    from metagrad import checkpoint as ckpt
    from metagrad.cli import main as cli

    args = ["train", "--config", "maml-trpo-navigation", "--iterations", "500", "--meta-batch-size", "2",
            "--episodes", "2", "--horizon", "10", "--no-progress", "--checkpoint-every", "5", "--snapshot-steps", "515"]
    assert cli([*args, "--step-budget", "2000", "--out", str(tmp_path / "straight")]) == 0
    assert cli([*args, "--step-budget", "1000", "--out", str(tmp_path / "raised")]) == 0
    assert not ckpt.exists(tmp_path / "raised" / "snapshot-002")
    assert cli([*args, "--step-budget", "2000", "--out", str(tmp_path / "raised"), "--resume"]) == 0
    for j in (1, 2, 3):
        a, info_a = ckpt.load(tmp_path / "straight" / f"snapshot-00{j}")
        b, info_b = ckpt.load(tmp_path / "raised" / f"snapshot-00{j}")
        assert info_a["iteration"] == info_b["iteration"]
        assert all(torch.equal(a["learner"][k], b["learner"][k]) for k in a["learner"])
    lines = (tmp_path / "raised" / "metrics.jsonl").read_text()
    assert "best_removed" not in lines


def test_resuming_a_run_finished_by_its_step_budget_trains_nothing_and_says_so(tmp_path, capsys):
    """Its files stay as trained (a new session record in segments.jsonl, and "trained N iterations", said
    otherwise); a larger --step-budget continues it."""
    run = tmp_path / "run"
    args = ["train", "--config", "maml-trpo-navigation", "--iterations", "500", "--meta-batch-size", "2",
            "--episodes", "2", "--horizon", "10", "--no-progress", "--step-budget", "100", "--out", str(run)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "at 160 environment steps, past --step-budget 100: nothing trained (its files unchanged); give a " \
        "larger --step-budget to continue it" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before


def test_a_finished_meta_rl_run_with_a_linear_schedule_says_its_budget_is_fixed(tmp_path, capsys):
    """As a supervised one: it was told to give a larger --iterations, which the resume then refused unexplained."""
    run = tmp_path / "run"
    args = ["train", "--config", "maml-vpg-navigation", "--set", "outer_lr_schedule=linear", "--iterations", "2",
            "--meta-batch-size", "2", "--episodes", "2", "--horizon", "10", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "it is finished (outer_lr_schedule 'linear' anneals" in out and "give a larger" not in out
    assert main(["train", "--out", str(run), "--resume", "--iterations", "4", "--no-progress"]) == 2
    assert "iterations 2 in the run, 4 given (outer_lr_schedule 'linear'" in capsys.readouterr().err


@pytest.mark.parametrize(("outer", "change", "named"), [
    ("vpg", {"outer_lr": 1e30, "outer_optimizer": "sgd"}, r"outer step size \(outer_lr, now 1e\+30\)"),
    ("trpo", {"inner_lr": (1e30,)}, r"inner step size \(inner_lr 1e\+30\)")])
def test_a_diverged_meta_rl_run_names_its_step_sizes_and_the_checkpoint_to_resume(tmp_path, outer, change, named):
    """A policy whose actions overflow stops as a diverged run (TrainingDiverged, not a config error): the step sizes
    with their values, and the finite checkpoint to continue from with a smaller step."""
    from metagrad.errors import TrainingDiverged
    from metagrad.experiment import make_trainer

    cfg = _tiny(outer=outer, iterations=3, **change)
    expected = rf"the policy has diverged at iteration \d; lower .*{named}.*(last checkpoint|nothing was learned)"
    with pytest.raises(TrainingDiverged, match=expected):
        make_trainer(cfg, tmp_path / "run", progress=False).fit()


def test_a_resumed_diverged_run_names_the_step_size_it_now_uses_and_a_bad_start_is_not_blamed_on_steps(tmp_path):
    """Resumed with a lowered outer_lr, a run that diverges again named the checkpoint's optimizer's old step size
    (1e+30), not the one it was given; a policy whose very first actions overflow (init_std) was told to lower an
    outer step size, though none was taken."""
    from metagrad.errors import TrainingDiverged
    from metagrad.experiment import make_trainer

    cfg = _tiny(outer="vpg", outer_optimizer="sgd", outer_lr=1e30, iterations=3)
    with pytest.raises(TrainingDiverged):
        make_trainer(cfg, tmp_path / "run", progress=False).fit()
    with pytest.raises(TrainingDiverged, match=r"outer_lr, now 0\.5\)"):  # its checkpoint's values are too far out
        make_trainer(cfg.replace(outer_lr=0.5), tmp_path / "run", progress=False).fit(resume=True)
    with pytest.raises(TrainingDiverged, match=r"at iteration 1; lower the inner step size \(inner_lr 0\.1\), or, if "
                                               r"the starting policy's own actions overflow: check init_std 1e\+300"):
        make_trainer(_tiny(init_std=1e300, iterations=2), tmp_path / "start", progress=False).fit()
    with pytest.raises(TrainingDiverged, match=r"at iteration 1; no step was taken yet, so the starting policy's own "
                                               r"actions overflow: check init_std 1e\+300"):  # DRS: no inner step
        make_trainer(_tiny(init_std=1e300, iterations=2, algo="joint", outer="vpg"), tmp_path / "joint",
                     progress=False).fit()


def test_a_step_that_overflows_the_parameters_at_the_last_iteration_is_a_divergence_not_done(tmp_path):
    """PPO with an absurd outer step: the last iteration's parameters overflow with finite metrics; the run said
    "done" (exit 0) with its last checkpoint at the start, and eval then tested the starting point."""
    from metagrad.errors import TrainingDiverged
    from metagrad.experiment import make_trainer

    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"the parameters after iteration 1 hold NaN or infinite values; lower "
                                               r"the outer step size \(outer_lr, now 1e\+30\).*nothing was learned"):
        make_trainer(_tiny(outer="ppo", outer_lr=1e30, iterations=1), run, progress=False).fit()
    last = json.loads((run / "segments.jsonl").read_text().splitlines()[-1])
    assert last["stopped"] == "diverged at iteration 1" and last["end"] == 0
    with pytest.raises(TrainingDiverged, match=r"outer_lr, now 1e\+30\)"):  # the step it took, not the next (0)
        make_trainer(_tiny(outer="ppo", outer_lr=1e30, iterations=1, outer_lr_schedule="linear"), tmp_path / "linear",
                     progress=False).fit()


def test_a_batch_score_baseline_needs_other_tasks():
    """score_baseline batch with one task per meta-batch was accepted and ran as none (eq. 13, which the docs
    found to diverge on navigation) without a word."""
    cfg = RLConfig().replace(algo="sgmrl", outer="vpg", score_baseline="batch", normalize_outer=False)
    cfg.replace(meta_batch_size=2).validate()
    with pytest.raises(ConfigError, match="meta_batch_size 1 has none; give meta_batch_size 2 or more"):
        cfg.replace(meta_batch_size=1).validate()


def test_an_environment_turning_nan_stops_as_a_diverged_run_naming_the_environment(tmp_path):
    """Non-finite rewards from the environment: its own error, still a stopped diverged run (the session recorded,
    the last finite checkpoint named); TRPO's remedy once raised IndexError on its empty outer step sizes."""
    from metagrad.errors import EnvironmentFault
    from metagrad.experiment import make_trainer

    run = tmp_path / "run"
    trainer = make_trainer(_tiny(outer="trpo", iterations=3), run, progress=False)
    env, calls = trainer.learner.env, []
    step = env.step

    def nan_later(actions):  # an iteration samples 2 batches of 10 steps: NaN from the second iteration on
        calls.append(1)
        obs, reward, done = step(actions)
        return obs, reward * float("nan") if len(calls) > 20 else reward, done

    env.step = nan_later
    with pytest.raises(EnvironmentFault, match=r"non-finite reward .* check its reward function \(iteration 2\); "
                                               r"if only large actions make it fail, lower the KL bound \(max_kl"):
        trainer.fit()
    last = json.loads((run / "segments.jsonl").read_text().splitlines()[-1])
    assert last["stopped"] == "diverged at iteration 2" and last["end"] == 1


def test_return_and_training_figures_keep_their_legends_off_the_data_and_say_what_ran(tmp_path, monkeypatch):
    """Navigation's symlog axis ran to +1 above returns that are all negative; the legends sat on the curves; every
    training_curves.png had the same title, without the task or the methods."""
    from metagrad.rl import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig.axes[0]) or path)
    curve = {"mean": [-40.0, -12.0, -4.5, -2.7], "ci95": [1.4, 0.7, 0.4, 0.3]}
    methods = {"maml-trpo": {"label": "MAML-TRPO", "curve": curve},
               "oracle": {"label": "oracle", "curve": {"mean": [-0.5] * 4, "ci95": [0.03] * 4}}}
    plots.return_curves(methods, tmp_path / "r.png", paper={"maml-trpo": [-40.4, -11.7, -3.3, None]})
    ax = drawn[-1]
    assert ax.get_yscale() == "symlog" and -100 < ax.get_ylim()[0] < -41.4 and -0.47 < ax.get_ylim()[1] < 0
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # right of the axes
    for m in methods:
        (tmp_path / m).mkdir()
        (tmp_path / m / "metrics.jsonl").write_text('{"iteration": 1, "return_pre": -9.0, "return_post": -5.0}\n')
    plots.navigation_figures({"methods": methods}, tmp_path)
    assert drawn[-1].get_title() == ("point robot, 2D navigation: MAML-TRPO, oracle\n"
                                     "meta-training (dashed: before adaptation)")


def test_symlog_returns_within_one_of_zero_get_ticks_of_their_own(tmp_path, monkeypatch):
    """The symlog axis's linear range was (-1, 1) always: an oracle at -0.5 had no tick between -1 and the top."""
    from metagrad.rl import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig.axes[0]) or path)
    methods = {"maml-trpo": {"label": "MAML", "curve": {"mean": [-40.0, -12.0, -4.5], "ci95": [1.4, 0.7, 0.4]}},
               "oracle": {"label": "oracle", "curve": {"mean": [-0.5] * 3, "ci95": [0.03] * 3}}}
    plots.return_curves(methods, tmp_path / "r.png")
    ax = drawn[-1]
    low, high = ax.get_ylim()
    ticks = [t for t in ax.yaxis.get_major_locator()() if low <= t <= high]
    assert -0.5 in ticks and {-1, -2, -5, -10, -20} <= set(ticks)
    assert plots.linear_threshold([-40.0, -0.47]) == 0.1 and plots.linear_threshold([-40.0, -2.0]) == 1.0
    assert plots.linear_threshold([-400.0, -1e-6]) == 0.1  # no more than three decades under the largest


def test_return_curves_draw_a_diverged_tasks_nan_as_a_gap(tmp_path, monkeypatch):
    """The symlog limits taken from the data met a NaN or an infinite interval and matplotlib refused them."""
    from metagrad.rl import plots

    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig.axes[0]) or path)
    methods = {"maml-trpo": {"label": "MAML", "curve": {"mean": [-40.0, -10.0, -5.0], "ci95": [float("nan"), 1.0,
                                                                                             float("inf")]}},
               "random": {"label": "random", "curve": {"mean": [-0.5, -0.4, -0.3], "ci95": [0.1, 0.1, 0.1]}}}
    plots.return_curves(methods, tmp_path / "curves.png")
    ax = drawn[-1]
    (maml, random), (maml_band, random_band) = ax.lines, ax.collections
    assert maml.get_ydata().tolist() == [-40.0, -10.0, -5.0] and random.get_ydata().tolist() == [-0.5, -0.4, -0.3]
    # the band leaves out the steps whose interval is NaN or inf (a gap), and spans every step of the other method
    maml_at = np.concatenate([q.vertices for q in maml_band.get_paths()])
    random_at = np.concatenate([q.vertices for q in random_band.get_paths()])
    assert np.isfinite(maml_at).all() and set(maml_at[:, 0]) == {1.0} and set(random_at[:, 0]) == {0.0, 1.0, 2.0}
    assert maml_at[:, 1].min() == -11.0 and maml_at[:, 1].max() == -9.0
    # finite limits around every finite end of the bands
    low, high = ax.get_ylim()
    assert ax.get_yscale() == "symlog" and np.isfinite([low, high]).all()
    assert low < -40.0 and -0.2 < high < 0  # the first step's mean (-40) within, though its interval is NaN


def test_navigation_figure_marks_the_sgmrl_papers_table1_beside_its_methods(tmp_path, monkeypatch):
    """The SG-MRL paper's Table 1 (return after one step), stored in results.json, was left off the figure."""
    from metagrad.rl import plots

    legends = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: legends.append(
        [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]) or path)
    curve = {"mean": [-37.0, -14.0], "ci95": [1.0, 1.0]}
    results = {"methods": {"sgmrl": {"label": "SG-MRL", "curve": curve}},
               "paper": {"maml_table4": {"maml-trpo": [-40.4, -11.7]}, "sgmrl_table1": {"sgmrl": -16.9}}}
    plots.navigation_figures(results, tmp_path)
    assert legends[0] == ["SG-MRL", "SG-MRL (paper)"]
