"""Checkpoints: one atomic, checksummed file each.

``save(stem, state, info)`` writes ``stem.safetensors``: the tensors of ``state`` (which may nest dicts, lists and
tensors: optimizer and scheduler state dicts, RNG states), and in its header ``info`` with the shape of ``state``
(the non-tensor leaves) and a SHA-256 of all of it. The file is written to a temporary name, flushed to disk and
renamed, so ``stem.safetensors`` is always a whole checkpoint, the new one or the one before; a kill -9 or a full
disk at any moment leaves a resumable run. ``load`` verifies the checksum: a truncated or bit-flipped file is named
in one line, never used. ``stem.json`` is a readable copy of ``info`` for people and scripts; nothing reads it back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import save as serialize

from . import files
from .errors import CheckpointError, ConfigError, Damaged

M = TypeVar("M", bound=torch.nn.Module)

FORMAT = 2
HEADER_KEY, DIGEST_KEY = "metagrad", "sha256"


def paths(stem: str | Path) -> tuple[Path, Path]:
    """``stem.safetensors`` and ``stem.json``: the suffix appended, so that a dotted name (``model.v1``,
    ``maml_lr0.01``) is a name of its own; a name given with either suffix means the same checkpoint."""
    stem = Path(stem)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    if not stem.name or stem.name in (".", ".."):
        raise CheckpointError(f"checkpoint path {str(stem)!r} has no file name; give one, e.g. runs/model")
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save(stem: str | Path, state: Any, info: dict[str, Any]) -> None:
    """Write ``stem.safetensors`` (``state`` and ``info``, checksummed) atomically, then the readable ``stem.json``."""
    final, sidecar = paths(stem)
    if final.is_dir() or Path(stem).is_dir():
        raise CheckpointError(f"{stem} is a folder; give a file name in it, e.g. {Path(stem) / 'model'}")
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, "", tensors)
    if complex_ := next((name for name, t in tensors.items() if t.is_complex()), None):
        raise CheckpointError(f"{complex_} is a complex tensor, which safetensors cannot store; save the model's "
                              "real and imaginary parts as real parameters (torch.view_as_real)")
    final.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"format": FORMAT, **info, "state": skeleton})
    data = serialize(tensors, metadata={HEADER_KEY: header, DIGEST_KEY: _digest(header, tensors)})
    with files.signals_deferred():  # a signal in between would leave the readable copy one checkpoint behind
        files.replace_atomically(final, lambda f: f.write(data))  # a full disk: an OSError naming the file
        _fsync_dir(final.parent)
        files.write_json(sidecar, {"format": FORMAT, **info})


def load(stem: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read and verify a checkpoint written by ``save``: ``(state, info)``."""
    path, _ = paths(stem)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {stem} ({path.name} is missing)")
    try:
        data = path.read_bytes()  # one read of one file: a checkpoint replaced meanwhile is never half-seen
        meta, tensors = _metadata(io.BytesIO(data)), safetensors.torch.load(data)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise Damaged(f"checkpoint {path}", _first_line(e), _instead(path)) from None
    if HEADER_KEY not in meta:
        raise CheckpointError(f"checkpoint {path} was not written by this metagrad (format 1 or another program); "
                              "start a new run")
    if meta.get(DIGEST_KEY) != _digest(meta[HEADER_KEY], tensors):
        raise Damaged(f"checkpoint {path}", "its checksum does not match its contents", _instead(path))
    info = json.loads(meta[HEADER_KEY])
    if info.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {info.get('format')}, this metagrad reads {FORMAT}")
    return _decode(info.pop("state"), tensors), info


def save_learner(path: str | Path, learner: torch.nn.Module) -> None:
    """``learner.save``: its state dict, labelled with its class and its layers' kinds."""
    save(path, {"learner": learner.state_dict()}, {"learner": type(learner).__name__, "layers": layers(learner)})


def layers(learner: torch.nn.Module) -> list[str]:
    """The kinds of the innermost modules of a learner's network (its ``model`` or ``policy``), in order: what its
    state dict does not hold (a ReLU or a Tanh). The inner rule is left to the state dict's own check."""
    network = next((m for m in (getattr(learner, "model", None), getattr(learner, "policy", None)) if m is not None),
                   learner)  # (not `or`: an empty nn.Sequential is falsy)
    return [type(m).__name__ for m in network.modules() if next(m.children(), None) is None]


