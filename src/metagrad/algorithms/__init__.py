"""Meta-learning algorithms; each says only how a task's contribution to the meta-gradient is formed."""

from .base import MetaLearner
from .joint import JointTraining
from .maml import FOMAML, MAML
from .reptile import Reptile

__all__ = ["FOMAML", "MAML", "JointTraining", "MetaLearner", "Reptile"]
