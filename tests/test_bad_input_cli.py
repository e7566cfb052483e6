"""Bad command-line and config input that used to be accepted silently, or refused in a misleading way: each now
stops with exit code 2 and one line naming the value and the fix (table-driven; nothing trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import metagrad as mg
from conftest import cli_error, folder_state
from images_fixtures import fake_miniimagenet, fake_omniglot
from metagrad.cli import main
from metagrad.errors import ConfigError
from metagrad.rl.config import RLConfig
from metagrad.tradeoff_rl import Study

TINY = ["--iterations", "1", "--meta-batch-size", "2", "--no-progress"]
NAV = ["--config", "maml-trpo-navigation", "--iterations", "1", "--meta-batch-size", "2", "--episodes", "2",
       "--horizon", "10", "--no-progress"]


def toml(tmp: Path, text: str) -> str:
    path = tmp / "c.toml"
    path.write_text(text)
    return str(path)


def curve_json(tmp: Path, name: str, curves: dict) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"iteration": 1, "curves": curves}))
    return str(path)


def reproduction_folder(folder: Path) -> Path:
    """What `metagrad reproduce` leaves: one run per method in subfolders, and no run of its own."""
    for method in ("pretrained", "maml-trpo"):
        (folder / method).mkdir(parents=True)
        (folder / method / "last.safetensors").write_bytes(b"")
    return folder


def mixed_kinds(t: Path) -> list[str]:
    curve = {"mean": [1.0, 2.0], "ci95": [0.1, 0.1], "tasks": 10}
    return ["compare", curve_json(t, "rl", {"40": {"lr": [0.1], "return": curve}}),
            curve_json(t, "sup", {"5": {"lr": 0.01, "loss": curve}}), "--out", str(t / "c")]


CASES = {
    # name: (setup(tmp) -> argv, words the line must hold)
    "S1 boolean for a number": (lambda t: ["train", "--config", toml(t, "[train]\nouter_lr = true\n"), *TINY,
                                           "--out", str(t / "r")], ["outer_lr: true is not a number"]),
    "S2 empty list entry": (lambda t: ["train", "--eval-shots", "5,,10", *TINY, "--out", str(t / "r")],
                            ["eval_shots", "'5,,10' has an empty entry"]),
    "S3 ways on sinusoid": (lambda t: ["train", "--ways", "20", *TINY, "--out", str(t / "r")],
                            ["--ways applies to family omniglot, miniimagenet only", "family is sinusoid", "remove"]),
    "S3 filters on an mlp": (lambda t: ["train", "--filters", "3", *TINY, "--out", str(t / "r")],
                             ["--filters applies to model conv4", "model is mlp"]),
    "S3 rotations on sinusoid": (lambda t: ["train", "--rotations", *TINY, "--out", str(t / "r")],
                                 ["--rotations applies to family omniglot"]),
    "S3 dim on sinusoid": (lambda t: ["train", "--dim", "3", *TINY, "--out", str(t / "r")],
                           ["--dim applies to family linreg"]),
    "S3 x-range on linreg": (lambda t: ["train", "--config", "linreg-maml", "--x-range", "0,1", *TINY,
                                        "--out", str(t / "r")], ["--x-range applies to family sinusoid"]),
    "S3 emaml weight on maml": (lambda t: ["train", *NAV, "--emaml-weight", "3", "--out", str(t / "r")],
                                ["--emaml-weight applies to algo emaml only", "algo is maml"]),
    "S3 ppo epochs on trpo": (lambda t: ["train", *NAV, "--ppo-epochs", "9", "--out", str(t / "r")],
                              ["--ppo-epochs applies to outer ppo only", "outer is trpo"]),
    "S3 max kl on ppo": (lambda t: ["train", *NAV, "--outer", "ppo", "--max-kl", "0.5", "--out", str(t / "r")],
                         ["--max-kl applies to outer trpo only", "outer is ppo"]),
    "S3 cg iters on ppo": (lambda t: ["train", *NAV, "--outer", "ppo", "--cg-iters", "50", "--out", str(t / "r")],
                           ["--cg-iters applies to outer trpo"]),
    "S3 outer lr on trpo": (lambda t: ["train", *NAV, "--outer-lr", "0.1", "--out", str(t / "r")],
                            ["--outer-lr applies to outer vpg, ppo"]),
    "S3 goal range on locomotion": (lambda t: ["train", *NAV, "--env", "cheetah-dir", "--goal-range", "0,1",
                                               "--out", str(t / "r")], ["--goal-range applies to env navigation2d"]),
    "S3 download on sinusoid": (lambda t: ["train", "--download", *TINY, "--out", str(t / "r")],
                                ["--download applies to family omniglot only", "family is sinusoid"]),
    "S3 query of grid tasks": (lambda t: ["train", "--config", "sinusoid-reptile", "--query", "5", *TINY,
                                          "--out", str(t / "r")], ["--query is not used on grid tasks", "50 points"]),
    "S3 inner steps of joint training": (lambda t: ["train", "--config", "sinusoid-pretrained", "--inner-steps", "3",
                                                    *TINY, "--out", str(t / "r")],
                                         ["--inner-steps is not used by algo joint", "eval_steps"]),
    "joint training's minibatches (accepted, never used)": (
        lambda t: ["train", "--config", "sinusoid-pretrained", "--inner-batch-size", "3", *TINY, "--out", str(t / "r")],
        ["--inner-batch-size is not used by algo joint", "eval_inner_batch_size"]),
    "joint training's sampling without test minibatches (accepted, never used)": (
        lambda t: ["train", "--config", "sinusoid-pretrained", "--inner-sampling", "cycle", *TINY, "--out",
                   str(t / "r")], ["--inner-sampling is not used by algo joint with eval_inner_batch_size 0"]),
    "joint training's replacement sampling (advised the training batch, never used)": (
        lambda t: ["train", "--config", "sinusoid-pretrained", "--inner-sampling", "replacement", *TINY, "--out",
                   str(t / "r")], ["give eval_inner_batch_size (e.g. 25)"]),
    "validation settings without validation (accepted, never used)": (
        lambda t: ["train", "--val-every", "0", "--val-tasks", "50", *TINY, "--out", str(t / "r")],
        ["--val-tasks is not used with val_every 0"]),
    "S3 meta-RL inner steps of joint training": (lambda t: ["train", "--config", "pretrained-navigation",
                                                            "--inner-steps", "2", "--out", str(t / "r")],
                                                 ["--inner-steps is not used by algo joint"]),
    "S3 curvature chunks uncompiled": (lambda t: ["train", *NAV, "--curvature-chunk", "2", "--out", str(t / "r")],
                                       ["--curvature-chunk sizes compiled curvature products", "compile is false"]),
    "S3 rotation seed in one dimension": (lambda t: ["tradeoff", "linreg", "--rotation-seed", "3", "--out",
                                                     str(t / "r")], ["--rotation-seed 3", "--dim 1", "remove it"]),
    "S3 meta-RL keys without an env section": (lambda t: ["train", "--config", toml(t, "[algo]\nouter = \"trpo\"\n"),
                                                          "--out", str(t / "r")],
                                               ["'outer' in [algo] is a meta-RL key", "[env] section"]),
    "S1 a section as an array of tables": (lambda t: ["train", "--config", toml(t, "[[train]]\niterations = 3\n"),
                                                      "--out", str(t / "r")],
                                           ["[[train]] is an array of tables", "one [train]"]),
    "S8 one trade-off test task": (lambda t: ["tradeoff", "rl", "--test-tasks", "1", "--out", str(t / "r")],
                                   ["test_tasks 1 (--test-tasks) must be >= 2"]),
    "S4 the training seed is the test seed": (lambda t: ["train", "--seed", "12345", *TINY, "--out", str(t / "r")],
                                              ["seed 12345 equals eval_seed", "test tasks"]),
    "S4 the training seed is a held-out stream's": (lambda t: ["train", "--seed", "13122", *TINY, "--out",
                                                            str(t / "r")],
                                                   ["seed 13122 equals eval_seed + 777", "the test-time step size"]),
    "S4 meta-RL training seed is the test episodes'": (lambda t: ["train", *NAV, "--seed", "8", "--eval-seed", "7",
                                                                   "--out", str(t / "r")],
                                                        ["seed 8 equals eval_seed + 1, the seed of the test episodes"]),
    "S4 meta-RL training seed is the test seed": (lambda t: ["train", *NAV, "--seed", "7", "--eval-seed", "7",
                                                             "--out", str(t / "r")], ["seed 7 equals eval_seed"]),
    "S3 download of MiniImagenet": (lambda t: ["reproduce", "miniimagenet", "--download", "--data-root", str(t),
                                               "--out", str(t / "r")],
                                    ["--download does not apply to miniimagenet", "omniglot"]),
    "S4 eval lr and its tuning": (lambda t: ["train", "--algo", "joint", "--eval-lr", "0.1", "--tune-eval-lr",
                                             *TINY, "--out", str(t / "r")],
                                  ["eval_lr [0.1] and tune_eval_lr", "give one of them"]),
    "S4 meta-RL eval lr of a tuned baseline": (lambda t: ["train", "--config", "random-navigation", "--eval-lr", "0.1",
                                                          "--out", str(t / "r")],
                                               ["--eval-lr applies to tune_eval_lr false only"]),
    "S5 empty input range": (lambda t: ["train", "--x-range", "1,1", *TINY, "--out", str(t / "r")],
                             ["x_range [1.0, 1.0]", "low < high"]),
    "S6 negative exploration weight": (lambda t: ["train", *NAV, "--algo", "emaml", "--emaml-weight", "-5",
                                                  "--out", str(t / "r")], ["emaml_weight -5.0", ">= 0"]),
    "S7 step budget below one iteration": (lambda t: ["train", *NAV, "--step-budget", "5", "--out", str(t / "r")],
                                           ["step_budget 5", "at least 80"]),
    "S7 snapshots below one iteration": (lambda t: ["train", *NAV, "--snapshot-steps", "1", "--out", str(t / "r")],
                                         ["snapshot_steps 1", "at least 80"]),
    "S8 trade-off budget below one iteration": (lambda t: ["tradeoff", "rl", "--env", "navigation2d", "--budget",
                                                           "10", "--no-progress", "--out", str(t / "r")],
                                                ["budget 10 (--budget)", "at least 80,000"]),
    "S9 seed twice": (lambda t: ["reproduce", "navigation", "--algo", "random", "--seed", "1", "--set", "seed=2",
                                 "--out", str(t / "r")], ["--seed 1 and --set seed=2", "give one of them"]),
    "S9 eval tasks twice": (lambda t: ["reproduce", "navigation", "--eval-tasks", "3", "--set", "eval_tasks=4",
                                       "--out", str(t / "r")], ["--eval-tasks 3 and --set eval_tasks=4"]),
    "S10 a key set twice": (lambda t: ["reproduce", "navigation", "--set", "horizon=5", "--set", "horizon=6",
                                       "--out", str(t / "r")], ["--set horizon= is given 2 times", "give it once"]),
    "U1 negative first value": (lambda t: ["train", "--inner-lr", "-0.1,0.05", *TINY, "--out", str(t / "r")],
                                ["inner_lr -0.1 must be positive"]),
    "U1 negative grid value": (lambda t: ["tradeoff", "linreg", "--alphas", "-0.1,0.5", "--out", str(t / "r")],
                               ["-0.1"]),
    "U2 evaluation larger than the test split": (
        lambda t: ["train", "--config", "omniglot-maml", "--data-root",
                   str(fake_omniglot(t / "om", alphabets=1, characters=3, drawings=20)), "--ways", "2",
                   "--eval-shots", "25", *TINY, "--out", str(t / "r")],
        ["eval_shots 25 + eval_query", "lower eval_shots or eval_query"]),
    "U3 meta-RL against supervised": (mixed_kinds, ["rl.json is a meta-RL evaluation", "sup.json a supervised",
                                                    "same kind"]),
    "U5 eval of a reproduction's folder": (
        lambda t: ["eval", str(reproduction_folder(t / "repro"))],
        ["no 'last' checkpoint in", "it holds the runs maml-trpo, pretrained", "give one of them", "repro/maml-trpo"]),
    "U5 eval of a checkpoint file": (
        lambda t: ["eval", str(t / "run" / "last.safetensors")],
        ["last.safetensors is a file, not a run folder", "/run --checkpoint last"]),
    "U5 resume of a reproduction's folder": (
        lambda t: ["train", "--resume", "--out", str(reproduction_folder(t / "repro"))],
        ["nothing to resume in", "it holds the runs maml-trpo, pretrained"]),
    "U7 tuning the test step size on a val split too small": (
        lambda t: ["train", "--config", "miniimagenet-maml", "--data-root", str(fake_miniimagenet(t / "mini")),
                   "--ways", "3", "--tune-eval-lr", "--val-every", "0", "--shots", "1", "--query", "2",
                   "--eval-shots", "1", "--eval-query", "2", "--iterations", "2", "--no-progress", "--out",
                   str(t / "r")],
        ["ways 3 exceeds the 2 classes of the val split"]),
    "U8 an abbreviated option": (lambda t: ["train", "--set", "inner_steps=2", "--inner-ste", "3", "--out",
                                            str(t / "r")], ["unrecognized arguments: --inner-ste 3"]),
    "a step size beyond float32 (torch's optimizer stopped with a traceback)": (
        lambda t: ["train", "--set", "outer_optimizer=sgd", "--set", "outer_lr=1e300", "--out", str(t / "r")],
        ["outer_lr 1e+300 must be positive and within float32's range"]),
    "a meta-RL step size beyond float32 (torch's Adam stopped with a traceback)": (
        lambda t: ["train", "--config", "maml-vpg-navigation", "--outer-lr", "1e300", "--out", str(t / "r")],
        ["outer_lr 1e+300 must be positive and within float32's range"]),
    "U8 an empty config name": (lambda t: ["train", "--config", "", "--out", str(t / "r")],
                                ["argument --config: an empty value"]),
    "U6 a size beside --paper": (
        lambda t: ["tradeoff", "rl", "--paper", "--episodes", "5", "--out", str(t / "r")],
        ["--paper sets the paper's budget and sizes; --episodes 5 would be ignored"]),
    "U4 sinusoid reproduction, too few test tasks": (
        lambda t: ["reproduce", "sinusoid", "--eval-tasks", "1", "--out", str(t / "r")],
        ["eval_tasks 1 must be a whole number >= 2"]),
    "a few-shot reproduction without its data (said before the training line, which it followed)": (
        lambda t: ["reproduce", "omniglot", "--data-root", str(t / "none"), "--out", str(t / "r")],
        ["Omniglot folder", "none does not exist", "--download"]),
    "the MAML paper's Omniglot setting, more shots than half a character's drawings": (
        lambda t: ["reproduce", "omniglot", "--shots", "11", "--data-root", str(t / "none"), "--out", str(t / "r")],
        ["--shots 11", "K support and K query images", "use --shots 10 or fewer"]),
    "U4 locomotion reproduction, empty layer": (
        lambda t: ["reproduce", "locomotion", "--env", "cheetah-dir", "--set", "hidden=0", "--out", str(t / "r")],
        ["hidden [0] must hold positive layer sizes"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_cli_input_is_one_line_naming_the_value_and_the_fix(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    setup, words = CASES[case]
    argv = setup(tmp_path)
    before = folder_state(tmp_path)
    err = cli_error(argv, capsys)
    for w in words:
        assert w in err, (w, err)
    assert folder_state(tmp_path) == before  # refused before anything is written


def test_options_that_apply_and_defaults_carried_by_presets_are_accepted():
    """Only options given explicitly are checked against the config: a preset's own values never are."""
    cfg = mg.Config(family="omniglot", model="conv4")
    cfg.check_applies(["ways", "filters", "rotations", "transductive"])
    rl = RLConfig(algo="emaml", outer="ppo")
    rl.check_applies(["emaml_weight", "ppo_epochs", "outer_lr"])
    with pytest.raises(ConfigError, match="--hvp applies to outer trpo"):
        rl.check_applies(["hvp"], lambda n: "--" + n)
    for preset in ("sinusoid-maml", "omniglot-maml", "linreg-maml", "emaml-navigation", "promp-navigation"):
        mg.config.load_config(preset)  # every field of a preset is present, and none is refused


