"""Validation during training: as training adapts (the default), or as the test does (``val_as``)."""

from __future__ import annotations

import pytest
import torch

import metagrad as mg
from metagrad import checkpoint
from metagrad.config import load_config
from metagrad.errors import ConfigError
from metagrad.experiment import make_trainer


def _trainer(val_as: mg.Validation | None, seed: int = 3) -> mg.Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    learner = mg.MAML(model, inner=mg.SGD(0.01), inner_steps=2)
    return mg.Trainer(learner, mg.tasks.Sinusoid(shots=10, query=10), torch.optim.Adam(learner.parameters(), 1e-3),
                      iterations=1, meta_batch_size=2, seed=seed, val_tasks=6, val_as=val_as, progress=False)


def _by_hand(model: torch.nn.Module, batch: mg.TaskBatch, lr: float, steps: int) -> float:
    """Mean query MSE after ``steps`` plain SGD steps on each task's whole support set, with autograd."""
    losses = []
    for t in range(batch.num_tasks):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]

        def forward(x, params):
            w1, b1, w2, b2 = params
            return torch.tanh(x @ w1.T + b1) @ w2.T + b2

        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(forward(batch.support.x[t], params), batch.support.y[t])
            grads = torch.autograd.grad(loss, params)
            params = [(p - lr * g).detach().requires_grad_() for p, g in zip(params, grads, strict=True)]
        losses.append(float(torch.nn.functional.mse_loss(forward(batch.query.x[t], params), batch.query.y[t]).detach()))
    return sum(losses) / len(losses)


def test_validation_as_the_test_uses_its_shots_query_steps_and_step_size():
    """Validation with 3 shots, 7 queries and 4 steps of 0.05 equals plain SGD by hand on those tasks; the default
    validates with the training shots (10) and inner steps (2) at the training step size (0.01)."""
    trainer = _trainer(mg.Validation(shots=3, query=7, steps=4, lr=(0.05,)))
    got = trainer.validation_metrics()["loss"]
    batch = trainer._val_batch
    assert batch.support.x.shape[:2] == (6, 3) and batch.query.x.shape[:2] == (6, 7)
    assert got == pytest.approx(_by_hand(trainer.learner.model, batch, 0.05, 4), rel=1e-5)

    default = _trainer(None)
    got = default.validation_metrics()["loss"]
    batch = default._val_batch
    assert batch.support.x.shape[:2] == (6, 10) and batch.query.x.shape[:2] == (6, 10)
    assert got == pytest.approx(_by_hand(default.learner.model, batch, 0.01, 2), rel=1e-5)


def test_validation_minibatches_come_from_the_runs_seed():
    """Minibatched validation steps differ from whole-support ones, and are the same at every validation."""
    whole = _trainer(mg.Validation(shots=8, query=5, steps=3, lr=(0.1,))).validation_metrics()["loss"]
    mini = _trainer(mg.Validation(shots=8, query=5, steps=3, inner_batch_size=2, lr=(0.1,)))
    first = mini.validation_metrics()["loss"]
    assert first != pytest.approx(whole, rel=1e-6)
    assert mini.validation_metrics()["loss"] == first
    again = _trainer(mg.Validation(shots=8, query=5, steps=3, inner_batch_size=2, lr=(0.1,)), seed=3)
    assert again.validation_metrics()["loss"] == first
    other_seed = _trainer(mg.Validation(shots=8, query=5, steps=3, inner_batch_size=2, lr=(0.1,)), seed=4)
    assert other_seed.validation_metrics()["loss"] != first


@pytest.mark.parametrize(("kw", "match"), [
    ({"shots": 0, "query": 5, "steps": 1}, "Validation shots 0"),
    ({"shots": 1, "query": 5, "steps": -1}, "Validation steps -1"),
    ({"shots": 1, "query": 5, "steps": 1, "lr": -1.0}, "Validation lr -1.0 must be None"),
    ({"shots": 1, "query": 5, "steps": 1, "lr": (0.1, float("inf"))}, r"Validation lr \(0.1, inf\)"),
    ({"shots": 1, "query": 5, "steps": 1, "lr": "0.1"}, "Validation lr '0.1'"),
    ({"shots": 1, "query": 5, "steps": 1, "lr": ()}, r"Validation lr \(\)"),
])
def test_bad_validation_settings_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        mg.Validation(**kw)


def test_one_validation_step_size_is_a_tuple_of_one():
    assert mg.Validation(shots=1, query=5, steps=2, lr=0.05).lr == (0.05,)
    assert mg.Validation(shots=1, query=5, steps=2, lr=[0.1, 0]).lr == (0.1, 0.0)


def test_a_trainer_refuses_a_validation_that_is_not_one():
    with pytest.raises(TypeError, match="val_as must be a metagrad Validation"):
        _trainer({"shots": 1})


def test_config_val_as_test_takes_the_tests_smallest_shots_and_its_settings():
    cfg = load_config("sinusoid-maml").replace(iterations=1, val_every=1, val_tasks=4, eval_shots=(10, 5),
                                                eval_query=9, eval_steps=3, eval_lr=(0.02,), val_as="test")
    trainer = make_trainer(cfg, None, progress=False)
    assert trainer.val_as == mg.Validation(shots=5, query=9, steps=3, lr=(0.02,))
    assert make_trainer(cfg.replace(val_as="training"), None, progress=False).val_as is None


@pytest.mark.parametrize(("kw", "match"), [
    ({"val_as": "tests"}, "val_as 'tests'"),
    ({"val_as": "test", "tune_eval_lr": True}, "val_as 'test' validates with the test's step size"),
])
def test_config_val_as_refusals(kw, match):
    with pytest.raises(ConfigError, match=match):
        load_config("sinusoid-pretrained").replace(**kw)



