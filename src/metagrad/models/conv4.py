"""The few-shot image networks of the MAML and Reptile papers, with batch norm done per task (``TaskBatchNorm``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from .layers import TaskBatchNorm


class Conv4(nn.Module):
    """Four blocks of 3x3 convolution, batch norm and ReLU (Vinyals et al.; MAML appendix A.1).

    ``pool=False``: stride-2 convolutions and a spatial mean before the classifier (Omniglot, 64 filters);
    ``pool=True``: 2x2 max-pooling and a flattened classifier (MiniImagenet, 32 filters).
    """

    def __init__(self, in_channels: int, ways: int, filters: int = 64, pool: bool = False, image_size: int = 28):
        super().__init__()
        if min(in_channels, ways, filters, image_size) < 1:
            raise ConfigError(f"Conv4 sizes must be positive (channels {in_channels}, ways {ways}, filters {filters})")
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for _ in range(4):
            layers += [nn.Conv2d(channels, filters, 3, stride=1 if pool else 2, padding=1), TaskBatchNorm(filters),
                       nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            size = size // 2 if pool else (size + 1) // 2
            channels = filters
        if size < 1:
            raise ConfigError(f"images of {image_size} pixels are too small for four blocks")
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.classifier = nn.Linear(filters * size * size if pool else filters, ways)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        h = h.flatten(1) if self.pool else h.mean(dim=(2, 3))
        return self.classifier(h)


class MLPBN(nn.Module):
    """The MAML paper's non-convolutional network: fully connected layers with batch norm and ReLU."""

    def __init__(self, in_features: int, ways: int, hidden: Sequence[int] = (256, 128, 64, 64)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), TaskBatchNorm(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, ways))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