def test_the_api_refuses_what_the_command_line_does():
    with pytest.raises(ConfigError, match="emaml_weight nan must be a finite number >= 0"):
        RLConfig(algo="emaml", emaml_weight=float("nan")).validate()
    with pytest.raises(ConfigError, match=r"budget 10 \(--budget\) puts the 4 snapshots less than one iteration apart"):
        Study(env="navigation2d", budget=10)
    Study(env="navigation2d", budget=80_000)  # four snapshots, one ProMP iteration apart


def test_a_config_built_directly_is_validated_before_training(tmp_path):
    from metagrad.experiment import train

    with pytest.raises(ConfigError, match=r"outer_lr -1\.0 must be positive"):
        train(mg.Config(outer_lr=-1.0, iterations=1, meta_batch_size=2), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_a_damaged_last_checkpoint_without_best_says_what_there_is(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--val-every", "0"]) == 0
    for f in run.glob("best.*"):
        f.unlink()
    (run / "last.safetensors").write_bytes(b"garbage")
    before = folder_state(run)
    err = cli_error(["eval", str(run), "--eval-tasks", "2"], capsys)
    assert "no other checkpoint (no best) to evaluate or resume: start a new run" in err, err
    assert folder_state(run) == before  # the damaged file left as it was, nothing written beside it


def test_reproduce_set_key_that_no_method_run_uses_is_refused(tmp_path, capsys):
    """`reproduce navigation --set KEY=...` with a key none of the methods run reads (E-MAML's weight under MAML-TRPO
    and its baselines) is refused before anything trains; one some of them read is taken."""
    out = tmp_path / "nav"
    err = cli_error(["reproduce", "navigation", "--algo", "maml-trpo,pretrained", "--set", "emaml_weight=2",
                     "--out", str(out)], capsys)
    assert "--set emaml_weight applies to algo emaml only" in err and "maml-trpo, pretrained" in err
    assert not out.exists()
    from metagrad.reproduce import metarl, navigation

    cfgs = metarl.method_configs(navigation.NAVIGATION, ["maml-trpo", "sgmrl"], overrides={"max_kl": "0.02"})
    assert cfgs[0].max_kl == 0.02
