"""The run layer gives the metrics and parameters recorded before it was rewritten (tests/golden/runs.json): every
supervised preset and every meta-RL method, a few iterations each, through `metagrad train`. Bit for bit on the
machine kind that recorded them; to 1e-6 on another CPU (other kernels may round differently)."""

from __future__ import annotations

import json

from golden_runs import GOLDEN, differences, machine, run_all


def test_short_runs_equal_the_recorded_ones():
    recorded = json.loads(GOLDEN.read_text())
    got = run_all()
    assert not differences(got, recorded["runs"], exact=False)
    if recorded["machine"] == machine():
        assert not differences(got, recorded["runs"], exact=True)
