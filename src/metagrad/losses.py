"""Task losses: ``loss(prediction, target) -> scalar`` averaged over the examples of one task."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error (the sinusoid papers' loss), from elementwise primitives: ``F.mse_loss``'s own backward
    made second-order MAML on the sinusoid MLP 5% slower (CPU time, ``benchmarks/compile_w1.py``'s meta-gradient).
    Shapes must match: broadcasting ``[N, 1]`` against ``[N]`` would silently average an ``[N, N]`` table."""
    if pred.shape != target.shape:
        if not target.is_floating_point() and target.dim() == pred.dim() - 1 and pred.shape[-1] > 1:
            raise ValueError(f"mse: integer targets of shape {list(target.shape)} against predictions "
                             f"{list(pred.shape)} look like class labels; for classification give "
                             "loss_fn=mg.losses.cross_entropy (mse is the default loss, for regression)")
        raise ValueError(f"mse: prediction of shape {list(pred.shape)} against targets of shape "
                         f"{list(target.shape)}; give targets the model's output shape (e.g. y[:, None])")
    return (pred - target).square().mean()


def half_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Half the mean squared error: the trade-off paper's risk (eq. 9), whose gradient step is eq. (12)'s."""
    return 0.5 * mse(pred, target)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy for N-way classification: integer labels of any integer dtype (int32, uint8, ...: torch
    takes int64 alone, uint8 not under vmap) or class probabilities shaped like the logits."""
    if labels.is_floating_point() and labels.shape != logits.shape:
        raise ValueError(f"cross_entropy: labels must be integer class indices 0..N-1, not {labels.dtype} of shape "
                         f"{list(labels.shape)} against logits {list(logits.shape)}; convert them with labels.long()")
    if not labels.is_floating_point():
        if labels.dim() == logits.dim() and labels.shape[-1] == 1 != logits.shape[-1]:
            raise ValueError(f"cross_entropy: labels of shape {list(labels.shape)} against logits "
                             f"{list(logits.shape)}; give one class index per example (shape "
                             f"{list(labels.shape[:-1])}, e.g. y.squeeze(-1))")
        labels = labels.long()
    return F.cross_entropy(logits, labels)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct argmax predictions."""
    return (logits.argmax(dim=-1) == labels).float().mean()
