"""The trainer: learning, resume, interruption, divergence, logs."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import metagrad as mg
from metagrad.config import load_config
from metagrad.errors import CheckpointError, TrainingDiverged
from metagrad.experiment import evaluate, make_trainer

FAST = {"eval_tasks": 200, "eval_shots": (5,), "val_every": 0, "log_every": 10}


def test_maml_beats_joint_training_after_adaptation():
    """A short seeded run: MAML's 5-shot MSE after 10 steps is below the pretrained baseline's."""
    results = {}
    for preset in ("sinusoid-maml", "sinusoid-pretrained"):
        cfg = load_config(preset).replace(iterations=1500, **FAST)
        trainer = make_trainer(cfg, None, progress=False)
        trainer.fit()
        results[preset] = evaluate(trainer.learner, cfg)[5]["loss"]["mean"]
    maml, joint = results["sinusoid-maml"], results["sinusoid-pretrained"]
    assert maml[10] < 1.2, maml
    assert maml[10] < 0.6 * joint[10], (maml, joint)
    assert maml[10] < maml[0]  # adaptation helps


def _config(preset: str = "sinusoid-maml", **kw):
    return load_config(preset).replace(**{"iterations": 30, "meta_batch_size": 4, "checkpoint_every": 10, **FAST, **kw})


def _final_state(trainer: mg.Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.learner.state_dict().items()}


@pytest.mark.parametrize("preset", ["sinusoid-maml", "sinusoid-reptile", "sinusoid-metasgd"])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, preset):
    cfg = _config(preset, val_every=10)
    straight = make_trainer(cfg, tmp_path / "straight", progress=False)
    straight.fit()
    first = make_trainer(cfg, tmp_path / "split", progress=False,
                         on_iteration=lambda t, i, m: t.request_stop() if i == 20 else None)
    assert first.fit().iteration == 20
    second = make_trainer(cfg, tmp_path / "split", progress=False)
    second.fit(resume=True)
    a, b = _final_state(straight), _final_state(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.best_val == straight.best_val
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    straight_lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    drop = ("elapsed",)
    assert [{k: v for k, v in x.items() if k not in drop} for x in lines] == [
        {k: v for k, v in x.items() if k not in drop} for x in straight_lines]


def test_ctrl_c_saves_and_the_resumed_run_matches(tmp_path):
    cfg = _config()
    straight = make_trainer(cfg, tmp_path / "straight", progress=False)
    straight.fit()

    def interrupt(trainer, iteration, metrics):
        if iteration == 7:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = make_trainer(cfg, tmp_path / "run", progress=False, on_iteration=interrupt)
    result = stopped.fit()
    assert result.stopped == "interrupted" and result.iteration == 7
    assert json.loads((tmp_path / "run" / "last.json").read_text())["iteration"] == 7
    resumed = make_trainer(cfg, tmp_path / "run", progress=False)
    assert resumed.fit(resume=True).stopped == "done"
    a, b = _final_state(straight), _final_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_after_the_final_check_still_stops_the_caller(tmp_path):
    """Ctrl-C that lands after the last iteration's stop check (handlers still installed) was acknowledged and then
    lost: the run reported done, and `reproduce` or `tradeoff` went on to their next runs."""
    cfg = _config(iterations=3)
    trainer = make_trainer(cfg, tmp_path / "run", progress=False)
    check, sent = trainer._stop_reason, []

    def check_then_signal(session_start):
        reason = check(session_start)
        if trainer.iteration == 3 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return reason

    trainer._stop_reason = check_then_signal
    save, saves = trainer.save, []
    trainer.save = lambda name, *a, **k: saves.append((name, trainer.iteration)) or save(name, *a, **k)
    result = trainer.fit()
    assert sent and result.stopped == "interrupted" and result.iteration == 3
    assert saves.count(("last", 3)) == 1  # the final iteration's checkpoint, not written again on the way out
    again = make_trainer(cfg, tmp_path / "run", progress=False).fit(resume=True)
    assert again.stopped == "done" and again.iteration == 3


def test_divergence_stops_with_a_clear_error(tmp_path):
    cfg = _config(outer_lr=1e6, inner_lr=(10.0,))
    trainer = make_trainer(cfg, tmp_path / "run", progress=False)
    with pytest.raises(TrainingDiverged, match=r"diverged; lower the outer step size \(outer_lr, now 1e\+06\) or the "
                                               r"inner one \(inner_lr: SGD\(lr=\[10.0\]"):
        trainer.fit()


def test_an_existing_run_is_not_overwritten(tmp_path):
    cfg = _config(iterations=10)
    make_trainer(cfg, tmp_path / "run", progress=False).fit()
    with pytest.raises(CheckpointError, match="pass --resume"):
        make_trainer(cfg, tmp_path / "run", progress=False).fit()


def test_time_budget_stops_with_a_checkpoint(tmp_path):
    cfg = _config(time_budget=1e-9)
    result = make_trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result.stopped == "time_budget" and result.iteration == 1
    assert json.loads((tmp_path / "run" / "last.json").read_text())["iteration"] == 1


def test_the_logged_outer_step_is_the_one_each_iteration_took(tmp_path):
    """Annealed linearly to 0 over 4 iterations, the steps taken are 0.1, 0.075, 0.05, 0.025 (the schedule moves on
    after each step: what it holds afterwards is the next iteration's)."""
    cfg = _config("sinusoid-reptile", iterations=4, log_every=1, outer_lr=0.1, outer_lr_schedule="linear")
    make_trainer(cfg, tmp_path / "run", progress=False).fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["outer_lr"] for x in lines if "meta_loss" in x] == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_metrics_lines_follow_their_schema(tmp_path):
    """Lines every ``log_every`` iterations, each meta-loss the mean of its window's iterations."""
    losses = []
    make_trainer(_config(val_every=10, log_every=10), tmp_path / "run", progress=False,
                 on_iteration=lambda _, i, m: losses.append(m["meta_loss"])).fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "meta_loss" in x]
    val = [x for x in lines if "val_loss" in x]
    assert [x["iteration"] for x in train] == [10, 20, 30] and [x["iteration"] for x in val] == [10, 20, 30]
    assert len(losses) == 30 and len(set(losses)) > 20
    for x in train:
        assert x["meta_loss"] == pytest.approx(sum(losses[x["iteration"] - 10:x["iteration"]]) / 10, rel=1e-12)
    assert all(set(x) == {"iteration", "meta_loss", "outer_lr", "elapsed"} for x in train)
    assert all(set(x) == {"iteration", "val_loss", "best"} and x["val_loss"] > 0 for x in val)


