"""Task distributions: each samples ``TaskBatch`` meta-batches with a ``torch.Generator``."""

from .base import Split, TaskBatch, TaskDistribution
from .sinusoid import Sinusoid

__all__ = ["Sinusoid", "Split", "TaskBatch", "TaskDistribution"]
