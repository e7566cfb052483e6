"""N-way K-shot classification tasks sampled from an image array ``[classes, examples, ...]``.

A task draws N distinct classes, K support and Q query examples per class (no example twice), and
shuffles the labels 0..N-1. With ``rotations`` every class also appears rotated by 90, 180 and 270
degrees as three new classes (Omniglot, as in both papers); ``distinct_characters`` draws N distinct characters
and turns each by a random multiple of 90 degrees instead (the MAML code), so no task holds one in two rotations.
Sampling is a few tensor operations on the whole meta-batch, deterministic under the generator.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from torch import Tensor

from ..batch import Split, TaskBatch
from ..errors import ConfigError, check_whole


class FewShotClassification:
    """A distribution over N-way classification tasks on one split of an image dataset."""

    def __init__(self, images: np.ndarray | Tensor, ways: int, shots: int, query: int, rotations: bool = False,
                 split: str = "train", distinct_characters: bool = False):
        self.images = torch.as_tensor(images)
        if self.images.dtype != torch.uint8:
            given = images.dtype if isinstance(images, np.ndarray) else self.images.dtype  # the caller's own name
            raise ConfigError(f"images must be uint8 [classes, examples, (channels,) height, width], not "
                              f"{given} (e.g. (x * 255).round().astype(np.uint8) from floats in [0, 1])")
        if self.images.dim() == 5 and self.images.shape[-1] in (1, 3) and self.images.shape[2] not in (1, 3):
            raise ConfigError(f"images of shape {list(self.images.shape)} hold channels last; give [classes, "
                              "examples, channels, height, width] (e.g. np.moveaxis(x, -1, 2))")
        if self.images.dim() not in (4, 5):
            raise ConfigError(f"images must be [classes, examples, (channels,) height, width], not of shape "
                              f"{list(self.images.shape)}")
        self.ways, self.shots, self.query, self.rotations, self.split = ways, shots, query, rotations, split
        self.distinct_characters = distinct_characters and rotations
        self.check(shots)

    def with_query(self, query: int) -> FewShotClassification:
        """The same distribution with ``query`` query examples per class (checked against the support sizes its
        tasks are then drawn with: ``sample``'s ``shots``, e.g. the evaluation's, not the training ``shots``)."""
        out = object.__new__(FewShotClassification)
        out.__dict__.update(self.__dict__, query=query)
        check_whole("query", query, 1)
        return out

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the images and their order: a run records its data's, so that a resume or an evaluation
        on other data (another folder, a copy missing an alphabet, which reshuffles the split) is noticed."""
        return hashlib.sha1(memoryview(self.images.contiguous().numpy())).hexdigest()[:16]  # no copy

    @property
    def num_classes(self) -> int:
        """Classes to draw from (rotated copies count as classes)."""
        return self.images.shape[0] * (4 if self.rotations else 1)

    @property
    def examples_per_class(self) -> int:
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, ...]:
        shape = tuple(self.images.shape[2:])
        return shape if len(shape) == 3 else (1, *shape)

    def check(self, shots: int) -> None:
        """Refuse settings the data cannot serve, naming the limit."""
        for name, value in (("ways", self.ways), ("shots", shots), ("query", self.query)):
            check_whole(name, value)
        if self.ways < 2:
            raise ConfigError(f"ways {self.ways} must be at least 2")
        if shots < 1:
            raise ConfigError(f"shots {shots} must be at least 1")
        if self.query < 1:
            raise ConfigError(f"query {self.query} must be at least 1")
        if self.ways > self.num_classes:
            raise ConfigError(f"ways {self.ways} exceeds the {self.num_classes} classes of the {self.split} split; "
                              "use fewer ways")
        if self.distinct_characters and self.ways > self.images.shape[0]:
            raise ConfigError(f"ways {self.ways} exceeds the {self.images.shape[0]} characters of the {self.split} "
                              "split (distinct_characters); use fewer ways")
        if shots + self.query > self.examples_per_class:
            raise ConfigError(f"shots {shots} + query {self.query} exceed the {self.examples_per_class} examples per "
                              f"class of the {self.split} split; lower shots or query")

    def sample(self, num_tasks: int, generator: torch.Generator, shots: int | None = None) -> TaskBatch:
        """``num_tasks`` tasks: support ``[T, N*K, C, H, W]`` with labels ``[T, N*K]``, query ``[T, N*Q, ...]``."""
        k = self.shots if shots is None else shots
        check_whole("num_tasks", num_tasks, 0)
        self.check(k)
        n, per = self.ways, k + self.query
        # the k largest of iid uniforms: a uniformly random k-subset in random order (topk, not a full sort)
        if self.distinct_characters:  # N distinct characters, each turned by its own random multiple of 90 degrees
            chars = torch.rand(num_tasks, self.images.shape[0], generator=generator).topk(n, dim=1).indices
            classes = chars * 4 + torch.randint(0, 4, (num_tasks, n), generator=generator)
        else:
            classes = torch.rand(num_tasks, self.num_classes, generator=generator).topk(n, dim=1).indices
        examples = torch.rand(num_tasks, n, self.examples_per_class, generator=generator).topk(per, dim=2).indices
        labels = torch.rand(num_tasks, n, generator=generator).argsort(dim=1)  # label of each drawn class
        base, turns = (classes // 4, classes % 4) if self.rotations else (classes, torch.zeros_like(classes))
        x = self.images[base[..., None], examples]  # [T, N, K+Q, (C,) H, W]
        if x.dim() == 5:
            x = x.unsqueeze(3)  # grayscale: add the channel dimension
        if self.rotations:
            x = _rotate(x, turns)
        x = x.float().div_(255.0)
        y = labels[..., None].expand(-1, -1, per)
        support = Split(x[:, :, :k].flatten(1, 2), y[:, :, :k].flatten(1, 2))
        query = Split(x[:, :, k:].flatten(1, 2), y[:, :, k:].flatten(1, 2))
        return TaskBatch(support, query)


def _rotate(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate ``x[t, c]`` (images in the last two dimensions) by ``turns[t, c]`` quarter turns."""
    out = x.clone()
    for r in (1, 2, 3):
        mask = turns == r
        if mask.any():
            out[mask] = torch.rot90(x[mask], r, dims=(-2, -1))
    return out
