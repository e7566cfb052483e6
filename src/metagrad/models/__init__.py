"""Models: plain ``torch.nn.Module``s; the engine calls them functionally."""

from .context import ContextVector
from .conv4 import MLPBN, Conv4
from .layers import LayerNorm, TaskBatchNorm
from .mlp import MLP

__all__ = ["MLP", "MLPBN", "ContextVector", "Conv4", "LayerNorm", "TaskBatchNorm"]
