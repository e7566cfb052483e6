"""The kept trade-off studies against their re-tests with another test-step protocol, as one markdown table.

    python docs/tradeoff_test_step.py [results/long]

Each folder under ``results/long/tradeoff-test-step`` holds what ``metagrad tradeoff rl ... --test-step MODE`` wrote
when run on a copy of a kept study (``tradeoff_rl.json``, ``study.json`` and each run's ``step_size.json``; how it was
made: that folder's ``README.md``). Printed per study: P(DRS better) over every snapshot and number of test updates,
kept (DRS tuned on validation tasks, the meta-learner at its inner step) and re-tested, and the steps chosen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metagrad.tradeoff_rl import PAIRS


def p_range(folder: Path) -> str:
    """The lowest and highest P(DRS better) of a study's table."""
    ps = [p for row in json.loads((folder / "tradeoff_rl.json").read_text())["p_drs_better"] for p in row]
    return f"{min(ps):.2f}-{max(ps):.2f}"


def chosen_steps(folder: Path) -> str:
    """Each method's test step per seed (``step_size.json``) where the protocol tunes it, else its inner step."""
    study = json.loads((folder / "study.json").read_text())
    out = []
    for method in PAIRS[study["pair"]]:
        drs = method.startswith("drs-")
        tuned = study["test_step"] == "tuned" or (study["test_step"] == "drs-tuned" and drs)
        files = sorted((folder / method).glob("seed-*/step_size.json"), key=lambda f: int(f.parent.name[5:]))
        steps = [f"{json.loads(f.read_text())['lr']:g}" for f in files] if tuned else [f"{study['inner_lr']:g}"]
        out.append(f"{method} {' / '.join(steps)}")
    return "; ".join(out)


def main(root: Path) -> None:
    print("| study | P(DRS better), kept (DRS tuned, meta-learner at its inner step) | re-tested | --test-step | "
          "test steps per seed (re-test) |")
    print("|---|---|---|---|---|")
    for retest in sorted(p for p in (root / "tradeoff-test-step").iterdir() if p.is_dir()):
        study = json.loads((retest / "study.json").read_text())
        kept = root / retest.name.rsplit("--", 1)[0]
        print(f"| {kept.name.removeprefix('tradeoff-rl-')} | {p_range(kept)} | {p_range(retest)} | "
              f"{study['test_step']} | {chosen_steps(retest)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/long"))
