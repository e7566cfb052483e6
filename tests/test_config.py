"""Config files, presets, overrides and their errors."""

from __future__ import annotations

import pytest
import tomllib

from metagrad.config import Config, dump_toml, load_config, preset_names
from metagrad.errors import ConfigError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
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
    with pytest.raises(ConfigError, match="shots 0 must be >= 1"):
        cfg.replace(shots=0)
    with pytest.raises(ConfigError, match="'abc' is not an integer"):
        cfg.replace(shots="abc")


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
    data = tomllib.loads(dump_toml(Config()))
    assert set(data) == {"task", "model", "algo", "train", "eval"} and data["algo"]["algo"] == "maml"
