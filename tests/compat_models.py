"""The torch.nn pieces users bring, each in a small regression model, for the compatibility matrix.

Each entry builds a model (float64) and a meta-batch whose inputs that model takes; ``VMAP_WRONG`` lists the pieces
whose batched (vmap) meta-gradient torch 2.13 gets wrong or cannot compute, which the self-check must catch. Used by
tests/test_compatibility.py and docs/make_compatibility.py (which writes docs/compatibility.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import metagrad as mg
from metagrad.tasks import Split, TaskBatch


class Head(nn.Module):
    """``body`` on the input, flattened per example, then a linear read-out to one number."""

    def __init__(self, body: nn.Module, features: int):
        super().__init__()
        self.body, self.out = body, nn.Linear(features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x).flatten(1))


class Fn(nn.Module):
    """A function of the activations written in ``forward`` (no module of its own): ``fn(linear(x))``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], width: int = 6):
        super().__init__()
        self.fn, self.inp, self.out = fn, nn.Linear(4, width), nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fn(self.inp(x)))


class Attention(nn.Module):
    """Attention among the examples of a task written by hand: ``softmax(q(x) k(x)^T) v(x)``."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.softmax(self.q(x) @ self.k(x).T, dim=-1) @ self.v(x))


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` among the examples of a task (one sequence); ``need_weights=False`` takes torch's
    scaled-dot-product kernel, ``True`` the path that also returns the weights."""

    def __init__(self, need_weights: bool):
        super().__init__()
        self.inp, self.att, self.out = nn.Linear(4, 6), nn.MultiheadAttention(6, 2, batch_first=True), nn.Linear(6, 1)
        self.need_weights = need_weights

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)[None]
        return self.out(self.att(h, h, h, need_weights=self.need_weights)[0][0])


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer`` over the examples of a task (one sequence); ``norm_first`` is its other path."""

    def __init__(self, norm_first: bool, layer_norm: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 6), nn.Linear(6, 1)
        self.enc = nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True, norm_first=norm_first)
        if layer_norm is not nn.LayerNorm:
            self.enc.norm1, self.enc.norm2 = layer_norm(6), layer_norm(6)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.enc(self.inp(x)[None])[0])


class Recurrent(nn.Module):
    """A recurrent layer over a sequence of 3 steps made from each example."""

    def __init__(self, cell: type[nn.RNNBase]):
        super().__init__()
        self.rnn, self.out = cell(4, 5, batch_first=True), nn.Linear(5, 1)

    def forward(self, x: Tensor) -> Tensor:
        seq = torch.stack([x, x.tanh(), x.sin()], dim=1)
        return self.out(self.rnn(seq)[0][:, -1])


class Embed(nn.Module):
    """``nn.Embedding`` of integer inputs, averaged over positions."""

    def __init__(self, **options):
        super().__init__()
        self.emb, self.out = nn.Embedding(7, 4, **options), nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.emb(x).tanh().mean(1))


class Twice(nn.Module):
    """One ``nn.Linear`` registered under two names (``self.second = self.first``) and applied twice."""

    def __init__(self):
        super().__init__()
        self.inp, self.first, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 1)
        self.second = self.first

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.second(self.first(self.inp(x).tanh()).tanh()).tanh())


class Tied(nn.Module):
    """Two ``nn.Linear`` modules holding one weight Parameter (tied weights), each with its own bias."""

    def __init__(self):
        super().__init__()
        self.inp, self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 1)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.b(self.a(self.inp(x).tanh()).tanh()).tanh())


def mlp(*middle: nn.Module, width: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), *middle, nn.Linear(width, 1))


def evaluating(model: nn.Module) -> nn.Module:
    return model.eval()


# name -> (model factory, input shape of one example, or "tokens" for integer inputs)
PIECES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...] | str]] = {
    "Linear + Tanh": (lambda: mlp(nn.Tanh()), (4,)),
    "Conv1d": (lambda: Head(nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh()), 3 * 4), (2, 6)),
    "Conv2d": (lambda: Head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), 2 * 3 * 3), (1, 5, 5)),
    "Conv3d": (lambda: Head(nn.Sequential(nn.Conv3d(1, 2, 2), nn.Tanh()), 2 * 2 * 2 * 2), (1, 3, 3, 3)),
    "ConvTranspose1d": (lambda: Head(nn.Sequential(nn.ConvTranspose1d(2, 2, 3), nn.Tanh()), 2 * 6), (2, 4)),
    "ConvTranspose2d": (lambda: Head(nn.Sequential(nn.ConvTranspose2d(1, 2, 2), nn.Tanh()), 2 * 4 * 4), (1, 3, 3)),
    "BatchNorm1d (torch)": (lambda: mlp(nn.BatchNorm1d(6, track_running_stats=False), nn.Tanh()), (4,)),
    "BatchNorm2d (torch)": (lambda: Head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False),
                                                       nn.Tanh()), 2 * 3 * 3), (1, 5, 5)),
    "TaskBatchNorm (metagrad)": (lambda: mlp(mg.models.TaskBatchNorm(6), nn.Tanh()), (4,)),
    "LayerNorm (torch)": (lambda: mlp(nn.LayerNorm(6), nn.Tanh()), (4,)),
    "LayerNorm (metagrad)": (lambda: mlp(mg.models.LayerNorm(6), nn.Tanh()), (4,)),
    "F.layer_norm, no affine": (lambda: Fn(lambda h: F.layer_norm(h, h.shape[-1:]).tanh()), (4,)),
    "GroupNorm": (lambda: Head(nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.Tanh()), 4 * 4), (2, 6)),
    "InstanceNorm1d (affine)": (lambda: Head(nn.Sequential(nn.Conv1d(2, 3, 3), nn.InstanceNorm1d(3, affine=True),
                                                           nn.Tanh()), 3 * 4), (2, 6)),
    "InstanceNorm2d (affine)": (lambda: Head(nn.Sequential(nn.Conv2d(1, 2, 2), nn.InstanceNorm2d(2, affine=True),
                                                           nn.Tanh()), 2 * 4 * 4), (1, 5, 5)),
    "Embedding": (Embed, "tokens"),
    "Embedding, padding_idx": (lambda: Embed(padding_idx=0), "tokens"),
    "Linear under two names": (Twice, (4,)),
    "Linear weights tied": (Tied, (4,)),
    "softmax, last dim": (lambda: Fn(lambda h: torch.softmax(h, -1)), (4,)),
    "softmax, dim 0 (over examples)": (lambda: Fn(lambda h: torch.softmax(h, 0)), (4,)),
    "softmax, transposed view": (lambda: Fn(lambda h: torch.softmax(h.T, -1).T), (4,)),
    "log_softmax, last dim": (lambda: Fn(lambda h: F.log_softmax(h, -1)), (4,)),
    "log_softmax, dim 0": (lambda: Fn(lambda h: F.log_softmax(h, 0)), (4,)),
    "attention by hand": (Attention, (4,)),
    "MultiheadAttention, need_weights=True": (lambda: SelfAttention(True), (4,)),
    "MultiheadAttention, need_weights=False": (lambda: SelfAttention(False), (4,)),
    "TransformerEncoderLayer": (lambda: Encoder(False), (4,)),
    "TransformerEncoderLayer, norm_first": (lambda: Encoder(True), (4,)),
    "TransformerEncoderLayer + metagrad.LayerNorm": (lambda: Encoder(False, mg.models.LayerNorm), (4,)),
    "GELU": (lambda: mlp(nn.GELU()), (4,)),
    "SiLU": (lambda: mlp(nn.SiLU()), (4,)),
    "Mish": (lambda: mlp(nn.Mish()), (4,)),
    "MaxPool1d": (lambda: Head(nn.Sequential(nn.Conv1d(2, 3, 3), nn.MaxPool1d(2), nn.Tanh()), 3 * 2), (2, 6)),
    "MaxPool2d": (lambda: Head(nn.Sequential(nn.Conv2d(1, 2, 2), nn.MaxPool2d(2), nn.Tanh()), 2 * 2 * 2), (1, 5, 5)),
    "AvgPool2d": (lambda: Head(nn.Sequential(nn.Conv2d(1, 2, 2), nn.AvgPool2d(2), nn.Tanh()), 2 * 2 * 2), (1, 5, 5)),
    "AdaptiveAvgPool2d": (lambda: Head(nn.Sequential(nn.Conv2d(1, 2, 2), nn.AdaptiveAvgPool2d(1), nn.Tanh()), 2),
                          (1, 5, 5)),
    "Dropout (eval mode)": (lambda: evaluating(mlp(nn.Tanh(), nn.Dropout(0.5))), (4,)),
    "RNN": (lambda: Recurrent(nn.RNN), (4,)),
    "GRU": (lambda: Recurrent(nn.GRU), (4,)),
    "LSTM": (lambda: Recurrent(nn.LSTM), (4,)),
}

# what torch 2.13's vmap gets wrong (a batched second-order meta-gradient that differs from the loop) or cannot run
VMAP_WRONG = {"BatchNorm1d (torch)", "BatchNorm2d (torch)", "LayerNorm (torch)", "InstanceNorm1d (affine)",
              "InstanceNorm2d (affine)", "TransformerEncoderLayer",
              "TransformerEncoderLayer, norm_first", "RNN", "GRU", "LSTM", "Embedding, padding_idx"}
CANNOT_RUN = {"RNN", "GRU", "LSTM"}  # vmap raises; the others give numbers that differ


def model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return PIECES[name][0]().double()


def batch(name: str, tasks: int = 3, shots: int = 5, query: int = 4) -> TaskBatch:
    """A float64 regression meta-batch whose inputs the piece's model takes."""
    shape = PIECES[name][1]
    g = torch.Generator().manual_seed(1)

    def inputs(n: int) -> Tensor:
        if shape == "tokens":
            return torch.randint(0, 7, (tasks, n, 3), generator=g)
        return torch.randn(tasks, n, *shape, generator=g, dtype=torch.float64)

    return TaskBatch(Split(inputs(shots), torch.randn(tasks, shots, 1, generator=g, dtype=torch.float64)),
                     Split(inputs(query), torch.randn(tasks, query, 1, generator=g, dtype=torch.float64)))


ALGOS = ("maml", "meta-sgd")


def learner(name: str, algo: str, **kw) -> mg.MetaLearner:
    """Second-order MAML (2 inner steps) or Meta-SGD on the piece's model."""
    net = model(name)
    inner = mg.SGD(0.1, learn=True, params=mg.functional.params_of(net)) if algo == "meta-sgd" else mg.SGD(0.1)
    return mg.MAML(net, inner=inner, inner_steps=2, **kw).double()
