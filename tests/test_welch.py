"""The one-sided Welch t-test (trade-off paper, Figures 1-2) and `metagrad compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from metagrad import provenance
from metagrad.analysis.stats import mean_ci95, sd_from_ci95, welch_probability, welch_probability_from_stats
from metagrad.cli import main
from metagrad.compare import task_of
from metagrad.config import Config
from metagrad.rl.config import RLConfig


@pytest.mark.parametrize(("n_a", "n_b", "shift"), [(5, 5, 0.3), (20, 7, -0.5), (600, 600, 0.05)])
def test_welch_probability_matches_scipy(n_a, n_b, shift):
    rng = np.random.default_rng(n_a + n_b)
    a, b = rng.normal(shift, 1.0, n_a), rng.normal(0.0, 2.5, n_b)
    less = stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
    greater = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert welch_probability(a, b) == pytest.approx(1 - greater, abs=1e-12)  # higher is better: A > B
    assert welch_probability(a, b, higher_is_better=False) == pytest.approx(1 - less, abs=1e-12)
    mean, half = mean_ci95(torch.from_numpy(a))  # from the saved summary (mean, ci95, n) alike
    p = welch_probability_from_stats(float(mean), sd_from_ci95(float(half), n_a), n_a, b.mean(), b.std(ddof=1), n_b)
    assert p == pytest.approx(1 - greater, abs=1e-10)


def test_welch_probability_is_vectorised_and_handles_zero_variance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.2, 1, (3, 4, 30)), rng.normal(0, 1, (3, 4, 25))
    grid = welch_probability(a, b)
    assert grid.shape == (3, 4)
    assert grid[2, 1] == pytest.approx(1 - stats.ttest_ind(a[2, 1], b[2, 1], equal_var=False,
                                                            alternative="greater").pvalue)
    assert list(welch_probability_from_stats([2, 1, 1], 0, 5, [1, 1, 2], 0, 5)) == [1.0, 0.5, 0.0]


def write_eval(path, samples_by_k, iteration):
    """An eval.json as `metagrad eval` writes it, from per-task losses [tasks, steps]."""
    curves = {}
    for k, values in samples_by_k.items():
        mean, half = mean_ci95(torch.from_numpy(values), dim=0)
        curves[str(k)] = {"lr": [0.5], "loss": {"metric": "loss", "shots": k, "tasks": values.shape[0],
                                                "mean": mean.tolist(), "ci95": half.tolist()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checkpoint": "last", "iteration": iteration, "curves": curves}))


def test_compare_command_over_checkpoints_and_updates(tmp_path, capsys):
    rng = np.random.default_rng(1)
    samples = {}
    for method, drift in (("drs", 0.0), ("maml", 0.1)):
        for it in (100, 200, 400):
            values = rng.normal(1.0 - drift * np.arange(4) * it / 400, 0.5, (80, 4))  # losses after 0..3 steps
            samples[method, it] = values
            write_eval(tmp_path / method / f"eval-{it}.json", {5: values}, it)
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "drs"), str(tmp_path / "maml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    grid = json.loads((out / "compare.json").read_text())
    assert grid["checkpoints"] == ["100", "200", "400"] and grid["label_a"] == "drs" and grid["steps"] == 4
    assert grid["commit"] == provenance.commit() and grid["machine"]["cpus"] >= 1 and "command" in grid
    prob = np.array(grid["probability"])[0]
    for i, it in enumerate((100, 200, 400)):
        for s in range(4):
            a, b = samples["drs", it][:, s], samples["maml", it][:, s]
            expect = 1 - stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue  # lower loss is better
            assert prob[i, s] == pytest.approx(expect, abs=1e-9)
    assert prob[2, 3] < 0.05  # MAML's losses fall faster: DRS is clearly worse there
    assert "P(drs better than maml)" in printed and "| 400 |" in printed
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(tmp_path / "drs" / "eval-100.json"), str(tmp_path / "drs" / "eval-200.json"),
                 "--out", str(out)]) == 0  # two files of one folder are named by their files, not the folder
    assert "P(eval-100 better than eval-200)" in capsys.readouterr().out


def test_bad_compare_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    rng = np.random.default_rng(2)
    write_eval(tmp_path / "a" / "eval.json", {5: rng.normal(size=(10, 3))}, 10)
    write_eval(tmp_path / "b" / "e1.json", {5: rng.normal(size=(10, 3))}, 10)
    write_eval(tmp_path / "b" / "e2.json", {5: rng.normal(size=(10, 3))}, 20)
    write_eval(tmp_path / "c" / "eval.json", {10: rng.normal(size=(10, 3))}, 10)
    (tmp_path / "results.json").write_text(json.dumps({"methods": {"maml": {}, "pretrained": {}}}))
    for method in ("drs", "maml"):  # two methods' evaluations in one folder: not two checkpoints of one run
        write_eval(tmp_path / "d" / f"{method}.json", {5: rng.normal(size=(10, 3))}, 10)
    cases = [
        ([str(tmp_path / "nope.json"), str(tmp_path / "a")], "evaluation results '"),
        ([str(tmp_path / "a"), str(tmp_path / "b")], "A has 1 evaluation(s) and B has 2"),
        ([str(tmp_path / "a"), str(tmp_path / "c")], "share no support size K"),
        ([str(tmp_path / "results.json"), str(tmp_path / "a")], "holds several methods (maml, pretrained)"),
        ([str(tmp_path / "a"), str(tmp_path / "b" / "e1.json"), "--metric", "accuracy"], "has no metric 'accuracy'"),
        ([str(tmp_path / "a"), str(tmp_path / "a")], "A and B are the same evaluations"),
        ([str(tmp_path / "a"), str(tmp_path / "copy" / "eval.json")], "hold the same curves (a copy"),
        ([str(tmp_path / "d"), str(tmp_path / "b")], "holds two evaluations of iteration 10 (drs.json, maml.json)"),
        ([str(tmp_path), str(tmp_path / "a")], "holds several methods"),
    ]
    good = json.loads((tmp_path / "a" / "eval.json").read_text())
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "eval.json").write_text((tmp_path / "a" / "eval.json").read_text())  # once read as P = 0.5
    doctored = {"no ci95": ({"ci95": None}, "has no ci95"), "one task": ({"tasks": 1}, "tasks 1 must be"),
                "text": ({"mean": ["abc", 1.0, 1.0]}, "lists of numbers"), "empty": ({"mean": [], "ci95": []},
                                                                                  "lists of numbers"),
                "short ci95": ({"ci95": [0.1]}, "of one length"), "scalar": (3.0, "is not a curve (a float")}
    for name, (change, match) in doctored.items():
        data = json.loads(json.dumps(good))
        curve = data["curves"]["5"]["loss"]
        if isinstance(change, dict):
            curve.update(change)
            curve = {k: v for k, v in curve.items() if v is not None}
        data["curves"]["5"]["loss"] = curve if isinstance(change, dict) else change
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        cases.append(([str(tmp_path / "a" / "eval.json"), str(tmp_path / f"{name}.json")], "K=5 'loss'"))
        cases.append(([str(tmp_path / "a" / "eval.json"), str(tmp_path / f"{name}.json")], match))
    for argv, match in cases:
        assert main(["compare", *argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err


def test_welch_probability_of_values_that_are_not_numbers_is_nan_not_certainty():
    """A NaN or infinite input, or a negative standard deviation, has nothing to judge (it once read as 1.0)."""
    assert np.isnan(welch_probability_from_stats(1.0, np.nan, 5, 0.0, 1.0, 5))
    assert np.isnan(welch_probability_from_stats(1.0, -0.3, 5, 0.0, 1.0, 5))
    assert np.isnan(welch_probability([1.0, np.inf, 3.0], [1.0, 2.0, 3.0]))
    both = welch_probability_from_stats(np.array([1.0, 1.0]), np.array([np.nan, 1.0]), 5, 0.0, 1.0, 5)
    assert np.isnan(both[0]) and 0.5 < both[1] < 1


def test_compare_reads_a_meta_rl_reproductions_results(tmp_path, capsys):
    """`metagrad reproduce navigation|locomotion` keeps one return curve per method (`curve`, not `curves`): compare
    reads it as K = its episodes per step, and refuses two sides of different K naming --eval-episodes."""
    rng = np.random.default_rng(3)
    returns = {"maml-trpo": rng.normal(-10, 3, (60, 3)), "pretrained": rng.normal(-12, 3, (60, 3))}

    def curve(values, episodes):
        mean, half = mean_ci95(torch.from_numpy(values), dim=0)
        return {"tasks": values.shape[0], "episodes": episodes, "lr": [0.1], "mean": mean.tolist(),
                "ci95": half.tolist()}

    results = {"methods": {m: {"label": m, "iterations": 500, "best_iteration": 271, "curve": curve(v, 40)}
                           for m, v in returns.items()}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "results.json"), str(tmp_path / "results.json"), "--method-a",
                 "maml-trpo", "--method-b", "pretrained", "--out", str(out)]) == 0
    grid = json.loads((out / "compare.json").read_text())
    assert grid["checkpoints"] == ["271"]  # the curve is of the best checkpoint, not the last iteration
    assert "on the test return, K = 40 episodes per step" in capsys.readouterr().out
    prob = np.array(grid["probability"])[0][0]
    for s in range(3):
        a, b = returns["maml-trpo"][:, s], returns["pretrained"][:, s]
        assert prob[s] == pytest.approx(1 - stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue,
                                        abs=1e-9)  # a higher return is better
    other = {"methods": {"maml-vpg": {"label": "maml-vpg", "iterations": 500, "curve": curve(returns["maml-trpo"],
                                                                                             20)}}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["compare", str(tmp_path / "other.json"), str(tmp_path / "results.json"), "--method-b", "pretrained",
                 "--out", str(out)]) == 2
    assert "share no number of episodes per step K (they hold 20 and 40)" in capsys.readouterr().err


def test_compare_reads_a_few_shot_reproduction_and_names_like_files_apart(tmp_path, capsys):
    """`metagrad reproduce omniglot` writes one file per setting, a curve per batch-norm mode (--method-a/-b picks
    the mode); two files of one name in two folders are named by the folders."""
    rng = np.random.default_rng(4)

    def fewshot(folder, algo, iteration, accuracy):
        values = {mode: rng.normal(accuracy, 0.1, (50, 3)) for mode in ("transductive", "non-transductive")}
        modes = {}
        for mode, v in values.items():
            mean, half = mean_ci95(torch.from_numpy(v), dim=0)
            modes[mode] = {"curves": {"lr": [0.4], "accuracy": {"tasks": 50, "mean": mean.tolist(),
                                                                "ci95": half.tolist()}}}
        folder.mkdir(parents=True)
        (folder / "omniglot-5w1s.json").write_text(json.dumps({"algo": algo, "shots": 1, "checkpoint_iteration":
                                                                iteration, "modes": modes}))
        return values

    a = fewshot(tmp_path / "seed-0", "maml", 3000, 0.9)
    b = fewshot(tmp_path / "seed-1", "maml", 4000, 0.8)
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "seed-0" / "omniglot-5w1s.json"), str(tmp_path / "seed-1" /
                 "omniglot-5w1s.json"), "--method-a", "non-transductive", "--method-b", "non-transductive",
                 "--metric", "accuracy", "--out", str(out)]) == 0
    grid = json.loads((out / "compare.json").read_text())
    assert (grid["label_a"], grid["label_b"], grid["checkpoints"]) == ("seed-0", "seed-1", ["3000/4000"])
    expect = 1 - stats.ttest_ind(a["non-transductive"][:, 2], b["non-transductive"][:, 2], equal_var=False,
                                 alternative="greater").pvalue
    assert grid["probability"][0][0][2] == pytest.approx(expect, abs=1e-9)
    bad = {"curves": {"abc": {"loss": {"tasks": 3, "mean": [1.0], "ci95": [0.1]}}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "bad2.json").write_text(json.dumps(bad))
    assert main(["compare", str(tmp_path / "bad.json"), str(tmp_path / "bad2.json"), "--out", str(out)]) == 2
    assert "curve key 'abc' is not a number" in capsys.readouterr().err


def test_compare_refuses_evaluations_tested_differently_and_says_where_steps_are_cut(tmp_path, capsys):
    """Two evaluations with other query sizes (or batch-norm modes, inner batches) measure different things: refused
    in one line (they were compared without a word); other test tasks (eval_seed) stay an unpaired comparison; a
    curve cut to the other's steps is said."""
    rng = np.random.default_rng(0)
    for name, steps, query, seed in (("a", 4, 100, 12345), ("b", 4, 5, 12345), ("c", 3, 100, 999)):
        write_eval(tmp_path / f"{name}.json", {5: rng.normal(1.0, 0.5, (40, steps))}, 10)
        data = json.loads((tmp_path / f"{name}.json").read_text())
        data["eval"] = {"eval_query": query, "eval_seed": seed, "transductive": True, "eval_steps": steps - 1}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = str(tmp_path / "cmp")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", out]) == 2
    assert "were tested under different settings (eval_query 100 against 5)" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out", out]) == 0
    assert "the evaluations hold 2 and 3 test steps; compared over the 2 all hold" in capsys.readouterr().err
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["steps"] == 3


