"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar, both written atomically.

``save(stem, state, info)`` writes ``stem.safetensors`` and ``stem.json``. ``state`` may nest dicts,
lists and tensors (optimizer and scheduler state dicts, RNG states); its tensors go to safetensors and
its shape (with the non-tensor leaves) to the sidecar, so ``load`` returns the same nested object.
Each file is written to a temporary name and renamed; a shared random id in both files detects a pair
torn apart by a crash between the two renames.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

FORMAT = 1


def save(stem: str | Path, state: Any, info: dict[str, Any]) -> None:
    """Write ``stem.safetensors`` (the tensors of ``state``) and ``stem.json`` (``info`` and the rest)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, "", tensors)
    token = uuid.uuid4().hex
    sidecar = {"format": FORMAT, "id": token, **info, "state": skeleton}
    tensor_tmp = stem.with_name(stem.name + ".safetensors.tmp")
    save_file(tensors, str(tensor_tmp), metadata={"id": token})
    _fsync(tensor_tmp)
    json_tmp = stem.with_name(stem.name + ".json.tmp")
    json_tmp.write_text(json.dumps(sidecar, indent=1))
    _fsync(json_tmp)
    os.replace(tensor_tmp, stem.with_suffix(".safetensors"))
    os.replace(json_tmp, stem.with_suffix(".json"))


def load(stem: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by ``save``: ``(state, info)``."""
    stem = Path(stem)
    json_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if not json_path.exists() or not tensor_path.exists():
        raise CheckpointError(f"no checkpoint at {stem} (expected {tensor_path.name} and {json_path.name})")
    try:
        info = json.loads(json_path.read_text())
        with safe_open(str(tensor_path), "pt") as f:
            token = (f.metadata() or {}).get("id")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {stem} is unreadable ({e}); delete it or resume from another") from None
    if info.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {stem} has format {info.get('format')}, this metagrad reads {FORMAT}")
    if token != info.get("id"):
        raise CheckpointError(f"checkpoint {stem}: {tensor_path.name} and {json_path.name} come from different "
                              "saves (interrupted while writing); resume from another checkpoint")
    state = _decode(info.pop("state"), tensors)
    return state, info


def read_info(stem: str | Path) -> dict[str, Any]:
    """The JSON sidecar alone (cheap: no tensors read)."""
    path = Path(stem).with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {stem} ({path.name} missing)")
    info = json.loads(path.read_text())
    info.pop("state", None)
    return info


def exists(stem: str | Path) -> bool:
    stem = Path(stem)
    return stem.with_suffix(".json").exists() and stem.with_suffix(".safetensors").exists()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().clone()
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


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename): a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