def check_layers(path: str | Path, saved: object, learner: torch.nn.Module) -> None:
    """Refuse a file saved from a network of other layer kinds (a ReLU policy's parameters loaded into a tanh one of
    the same shapes went through without a word); files from before the record pass."""
    mine = layers(learner)
    if not isinstance(saved, list) or saved == mine:
        return
    at = next((i for i, (a, b) in enumerate(zip(saved, mine, strict=False)) if a != b), min(len(saved), len(mine)))
    theirs, ours = (saved[at] if at < len(saved) else "nothing"), (mine[at] if at < len(mine) else "nothing")
    raise CheckpointError(f"{path} was saved from a model whose layer {at + 1} is {theirs}, where this one's is "
                          f"{ours}; build the learner as it was saved (the same layers and activations)")


def load_learner(path: str | Path, learner: M) -> M:
    """``learner.load``: the state saved by ``save_learner`` or a run's checkpoint; a file of another learner class
    or shape is refused in one line and leaves ``learner`` as it was."""
    state, info = load(path)
    saved, mine = info.get("learner"), type(learner).__name__
    if isinstance(saved, str) and saved != mine:
        raise CheckpointError(f"{path} holds a {saved} learner, not a {mine}; load it into a {saved} (the same model "
                              "and inner rule)")
    if not isinstance(state.get("learner") if isinstance(state, dict) else None, dict):
        raise CheckpointError(f"{path} holds no learner state (a checkpoint of another kind)")
    check_layers(path, info.get("layers"), learner)
    restore_learner(learner, state["learner"], str(path))
    return learner


def restore_learner(learner: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """``learner.load_state_dict(state)``; a state of another model, inner rule or size is refused in one line and
    leaves ``learner`` as it was (``load_state_dict`` copies what fits before it raises: undone here)."""
    kept = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    try:
        learner.load_state_dict(state)
    except (RuntimeError, ConfigError) as e:
        learner.load_state_dict(kept)
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        raise CheckpointError(f"{where} does not fit this learner ({'; '.join(lines)[:400]}); build the learner as it "
                              "was saved (model or policy, inner rule, learned step sizes, inner_state)") from None


def training_state(learner: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """A trainer's learner and outer optimizer as a checkpoint holds them (the optimizer's class recorded, so that
    ``restore_training`` refuses another by name)."""
    return {"learner": learner.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
            "optimizer_class": type(optimizer).__name__ if optimizer else None}


def restore_training(learner: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
                     where: str) -> None:
    """``training_state`` back: the optimizer checked first (nothing loaded if it or the learner does not fit),
    then the learner, then the optimizer's state under its own kernel choice."""
    saved = state.get("optimizer") if optimizer is not None else None
    if saved is not None:
        check_optimizer_state(optimizer, saved, state.get("optimizer_class"), where)
    restore_learner(learner, state["learner"], where)
    if saved is not None:
        load_optimizer_state(optimizer, saved)


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], saved_class: str | None,
                          where: str) -> None:
    """Refuse in one line, before anything is loaded, the state of another kind of optimizer (``saved_class``, as
    the checkpoint records it: torch would load Adam's state into SGD and fail at the next step) or of another
    number of meta-parameters (another model, or learned step sizes added or dropped)."""
    mine = type(optimizer).__name__
    if saved_class is not None and saved_class != mine:
        raise CheckpointError(f"{where} was saved with the outer optimizer {saved_class}, this trainer's is {mine}; "
                              f"resume with {saved_class}, or start a new run elsewhere")
    saved = [len(g["params"]) for g in state.get("param_groups", [])]
    held = [len(g["params"]) for g in optimizer.param_groups]
    if saved != held:
        raise CheckpointError(f"{where} was saved with other meta-parameters (its outer optimizer held {saved}, this "
                              f"one holds {held}); build the learner and its optimizer as they were saved (model, "
                              "inner rule, learned step sizes)")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimizer's kernel choice (``fused``, ``foreach``), which
    torch would take from the saved groups: a run resumed with ``compile`` changed steps as a run started so."""
    mine = optimizer.param_groups
    groups = [{**g, **{k: m[k] for k in ("fused", "foreach") if k in m}}
              for g, m in zip(state["param_groups"], mine, strict=True)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def _instead(path: Path) -> str:
    """What to do about a damaged checkpoint: resume from another of the run (a copy over ``last`` is what
    ``--resume`` reads), evaluate another, or start anew."""
    if path.stem == "last":
        other = path.with_name("best.safetensors")
        if not other.exists():
            snapshots = sorted(p.name.removesuffix(".safetensors") for p in path.parent.glob("snapshot-*.safetensors"))
            return (f"evaluate another checkpoint of the run (--checkpoint {snapshots[-1]}), or start a new run"
                    if snapshots else "the run has no other checkpoint (no best) to evaluate or resume: start a new "
                    "run")
        holds = _holds_run_state(other)
        if holds is None:
            return f"{other.name} is damaged too: start a new run (or restore the run's folder from a copy)"
        if not holds:  # a meta-RL run's best: the policy alone
            return (f"evaluate {other} (--checkpoint best; it holds the policy alone, no run to resume), or start a "
                    "new run")
        return (f"evaluate the best checkpoint instead (--checkpoint best), or resume from it (cp {other} {path}, "
                "then resume); or start a new run")
    return "evaluate another checkpoint of the run (e.g. --checkpoint last), or start a new run"


def _holds_run_state(path: Path) -> bool | None:
    """Whether a checkpoint holds what resuming needs (the random state beside the learner), not the learner alone;
    None where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return "rng" in json.loads(_metadata(f)[HEADER_KEY]).get("state", {})
    except (OSError, KeyError, ValueError):
        return None


