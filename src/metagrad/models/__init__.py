"""Models: plain ``torch.nn.Module``s; the engine calls them functionally."""

from .mlp import MLP

__all__ = ["MLP"]
