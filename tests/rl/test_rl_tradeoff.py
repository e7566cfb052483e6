"""The trade-off paper's meta-RL study: every environment step is counted, runs on the same budget stop within one
meta-batch of it, snapshots are resumable and reproducible, and ``metagrad tradeoff rl`` writes its results."""

from __future__ import annotations

import json
from unittest.mock import ANY

import numpy as np
import pytest
import torch

from metagrad import checkpoint
from metagrad.analysis.stats import welch_probability
from metagrad.cli import main
from metagrad.errors import ConfigError
from metagrad.rl import Navigation2D
from metagrad.rl.config import preset
from metagrad.rl.train import RLTrainer, build


class CountingNavigation(Navigation2D):
    """Navigation that counts the transitions of episodes still running (what a simulator would compute)."""

    def reset(self, tasks, episodes):
        self.running = torch.ones(tasks.shape[0], episodes, dtype=torch.bool)
        return super().reset(tasks, episodes)

    def step(self, actions):
        self.count = getattr(self, "count", 0) + int(self.running.sum())
        obs, reward, done = super().step(actions)
        self.running &= ~done
        return obs, reward, done


def _cfg(method: str, **kw):
    settings = dict(hidden=(8,), meta_batch_size=3, episodes=2, horizon=20, iterations=10**9, tune_eval_lr=False)
    return preset(method).replace(**{**settings, **kw})


@pytest.mark.parametrize("method", ["drs-ppo", "promp", "drs-trpo", "trpo-maml"])
def test_every_environment_step_is_counted_and_the_budget_stops_the_run(method):
    cfg = _cfg(method, step_budget=500)
    learner, opt = build(cfg)
    learner.env = CountingNavigation(horizon=20, goal_low=0.0, goal_high=0.05)  # goals nearby: episodes end early
    result = RLTrainer(learner, opt, cfg, progress=False).fit()
    assert result.env_steps == learner.env.count
    per_iteration = 3 * 2 * 20 * (1 + learner.inner_steps)
    assert 500 <= result.env_steps < 500 + per_iteration
    assert result.env_steps < result.iteration * per_iteration  # some episodes reached the goal: fewer steps


def test_drs_and_the_meta_learner_stop_within_one_meta_batch_of_each_other():
    steps = {}
    for method in ("drs-ppo", "promp"):
        cfg = _cfg(method, step_budget=1000)
        learner, opt = build(cfg)
        steps[method] = RLTrainer(learner, opt, cfg, progress=False).fit()
    drs, meta = steps["drs-ppo"], steps["promp"]
    assert abs(drs.env_steps - meta.env_steps) <= 3 * 2 * 20 * 2
    assert drs.iteration > meta.iteration  # DRS samples once per iteration, ProMP twice: it gets more iterations


def test_snapshots_at_evenly_spaced_budgets_resume_to_the_same_parameters(tmp_path):
    cfg = _cfg("promp", step_budget=1200, snapshot_steps=400, checkpoint_every=1)
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "straight", progress=False).fit()
    cut = cfg.replace(iterations=3)  # interrupted after 3 iterations, then resumed with the full budget
    learner, opt = build(cut)
    RLTrainer(learner, opt, cut, tmp_path / "resumed", progress=False).fit()
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "resumed", progress=False).fit(resume=True)
    for j in (1, 2, 3):
        a, info_a = checkpoint.load(tmp_path / "straight" / f"snapshot-{j:03d}")
        b, info_b = checkpoint.load(tmp_path / "resumed" / f"snapshot-{j:03d}")
        assert info_a["env_steps"] == info_b["env_steps"] >= 400 * j
        for k, v in a["learner"].items():
            assert torch.equal(v, b["learner"][k]), (j, k)
    assert not checkpoint.exists(tmp_path / "straight" / "snapshot-004")
    out = tmp_path / "snapshot-002.json"  # a snapshot is evaluated as any checkpoint
    assert main(["eval", str(tmp_path / "straight"), "--checkpoint", "snapshot-002", "--eval-tasks", "2",
                 "--output", str(out), "--no-progress"]) == 0
    evaluated = json.loads(out.read_text())
    info = checkpoint.read_info(tmp_path / "straight" / "snapshot-002")
    assert (evaluated["checkpoint"], evaluated["iteration"]) == ("snapshot-002", info["iteration"])
    assert info["iteration"] < checkpoint.read_info(tmp_path / "straight" / "last")["iteration"]


