"""Config files, presets, overrides and their errors."""

from __future__ import annotations

import argparse

import pytest
import tomllib

from metagrad.config import Config, load_config
from metagrad.errors import ConfigError
from metagrad.rl.config import RLConfig, method_names, preset
from metagrad.settings import preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg


def test_presets_hold_the_papers_settings():
    maml = load_config("sinusoid-maml")
    assert (maml.shots, maml.inner_lr, maml.inner_steps, maml.meta_batch_size, maml.iterations, maml.outer_lr) == (
        10, (0.01,), 1, 25, 70000, 0.001)
    assert maml.hidden == (40, 40) and maml.amplitude == (0.1, 5.0)
    reptile = load_config("sinusoid-reptile")
    assert (reptile.grid, reptile.hidden, reptile.inner_batch_size, reptile.outer_lr_schedule) == (
        50, (64, 64), 10, "linear")


def test_overrides_are_coerced_and_validated():
    cfg = load_config("sinusoid-maml").replace(inner_lr="0.1,0.05", hidden="64,64", oracle="true")
    assert cfg.inner_lr == (0.1, 0.05) and cfg.hidden == (64, 64) and cfg.oracle is True
    with pytest.raises(ConfigError, match="shots 0 must be a whole number >= 1"):
        cfg.replace(shots=0)
    with pytest.raises(ConfigError, match="'abc' is not an integer"):
        cfg.replace(shots="abc")


def test_command_line_lists_take_tomls_array_syntax_too():
    from metagrad.cli.parser import csv

    assert csv(int)("[1, 5]") == [1, 5] and csv(float)("0.5,0.1,") == [0.5, 0.1]
    with pytest.raises(argparse.ArgumentTypeError, match="empty entry"):
        csv(int)("1,,5")


def test_overrides_take_tomls_array_syntax():
    cfg = load_config("sinusoid-maml")
    assert cfg.replace(hidden="[64, 32]").hidden == (64, 32) and cfg.replace(hidden="[]").hidden == ()
    assert load_config("omniglot-anil").replace(adapt='["head"]').adapt == ("head",)
    with pytest.raises(ConfigError, match="'x' is not an integer"):
        cfg.replace(hidden="[x]")


@pytest.mark.parametrize(("toml", "match"), [
    ('[algo]\ninner_lrr = 0.1', "unknown key 'inner_lrr' in \\[algo\\] \\(did you mean 'inner_lr'\\?\\)"),
    ('[train]\ninner_lr = 0.1', "belongs in \\[algo\\]"),
    ('[trian]\nseed = 1', "unknown section \\[trian\\] \\(did you mean 'train'\\?\\)"),
    ('[algo]\nalgo = "mamll"', "unknown algo 'mamll' \\(did you mean 'maml'\\?\\)"),
    ('[algo]\ninner_lr = -0.01', "inner_lr -0.01 must be positive"),
    ('[algo\n', "not valid TOML"),
])
def test_bad_files_name_the_problem(tmp_path, toml, match):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file_lists_the_presets():
    with pytest.raises(ConfigError, match=r"not found.*sinusoid-maml"):
        load_config("no-such-config.toml")


def test_dump_is_valid_toml_by_section():
    data = tomllib.loads(Config().to_toml())
    assert set(data) == {"task", "model", "algo", "train", "eval"} and data["algo"]["algo"] == "maml"


def test_meta_rl_presets_are_files_of_the_one_config_system():
    """Every meta-RL method has a preset file; load_config tells a meta-RL file (an [env] section) from a supervised
    one; the same coercion, checks and messages apply."""
    assert {"maml-trpo", "sgmrl", "promp", "drs-ppo"} <= set(method_names())
    cfg = load_config("maml-trpo-navigation")
    assert isinstance(cfg, RLConfig) and cfg == preset("maml-trpo")
    assert (cfg.algo, cfg.outer, cfg.inner_lr, cfg.episodes, cfg.meta_batch_size) == ("maml", "trpo", (0.1,), 20, 20)
    assert preset("sgmrl").init_std == 0.1 and not preset("sgmrl").normalize_outer
    with pytest.raises(ConfigError, match="'x' is not a number"):
        cfg.replace(max_kl="x")
    with pytest.raises(ConfigError, match="unknown method 'mamltrpo' \\(did you mean 'maml-trpo'\\?\\)"):
        preset("mamltrpo")


@pytest.mark.parametrize(("toml", "match"), [
    ('seed = 1\n[train]\niterations = 2', "'seed = ...' is outside any section.*belongs in \\[train\\]"),
    ('[algo]\ninner_lr = inf', "is not a finite number"),
    ('[env]\nenv = "navigation2d"\nhidden = [8]', "unknown key 'hidden' in \\[env\\] \\(it belongs in \\[policy\\]\\)"),
])
def test_bad_values_and_top_level_keys_name_the_problem(tmp_path, toml, match):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_a_directory_or_binary_file_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "x.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(binary)


def test_the_linear_outer_schedule_anneals_the_step_to_zero_over_the_iterations():
    from metagrad.build import build_learner, build_outer

    cfg = Config().replace(iterations=4, outer_lr=0.01, outer_lr_schedule="linear")
    opt, scheduler = build_outer(cfg, build_learner(cfg))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == pytest.approx([0.01, 0.0075, 0.005, 0.0025, 0.0])


def test_a_compiled_run_steps_with_the_fused_outer_optimizer_and_an_eager_one_does_not():
    """The fused kernel (benchmarks/train_step.py: 0.05 against 0.16 ms of a 1 ms compiled sinusoid iteration)
    serves compiled runs; eager runs keep the per-tensor step their recorded numbers (tests/golden) came from."""
    from metagrad.build import build_learner, build_outer

    for optimizer in ("adam", "sgd"):
        eager = Config().replace(outer_optimizer=optimizer)
        compiled = eager.replace(compile=True)
        assert not build_outer(eager, build_learner(eager))[0].defaults.get("fused")
        assert build_outer(compiled, build_learner(compiled))[0].defaults["fused"] is True


def test_learned_inner_step_sizes_cannot_change_on_resume():
    """Fixed inner step sizes may change when a run resumes (lower them after a divergence); learned ones are
    parameters restored from the checkpoint, so a new value would be logged as applied and do nothing: refused."""
    fixed, learned = Config(), Config().replace(learn_inner_lr=True)
    assert fixed.replace(inner_lr=(0.5,)).resume_differences(fixed) == []
    assert learned.replace(inner_lr=(0.5,)).resume_differences(learned) == ["inner_lr"]
