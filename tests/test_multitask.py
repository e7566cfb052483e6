"""The MAML paper's multi-task baselines (appendix C.1): regressors trained apart, averaged in parameter space."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from metagrad.models import MLP
from metagrad.reproduce import multitask


def test_batched_regressors_compute_what_each_mlp_computes():
    torch.manual_seed(0)
    nets = [MLP(1, [40, 40], 1) for _ in range(4)]
    params, _ = stack_module_state(nets)
    x = torch.randn(4, 9, 1)
    want = vmap(lambda p, xx: functional_call(nets[0], p, (xx,)))(params, x)
    torch.testing.assert_close(multitask.batched_mlp(params, x), want, rtol=0, atol=1e-6)


def test_regressors_fit_their_tasks_and_the_regularizers_do_what_they_say():
    """Each regressor fits its own sine wave; weight decay shrinks the parameters; pulling towards the mean of the
    earlier groups brings the later group closer to it than unregularized training does."""
    setting = multitask.Setting(models=8, group=4, steps=300, batch=50)
    runs = {v: multitask.train_regressors(v, setting, progress=False) for v in multitask.VARIANTS}
    params, mse = runs["none"]
    assert params["0.weight"].shape == (8, 40, 1) and mse < 1.0  # far below a sine's variance (~4)

    def norm(p):
        return sum(float((v**2).sum()) for v in p.values())

    assert norm(runs["l2"][0]) < norm(runs["none"][0])

    def spread(p):  # distance of the second group to the first group's mean
        return sum(float(((v[4:] - v[:4].mean(0)) ** 2).sum()) for v in p.values())

    assert spread(runs["mean"][0]) < spread(runs["none"][0])


def test_the_study_writes_its_table_beside_the_papers(tmp_path, capsys):
    setting = multitask.Setting(models=4, group=2, steps=50, batch=20, eval_tasks=10)
    results = multitask.run(tmp_path, setting, progress=False, variants=("none",))
    curve = results["variants"]["none"]["curve"]["loss"]
    assert len(curve["mean"]) == 11 and curve["tasks"] == 10
    printed = capsys.readouterr().out
    assert "4.19 / 3.85 / 3.69" in printed and (tmp_path / "multitask.md").read_text() in printed
    saved = json.loads((tmp_path / "multitask.json").read_text())
    assert saved == json.loads(json.dumps(results))  # the file holds what the run returned
    assert set(saved) == {"setting", "machine", "commit", "command", "paper", "variants"}
    assert saved["setting"] == asdict(setting)
    assert saved["paper"] == multitask.PAPER and list(saved["variants"]) == ["none"]  # the variants run, no other
    none = saved["variants"]["none"]
    assert set(none) == {"label", "strength", "train_mse", "seconds", "curve", "average_norm"}
    assert (none["label"], none["strength"]) == (multitask.LABELS["none"], multitask.STRENGTH["none"])
    assert 0 < none["train_mse"] < float("inf") and none["average_norm"] > 0
    assert none["curve"]["loss"]["tasks"] == setting.eval_tasks and len(none["curve"]["loss"]["ci95"]) == 11


def test_an_interrupted_study_goes_on_with_the_variants_left_to_the_same_numbers(tmp_path, monkeypatch):
    """The study wrote nothing before all its variants were done: Ctrl-C in the last one lost the others (21 min at
    the paper's size) while the message said a rerun resumes. Each variant's result is kept as it finishes; a rerun
    trains only the rest, and the table equals an uninterrupted study's (the seconds aside)."""
    setting = multitask.Setting(models=4, group=2, steps=30, batch=20, eval_tasks=10)
    variants = ("none", "l2")
    straight = multitask.run(tmp_path / "straight", setting, progress=False, variants=variants)
    trained = []
    real = multitask.train_regressors

    def interrupted_in_l2(variant, *args, **kw):
        trained.append(variant)
        if variant == "l2" and trained.count("l2") == 1:
            raise KeyboardInterrupt
        return real(variant, *args, **kw)

    monkeypatch.setattr(multitask, "train_regressors", interrupted_in_l2)
    with pytest.raises(KeyboardInterrupt):
        multitask.run(tmp_path / "run", setting, progress=False, variants=variants)
    assert not (tmp_path / "run" / "multitask.json").exists() and (tmp_path / "run" / "variant-none.json").exists()
    again = multitask.run(tmp_path / "run", setting, progress=False, variants=variants)
    assert trained == ["none", "l2", "l2"]  # "none" not trained again
    drop = lambda r: {v: {k: x for k, x in d.items() if k != "seconds"} for v, d in r["variants"].items()}  # noqa: E731
    assert drop(again) == drop(json.loads(json.dumps(straight)))
    multitask.run(tmp_path / "run", multitask.Setting(models=4, group=2, steps=31, batch=20, eval_tasks=10),
                  progress=False, variants=("none",))
    assert trained[-1] == "none"  # another setting: trained afresh, not taken from the kept file
