"""The MAML paper's Figure 2 (left) setting: test tasks whose K support points come from one half of the input range,
queried on the other half."""

from __future__ import annotations

import pytest
import torch

from metagrad.config import load_config
from metagrad.reproduce.sinusoid import half_range_tasks, unseen_range


@pytest.mark.parametrize("preset", ["sinusoid-maml", "sinusoid-oracle", "sinusoid-context"])
def test_support_points_lie_in_the_seen_half_and_queries_in_the_other(preset):
    cfg = load_config(preset).replace(eval_query=50)
    batch, amp, phase = half_range_tasks(cfg, (-5.0, 0.0), 40, 5, seed=3)
    xs, xq = batch.support.x[..., 0], batch.query.x[..., 0]
    assert xs.shape == (40, 5) and xq.shape == (40, 50)
    assert bool(((xs >= -5) & (xs <= 0)).all()) and bool(((xq >= 0) & (xq <= 5)).all())
    torch.testing.assert_close(batch.support.y[..., 0], amp[:, None] * torch.sin(xs + phase[:, None]))
    torch.testing.assert_close(batch.query.y[..., 0], amp[:, None] * torch.sin(xq + phase[:, None]))
    same, _, _ = half_range_tasks(load_config("sinusoid-maml").replace(eval_query=50), (-5.0, 0.0), 40, 5, seed=3)
    assert torch.equal(same.support.x[..., 0], xs)  # every method gets the same tasks (the oracle: plus amp, phase)


def test_the_unseen_half_is_the_rest_of_the_range():
    assert unseen_range((-5.0, 5.0), (-5.0, 0.0)) == (0.0, 5.0)
    assert unseen_range((-5.0, 5.0), (1.0, 5.0)) == (-5.0, 1.0)
    with pytest.raises(ValueError, match="one end"):
        unseen_range((-5.0, 5.0), (-1.0, 1.0))