def test_compare_refuses_evaluations_of_different_tasks(tmp_path, capsys):
    """Two runs of different task families (or meta-RL environments) were compared without a word when their
    protocols matched by chance: each eval.json now names its task, and compare refuses two."""
    for preset in ("sinusoid-maml", "linreg-maml"):
        run = tmp_path / preset
        assert main(["train", "--config", preset, "--iterations", "2", "--meta-batch-size", "2", "--val-every", "0",
                     "--no-progress", "--out", str(run)]) == 0
        assert main(["eval", str(run), "--eval-tasks", "4", "--eval-shots", "5", "--eval-query", "10",
                     "--eval-steps", "1"]) == 0
    assert json.loads((tmp_path / "linreg-maml" / "eval.json").read_text())["task"] == "linreg"
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "sinusoid-maml" / "eval.json"), str(tmp_path / "linreg-maml" / "eval.json"),
                 "--out", str(tmp_path / "cmp")]) == 2
    assert "are evaluations of different tasks (sinusoid against linreg); compare runs of one task" in \
        capsys.readouterr().err
    for preset in ("sinusoid-maml", "linreg-maml"):  # files from before eval.json named its task
        path = tmp_path / preset / "eval.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "task"}))
    sides = [str(tmp_path / "sinusoid-maml" / "eval.json"), str(tmp_path / "linreg-maml" / "eval.json")]
    assert main(["compare", *sides, "--out", str(tmp_path / "cmp")]) == 2  # read from their runs' config.toml
    assert "different tasks (sinusoid against linreg)" in capsys.readouterr().err
    away = tmp_path / "away.json"  # one copied away from its run: no config.toml beside it
    away.write_text((tmp_path / "linreg-maml" / "eval.json").read_text())
    assert main(["compare", sides[0], str(away), "--out", str(tmp_path / "cmp")]) == 0
    assert f"{away} does not say which task it evaluates (it records none" in capsys.readouterr().err
    assert task_of(RLConfig(env="cheetah-vel").to_sections()) == "cheetah-vel"
    assert task_of(Config(family="omniglot", model="conv4", ways=20).to_sections()) == "omniglot 20-way"


def test_compare_refuses_two_sinusoid_distributions_and_says_when_no_side_names_its_task(tmp_path, capsys):
    """MAML's sine tasks (phase [0, pi], random inputs) against Reptile's grid variant (phase [0, 2 pi], the 50-point
    grid) were compared without a word: both recorded only 'sinusoid'. Two results.json files that record no task
    were compared without the line the docs promise."""
    runs = {"maml": [], "grid": ["--set", "grid=50", "--set", "phase=0,6.283185307179586"]}
    for name, extra in runs.items():
        run = tmp_path / name
        assert main(["train", "--config", "sinusoid-maml", "--iterations", "2", "--meta-batch-size", "2",
                     "--val-every", "0", "--no-progress", "--out", str(run), *extra]) == 0
        assert main(["eval", str(run), "--eval-tasks", "4", "--eval-shots", "5", "--eval-steps", "1"]) == 0
    capsys.readouterr()
    sides = [str(tmp_path / name / "eval.json") for name in runs]
    assert main(["compare", *sides, "--out", str(tmp_path / "cmp")]) == 2
    assert "were tested under different settings (phase [0.0, 3.14159" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # a sinusoid reproduction's results.json from before it stored its config
        write_eval(tmp_path / f"{name}.json", {5: rng.normal(1.0, 0.5, (40, 3))}, 10)
        data = json.loads((tmp_path / f"{name}.json").read_text())
        (tmp_path / f"{name}.json").write_text(json.dumps({"methods": {"maml": data}}))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "c2")]) == 0
    err = capsys.readouterr().err
    assert all(f"{tmp_path / n}.json does not say which task it evaluates" in err for n in ("a", "b"))
    from metagrad import compare  # the Python call as well, which once said nothing

    compare.welch_grid(compare.load_evaluations(tmp_path / "a.json"), compare.load_evaluations(tmp_path / "b.json"))
    assert err.count("does not say") == 2 and capsys.readouterr().err.count("does not say which task") == 2
