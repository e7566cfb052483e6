"""Task distributions: each samples ``TaskBatch`` meta-batches with a ``torch.Generator``."""

from ..batch import Split, TaskBatch
from .base import TaskDistribution
from .fewshot import FewShotClassification
from .linreg import LinearRegression
from .sinusoid import Sinusoid

__all__ = ["FewShotClassification", "LinearRegression", "Sinusoid", "Split", "TaskBatch", "TaskDistribution"]