def read_info(stem: str | Path) -> dict[str, Any]:
    """The checkpoint's ``info`` alone (its header: no tensors read, no checksum verified)."""
    path, _ = paths(stem)
    try:
        with open(path, "rb") as f:  # one open file: the checkpoint as it was, even if replaced meanwhile
            meta = _metadata(f)
        info = json.loads(meta[HEADER_KEY])
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {stem} ({path.name} is missing)") from None
    except KeyError:  # a whole safetensors file without metagrad's header: as load() says it
        raise CheckpointError(f"checkpoint {path} was not written by this metagrad (format 1 or another program); "
                              "start a new run") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise Damaged(f"checkpoint {path}", _first_line(e), _instead(path)) from None
    info.pop("state", None)
    return info


def _metadata(f: BinaryIO) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its header: 8 bytes of length, then JSON); a file shorter than
    its header's tensors reach (cut short after the header) refused, so that a reader of the header alone does not
    count it whole."""
    length = int.from_bytes(f.read(8), "little")
    if length > 100_000_000:  # safetensors' own limit; a damaged length would otherwise be read as such
        raise ValueError(f"its header claims {length} bytes")
    header = f.read(length)
    if len(header) != length or length == 0:
        raise ValueError(f"the header is cut short ({len(header)} of {length} bytes)")
    table = json.loads(header)
    try:
        end = max((int(t["data_offsets"][1]) for k, t in table.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, AttributeError):
        raise ValueError("its header is not a safetensors table") from None
    size = f.seek(0, io.SEEK_END)
    if size < 8 + length + end:
        raise ValueError(f"the file is cut short ({size} of {8 + length + end} bytes)")
    return table.get("__metadata__") or {}


def exists(stem: str | Path) -> bool:
    return paths(stem)[0].exists()


def runs_in(folder: str | Path) -> list[Path]:
    """The run directories under ``folder`` (those with a last checkpoint), at any depth."""
    return sorted(p.parent for p in Path(folder).rglob("last.safetensors")) if Path(folder).is_dir() else []


def runs_inside(folder: str | Path) -> str:
    """For a folder with no run of its own: ``; it holds the runs a, b (...): give one, e.g. FOLDER/a`` when its
    subfolders hold runs (a reproduction's output), else nothing."""
    runs = runs_in(folder)
    if not runs:
        return ""
    names = ", ".join(r.relative_to(folder).as_posix() for r in runs)
    return f"; it holds the runs {names} (a reproduction's folder): give one of them, e.g. {runs[0]}"


def _digest(header: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header.encode())
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        h.update(f"\0{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()  # a GPU run's checkpoint is read anywhere
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path or '/'}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj
