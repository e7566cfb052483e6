"""metagrad: gradient-based meta-learning on a functional, task-batched engine.

    import metagrad as mg
    model = mg.models.MLP(1, [40, 40], 1)
    learner = mg.MAML(model, inner=mg.SGD(0.01), inner_steps=1)
    tasks = mg.tasks.Sinusoid(shots=10, query=10)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    mg.Trainer(learner, tasks, opt, iterations=10000, meta_batch_size=25).fit()
    curves = mg.adaptation_curves(learner, mg.held_out_tasks(tasks, 600, shots=5, seed=1), steps=10)
"""

__version__ = "0.1.0"

from . import losses, models, tasks
from .algorithms import FOMAML, MAML, JointTraining, MetaLearner, Reptile
from .config import Config, load_config
from .evaluate import Curve, adaptation_curves, held_out_tasks, tune_step_size
from .experiment import load_run, train
from .inner import SGD, Adam, InnerRule
from .train import FitResult, Trainer

__all__ = ["FOMAML", "MAML", "SGD", "Adam", "Config", "Curve", "FitResult", "InnerRule", "JointTraining",
           "MetaLearner", "Reptile", "Trainer", "adaptation_curves", "held_out_tasks", "load_config", "load_run",
           "losses", "models", "tasks", "train", "tune_step_size"]
