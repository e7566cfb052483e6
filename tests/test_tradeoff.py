"""The Figure 3 simulation (trade-off paper, section 4.4) and `metagrad tradeoff`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli_error
from metagrad import provenance, tradeoff
from metagrad.cli import main
from metagrad.errors import ConfigError


def test_large_and_small_budgets_reproduce_the_papers_finding():
    """Large M and N: DRS's estimate has the lower loss before adaptation, MAML's after, almost always.
    Small M and N: DRS's estimate is often better after adaptation too (MAML wins well under half the time)."""
    r = tradeoff.simulate(tasks=(2, 4096), points=(1, 2048), alphas=(0.25, 0.5), datasets=400, progress=False)
    pre, post = np.array(r.pre), np.array(r.post)  # [alpha, M, N]
    assert np.all(pre[:, 1, 1] < 0.05) and np.all(post[:, 1, 1] > 0.95)
    assert np.all(post[:, 0, 0] < 0.4)
    ref = r.reference["alphas"]["0.5"]  # the population optima behave as Theorem 5 says
    assert ref["pre_maml"] > r.reference["pre_drs"] and ref["post_maml"][-1] < ref["post_drs"][-1]
    med = r.median_loss  # and the large-budget estimates' losses approach the optima's
    assert med["maml_post"][1][1][1] == pytest.approx(ref["post_maml"][-1], rel=1e-3)


def test_the_simulation_is_reproducible_and_saved(tmp_path):
    kw = dict(tasks=(2, 8), points=(1, 4), alphas=(0.5,), datasets=50, dim=2, seed=3)
    result, figures = tradeoff.run(tmp_path, progress=False, **kw)
    again = tradeoff.simulate(progress=False, **kw)
    assert result.post == again.post and result.pre == again.pre
    saved = json.loads((tmp_path / "tradeoff.json").read_text())
    assert saved["dim"] == 2 and np.array(saved["post"]).shape == (1, 2, 2)
    assert saved["commit"] == provenance.commit() and saved["machine"]["cpus"] >= 1 and "command" in saved
    npz = np.load(tmp_path / "tradeoff.npz")
    assert np.array_equal(npz["pre"], np.array(result.pre)) and npz["rotation"].shape == (2, 2)
    assert figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # p = 3: M = 2 tasks x N = 1 point cannot determine MAML's estimate (its system has rank <= M min(N, p) = 2):
    # such cells are left out as NaN, the others are computed
    r3 = tradeoff.simulate(tasks=(2, 8), points=(1, 4), alphas=(0.5,), datasets=20, dim=3, progress=False)
    post3 = np.array(r3.post)[0]
    assert np.isnan(post3[0, 0]) and not np.isnan(post3[[0, 1, 1], [1, 0, 1]]).any()


@pytest.mark.parametrize(("kw", "match"), [
    ({"datasets": 2.5}, "datasets 2.5 must be a whole number >= 1"),
    ({"tasks": (2.5,)}, r"tasks \(M\) 2.5 must be a whole number >= 1"),
    ({"alphas": ("0.5",)}, "alpha '0.5' must be a number"),
    ({"seed": -1}, "seed -1 must be a whole number >= 0"),
])
def test_bad_simulate_arguments_are_named(kw, match):
    """From Python these ended in bare TypeErrors ("seed must be integer") deep in numpy."""
    with pytest.raises(ConfigError, match=match):
        tradeoff.simulate(progress=False, **kw)


@pytest.mark.parametrize(("argv", "match"), [
    (["tradeoff", "linreg", "--alphas", "0.5,-1"], "alpha -1.0 must be a positive step size"),
    (["tradeoff", "linreg", "--tasks", "0,4"], "tasks (M) 0 must be a whole number >= 1"),
    (["tradeoff", "linreg", "--dim", "3", "--tasks", "1,2", "--points", "1"], "no (M, N) of the grid can determine"),
    (["tradeoff", "linreg", "--datasets", "0"], "datasets 0 must be a whole number >= 1 (e.g. 1000)"),
    (["tradeoff", "linreg", "--points", "ten"], "'ten' is not a comma-separated list of integers"),
    (["tradeoff", "linreg", "--alphas", "0.5,,0.1"], "'0.5,,0.1' has an empty entry"),
    (["tradeoff", "quadratic"], "invalid choice: 'quadratic'"),
])
def test_bad_tradeoff_input_is_one_line_and_exit_code_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert match in cli_error(argv, capsys)
    assert not (tmp_path / "results").exists()


def test_tradeoff_command_writes_data_and_figure(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tradeoff", "linreg", "--tasks", "2,16", "--points", "1,8", "--datasets", "40",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "theta*_drs = [1.3333]" in printed and "alpha = 0.5" in printed
    assert str(out / "figure3.png") in printed and (out / "tradeoff.npz").exists()
    assert json.loads((out / "tradeoff.json").read_text())["alphas"] == [0.1, 0.25, 0.5]


def test_a_numerically_singular_dataset_is_left_out_and_counted_not_fatal():
    """Where M * min(N, p) is near p a dataset's system can be numerically singular (here M = 3 tasks x N = 1 point
    for p = 3, seed 6: one dataset of 2,000); it once stopped the whole study. Now it is left out of its cell and
    counted, and the cell's fraction is over the others."""
    from metagrad.analysis import linreg_theory as lt

    kw = dict(tasks=(3,), points=(1,), alphas=(0.1, 0.5), datasets=2000, dim=3, seed=6, progress=False)
    result = tradeoff.simulate(**kw)
    dropped = np.array(result.singular)[:, 0, 0]
    assert dropped.max() >= 1 and dropped.max() < 10
    assert np.all(np.isfinite(np.array(result.pre))) and np.all(np.isfinite(np.array(result.median_loss["maml_post"])))
    assert "numerically singular" in tradeoff.summary(result)
    A = np.stack([np.diag([2.0, 1.0]), np.diag([1.0, 0.0]), np.eye(2)])  # the middle one singular
    b = np.ones((3, 2))
    theta = lt._solve(A, b, "test", singular="nan")
    assert np.isnan(theta[1]).all() and np.allclose(theta[[0, 2]], [[0.5, 1.0], [1.0, 1.0]])
    with pytest.raises(lt.SingularSystemError, match=r"test is singular \(dataset \[1\]\)"):
        lt._solve(A, b, "test")
