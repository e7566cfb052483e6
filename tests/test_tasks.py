"""Sinusoid task distributions."""

from __future__ import annotations

import math

import pytest
import torch

import metagrad as mg
from metagrad.errors import ConfigError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_ranges_and_targets():
    tasks = mg.tasks.Sinusoid(shots=10, query=15)
    batch = tasks.sample(32, gen())
    assert batch.support.x.shape == (32, 10, 1) and batch.query.y.shape == (32, 15, 1)
    assert batch.support.x.min() >= -5 and batch.support.x.max() <= 5
    amp, phase = tasks.sample_params(32, gen())
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and phase.min() >= 0 and phase.max() <= math.pi
    expected = amp[:, None, None] * torch.sin(batch.query.x + phase[:, None, None])
    torch.testing.assert_close(batch.query.y, expected)


def ks_uniform(values: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance between ``values``' empirical distribution and U(low, high)."""
    u = ((values.flatten().double().sort().values - low) / (high - low)).clamp(0, 1)
    n = u.numel()
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - u
    below = u - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def test_amplitudes_phases_and_inputs_are_uniform_on_their_ranges():
    """The MAML paper's distribution: amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5] (a KS distance under the 0.1%
    critical value 1.95 / sqrt(n), where a skewed or halved range is far above it)."""
    tasks = mg.tasks.Sinusoid(shots=10, query=0)
    n = 4000
    amp, phase = tasks.sample_params(n, gen(7))
    x = tasks.sample(n // 10, gen(8)).support.x
    for values, (low, high) in ((amp, (0.1, 5.0)), (phase, (0.0, math.pi)), (x, (-5.0, 5.0))):
        assert ks_uniform(values, low, high) < 1.95 / math.sqrt(values.numel())


def test_same_seed_same_tasks_and_other_shots():
    tasks = mg.tasks.Sinusoid()
    a, b = tasks.sample(4, gen(3)), tasks.sample(4, gen(3))
    assert torch.equal(a.support.x, b.support.x) and torch.equal(a.query.y, b.query.y)
    assert not torch.equal(a.support.x, tasks.sample(4, gen(4)).support.x)
    assert tasks.sample(4, gen(), shots=5).support.x.shape == (4, 5, 1)


def test_oracle_inputs_carry_amplitude_and_phase():
    tasks = mg.tasks.Sinusoid(oracle=True)
    batch = tasks.sample(3, gen(1))
    amp, phase = tasks.sample_params(3, gen(1))
    assert batch.support.x.shape == (3, 10, 3) and tasks.input_dim == 3
    torch.testing.assert_close(batch.support.x[:, :, 1], amp[:, None].expand(-1, 10))
    torch.testing.assert_close(batch.query.x[:, :, 2], phase[:, None].expand(-1, 10))


def test_grid_variant_support_is_drawn_from_the_grid_and_query_is_the_grid():
    tasks = mg.tasks.Sinusoid(grid=50, shots=10, phase=(0.0, 2 * math.pi))
    batch = tasks.sample(5, gen())
    grid = torch.linspace(-5, 5, 50)
    assert torch.equal(batch.query.x[0, :, 0], grid)
    for t in range(5):
        xs = batch.support.x[t, :, 0]
        assert len(set(xs.tolist())) == 10  # without replacement
        assert all(bool((grid == v).any()) for v in xs)


@pytest.mark.parametrize(("kwargs", "match"), [({"shots": 0}, "shots 0"), ({"query": -1}, "query"),
                                               ({"grid": 5, "shots": 10}, "exceeds grid"),
                                               ({"amplitude": (5.0, 0.1)}, "amplitude")])
def test_bad_task_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        mg.tasks.Sinusoid(**kwargs)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("amplitude", (0.1, float("inf")), "amplitude .* must be a pair"),
    ("x_range", (float("-inf"), 5.0), "x_range .* must be a pair"),
    ("amplitude", (0.1,), r"amplitude \(0.1,\) must be a pair \[low, high\] of finite numbers"),
    ("phase", (2.0, 1.0), r"phase range \[2, 1\] is empty"),
])
def test_sinusoid_ranges_must_be_finite_pairs(field, value, match):
    """An infinite amplitude sampled y = inf, an infinite x_range NaN inputs; a one-number range was a bare
    unpacking ValueError."""
    with pytest.raises(ConfigError, match=match):
        mg.tasks.Sinusoid(**{field: value})
