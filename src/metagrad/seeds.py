"""Every seed offset in one place: each stream of random numbers (training tasks, validation tasks, the tasks that
choose a test-time step size, test tasks, a process's episodes) comes from its own seed, so none reuses another's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

VAL_SEED_OFFSET = 1_000_003  # validation tasks (and meta-RL step-size tuning): never the training stream
VAL_EVAL_SEED_OFFSET = 777  # tasks that choose test-time step sizes (supervised): not the test tasks
HALF_RANGE_SEED_OFFSET = 555  # sinusoid tasks whose K points come from half the input range (MAML Figure 2)


def process_episodes(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The episode generator of one process at one meta-RL iteration under ``torchrun`` (its own stream)."""
    return torch.Generator().manual_seed(hash((seed, iteration, rank)) % 2**62)


@contextlib.contextmanager
def global_stream_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Within, torch's global generator (what dropout draws from) runs on a stream seeded from ``generator``, and is
    restored after: an evaluation given a generator repeats, and leaves its caller's stream where it was. Without a
    generator the global stream is used as it is."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):  # restores the generators seeded below
        torch.default_generator.manual_seed(seed)  # (torch.manual_seed would reseed every GPU, restored or not)
        if cuda:
            torch.cuda.default_generators[device.index if device.index is not None else
                                          torch.cuda.current_device()].manual_seed(seed)
        yield
