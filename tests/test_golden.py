"""The run layer gives the metrics and parameters recorded before it was rewritten (tests/golden/runs.json): every
supervised preset and every meta-RL method, a few iterations each, through `metagrad train`. Bit for bit on a kind
of machine that recorded them (an Intel Xeon, then an AMD EPYC, whose recording was made from the commit before this
test's change of format and matched by the code after it, then an AMD EPYC without AVX-512, whose convolutions round
otherwise: recorded from code the earlier commit 66f3a1d matches bit for bit there); on another kind of CPU, the
runs that do not depend on how its kernels round (the MLP regressions) to 1e-6 against every recording. E-MAML's
weights changed on purpose (ProMP's population std, not the sample std): its run was re-recorded on the AMD EPYC and
left out of the two recordings whose machines were not at hand; so were omniglot-reptile's validation lines (it
validates in its test's non-transductive batch-norm mode now, and since 2026-12-06 with its test's shots and steps,
val_as "test": its validation lines re-recorded on the AMD EPYC; its weights are unchanged)."""

from __future__ import annotations

from golden_runs import differences, machine, recording_for, recordings, run_all, stable


def test_short_runs_equal_the_recorded_ones():
    got = run_all()
    mine = recording_for(machine())
    if mine is not None:
        assert not differences(got, mine, exact=True)
    for recorded in recordings():
        assert not differences(stable(got), stable(recorded["runs"]), exact=False), recorded["machine"]
