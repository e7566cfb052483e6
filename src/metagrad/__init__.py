"""metagrad: gradient-based meta-learning on a functional, task-batched engine.

    import metagrad as mg
    model = mg.models.MLP(1, [40, 40], 1)
    learner = mg.MAML(model, inner=mg.SGD(0.01), inner_steps=1)
    tasks = mg.tasks.Sinusoid(shots=10, query=10)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    mg.Trainer(learner, tasks, opt, iterations=10000, meta_batch_size=25).fit()
    curves = mg.adaptation_curves(learner, mg.held_out_tasks(tasks, 600, shots=5, seed=1), steps=10)

The names below are imported on first use (PEP 562), so that ``metagrad`` on the command line can answer Ctrl-C
during its own start-up (importing torch takes seconds) with one line instead of a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_HOMES = {
    "FOMAML": "algorithms", "MAML": "algorithms", "JointTraining": "algorithms", "MetaLearner": "algorithms",
    "Reptile": "algorithms", "Config": "config", "load_config": "config", "Curve": "evaluate",
    "adaptation_curves": "evaluate", "held_out_tasks": "evaluate", "tune_step_size": "evaluate",
    "load_run": "experiment", "SGD": "inner", "Adam": "inner", "InnerRule": "inner",
    "FitResult": "train", "Trainer": "train", "Validation": "train", "Split": "batch", "TaskBatch": "batch",
}
__all__ = sorted([*_HOMES, "losses", "models", "tasks"])


def __getattr__(name: str) -> Any:
    """``mg.MAML`` and the other public names, and any submodule (``mg.models``), imported when first asked for."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # a dependency missing (torch), not the name: say that
                raise
            raise AttributeError(f"module 'metagrad' has no attribute '{name}'") from None
    globals()[name] = value
    return value
