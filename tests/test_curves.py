"""`metagrad curves`: runs' logged numbers read, smoothed, drawn and summarised; bad input named."""

import json

import pytest

from metagrad import curves
from metagrad.cli import main
from metagrad.errors import MetagradError


def write_log(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def rl_rows(n, offset=0.0):
    rows = [{"iteration": i, "return_pre": -40.0 + offset, "return_post": float(i) + offset} for i in range(1, n + 1)]
    rows.insert(3, {"iteration": 3, "resumed_with": {"time_budget": [10, 20]}})  # a resume note: no metric
    return rows


def test_load_skips_rows_without_the_metric_and_takes_folder_or_file(tmp_path):
    run = curves.load(str(write_log(tmp_path / "a", rl_rows(5))))
    assert run.label == "a"
    assert run.series("return_post") == ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0])
    same = curves.load(f"{tmp_path / 'a' / 'metrics.jsonl'}=seed 1")
    assert same.label == "seed 1" and same.series("return_pre")[1] == [-40.0] * 5
    assert run.metrics() == ["return_post", "return_pre"]


def test_runs_whose_folders_share_a_name_are_told_apart(tmp_path):
    a = write_log(tmp_path / "seed-0" / "maml-trpo", rl_rows(3))
    b = write_log(tmp_path / "seed-1" / "maml-trpo", rl_rows(3))
    c = write_log(tmp_path / "other" / "ppo", rl_rows(3))
    runs = curves.load_all([str(a), str(b), str(c), f"{a}=mine"])
    assert [r.label for r in runs] == ["seed-0/maml-trpo", "seed-1/maml-trpo", "ppo", "mine"]


def test_a_reproductions_folder_gives_each_of_its_runs(tmp_path):
    """`metagrad curves results/long/locomotion-ant-dir`: the folder `reproduce` wrote, one run per method in its
    subfolders (and figures, a results file beside them), draws every method; a label prefixes theirs."""
    repro = tmp_path / "ant-dir"
    for method in ("pretrained", "maml-trpo"):
        write_log(repro / method, rl_rows(3))
    (repro / "results.json").write_text("{}")
    one = tmp_path / "cheetah"
    write_log(one / "maml-trpo", rl_rows(4))
    runs = curves.load_all([str(repro), f"{one}=cheetah"])
    assert [r.label for r in runs] == ["maml-trpo", "pretrained", "cheetah/maml-trpo"]
    assert runs[2].series("return_post")[0] == [1, 2, 3, 4]
    with pytest.raises(MetagradError, match="no metrics log"):
        curves.load_all([str(tmp_path / "empty-folder")])


def test_a_study_folder_gives_its_runs_at_any_depth_each_named_by_its_path(tmp_path):
    """`metagrad tradeoff rl` keeps method/seed-N runs, the SG-MRL seeds seed-N/method: every run is found and
    named by its path inside the folder; two folders of one layout are told apart by their names."""
    for study in ("push", "reach"):
        for method in ("drs-trpo", "trpo-maml"):
            write_log(tmp_path / study / method / "seed-0", rl_rows(3))
    runs = curves.load_all([str(tmp_path / "push"), str(tmp_path / "reach")])
    assert [r.label for r in runs] == ["push/drs-trpo/seed-0", "push/trpo-maml/seed-0", "reach/drs-trpo/seed-0",
                                       "reach/trpo-maml/seed-0"]
    assert [r.label for r in curves.load_all([f"{tmp_path / 'push'}=P"])] == ["P/drs-trpo/seed-0",
                                                                             "P/trpo-maml/seed-0"]


def test_smooth_is_a_trailing_mean():
    assert curves.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert curves.smooth([1.0, float("nan"), 3.0, 4.0], 2) == [1.0, 1.0, 3.0, 3.5]  # one NaN does not blank the rest
    assert curves.smooth([1e20, 1.0, 1.0, 1.0], 2)[-1] == 1.0  # no running sum to lose the small values in
    assert curves.smooth([1.0, 3.0, 5.0], 1) == [1.0, 3.0, 5.0]
    assert curves.smooth([2.0, 4.0, 9.0], 10) == [2.0, 3.0, 5.0]
    with pytest.raises(MetagradError, match="--smooth 0"):
        curves.smooth([1.0], 0)


def test_default_metrics_follow_the_kind_of_run(tmp_path):
    rl = curves.load(str(write_log(tmp_path / "rl", rl_rows(3))))
    sup = curves.load(str(write_log(tmp_path / "sup", [{"iteration": 100, "meta_loss": 1.2, "elapsed": 3.0},
                                                       {"iteration": 1000, "val_accuracy": 0.9, "best": True}])))
    assert curves.choose_metrics([rl], None) == ["return_post", "return_pre"]
    assert curves.choose_metrics([sup], None) == ["meta_loss"]
    assert curves.choose_metrics([sup], ["val_accuracy"]) == ["val_accuracy"]
    assert "best" not in sup.metrics()  # booleans are flags, not curves
    with pytest.raises(MetagradError, match=r"--metric accuracy: no run logged it; these did: .*val_accuracy"):
        curves.choose_metrics([sup], ["accuracy"])


