"""Task distributions: each samples ``TaskBatch`` meta-batches with a ``torch.Generator``."""

from ..batch import Split, TaskBatch
from .base import TaskDistribution
from .linreg import LinearRegression
from .sinusoid import Sinusoid

__all__ = ["LinearRegression", "Sinusoid", "Split", "TaskBatch", "TaskDistribution"]
