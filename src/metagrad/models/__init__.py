"""Models: plain ``torch.nn.Module``s; the engine calls them functionally."""

from .conv4 import MLPBN, Conv4
from .layers import LayerNorm, TaskBatchNorm
from .mlp import MLP

__all__ = ["MLP", "MLPBN", "Conv4", "LayerNorm", "TaskBatchNorm"]