def test_tradeoff_rl_command_writes_results_resumes_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["tradeoff", "rl", "--env", "navigation2d", "--budget", "6000", "--seeds", "2", "--checkpoints", "2",
            "--meta-batch-size", "3", "--episodes", "4", "--test-tasks", "4", "--test-episodes", "3",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "tradeoff_rl.json").read_text())
    assert results["labels"] == ["DRS+PPO", "ProMP"] and results["checkpoint_steps"] == [3000, 6000]
    drs, meta = (np.asarray(results["returns"][m]) for m in ("drs-ppo", "promp"))
    assert drs.shape == meta.shape == (2, 2, 6)  # seeds x snapshots x (0..5 test updates)
    assert np.allclose(results["p_drs_better"], welch_probability(drs, meta, axis=0))
    assert all(3000 * (j + 1) <= s for steps in results["env_steps"].values() for run in steps
               for j, s in enumerate(run))
    lr = json.loads((out / "drs-ppo" / "seed-0" / "step_size.json").read_text())["lr"]
    assert lr > 0 and not (out / "promp" / "seed-0" / "step_size.json").exists()
    for png in ("welch.png", "returns.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "P(DRS better)" in printed and "| 6,000 |" in printed
    mtime = (out / "promp" / "seed-1" / "eval-002.json").stat().st_mtime_ns
    assert main(args) == 0  # resumes: nothing is retrained or re-evaluated, the same results
    assert (out / "promp" / "seed-1" / "eval-002.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "tradeoff_rl.json").read_text())["returns"] == results["returns"]
    # damaged from outside: a kept evaluation or step size is made again (the same), the study's settings refused
    evaluation, step = out / "promp" / "seed-1" / "eval-002.json", out / "drs-ppo" / "seed-0" / "step_size.json"
    kept = evaluation.read_text(), json.loads(step.read_text())
    evaluation.write_text(kept[0][:40])
    step.write_text(json.dumps({"lr": "abc", "grid": 3}))
    assert main(args) == 0
    assert json.loads(evaluation.read_text()) == {**json.loads(kept[0]), "seconds": ANY}
    assert json.loads(step.read_text()) == kept[1]
    assert json.loads((out / "tradeoff_rl.json").read_text())["returns"] == results["returns"]
    study = (out / "study.json").read_text()
    (out / "study.json").write_text(study[:50])
    capsys.readouterr()
    assert main(args) == 2
    assert f"{out / 'study.json'} is damaged (not JSON" in capsys.readouterr().err
    (out / "study.json").write_text(study)
    capsys.readouterr()
    assert main([*args[:-3], "--seeds", "3", "--test-step", "tuned", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other settings (seeds)" in err and "tested again" not in err  # refused before a re-test is announced
    assert main([*args[:-3], "--budget", "8000", "--checkpoints", "3", "--out", str(out)]) == 2  # other snapshots
    assert "snapshots 3,000 steps apart" in capsys.readouterr().err
    # --test-step tuned: each method's step chosen on validation tasks; the runs are tested again, not retrained
    last = (out / "promp" / "seed-1" / "last.safetensors").read_bytes()
    assert main([*args, "--test-step", "tuned"]) == 0
    assert "tested again with test_step tuned (was drs-tuned)" in capsys.readouterr().err
    meta_lr = json.loads((out / "promp" / "seed-0" / "step_size.json").read_text())["lr"]
    tested = json.loads((out / "promp" / "seed-0" / "eval-002.json").read_text())
    assert tested["lr"] == meta_lr and (out / "promp" / "seed-1" / "last.safetensors").read_bytes() == last
    again = json.loads((out / "tradeoff_rl.json").read_text())
    assert again["returns"]["drs-ppo"] == results["returns"]["drs-ppo"]  # DRS tuned either way
    assert (again["returns"]["promp"] == results["returns"]["promp"]) == (meta_lr == 0.1)
    assert main([*args, "--test-step", "fixed"]) == 0  # both at 0.1: DRS tested again unless it chose 0.1
    assert json.loads((out / "drs-ppo" / "seed-0" / "eval-001.json").read_text())["lr"] == 0.1
    # --lr-grid: DRS's step chosen again from the new grid, at the same snapshot; the runs are not retrained (a
    # step_size.json written before it recorded its snapshot, as 35 of the kept ones, chooses at the last)
    older = out / "drs-ppo" / "seed-1" / "step_size.json"
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "snapshot"}))
    assert main([*args, "--lr-grid", "0.3"]) == 0
    err = capsys.readouterr().err  # said per run, where the step is chosen again
    assert f"{out / 'drs-ppo' / 'seed-0'}: step size chosen again from lr_grid [0.3]: 0.3 (was " in err
    assert err.count("step size chosen again") == 2  # DRS's two seeds: the meta-learner is not tuned
    kept = json.loads((out / "drs-ppo" / "seed-0" / "step_size.json").read_text())
    assert (kept["lr"], kept["grid"], kept["snapshot"]) == (0.3, [0.3], 2)
    assert json.loads((out / "drs-ppo" / "seed-0" / "eval-001.json").read_text())["lr"] == 0.3
    assert (out / "promp" / "seed-1" / "last.safetensors").read_bytes() == last
    assert main([*args, "--lr-grid", "0.3,-1"]) == 2
    assert "lr_grid 0.3,-1 (--lr-grid) must hold positive step sizes" in capsys.readouterr().err
    # a damaged snapshot to test again: named with its fault, and how to train that run anew (no --checkpoint here)
    snapshot, run = out / "promp" / "seed-0" / "snapshot-001.safetensors", out / "promp" / "seed-0"
    snapshot.write_bytes(snapshot.read_bytes()[:-100])
    (run / "eval-001.json").unlink()
    assert main([*args, "--lr-grid", "0.3"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {snapshot} is damaged (the file is cut short" in err and "--checkpoint" not in err
    assert f"; delete {run} and run the command again to train this run anew (the other runs are kept)" in err
    # a damaged last of a finished run: the same advice, not metagrad train's (evaluate best, start a new run)
    damaged_last = out / "drs-ppo" / "seed-1" / "last.safetensors"
    data = bytearray(damaged_last.read_bytes())
    data[-7] ^= 0x10
    damaged_last.write_bytes(bytes(data))
    assert main([*args, "--lr-grid", "0.3"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {damaged_last} is damaged" in err and "--checkpoint" not in err
    assert f"; delete {damaged_last.parent} and run the command again to train this run anew" in err


def test_a_study_extends_to_a_larger_budget_at_the_same_snapshots(tmp_path, capsys):
    """A larger budget with the snapshot spacing kept continues the runs from their checkpoints: the snapshots taken
    so far and their evaluations stay as they were, and the extended runs equal runs trained to the larger budget
    in one go."""
    def args(out, budget, checkpoints):
        return ["tradeoff", "rl", "--env", "navigation2d", "--budget", str(budget), "--seeds", "2", "--checkpoints",
                str(checkpoints), "--meta-batch-size", "3", "--episodes", "4", "--test-tasks", "4",
                "--test-episodes", "3", "--out", str(out), "--no-progress"]

    assert main(args(tmp_path / "ext", 3000, 1)) == 0
    first = json.loads((tmp_path / "ext" / "tradeoff_rl.json").read_text())
    mtime = (tmp_path / "ext" / "promp" / "seed-1" / "eval-001.json").stat().st_mtime_ns
    assert main(args(tmp_path / "ext", 6000, 2)) == 0
    assert "extended from 3,000 to 6,000" in capsys.readouterr().err
    assert (tmp_path / "ext" / "promp" / "seed-1" / "eval-001.json").stat().st_mtime_ns == mtime
    assert main(args(tmp_path / "once", 6000, 2)) == 0
    extended, once = (json.loads((tmp_path / d / "tradeoff_rl.json").read_text()) for d in ("ext", "once"))
    assert extended["checkpoint_steps"] == once["checkpoint_steps"] == [3000, 6000]
    assert extended["env_steps"] == once["env_steps"]
    for seed in ("seed-0", "seed-1"):  # DRS's step size: chosen at snapshot 1 when extended, at 2 at once; the
        chosen = [json.loads((tmp_path / d / "drs-ppo" / seed / "step_size.json").read_text()) for d in ("ext", "once")]
        assert [c["snapshot"] for c in chosen] == [1, 2] and chosen[0]["lr"] == chosen[1]["lr"]  # same choice here
    for m in ("drs-ppo", "promp"):
        np.testing.assert_allclose(np.asarray(extended["returns"][m])[:, :1], np.asarray(first["returns"][m]))
        np.testing.assert_allclose(extended["returns"][m], once["returns"][m], rtol=1e-6)


def test_a_budget_extends_with_the_evaluation_settings_changed_but_not_with_the_runs():
    """``extends``: a larger budget at the same snapshot spacing continues a study even with another test step or
    grid (they change the evaluation alone: once they counted as other settings, and the extension was refused)."""
    from metagrad.tradeoff_rl import Study, extends

    before = Study(env="navigation2d", budget=3000, checkpoints=1, meta_batch_size=3, episodes=4).to_dict()
    now = Study(env="navigation2d", budget=6000, checkpoints=2, meta_batch_size=3, episodes=4, test_step="tuned",
                lr_grid=(0.3,)).to_dict()
    assert extends(before, now)
    assert not extends(before, {**now, "episodes": 5})


def test_promp_settings_are_its_codes_and_the_kept_studies_still_resume(tmp_path):
    """``--settings promp``: ProMP's normalize() (actions a tenth of the simulator's on the locomotion families; the
    Meta-World environments take none), valid-step means, a fixed inner KL coefficient; a study stored before the
    option existed (no ``settings`` in study.json) is the default's and resumes."""
    from metagrad.tradeoff_rl import Study

    for env, scale in (("hopper-rand-params", 0.1), ("ml1-reach", 1.0)):
        for method in ("drs-ppo", "promp"):
            cfg = Study(env=env, settings="promp").config(method, 0)
            assert (cfg.action_scale, cfg.loss_mean, cfg.inner_kl_target, cfg.init_std) == (scale, "steps", 0.0, 1.0)
            kept = Study(env=env).config(method, 0)
            assert (kept.action_scale, kept.loss_mean, kept.inner_kl_target) == (1.0, "slots", 0.01)
    assert "settings" not in Study().to_dict() and Study(settings="promp").to_dict()["settings"] == "promp"
    from metagrad.tradeoff_rl import _test_env  # the snapshots are tested on the environment they trained on: it
    assert _test_env(Study(env="hopper-rand-params", settings="promp"))._action_scale == 0.1  # tested at scale 1
    with pytest.raises(ConfigError, match="unknown settings 'rllab'; choose metagrad"):
        Study(settings="rllab")
    out = tmp_path / "study"
    args = ["tradeoff", "rl", "--env", "navigation2d", "--budget", "3000", "--seeds", "2", "--checkpoints", "1",
            "--meta-batch-size", "3", "--episodes", "2", "--test-tasks", "3", "--test-episodes", "2",
            "--out", str(out), "--no-progress"]
    assert main([*args, "--settings", "promp"]) == 0
    assert json.loads((out / "study.json").read_text())["settings"] == "promp"
    assert checkpoint.read_info(out / "promp" / "seed-0" / "last")["config"]["algo"]["inner_kl_target"] == 0.0
    assert main(args) == 2  # the default's settings are other settings for this study


@pytest.mark.parametrize(("flags", "message"), [
    (["--seeds", "1"], "seeds 1 (--seeds) must be >= 2"), (["--seeds", "-2"], "seeds -2 (--seeds) must be >= 2"),
    (["--env", "nowhere"], "unknown environment 'nowhere'"),
    (["--meta-batch-size", "0"], "meta_batch_size 0 (--meta-batch-size) must be >= 1"),
    (["--test-tasks", "1"], "test_tasks 1 (--test-tasks) must be >= 2"),
    (["--budget", "-5"], "budget -5 (--budget) puts the 4 snapshots less than one iteration apart"),  # and the least
    (["--paper", "--test-tasks", "10"], "--test-tasks 10 would be ignored")])  # the default, but given: not ignored
def test_tradeoff_rl_bad_input_is_named(tmp_path, capsys, flags, message):
    """Each message names the option that sets the value (the study's field names alone read as internal names),
    and a size given with --paper is refused even when it equals the default (it was silently replaced)."""
    assert main(["tradeoff", "rl", *flags, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


SGMRL_ROW = dict(env="cheetah-dir", frame_skip=5, observation="gym", action_scale=0.1, init_std=1.0,
                 activation="tanh", outer="vpg", outer_optimizer="adam", outer_lr=1e-3)


@pytest.mark.parametrize("cfg", [_cfg("trpo-maml", env="cheetah-dir", horizon=10, iterations=3, checkpoint_every=1),
                                 _cfg("trpo-maml", horizon=10, iterations=3, checkpoint_every=1, compile=True,
                                      **SGMRL_ROW)], ids=["trpo", "sgmrl-row-vpg-adam-compiled"])
def test_an_interrupted_locomotion_run_resumes_to_the_same_checkpoints(tmp_path, cfg):
    """MuJoCo copies draw their initial states from the run's generator: resuming sees the same states. Also on the
    SG-MRL row's settings with the compiled meta-gradient and Adam's state carried through the checkpoint."""
    pytest.importorskip("mujoco")
    for name, first in (("straight", cfg), ("resumed", cfg.replace(iterations=2))):
        learner, opt = build(first)
        RLTrainer(learner, opt, first, tmp_path / name, progress=False).fit()
    learner, opt = build(cfg)
    RLTrainer(learner, opt, cfg, tmp_path / "resumed", progress=False).fit(resume=True)
    a, _ = checkpoint.load(tmp_path / "straight" / "last")
    b, _ = checkpoint.load(tmp_path / "resumed" / "last")
    for k, v in a["learner"].items():
        assert torch.equal(v, b["learner"][k]), k
    lines = [json.loads(ln) for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(ln) for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["resumed_with"] for ln in again if "resumed_with" in ln] == [{"iterations": [2, 3]}]
    assert [ln["return_post"] for ln in lines] == [ln["return_post"] for ln in again if "return_post" in ln]


def test_step_counts_read_as_numbers_on_the_figures():
    """The snapshots' labels on welch.png were ``f"{s / 1e6:.2g}M"``: 1.1e+02M for 112M steps (15 of the paper's 21
    snapshots) and 2.2M for 2.25M; returns.png printed raw counts that ran together. Both use ``step_count``."""
    from metagrad.rl.plots import step_count

    assert [step_count(s) for s in (336_000_000, 112_000_000, 2_250_000, 16_000_000, 150_000, 10_000, 999, 0)] == \
        ["336M", "112M", "2.25M", "16M", "150k", "10k", "999", "0"]
    assert [step_count(s) for s in (999_600, 999_600_000, 999.7, 999_400)] == ["1M", "1G", "1k", "999k"]  # rounding up


def test_the_study_figures_name_the_pair_and_the_options_it_ran_with(tmp_path, monkeypatch):
    """returns.png was titled with the environment alone, and neither figure said a study ran with --settings promp
    or was tested again with --test-step; its legend drew "0 test updates" (dashed) as "5" (solid)."""
    from metagrad.rl import plots

    saved = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig.axes[0]) or path)
    returns = np.arange(2 * 2 * 6, dtype=float).reshape(2, 2, 6)
    results = {"study": {"env": "hopper-rand-params", "inner_lr": 0.1, "settings": "promp", "test_step": "fixed"},
               "labels": ["DRS+PPO", "ProMP"], "checkpoint_steps": [100, 200],
               "env_steps": {"drs-ppo": [[101, 201]] * 2, "promp": [[102, 202]] * 2},
               "returns": {"drs-ppo": returns, "promp": returns + 1}, "p_drs_better": np.full((2, 6), 0.5)}
    monkeypatch.setattr("metagrad.plots.save_figure", lambda fig, path, tight=True: saved.append(fig.axes[0]) or path)
    plots.tradeoff_rl_figures(results, tmp_path)
    title = "hopper-rand-params: DRS+PPO vs ProMP\n--settings promp (as ProMP's code)\n--test-step fixed (both at 0.1)"
    assert [ax.get_title() for ax in saved] == [title, title]
    legend = saved[1].get_legend()
    assert legend.handlelength >= 4  # the dashes show around the marker
    assert plots.study_title({"study": {"env": "ml10"}, "labels": ["A", "B"]}) == "ml10: A vs B"
