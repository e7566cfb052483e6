"""Every seed offset in one place: each stream of random numbers (training tasks, validation tasks, the tasks that
choose a test-time step size, test tasks, a process's episodes) comes from its own seed, so none reuses another's."""

from __future__ import annotations

import torch

VAL_SEED_OFFSET = 1_000_003  # validation tasks (and meta-RL step-size tuning): never the training stream
VAL_EVAL_SEED_OFFSET = 777  # tasks that choose test-time step sizes (supervised): not the test tasks
HALF_RANGE_SEED_OFFSET = 555  # sinusoid tasks whose K points come from half the input range (MAML Figure 2)


def process_episodes(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The episode generator of one process at one meta-RL iteration under ``torchrun`` (its own stream)."""
    return torch.Generator().manual_seed(hash((seed, iteration, rank)) % 2**62)
