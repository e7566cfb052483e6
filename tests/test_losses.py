"""The task losses: ``mse`` written from elementwise primitives equals torch's ``F.mse_loss`` to the second
derivative, and refuses shapes that would broadcast."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian
from torch.nn import functional as F

from metagrad.losses import half_mse, mse


def test_mse_equals_torch_to_the_second_derivative():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(7, 3, dtype=torch.float64, generator=gen), torch.randn(7, 3, dtype=torch.float64,
                                                                                     generator=gen)
    torch.testing.assert_close(mse(pred, target), F.mse_loss(pred, target), rtol=1e-15, atol=0)
    torch.testing.assert_close(grad(mse)(pred, target), grad(F.mse_loss)(pred, target), rtol=1e-14, atol=0)
    torch.testing.assert_close(hessian(mse)(pred, target), hessian(F.mse_loss)(pred, target), rtol=1e-14, atol=0)
    torch.testing.assert_close(half_mse(pred, target), 0.5 * F.mse_loss(pred, target), rtol=1e-15, atol=0)


def test_mse_refuses_shapes_that_broadcast():
    with pytest.raises(ValueError, match=r"\[5, 1\] against targets of shape \[5\]"):
        mse(torch.zeros(5, 1), torch.zeros(5))
