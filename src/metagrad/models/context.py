"""The MAML paper's context-vector baseline (appendix C.2, Tables 3-5): free parameters ``z`` concatenated to the input.

"We concatenated a set of free parameters z to the input x, and only allowed the gradient steps to modify z, rather
than modifying the model parameters theta, as in MAML. For image inputs, z was concatenated channel-wise with the
input image." ``ContextVector`` holds ``z`` (the parameter ``context``); the learner's ``adapt=["context"]`` makes the
inner loop adapt ``z`` alone while the meta-gradient trains both ``z``'s initial value and the network's ``theta``
(Rei 2015; CAVIA, Zintgraf et al. 2019, is the same idea with ``z`` reset to 0 for every task).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class ContextVector(nn.Module):
    """``model`` applied to ``[x, z]``: the input with a learned context ``z`` appended.

    Vectors (``channels=False``): ``z`` holds ``size`` numbers, concatenated along the last dimension, so ``model``
    takes ``in_features + size`` inputs. Images ``[B, C, H, W]`` (``channels=True``): ``z`` is ``size`` extra channels,
    so ``model`` takes ``C + size`` channels; with ``image_size=(H, W)`` each channel is a free ``H x W`` map
    (``z`` of shape ``[size, H, W]``), without it channel ``c`` holds the constant ``z[c]`` at every pixel.

    Free maps are what ``metagrad.build`` uses for images: a network that normalises its first layer's response over
    the batch and the pixels (Conv4's batch norm) subtracts whatever a constant channel adds to it, since that is the
    same for every pixel and example; only the zero padding at the image border lets a constant channel through. A
    map's pattern varies over the pixels and survives. (A fully connected net with batch norm after its first layer,
    ``MLPBN``, removes any context, constant or not: it is the same for every example of the batch.)

    ``z`` starts at zero (as CAVIA's context). Its initial value is meta-learned like every other parameter, so the
    start only sets where meta-training begins: at zero the network's output depends on ``x`` alone (the weights
    that read ``z`` multiply zeros) and no seed-dependent offset is added; a random ``z`` would add a fixed random term
    ``W_z z`` to the first layer's response, which its bias (or filters) could represent anyway. The weights that read
    ``z`` still learn from the first meta-iteration: the inner loop moves ``z`` (its gradient ``W_z^T dL/dh`` is not
    zero, ``W_z`` being random), and the query loss of the adapted ``z`` depends on them.

    The wrapped network is the submodule ``model``: with ``adapt`` its parameters are named ``model.<name>`` (e.g.
    ``model.classifier`` for Conv4's head), the context is ``context``.
    """

    def __init__(self, model: nn.Module, size: int, channels: bool = False,
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        if size < 1:
            raise ConfigError(f"context size {size} must be >= 1")
        if image_size is not None and (not channels or len(image_size) != 2 or min(image_size) < 1):
            raise ConfigError(f"image_size {image_size} takes channels=True and two positive sizes (H, W)")
        self.model = model
        self.size = size
        self.channels = channels
        self.image_size = tuple(image_size) if image_size is not None else None
        self.context = nn.Parameter(torch.zeros(size, *(self.image_size or ())))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.concat(x))

    def concat(self, x: Tensor) -> Tensor:
        """``x`` with the context appended: along the last dimension, or as channels (dim 1 of ``[B, C, H, W]``)."""
        z = self.context
        if not self.channels:
            return torch.cat([x, z.expand(*x.shape[:-1], self.size)], dim=-1)
        if x.dim() != 4:
            raise ValueError(f"ContextVector(channels=True) takes images [B, C, H, W], got shape {list(x.shape)}")
        b, _, h, w = x.shape
        if self.image_size is not None and self.image_size != (h, w):
            raise ValueError(f"the context maps are {self.image_size[0]}x{self.image_size[1]}, the images {h}x{w}")
        planes = z if self.image_size is not None else z.view(self.size, 1, 1)
        return torch.cat([x, planes.expand(b, self.size, h, w)], dim=1)

    def extra_repr(self) -> str:
        maps = f", image_size={self.image_size}" if self.image_size is not None else ""
        return f"size={self.size}, channels={self.channels}{maps}"