def test_a_meta_gradient_that_is_not_finite_stops_before_the_step():
    """A finite meta-loss with a NaN or infinite gradient (here sqrt's at 0) used to write NaN parameters, and the
    next iteration blamed the outer step size."""

    class SqrtScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w.sqrt() * x + self.b

    model = SqrtScale()
    trainer = mg.Trainer(mg.MAML(model, inner=mg.SGD(0.1), adapt=["b"]), mg.tasks.Sinusoid(shots=5, query=5),
                         torch.optim.Adam(model.parameters(), lr=1e-3), iterations=2, meta_batch_size=2,
                         progress=False)
    with pytest.raises(TrainingDiverged, match="the meta-gradient holds NaN or infinite values at iteration 1"):
        trainer.fit()
    assert model.w.item() == 0.0  # the parameters are left as they were


@pytest.mark.parametrize("compile", [False, True])
def test_the_trainer_steps_on_each_iterations_meta_gradient_alone(compile):
    """The trainer takes no zero_grad (meta_gradient replaces ``.grad``): its parameters are those of a loop that
    zeroes before each meta-gradient, and a compiled run writes into the same ``.grad`` tensors every iteration
    (zero_grad's None had it allocate, and dynamo guard, fresh ones each time)."""
    tasks = mg.tasks.Sinusoid()
    runs, fields = [], []
    for trainer_run in (False, True):
        torch.manual_seed(0)
        learner = mg.MAML(torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)),
                          inner=mg.SGD(0.01), compile=compile)
        opt = torch.optim.Adam(learner.parameters(), lr=0.01)
        if trainer_run:
            def look(trainer, iteration, metrics):
                fields.append([p.grad for p in trainer.learner.parameters()])  # held: no id is reused

            mg.Trainer(learner, tasks, opt, iterations=4, meta_batch_size=5, progress=False, seed=0,
                       on_iteration=look).fit()
        else:
            gen = torch.Generator().manual_seed(0)
            for _ in range(4):
                opt.zero_grad()
                learner.meta_gradient(tasks.sample(5, gen), gen)
                opt.step()
        runs.append([p.detach().clone() for p in learner.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    if compile:
        assert all(a is b for later in fields[1:] for a, b in zip(fields[0], later, strict=True))
