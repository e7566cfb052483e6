"""Every bad input stops with exit code 2 and one line that names the value and the fix, never a traceback
(table-driven; each case sets up what it needs in a fresh folder)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from conftest import cli_error
from images_fixtures import fake_omniglot, zip_omniglot
from metagrad.cli import main

TINY = ["--iterations", "2", "--meta-batch-size", "2", "--no-progress"]


def trained(tmp: Path) -> Path:
    run = tmp / "run"
    assert main(["train", "--config", "sinusoid-maml", "--out", str(run), *TINY]) == 0
    return run


def omniglot(tmp: Path, zipped: bool = False) -> Path:
    root = fake_omniglot(tmp / "omniglot", alphabets=1, characters=3, drawings=20)
    return zip_omniglot(root, tmp / "zipped") if zipped else root


def damage_png(tmp: Path) -> Path:
    root = omniglot(tmp)
    next(root.glob("images_background/*/*/*.png")).write_bytes(b"not a png")
    return root


def damage_zip_member(tmp: Path) -> Path:
    root = omniglot(tmp, zipped=True)
    archive = root / "images_background.zip"
    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".png"))
    data = bytearray(archive.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # a byte of the member's data: bad CRC
    archive.write_bytes(bytes(data))
    return root


def eval_json(tmp: Path) -> Path:
    path = tmp / "eval.json"
    path.write_text(json.dumps({"iteration": 1, "curves": {"5": {"loss": {"mean": [1.0], "ci95": [0.1],
                                                                          "tasks": 10}}}}))
    return path


CASES = {
    # name: (setup(tmp) -> argv, words the line must hold)
    "inf inner step": (lambda t: ["train", "--inner-lr", "inf", "--out", str(t / "r")], ["inner_lr", "finite"]),
    "inf outer step": (lambda t: ["train", "--outer-lr", "inf", "--out", str(t / "r")], ["outer_lr", "finite"]),
    "nan outer step": (lambda t: ["train", "--outer-lr", "nan", "--out", str(t / "r")], ["outer_lr", "finite"]),
    "huge meta-batch": (lambda t: ["train", "--meta-batch-size", "1000000000", "--out", str(t / "r")],
                        ["meta_batch_size", "GiB", "lower --meta-batch-size"]),
    "huge tradeoff grid": (lambda t: ["tradeoff", "linreg", "--dim", "2000", "--tasks", "4096", "--points", "1",
                                      "--out", str(t / "r")], ["dim 2000", "GiB", "lower --tasks or --dim"]),
    "huge alpha": (lambda t: ["tradeoff", "linreg", "--alphas", "1e9", "--out", str(t / "r")], ["alpha", "(0, 1]"]),
    "config is a folder": (lambda t: ["train", "--config", str(t), "--out", str(t / "r")], ["is a directory"]),
    "config not utf-8": (lambda t: (t / "c.toml").write_bytes(b"\xff\xfe[task]") and
                         ["train", "--config", str(t / "c.toml"), "--out", str(t / "r")], ["UTF-8"]),
    "top-level key": (lambda t: (t / "c.toml").write_text("seed = 3\n") and
                      ["train", "--config", str(t / "c.toml"), "--out", str(t / "r")], ["outside any section"]),
    "out is a file": (lambda t: (t / "f").write_text("x") and ["train", "--out", str(t / "f"), *TINY], ["is a file"]),
    "out under a file": (lambda t: (t / "f").write_text("x") and ["train", "--out", str(t / "f" / "r"), *TINY],
                         ["f"]),
    "existing run": (lambda t: ["train", "--out", str(trained(t)), *TINY], ["already holds a run", "--resume"]),
    "resume nothing": (lambda t: ["train", "--out", str(t / "none"), "--resume"], ["nothing to resume"]),
    "damaged checkpoint on eval": (lambda t: (trained(t) / "last.safetensors").write_bytes(b"junk") and
                                   ["eval", str(t / "run")], ["damaged", "last.safetensors"]),
    "data root is a file": (lambda t: (t / "f").write_text("x") and
                            ["train", "--config", "omniglot-maml", "--data-root", str(t / "f"), *TINY],
                            ["is a file"]),
    "corrupt png": (lambda t: ["train", "--config", "omniglot-maml", "--data-root", str(damage_png(t)),
                               "--ways", "2", *TINY], ["not a readable image", ".png"]),
    "bad zip crc": (lambda t: ["train", "--config", "omniglot-maml", "--data-root", str(damage_zip_member(t)),
                               "--ways", "2", *TINY], ["damaged in the archive", "images_background.zip"]),
    "env on navigation": (lambda t: ["reproduce", "navigation", "--env", "ant-dir", "--out", str(t / "r")],
                          ["--env ant-dir", "locomotion"]),
    "empty algo": (lambda t: ["reproduce", "navigation", "--algo", "", "--out", str(t / "r")], ["--algo is empty"]),
    "method on an eval.json": (lambda t: ["compare", str(eval_json(t)), str(eval_json(t)), "--method-a", "maml",
                                          "--out", str(t / "c")], ["--method-a", "eval.json"]),
    "option of the other kind": (lambda t: ["train", "--config", "maml-trpo-navigation", "--ways", "5",
                                            "--out", str(t / "r")], ["--ways", "meta-RL"]),
    "seed beyond 2**63": (lambda t: ["train", "--seed", "99999999999999999999999", "--out", str(t / "r"), *TINY],
                          ["seed 99999999999999999999999", "2**63"]),
    "negative dataset seed": (lambda t: ["tradeoff", "linreg", "--seed", "-1", "--out", str(t / "r")],
                              ["--seed", "'-1'", "2**63"]),
    "test seed beyond 2**63": (lambda t: ["eval", str(trained(t)), "--eval-seed", "99999999999999999999999"],
                               ["eval_seed", "2**63"]),
    "meta-RL option on sinusoids": (lambda t: ["reproduce", "sinusoid", "--set", "hidden=64,64", "--out",
                                               str(t / "r")], ["--set does not apply to sinusoid", "navigation"]),
    "few-shot option on sinusoids": (lambda t: ["reproduce", "sinusoid", "--ways", "20", "--out", str(t / "r")],
                                     ["--ways 20 does not apply to sinusoid", "omniglot"]),
    "zero ways": (lambda t: ["reproduce", "omniglot", "--ways", "0", "--data-root", str(t), "--out", str(t / "r")],
                  ["ways 0", ">= 2"]),
    "figure format": (lambda t: ["curves", str(trained(t)), "--out", str(t / "c.xyz")], ["'.xyz'", ".png"]),
    "figure path is a folder": (lambda t: ["curves", str(trained(t)), "--out", str(t)], ["is a folder", "curves.png"]),
    "status of no folder": (lambda t: ["status", str(t / "none")], ["not a folder of long runs", "results/long"]),
    "eval output is a folder": (lambda t: ["eval", str(trained(t)), "--output", str(t)], ["is a folder", "eval.json"]),
    "results folder is a file": (lambda t: (t / "f").write_text("x") and
                                 ["tradeoff", "linreg", "--tasks", "2", "--points", "1", "--no-progress", "--out",
                                  str(t / "f")],
                                 ["f", "choose another path"]),
    "download for miniimagenet": (lambda t: ["train", "--config", "miniimagenet-maml", "--download",
                                             "--data-root", str(t), "--out", str(t / "r")], ["download", "Omniglot"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_value_and_the_fix(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "cache"))
    setup, words = CASES[case]
    argv = setup(tmp_path)
    capsys.readouterr()
    err = cli_error(argv, capsys)
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("preset", ["sinusoid-maml", "sinusoid-pretrained", "sinusoid-reptile", "linreg-maml",
                                    "linreg-drs", "maml-trpo-navigation", "random-navigation"])
def test_train_then_eval_works_for_the_presets(preset, tmp_path, capsys):
    """The README's `metagrad train ... && metagrad eval RUN`, on presets of every family (linreg once crashed)."""
    run = tmp_path / "run"
    rl = preset.endswith("navigation")
    train = ["--episodes", "2", "--horizon", "8", "--hidden", "8"] if rl else []
    evals = (["--eval-tasks", "3", "--eval-episodes", "2", "--eval-steps", "1", "--eval-lr-grid", "0.1"] if rl
             else ["--eval-tasks", "4", "--eval-steps", "2", "--eval-shots", "5"])
    assert main(["train", "--config", preset, "--out", str(run), "--iterations", "2", "--meta-batch-size", "2",
                 "--no-progress", *train]) == 0
    assert main(["eval", str(run), *evals]) == 0
    assert json.loads((run / "eval.json").read_text())["curves"]