def test_a_run_resumed_with_another_validation_tracks_its_best_afresh(tmp_path, capsys):
    """A best validated one way is no measure for another: switching val_as on resume forgets it (and the switch is
    allowed), and sets its file aside (evaluations may have been made of it) once training goes on; resuming with the
    same keeps it; a finished run keeps its best; a later resume never overwrites what was set aside."""
    from metagrad.cli import main

    cfg = load_config("sinusoid-maml").replace(iterations=4, meta_batch_size=2, val_every=2, val_tasks=4,
                                                checkpoint_every=2, eval_shots=(3,), eval_steps=1)
    run = tmp_path / "run"
    first = make_trainer(cfg, run, progress=False)
    first.fit()
    assert first.best_val is not None
    same = make_trainer(cfg.replace(iterations=6), run, progress=False)
    same.restore()
    assert same.best_val == first.best_val
    before = (run / "best.safetensors").read_bytes()
    assert make_trainer(cfg.replace(val_as="test"), run, progress=False).fit(resume=True).iteration == 4
    assert (run / "best.safetensors").read_bytes() == before  # finished: nothing trains, its best stays
    resumed = make_trainer(cfg.replace(iterations=6, checkpoint_every=100, val_as="test"), run, progress=False)
    resumed.on_iteration = lambda t, i, m: t.request_stop() if i == 6 else None
    assert resumed.fit(resume=True).iteration == 6
    assert resumed.val_as == mg.Validation(shots=3, query=cfg.eval_query, steps=1)
    assert "its best so far (iteration 4) is kept as best-before-4" in capsys.readouterr().err
    assert (run / "best-before-4.safetensors").read_bytes() == before  # not overwritten by the new best
    assert checkpoint.read_info(run / "best")["iteration"] == 6
    again = make_trainer(cfg.replace(iterations=8, val_as="test"), run, progress=False)
    again.fit(resume=True)  # its best is of this validation already: nothing set aside
    assert (run / "best-before-4.safetensors").read_bytes() == before
    assert sorted(p.name for p in run.glob("best*.safetensors")) == ["best-before-4.safetensors", "best.safetensors"]
    assert main(["eval", str(run), "--checkpoint", "best-before-4", "--eval-tasks", "4"]) == 0


def test_metrics_after_the_last_step_alone_are_the_last_column_of_the_curve():
    """Validation reads only the last step (``last_only``, skipping the predictions on the way): the same numbers."""
    trainer = _trainer(mg.Validation(shots=4, query=5, steps=3, inner_batch_size=2))
    batch = mg.held_out_tasks(mg.tasks.Sinusoid(), 5, 4, seed=1, query=5)
    kw = {"inner_batch_size": 2}
    full = trainer.learner.adaptation_metrics(batch, 3, generator=torch.Generator().manual_seed(2), **kw)
    last = trainer.learner.adaptation_metrics(batch, 3, generator=torch.Generator().manual_seed(2), last_only=True,
                                              **kw)
    assert full["loss"].shape == (5, 4) and last["loss"].shape == (5, 1)
    torch.testing.assert_close(last["loss"][:, 0], full["loss"][:, -1], rtol=0, atol=0)


def test_val_as_test_checks_the_validation_split_against_the_tests_sizes(tmp_path, monkeypatch):
    """Validating as the test does draws min(eval_shots) + eval_query images per class; the validation split was
    still held to the training's shots + query (1 + 15 of a split of 2 per class: refused)."""
    from images_fixtures import fake_miniimagenet

    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_miniimagenet(tmp_path / "mini", classes={"train": 6, "val": 5, "test": 5}, per_class=16)
    for split in ("val", "test"):  # two images per class
        rows = (root / f"{split}.csv").read_text().splitlines()
        (root / f"{split}.csv").write_text("\n".join(rows[:1] + [r for i, r in enumerate(rows[1:]) if i % 16 < 2]))
    cfg = load_config("miniimagenet-maml").replace(data_root=str(root), shots=1, query=15, eval_shots=(1,),
                                                    eval_query=1, iterations=1, meta_batch_size=1, val_every=1,
                                                    val_tasks=2, val_as="test", filters=4, device="cpu")
    trainer = make_trainer(cfg, None, progress=False)
    trainer.fit()
    assert trainer.best_val is not None
    with pytest.raises(ConfigError, match="query 15 exceed the 2 examples per class of the val split"):
        make_trainer(cfg.replace(val_as="training"), None, progress=False)


def test_a_resumed_run_validates_a_dropout_model_as_an_uninterrupted_one(tmp_path):
    """The first validation of a session drew its tasks from the generator its evaluation then seeded dropout
    from, so after a resume the validation losses differed from an uninterrupted run's (6.59 against 7.21)."""
    import json

    from torch import nn

    from metagrad.train import Trainer

    def trainer(run_dir, iterations: int) -> Trainer:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))
        learner = mg.MAML(model, inner=mg.SGD(0.01), batching="loop")
        return Trainer(learner, mg.tasks.Sinusoid(shots=5), torch.optim.Adam(learner.parameters(), 1e-3),
                       iterations=iterations, meta_batch_size=2, seed=1, run_dir=run_dir, log_every=1,
                       checkpoint_every=2, val_every=2, val_tasks=4, progress=False)

    def val_losses(run_dir) -> list[float]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r]

    trainer(tmp_path / "a", 6).fit()
    trainer(tmp_path / "b", 4).fit()
    trainer(tmp_path / "b", 6).fit(resume=True)
    assert val_losses(tmp_path / "a") == val_losses(tmp_path / "b") and len(val_losses(tmp_path / "a")) == 3
