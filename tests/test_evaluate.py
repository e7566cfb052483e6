"""Evaluation: confidence intervals, divergence accounting, step-size tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import metagrad as mg
from conftest import sinusoid_batch, small_mlp
from metagrad.analysis.stats import mean_ci95


def test_mean_ci95_is_normal_interval_of_the_mean():
    x = torch.randn(600, 3, dtype=torch.float64)
    mean, half = mean_ci95(x)
    ref = x.numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(0))
    np.testing.assert_allclose(half.numpy(), 1.959963984540054 * ref.std(0, ddof=1) / math.sqrt(600))


def test_curves_count_diverged_tasks():
    learner = mg.MAML(small_mlp(), inner=mg.SGD(0.01)).double()
    batch = sinusoid_batch(tasks=20)
    calm = mg.adaptation_curves(learner, batch, steps=3)["loss"]
    assert calm.diverged == [0, 0, 0, 0]
    np.testing.assert_allclose(calm.mean_converged, calm.mean, rtol=1e-12)
    wild = mg.adaptation_curves(learner, batch, steps=3, inner=mg.SGD(1.0))["loss"]  # some tasks blow up
    assert wild.diverged[0] == 0 and 0 < wild.diverged[-1] < 20
    assert wild.mean_converged[-1] < 10 * wild.mean_converged[0] < wild.mean[-1]


def test_a_task_diverged_only_above_ten_times_its_start_and_the_mean_start():
    """A task's loss that grows tenfold but stays below the mean pre-update loss (a tiny loss wobbling) is not
    counted as diverged; above both, or not finite, it is."""

    class Fixed:
        def adaptation_metrics(self, *args, **kwargs):
            return {"loss": torch.tensor([[1e-3, 0.5], [1.0, 20.0], [2.0, math.nan], [3.0, 2.0]])}

    curve = mg.adaptation_curves(Fixed(), sinusoid_batch(tasks=4), steps=1)["loss"]
    assert curve.diverged == [0, 2]  # 1e-3 -> 0.5 (500x, below the mean start 1.5) stays; 1 -> 20 and NaN do not
    assert curve.mean_converged[1] == pytest.approx((0.5 + 2.0) / 2)


@pytest.mark.parametrize("batching", ["auto", "loop"])
def test_curves_of_a_dropout_model_in_training_mode_repeat_and_leave_the_global_stream(batching):
    """Dropout drew from torch's global generator during an evaluation: the same call with the same seed gave
    another curve, and the caller's random stream moved on. Now its draws come from the evaluation's seed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 1)).double()
    learner = mg.MAML(model, inner=mg.SGD(0.01), batching=batching)
    batch = sinusoid_batch(tasks=8)
    state = torch.get_rng_state()
    first, again = (mg.adaptation_curves(learner, batch, steps=2, seed=3)["loss"].mean for _ in range(2))
    assert first == again and torch.equal(torch.get_rng_state(), state)
    assert mg.adaptation_curves(learner, batch, steps=2, seed=4)["loss"].mean != first  # another seed, other draws
    model.eval()
    assert mg.adaptation_curves(learner, batch, steps=2, seed=3)["loss"].mean != first  # the draws counted


def test_tune_step_size_returns_the_best_candidate():
    learner = mg.JointTraining(small_mlp()).double()
    batch = sinusoid_batch(tasks=30)
    best, scores = mg.tune_step_size(learner, batch, steps=5, grid=[0.0, 0.01, 0.1, 100.0])
    assert best == min(scores, key=scores.__getitem__) and set(scores) == {0.0, 0.01, 0.1, 100.0}
    before = learner.adaptation_metrics(batch, 0)["loss"].mean()
    assert math.isclose(scores[0.0], float(before), rel_tol=1e-12)  # step size 0 never moves
    assert scores[100.0] > scores[0.0]  # a step size far too large makes things worse


def test_tune_step_size_scores_as_the_test_runs():
    """Candidates are scored in the batch-norm mode the test uses (non-transductive: each query image alone), and
    with minibatches every candidate shares (a seed, not the global random stream): the same call, the same
    choice."""
    images = np.random.default_rng(0).integers(0, 255, (8, 6, 8, 8), dtype=np.uint8)
    tasks = mg.tasks.FewShotClassification(images, ways=2, shots=3, query=2)
    batch = tasks.sample(6, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    learner = mg.MAML(mg.models.Conv4(1, ways=2, filters=4, image_size=8), loss_fn=mg.losses.cross_entropy)
    grid = [0.01, 0.4]
    _, scores = mg.tune_step_size(learner, batch, 2, grid, transductive=False)
    for lr in grid:
        alone = learner.adaptation_metrics(batch, 2, inner=learner.inner.with_lr(lr), transductive=False)["loss"]
        assert math.isclose(scores[lr], float(alone[:, 1:].mean()), rel_tol=1e-6)
    assert scores != mg.tune_step_size(learner, batch, 2, grid)[1]  # transductive statistics score otherwise
    minibatched = [mg.tune_step_size(learner, batch, 2, grid, inner_batch_size=2, seed=5)[1] for _ in range(2)]
    assert minibatched[0] == minibatched[1]


def test_non_transductive_metrics_of_a_torch_batch_norm_model_follow_the_loop_and_leave_its_statistics():
    """torch's BatchNorm2d in training mode trains on the per-task loop; its non-transductive test (each query
    example with the support set alone) once went through vmap regardless and stopped in torch's error, and every
    evaluation moved the model's running statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).double()
    learner = mg.MAML(model, loss_fn=mg.losses.cross_entropy, inner=mg.SGD(0.1))
    x = torch.randn(2, 9, 1, 6, 6, dtype=torch.float64)
    y = torch.arange(3).repeat(3).expand(2, 9)
    batch = mg.TaskBatch(mg.Split(x[:, :3], y[:, :3]), mg.Split(x[:, 3:], y[:, 3:]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = learner.adaptation_metrics(batch, steps=1, transductive=False)["loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    for t in range(2):  # before adaptation: each query example's output with the task's support set, by hand
        outs = torch.stack([model(torch.cat([x[t, :3], q[None]]))[-1] for q in x[t, 3:]])
        expect = torch.nn.functional.cross_entropy(outs, y[t, 3:])
        assert loss[t, 0].item() == pytest.approx(expect.item(), abs=1e-12)
    model.load_state_dict(before)  # the hand computation moved the statistics; the learner's did not
