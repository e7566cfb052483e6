"""An inner loop run to its end (``Trajectory``, ``run_inner``), and an inner rule's state carried from one task's
inner loop to the next (``CarriedState``)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_flatten_with_path, tree_map, tree_unflatten

from ..errors import ConfigError
from ..functional import Params
from ..inner import _key


class Trajectory:
    """The parameters of an inner loop (``MetaLearner.inner_loop``) as an iterable; once it has been iterated to its
    end, ``state`` holds the inner rule's final state (the generator's return value)."""

    def __init__(self, loop: Generator[Params, None, Any]):
        self.loop = loop
        self.state: Any = None

    def __iter__(self) -> Iterator[Params]:
        self.state = yield from self.loop


def run_inner(loop: Generator[Params, None, Any]) -> tuple[Params, Any]:
    """Run an inner loop to its end: the last parameters and the rule's final state."""
    trajectory = Trajectory(loop)
    *_, last = trajectory
    return last, trajectory.state


RESHAPED = ("the inner rule's carried state was made for other parameters (were parameters frozen or unfrozen after "
            "the learner was built?); build the learner after freezing")


class CarriedState(nn.Module):
    """An inner rule's state carried from one task's inner loop to the next (``inner_state="carried"``).

    Held as buffers (tensors as they are, step counts as int64 scalars) so that checkpoints save it with the
    learner, a resumed run continues it bit for bit, and it moves with the learner between devices and dtypes.
    """

    def __init__(self, state: Any, params: Iterable[str]):
        super().__init__()
        self.params = set(params)  # the parameters it is carried for: the adapted ones when the learner was built
        leaves, spec = tree_flatten(state)
        self.skeleton = tree_unflatten(list(range(len(leaves))), spec)  # the structure, leaf i as the number i
        self.names: list[str] = []
        for path, leaf in tree_flatten_with_path(state)[0]:
            name = "_".join(_key(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))) for k in path)
            if isinstance(leaf, Tensor):
                value = leaf.detach().clone()
            elif isinstance(leaf, int):
                value = torch.tensor(leaf, dtype=torch.int64)
            else:
                raise ConfigError(f"inner_state 'carried' cannot hold the inner rule's state entry {name} "
                                  f"({type(leaf).__name__}); carry tensors and step counts")
            self.register_buffer(name, value)
            self.names.append(name)
        self.counts = [not isinstance(leaf, Tensor) for leaf in leaves]

    def value(self, params: Iterable[str]) -> Any:
        """The state as the inner rule uses it (the buffers themselves: rules update functionally) for the parameters
        ``params`` adapted now: refused where they are not those it was carried for."""
        if set(params) != self.params:
            raise ConfigError(RESHAPED)
        leaves = [int(getattr(self, n)) if count else getattr(self, n)
                  for n, count in zip(self.names, self.counts, strict=True)]
        return tree_map(leaves.__getitem__, self.skeleton)

    @torch.no_grad()
    def store(self, state: Any) -> None:
        """Keep ``state`` (the rule's state after the last inner loop) in the buffers."""
        leaves, spec = tree_flatten(state)
        if spec != tree_flatten(self.skeleton)[1]:
            raise ConfigError(RESHAPED)
        for name, leaf in zip(self.names, leaves, strict=True):
            getattr(self, name).copy_(torch.as_tensor(leaf))