def test_missing_or_broken_logs_are_named(tmp_path):
    with pytest.raises(MetagradError, match=r"no metrics log at .*nowhere"):
        curves.load(str(tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"iteration": 1}\nnot json\n')
    with pytest.raises(MetagradError, match="line 2: not JSON"):
        curves.load(str(tmp_path / "bad"))
    torn = write_log(tmp_path / "torn", rl_rows(3))
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text()[:-30])  # killed mid-write
    assert len(curves.load(str(torn)).rows) == 3  # plotted without the cut line (it was refused)
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text() + "\0" * 50)  # a zero-filled tail
    assert len(curves.load(str(torn)).rows) == 3
    (torn / "metrics.jsonl").write_text("")
    with pytest.raises(MetagradError, match=r"metrics\.jsonl is empty: its run has logged nothing yet"):
        curves.load(str(torn))
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "last.safetensors").write_bytes(b"x")
    with pytest.raises(MetagradError, match="early is a run that has logged nothing yet"):
        curves.load(str(tmp_path / "early"))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "metrics.jsonl").write_text('{"iteration": 1}\n[1, 2]\n')
    with pytest.raises(MetagradError, match="line 2: a list, not an object"):
        curves.load(str(tmp_path / "list"))
    a, b = write_log(tmp_path / "a", rl_rows(3)), write_log(tmp_path / "b", rl_rows(3))
    with pytest.raises(MetagradError, match="two runs are labelled 'same'"):  # once drawn as one legend entry twice
        curves.load_all([f"{a}=same", f"{b}=same"])
    with pytest.raises(MetagradError, match="'=x' names no run"):  # once read every metrics.jsonl under the cwd
        curves.load_all(["=x"])


def test_summary_gives_each_runs_last_iteration_and_recent_mean(tmp_path):
    a = curves.load(f"{write_log(tmp_path / 'a', rl_rows(20))}=A")
    b = curves.load(f"{write_log(tmp_path / 'b', rl_rows(4, offset=100.0))}=B")
    table = curves.summary([a, b], ["return_post"], last=10).splitlines()
    assert table[2] == "| A | 20 | 15.5 |"  # mean of 11..20
    assert table[3] == "| B | 4 | 102.5 (of 4) |"  # fewer rows than the window: all of them, said so


def test_runs_that_log_different_metrics_are_not_drawn_as_one_and_their_last_iteration_counts_every_row(tmp_path):
    rl = curves.load(f"{write_log(tmp_path / 'rl', rl_rows(5))}=RL")
    supervised = tmp_path / "sup" / "metrics.jsonl"
    supervised.parent.mkdir()
    supervised.write_text("".join(json.dumps({"iteration": i, "meta_loss": 1.0 / i}) + "\n" for i in range(1, 8)))
    sup = curves.load(f"{supervised}=SUP")
    with pytest.raises(MetagradError, match=r"different default metrics \(RL: return_post, SUP: meta_loss\)"):
        curves.choose_metrics([rl, sup], None)
    assert curves.summary([rl, sup], ["return_post"]).splitlines()[3] == "| SUP | 7 | - |"


def test_cli_draws_the_figure_and_prints_the_table(tmp_path, capsys):
    a = write_log(tmp_path / "seed-0", rl_rows(30))
    b = write_log(tmp_path / "seed-1", rl_rows(12, offset=5.0))
    out = tmp_path / "fig" / "curves.png"
    assert main(["curves", str(a), f"{b}=second", "--smooth", "5", "--last", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| seed-0 | 30 | 28 | -40 |" in printed and "| second | 12 | 15 | -35 |" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["curves", str(a), "--metric", "kl", "--out", str(out)]) == 2
    assert "--metric kl: no run logged it" in capsys.readouterr().err
    assert main(["curves", str(a), "--last", "0"]) == 2


def test_a_run_folder_named_with_an_equals_sign_is_a_path_not_a_label(tmp_path):
    """``sweep/lr=0.01`` was cut at its '=' (no metrics log at sweep/lr), given alone, with a label, or through the
    sweep's folder."""
    write_log(tmp_path / "sweep" / "lr=0.01", rl_rows(3))
    write_log(tmp_path / "sweep" / "lr=0.02", rl_rows(4))
    assert curves.load(str(tmp_path / "sweep" / "lr=0.01")).label == "lr=0.01"
    assert curves.load(f"{tmp_path / 'sweep' / 'lr=0.01'}=a=b").label == "a=b"
    runs = curves.load_all([str(tmp_path / "sweep")])
    assert [(r.label, len(r.rows)) for r in runs] == [("lr=0.01", 4), ("lr=0.02", 5)]  # a resume note each
    with pytest.raises(MetagradError, match=r"no metrics log at .*nowhere"):
        curves.load(f"{tmp_path / 'nowhere'}=label")


def test_the_figure_names_known_metrics_in_words(tmp_path, monkeypatch):
    """The y axis read "return_post", the log's key; known keys get a readable name, others stay as logged."""
    drawn = []
    monkeypatch.setattr(curves, "save_figure", lambda fig, path: drawn.append(fig.axes[0]) or path)
    runs = [curves.load(str(write_log(tmp_path / "a", rl_rows(5))))]
    curves.draw(runs, ["return_post"], tmp_path / "c.png")
    curves.draw(runs, ["return_post", "return_pre"], tmp_path / "c.png")
    assert drawn[0].get_ylabel() == "training return after the inner step(s)"
    assert drawn[1].get_legend().get_texts()[1].get_text() == "a: training return before adaptation"
    assert curves.metric_label("kl") == "kl"
