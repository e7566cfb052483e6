"""Task losses: ``loss(prediction, target) -> scalar`` averaged over the examples of one task."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error (the sinusoid papers' loss)."""
    return F.mse_loss(pred, target)


def half_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Half the mean squared error: the trade-off paper's risk (eq. 9), whose gradient step is eq. (12)'s."""
    return 0.5 * F.mse_loss(pred, target)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy for N-way classification."""
    return F.cross_entropy(logits, labels)



def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions."""
    return (logits.argmax(dim=-1) == labels).float().mean()
