"""Few-shot classification end to end: a short run on the real Omniglot, and clear errors for bad data."""

from __future__ import annotations

import json

import pytest
import torch

from images_fixtures import fake_miniimagenet, fake_omniglot, zip_omniglot
from metagrad import build
from metagrad.cli import main
from metagrad.config import load_config
from metagrad.experiment import evaluate, make_trainer

CHANCE = 0.2


def test_short_maml_run_on_real_omniglot_is_well_above_chance(real_omniglot, monkeypatch):
    """Seeded MAML, 5-way 1-shot, 100 meta-iterations of 8 tasks: measured 75.4% ± 2.8% after 3 steps on 200
    test tasks (chance 20%); the threshold leaves room for platform round-off."""
    from images_fixtures import SHARED_OMNIGLOT

    cfg = load_config("omniglot-maml").replace(iterations=100, meta_batch_size=8, val_every=0, eval_tasks=200,
                                               eval_steps=3, data_root=str(SHARED_OMNIGLOT))
    trainer = make_trainer(cfg, None, progress=False)
    trainer.fit()
    acc = evaluate(trainer.learner, cfg)[1]["accuracy"]["mean"]
    assert acc[0] < CHANCE + 0.1  # before adaptation the labels are a coin toss
    assert acc[3] > 0.6, acc


def _train(tmp_path, *extra: str) -> int:
    return main(["train", "--config", "omniglot-maml", "--out", str(tmp_path / "run"), "--iterations", "1",
                 "--no-progress", *extra])


