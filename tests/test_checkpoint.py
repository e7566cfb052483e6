"""Checkpoints: round trip, atomic writes, torn or corrupt pairs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from metagrad import checkpoint
from metagrad.errors import CheckpointError


def state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.Generator().get_state(),
            "nested": [1, 2.5, None, "x", {"a": torch.arange(3)}]}


def test_round_trip_keeps_every_tensor_and_value(tmp_path):
    s = state()
    checkpoint.save(tmp_path / "ck", s, {"iteration": 7, "config": {"algo": "maml"}})
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["iteration"] == 7 and info["config"] == {"algo": "maml"}
    assert set(loaded["optimizer"]["state"]) == {0, 1}  # integer keys survive (the optimizer needs them)
    for k, v in s["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg_sq"], s["optimizer"]["state"][0]["exp_avg_sq"])
    assert torch.equal(loaded["rng"], s["rng"])
    assert loaded["nested"][:4] == [1, 2.5, None, "x"] and torch.equal(loaded["nested"][4]["a"], torch.arange(3))
    opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt.load_state_dict(loaded["optimizer"])  # a real optimizer accepts it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]  # no temporary files left


def test_a_torn_pair_is_detected(tmp_path):
    checkpoint.save(tmp_path / "a", state(), {"iteration": 1})
    checkpoint.save(tmp_path / "b", state(), {"iteration": 2})
    shutil.copy(tmp_path / "b.json", tmp_path / "a.json")  # as if a crash came between the two renames
    with pytest.raises(CheckpointError, match="different saves"):
        checkpoint.load(tmp_path / "a")


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "nothing")
    checkpoint.save(tmp_path / "c", state(), {"iteration": 1})
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path / "c")
    checkpoint.save(tmp_path / "d", state(), {"iteration": 1})
    info = json.loads((tmp_path / "d.json").read_text())
    info["format"] = 99
    (tmp_path / "d.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="format"):
        checkpoint.load(tmp_path / "d")
