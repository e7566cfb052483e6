"""Evaluation: confidence intervals, divergence accounting, step-size tuning."""

from __future__ import annotations

import math

import numpy as np
import torch

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


def test_tune_step_size_returns_the_best_candidate():
    learner = mg.JointTraining(small_mlp()).double()
    batch = sinusoid_batch(tasks=30)
    best, scores = mg.tune_step_size(learner, batch, steps=5, grid=[0.0, 0.01, 0.1, 100.0])
    assert best == min(scores, key=scores.__getitem__) and set(scores) == {0.0, 0.01, 0.1, 100.0}
    before = learner.adaptation_metrics(batch, 0)["loss"].mean()
    assert math.isclose(scores[0.0], float(before), rel_tol=1e-12)  # step size 0 never moves
    assert scores[100.0] > scores[0.0]  # a step size far too large makes things worse