@pytest.mark.parametrize(("setup", "args", "match"), [
    (lambda p: None, ["--data-root", "{p}/missing"], "does not exist"),
    (lambda p: (p / "empty").mkdir(), ["--data-root", "{p}/empty"], "has no images_background"),
    (lambda p: fake_miniimagenet(p / "mini"), ["--data-root", "{p}/mini"], "has no images_background"),
    (lambda p: fake_omniglot(p / "om"), ["--data-root", "{p}/om", "--ways", "50"],
     "ways 50 exceeds the 32 classes of the train split"),
    (lambda p: fake_omniglot(p / "om"), ["--data-root", "{p}/om", "--shots", "15", "--query", "6"],
     "shots 15 + query 6 exceed the 20 examples per class"),
])
def test_bad_data_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, setup, args, match):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    setup(tmp_path)
    assert _train(tmp_path, *[a.format(p=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err


def test_no_data_folder_at_all_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("METAGRAD_DATA", raising=False)
    assert _train(tmp_path) == 2
    assert "METAGRAD_DATA" in capsys.readouterr().err


def test_reproduce_on_a_small_omniglot_writes_both_modes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_omniglot(tmp_path / "om", alphabets=5, characters=5)  # 50 characters: 34 / 3 / 13
    out = tmp_path / "results"
    assert main(["reproduce", "omniglot", "--algo", "fomaml", "--iterations", "3", "--eval-tasks", "10",
                 "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "omniglot-fomaml-5w1s.json").read_text())
    assert set(result["modes"]) == {"transductive", "non-transductive"}
    assert result["modes"]["transductive"]["paper"] == [98.3, 0.5]
    assert len(result["modes"]["transductive"]["curves"]["accuracy"]["mean"]) == 11
    printed = capsys.readouterr().out
    assert "| transductive |" in printed and "98.30 ± 0.50" in printed
    assert (out / "omniglot-fomaml-5w1s.png").read_bytes()[:4] == b"\x89PNG"
    moved = root.rename(tmp_path / "moved")  # the images elsewhere now (a run trained on another machine): its test
    build.image_splits.cache_clear()  # as a new process finds them
    assert main(["reproduce", "omniglot", "--algo", "fomaml", "--iterations", "3", "--eval-tasks", "10",  # looked
                 "--data-root", str(moved), "--out", str(out), "--no-progress"]) == 0  # for them where it trained
    assert json.loads((out / "omniglot-fomaml-5w1s.json").read_text())["trained_iterations"] == 3


@pytest.mark.parametrize("tune", [False, True])
def test_evaluation_draws_test_classes_and_tunes_on_validation_classes(tmp_path, monkeypatch, tune):
    """The reported accuracy is measured on the test split's images and the step size tuned on the validation
    split's: never on classes seen in training."""
    from metagrad import experiment

    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_omniglot(tmp_path / "om", alphabets=5, characters=5)
    cfg = load_config("omniglot-fomaml").replace(iterations=1, meta_batch_size=2, val_every=0, eval_tasks=4,
                                                 eval_steps=1, data_root=str(root), tune_eval_lr=tune,
                                                 eval_lr_grid=[0.1, 0.4], val_tasks=4)
    drawn = []
    original = experiment.held_out_tasks
    monkeypatch.setattr(experiment, "held_out_tasks", lambda tasks, *a, **k: drawn.append(tasks) or original(
        tasks, *a, **k))
    trainer = make_trainer(cfg, None, progress=False)
    trainer.fit()
    evaluate(trainer.learner, cfg)
    splits = build.image_splits("omniglot", str(root))
    expected = (["val"] if tune else []) + ["test"]
    assert len(drawn) == len(expected)
    for tasks, split in zip(drawn, expected, strict=True):
        assert torch.equal(tasks.images, torch.as_tensor(splits[split].images)), split


def test_miniimagenet_runs_on_a_generated_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_miniimagenet(tmp_path / "mini", classes={"train": 6, "val": 5, "test": 5}, per_class=16)
    out = tmp_path / "results"
    assert main(["reproduce", "miniimagenet", "--algo", "fomaml", "--iterations", "1", "--eval-tasks", "2",
                 "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "miniimagenet-fomaml-5w1s.json").read_text())
    assert result["config"]["model"]["filters"] == 32 and result["config"]["model"]["pool"] is True
    assert result["config"]["task"]["query"] == 15 and result["paper_steps"] == 10
    assert result["modes"]["transductive"]["paper"] == [48.07, 1.75]


def test_a_test_split_is_checked_against_the_evaluations_sizes_not_trainings(tmp_path, capsys, monkeypatch):
    """A test split of K + K images per class (what the MAML code's evaluation draws) was refused for want of
    K + 15, the training query, naming 'query 15' as the limit."""
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_miniimagenet(tmp_path / "mini", classes={"train": 6, "val": 5, "test": 5}, per_class=20)
    rows = (root / "test.csv").read_text().splitlines()
    (root / "test.csv").write_text("\n".join(rows[:1] + [r for i, r in enumerate(rows[1:]) if i % 20 < 2]) + "\n")
    out = tmp_path / "results"
    assert main(["reproduce", "miniimagenet", "--algo", "fomaml", "--iterations", "1", "--eval-tasks", "2",
                 "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "miniimagenet-fomaml-5w1s.json").read_text())
    assert result["config"]["task"]["query"] == 15 and result["config"]["eval"]["eval_query"] == 1
    assert len(result["modes"]["transductive"]["curves"]["accuracy"]["mean"]) == 11
    capsys.readouterr()
    assert main(["reproduce", "miniimagenet", "--algo", "fomaml", "--shots", "5", "--iterations", "1",
                 "--eval-tasks", "2", "--data-root", str(root), "--out", str(out), "--no-progress"]) == 2
    assert "eval_shots 5 + eval_query 5 exceed the 2 examples per class of the test split" in capsys.readouterr().err


def test_reproduce_reaches_the_non_convolutional_maml(tmp_path, capsys, monkeypatch):
    """`reproduce omniglot --algo maml-nonconv`: the MAML paper's fully connected network, its Table 1 row beside."""
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_omniglot(tmp_path / "om", alphabets=5, characters=5)
    out = tmp_path / "results"
    assert main(["reproduce", "omniglot", "--algo", "maml-nonconv", "--iterations", "2", "--eval-tasks", "4",
                 "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "omniglot-maml-nonconv-5w1s.json").read_text())
    assert result["config"]["model"]["model"] == "mlp-bn" and result["paper_steps"] == 3
    assert result["modes"]["transductive"]["paper"] == [89.7, 1.1]
    assert "89.70 ± 1.10" in capsys.readouterr().out


def test_reproduce_reaches_anil_with_its_paper_number_at_20_way(tmp_path, capsys, monkeypatch):
    """`reproduce omniglot --algo anil`: the inner loop adapts the head alone (the body's parameters leave the
    inner loop untouched but get a meta-gradient); the ANIL paper's Omniglot number (20-way) printed beside."""
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root = fake_omniglot(tmp_path / "om", alphabets=10, characters=10)  # a validation split of 20+ classes
    out = tmp_path / "results"
    assert main(["reproduce", "omniglot", "--algo", "anil", "--ways", "20", "--iterations", "2", "--eval-tasks", "2",
                 "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "omniglot-anil-20w1s.json").read_text())
    assert result["config"]["algo"]["adapt"] == ["classifier"] and result["paper_steps"] == 5
    algo, train = result["config"]["algo"], result["config"]["train"]  # MAML's 20-way settings, as the ANIL paper
    assert (algo["inner_steps"], algo["inner_lr"], train["meta_batch_size"]) == (5, [0.1], 16)
    assert result["modes"]["transductive"]["paper"] == [96.2, 0.5]
    assert "96.20 ± 0.50" in capsys.readouterr().out
    assert main(["reproduce", "miniimagenet", "--algo", "anil", "--iterations", "1"]) == 2
    assert "--algo 'anil' does not apply to miniimagenet" in capsys.readouterr().err


def test_a_run_continues_with_its_data_in_another_place(tmp_path, capsys, monkeypatch):
    """The data root is where the data is, not a setting: a run moved to a machine that holds the dataset
    elsewhere (e.g. as the official zips, for a lent GPU machine) resumes from it."""
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    folder = fake_omniglot(tmp_path / "om")
    zipped = zip_omniglot(folder, tmp_path / "zipped")
    small = ["--ways", "3", "--meta-batch-size", "2", "--val-every", "0", "--eval-tasks", "4"]
    assert _train(tmp_path, "--data-root", str(folder), *small) == 0
    assert main(["train", "--config", "omniglot-maml", "--out", str(tmp_path / "run"), "--iterations", "2",
                 "--no-progress", "--resume", "--data-root", str(zipped), *small]) == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("data_root" in m.get("resumed_with", {}) for m in metrics)  # the move is on record


def test_a_run_is_tied_to_the_images_it_was_trained_on(tmp_path, capsys, monkeypatch):
    """An outside check resumed and evaluated runs on other data without a word (70% printed beside the paper's
    98.7, 12 of 17 test characters seen in training): the checkpoint records its images' fingerprint; the same data
    evaluates and resumes, other data at the run's data_root is refused by `eval` and by `train --resume`."""
    import shutil

    from metagrad.build import image_splits

    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    root, other = fake_omniglot(tmp_path / "om", alphabets=3), fake_omniglot(tmp_path / "other", alphabets=3, seed=1)
    run = tmp_path / "run"
    train = ["train", "--config", "omniglot-maml", "--out", str(run), "--iterations", "1", "--val-every", "0",
             "--meta-batch-size", "2", "--eval-tasks", "4", "--no-progress"]
    assert main([*train, "--data-root", str(root)]) == 0
    assert main(["eval", str(run)]) == 0
    assert main([*train, "--data-root", str(root), "--iterations", "2", "--resume"]) == 0
    capsys.readouterr()
    assert main([*train, "--data-root", str(other), "--iterations", "3", "--resume"]) == 2
    assert "was trained on other images than these" in capsys.readouterr().err
    shutil.copytree(root, tmp_path / "moved")
    shutil.rmtree(root)
    shutil.copytree(other, root)  # other drawings at the run's own data_root
    image_splits.cache_clear()  # as a new process: the splits of a data root are kept for the process's life
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"data at {root} is not what {run} was trained on" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(run), "--data-root", str(tmp_path / "moved")]) == 0  # the run's images, moved
    assert main(["eval", str(run), "--data-root", str(other)]) == 2
    capsys.readouterr()
    assert main(["train", "--iterations", "1", "--out", str(tmp_path / "sine"), "--no-progress"]) == 0
    assert main(["eval", str(tmp_path / "sine"), "--data-root", str(root)]) == 2
    assert "--data-root applies to few-shot runs" in capsys.readouterr().err
