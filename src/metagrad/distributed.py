"""Task-sharded meta-gradients over ``torch.distributed``.

Every process samples the same global meta-batch (same seed, same generator state), takes its slice of
the tasks, forms the meta-gradient of that slice, and the slices' gradients are all-reduced with weights
(slice size / meta-batch size), so every process takes the same outer step as one process on the whole
meta-batch. Started by ``torchrun`` (which sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); gloo, on the CPU
(a GPU run under torchrun is refused). If a process dies, the others stop with a message instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .batch import partition
from .errors import MetagradError


def timeout() -> timedelta:
    """How long a process waits for the others (``METAGRAD_DIST_TIMEOUT`` seconds, default 300), read when a group
    starts, so that a bad value stops only a distributed run, with a message."""
    text = os.environ.get("METAGRAD_DIST_TIMEOUT", "300")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise MetagradError(f"METAGRAD_DIST_TIMEOUT={text!r} must be a positive number of seconds (e.g. 300)")
    return timedelta(seconds=seconds)


def launched_world() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 when run alone or when it is no number)."""
    text = os.environ.get("WORLD_SIZE", "1")
    return int(text) if text.isdigit() else 1


_joined = False


def joined() -> bool:
    """Whether this process has joined its torchrun group (``Distributed.from_env``): its trainings share the work."""
    return _joined


class PeerFailure(MetagradError):
    """Another process of a distributed run stopped; this one stops too."""


_peer_failed = False


def peer_failed() -> bool:
    """True once this process has seen another process of its run stop (its group's threads are then unsafe to
    tear down: gloo can abort the interpreter's exit with 'terminate called without an active exception')."""
    return _peer_failed


@dataclass
class Distributed:
    """This process's place in a group of ``world`` processes."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, logs and progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed | None:
        """Join the process group that ``torchrun`` describes in the environment (None when run alone)."""
        text = os.environ.get("WORLD_SIZE", "1")
        if not text.isdigit():
            raise MetagradError(f"WORLD_SIZE={text!r} must be a whole number of processes (torchrun sets it)")
        world = int(text)
        if world <= 1:
            return None
        if not dist.is_initialized():
            cls._check_env(world)
            # CPU tensors (meta-RL's gradients) need gloo even where a GPU is present: one backend per device
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            wait = timeout()
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            try:
                dist.init_process_group(backend, timeout=wait)
            except dist.DistStoreError as e:
                raise MetagradError(f"the {world} processes of the run did not all join within "
                                    f"{wait.total_seconds():g} s ({str(e).splitlines()[0]}); start every one of them "
                                    "(torchrun does), or raise METAGRAD_DIST_TIMEOUT") from None
            except (dist.DistError, RuntimeError, ValueError) as e:  # DistNetworkError: no first process there
                raise MetagradError(f"process {os.environ['RANK']} of {world} could not reach the run's first process "
                                    f"at {where} ({str(e).splitlines()[0][:160]}); start the processes with torchrun, "
                                    "which sets MASTER_ADDR and MASTER_PORT") from None
        global _joined
        _joined = True
        return cls(dist.get_rank(), dist.get_world_size())

    @staticmethod
    def _check_env(world: int) -> None:
        """Refuse, in one line, the torchrun variables that cannot start a group of ``world`` processes."""
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise MetagradError(f"WORLD_SIZE={world} is set but {', '.join(missing)} not: start the processes "
                                "with torchrun (e.g. torchrun --standalone --nproc_per_node=2 -m metagrad ...), "
                                "or unset WORLD_SIZE to run in one process")
        rank, port = os.environ["RANK"], os.environ["MASTER_PORT"]
        if not (rank.isdigit() and int(rank) < world):
            raise MetagradError(f"RANK={rank!r} must be a process number from 0 to {world - 1} (WORLD_SIZE={world}); "
                                "start the processes with torchrun, which numbers them")
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise MetagradError(f"MASTER_PORT={port!r} must be a port number (1-65535); torchrun sets it")

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with process 0's values (one flat broadcast)."""
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        try:
            dist.broadcast(flat, src=0)
        except (RuntimeError, dist.DistError) as e:
            self._failed(e)
        offset = 0
        for t in tensors:
            n = t.numel()
            with torch.no_grad():
                t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def shard(self, num_tasks: int) -> slice:
        """This process's contiguous slice of a meta-batch of ``num_tasks`` tasks (sizes differ by at most 1)."""
        if num_tasks < self.world:
            raise MetagradError(f"meta_batch_size {num_tasks} is smaller than the {self.world} processes; use at "
                                f"least {self.world} tasks per meta-batch")
        return partition(num_tasks, self.world)[self.rank]

    def reduce_gradients(self, module: nn.Module, weight: float) -> None:
        """Replace every ``.grad`` by the weighted sum over processes (one flat all-reduce)."""
        params = [p for p in module.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params]) * weight
        self._all_reduce(flat)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def reduce_metrics(self, metrics: dict[str, float], weight: float) -> dict[str, float]:
        """Weighted sums of scalar metrics over processes."""
        values = torch.tensor([metrics[k] * weight for k in metrics], dtype=torch.float64)
        self._all_reduce(values)
        return dict(zip(metrics, values.tolist(), strict=True))

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one (to stop together)."""
        value = torch.tensor([float(flag)])
        self._all_reduce(value)
        return bool(value.item() > 0)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the processes, in place."""
        self._all_reduce(tensor)

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        try:
            dist.all_reduce(tensor)
        except (RuntimeError, dist.DistError) as e:
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        """A collective call failed: another process stopped; this one stops too, in one line."""
        global _peer_failed
        _peer_failed = True
        raise PeerFailure(f"process {self.rank}: another process of this run stopped or is unreachable "
                          f"({str(e).splitlines()[0]}); stopping too") from None

    def close(self, finished: bool = True) -> None:
        """Leave the group; after a normal finish, wait for every process first (gloo aborts a process whose
        peer tears down its connections while it is still shutting down)."""
        if not dist.is_initialized():
            return
        if finished:
            with contextlib.suppress(RuntimeError, dist.DistError):  # a peer already left: nothing to wait for
                dist.barrier()
        dist.destroy_process_group()


@dataclass(frozen=True)
class Share:
    """This process's part of a meta-batch: its group and the fraction of the tasks it holds. Passed to what
    combines per-task means over the processes (the meta-RL outer step), never stored on a learner."""

    group: Distributed
    fraction: float

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The meta-batch's value of a per-task mean computed on this share: the fraction-weighted sum over the
        processes (every process gets the same value)."""
        y = x.detach() * self.fraction
        self.group.all_reduce(y)
        return y
