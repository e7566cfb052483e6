"""Short fixed-seed runs of every supervised preset and every meta-RL method, recorded once per kind of machine
(tests/golden/runs.json) so that a change of the run layer can be checked to give the same metrics and parameters.
Another CPU rounds convolutions and matrix products differently, and a few iterations of TRPO's line search turn
that into other steps: only the MLP regression runs (STABLE) agree across CPUs, to 1e-6.

    .venv/bin/python tests/golden_runs.py record     # (re)record this machine kind's runs (only on purpose, from a
                                                     # commit whose runs equal another kind's recording where stable)
    .venv/bin/python tests/golden_runs.py check      # compare with this machine kind's recording, bit for bit
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "runs.json"
TIMINGS = {"elapsed", "seconds", "sample_seconds"}

SUPERVISED = ["sinusoid-maml", "sinusoid-fomaml", "sinusoid-metasgd", "sinusoid-pretrained", "sinusoid-oracle",
              "sinusoid-reptile", "sinusoid-reptile-maml", "linreg-maml", "linreg-drs", "omniglot-maml",
              "omniglot-fomaml", "omniglot-reptile", "omniglot-maml-nonconv", "omniglot-anil", "omniglot-context",
              "sinusoid-context"]
STABLE = [f"supervised/{name}" for name in SUPERVISED if not name.startswith("omniglot")]  # equal across CPUs
SUPERVISED_SETTINGS = {"iterations": 4, "meta_batch_size": 3, "log_every": 1, "checkpoint_every": 2, "val_every": 2,
                       "val_tasks": 4, "threads": 1}
RL = ["maml-trpo", "fomaml-trpo", "pretrained", "oracle", "sgmrl", "sgmrl-full", "maml-vpg", "emaml", "promp",
      "trpo-maml", "drs-ppo", "drs-trpo"]
RL_SETTINGS = {"iterations": 3, "meta_batch_size": 4, "episodes": 3, "horizon": 12, "hidden": (16, 16),
               "checkpoint_every": 2}


def digest(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A bit-exact hash of a state dict's tensors, and two sums that a tolerant comparison can use."""
    h = hashlib.sha256()
    total, absolute = 0.0, 0.0
    for k in sorted(state):
        t = state[k].detach().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
        if t.is_floating_point():
            total += float(t.double().sum())
            absolute += float(t.double().abs().sum())
    return {"sha256": h.hexdigest(), "sum": total, "abs_sum": absolute}


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMINGS} for ln in lines]


def _learner_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from metagrad import checkpoint

    state, _ = checkpoint.load(run_dir / "last")
    return state["learner"]


def run_supervised(name: str, tmp: Path) -> dict[str, Any]:
    """``metagrad train --config NAME`` with the short settings (Omniglot: a small synthetic copy)."""
    from images_fixtures import fake_omniglot
    from metagrad.cli import main

    args = ["train", "--config", name, "--out", str(tmp / name), "--no-progress"]
    for k, v in SUPERVISED_SETTINGS.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    if name.startswith("omniglot"):
        data = tmp / "omniglot-data"
        if not data.exists():
            fake_omniglot(data, alphabets=2, characters=4, drawings=20)
        args += ["--data-root", str(data), "--ways", "3", "--shots", "1", "--query", "2"]
    assert main(args) == 0
    return {"metrics": _metrics(tmp / name), "learner": digest(_learner_state(tmp / name))}


def run_rl(name: str, tmp: Path) -> dict[str, Any]:
    """``metagrad train --config METHOD-navigation`` with the short settings."""
    from metagrad.cli import main

    args = ["train", "--config", f"{name}-navigation", "--out", str(tmp / name), "--no-progress"]
    for k, v in RL_SETTINGS.items():
        args += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    assert main(args) == 0
    return {"metrics": _metrics(tmp / name), "learner": digest(_learner_state(tmp / name))}


def machine() -> str:
    """The CPU model, its widest vector instructions and the torch version: results are bit for bit the same only on
    the same kind of machine (two virtual machines both named "AMD EPYC", one with AVX-512 and one without, round
    the convolutions differently)."""
    import platform

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
               platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{cpu} / {isa} / torch {torch.__version__}"


def _without_isa(kind: str) -> str:
    """The key recordings had before the vector instructions were part of it."""
    cpu, _, rest = kind.partition(" / ")
    return f"{cpu} / {rest.partition(' / ')[2]}"


def run_all() -> dict[str, Any]:
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in SUPERVISED:
            out[f"supervised/{name}"] = run_supervised(name, tmp)
        for name in RL:
            out[f"rl/{name}"] = run_rl(name, tmp)
    return out


def differences(got: dict[str, Any], want: dict[str, Any], exact: bool) -> list[str]:
    """What differs between two recordings (exact: hashes and values bit for bit; else to 1e-6 relative)."""
    found = []

    def close(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float) and not exact:
            return abs(a - b) <= 1e-6 * max(1.0, abs(b))
        return a == b

    for case, w in want.items():
        g = got.get(case)
        if g is None:
            found.append(f"{case}: not run")
            continue
        if len(g["metrics"]) != len(w["metrics"]):
            found.append(f"{case}: {len(g['metrics'])} metric lines, recorded {len(w['metrics'])}")
        for i, (a, b) in enumerate(zip(g["metrics"], w["metrics"], strict=False)):
            for k in b:  # every recorded number; metrics logged since (outer_lr) are additions, not differences
                if not close(a.get(k), b.get(k)):
                    found.append(f"{case}: line {i} {k} = {a.get(k)}, recorded {b.get(k)}")
        keys = ["sha256"] if exact else ["sum", "abs_sum"]
        for k in keys:
            if not close(g["learner"][k], w["learner"][k]):
                found.append(f"{case}: parameters' {k} {g['learner'][k]}, recorded {w['learner'][k]}")
    return found


def recordings() -> list[dict[str, Any]]:
    """Every recording: ``{"machine": ..., "runs": ...}`` per kind of machine (none before the first)."""
    return json.loads(GOLDEN.read_text())["recordings"] if GOLDEN.exists() else []


def recording_for(kind: str) -> dict[str, Any] | None:
    """The runs recorded on ``kind`` of machine, if any (a recording made before the key named the vector
    instructions serves every machine of that CPU name that has none of its own)."""
    runs = {r["machine"]: r["runs"] for r in recordings()}
    return runs.get(kind, runs.get(_without_isa(kind)))


def stable(runs: dict[str, Any]) -> dict[str, Any]:
    """The runs that agree across CPUs."""
    return {k: v for k, v in runs.items() if k in STABLE}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    results = run_all()
    if sys.argv[1:] == ["record"]:
        others = [r for r in recordings() if r["machine"] != machine()]
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"recordings": [*others, {"machine": machine(), "runs": results}]}, indent=1))
        print(f"recorded {len(results)} runs for {machine()} into {GOLDEN}")
    else:
        mine = recording_for(machine())
        if mine is None:
            sys.exit(f"no recording for {machine()}: compare the stable runs with the test, or record")
        diffs = differences(results, mine, exact=True)
        print("\n".join(diffs) or f"all {len(results)} runs equal, bit for bit")
        sys.exit(1 if diffs else 0)
