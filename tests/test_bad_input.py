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


def trained(tmp: Path, config: str = "sinusoid-maml") -> Path:
    run = tmp / "run"
    assert main(["train", "--config", config, "--out", str(run), *TINY]) == 0
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
    "evaluation larger than the test split": (lambda t: ["train", "--config", "omniglot-maml", "--data-root",
                                                         str(omniglot(t)), "--ways", "2", "--eval-shots", "25",
                                                         *TINY], ["eval_shots 25 + eval_query", "test split"]),
    "bad zip crc": (lambda t: ["train", "--config", "omniglot-maml", "--data-root", str(damage_zip_member(t)),
                               "--ways", "2", *TINY], ["damaged in the archive", "images_background.zip"]),
    "env on navigation": (lambda t: ["reproduce", "navigation", "--env", "ant-dir", "--out", str(t / "r")],
                          ["--env ant-dir", "locomotion"]),
    "empty algo": (lambda t: ["reproduce", "navigation", "--algo", "", "--out", str(t / "r")],
                   ["argument --algo: an empty value"]),
    "method twice": (lambda t: ["reproduce", "navigation", "--algo", "maml-trpo,maml-trpo", "--out", str(t / "r")],
                     ["--algo names maml-trpo twice"]),
    "empty method": (lambda t: ["reproduce", "navigation", "--algo", "maml-trpo,,random", "--out", str(t / "r")],
                     ["empty entry"]),
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
    "status of a run directory": (lambda t: ["status", str(trained(t))], ["holds none of the long runs",
                                                                          "not a run directory"]),
    "eval output is a folder": (lambda t: ["eval", str(trained(t)), "--output", str(t)], ["is a folder", "eval.json"]),
    "results folder is a file": (lambda t: (t / "f").write_text("x") and
                                 ["tradeoff", "linreg", "--tasks", "2", "--points", "1", "--no-progress", "--out",
                                  str(t / "f")],
                                 ["f", "choose another path"]),
    "zero query": (lambda t: ["train", "--query", "0", "--out", str(t / "r"), *TINY], ["query 0", ">= 1"]),
    "zero query for reptile": (lambda t: ["train", "--config", "sinusoid-reptile", "--query", "0", "--out",
                                          str(t / "r"), *TINY], ["query 0", ">= 1"]),
    "grid below shots": (lambda t: ["train", "--grid", "3", "--out", str(t / "r"), *TINY],
                         ["shots 10 exceed grid 3", "raise grid or lower shots"]),
    "grid below eval shots": (lambda t: ["train", "--grid", "12", "--out", str(t / "r"), *TINY],
                              ["eval_shots 20 exceed grid 12", "lower eval_shots"]),
    "huge inner loop": (lambda t: ["train", "--inner-steps", "100000000", "--out", str(t / "r"), *TINY],
                        ["inner_steps 100,000,000", "GiB", "lower inner_steps"]),
    "batching for a study": (lambda t: ["reproduce", "reptile-overlap", "--batching", "loop", "--out", str(t / "r")],
                             ["--batching loop does not apply to reptile-overlap", "omniglot"]),
    "batching for multitask": (lambda t: ["reproduce", "sinusoid-multitask", "--batching", "vmap", "--out",
                                          str(t / "r")], ["--batching vmap does not apply to sinusoid-multitask"]),
    "no steps for multitask": (lambda t: ["reproduce", "sinusoid-multitask", "--iterations", "0", "--out",
                                          str(t / "r")], ["--iterations 0", "at least 1"]),
    "no iterations for a study": (lambda t: ["reproduce", "reptile-overlap", "--iterations", "0", "--data-root",
                                             str(t), "--out", str(t / "r")], ["iterations 0", ">= 1"]),
    "one test task for a study": (lambda t: ["reproduce", "reptile-gradients", "--eval-tasks", "1", "--data-root",
                                             str(t), "--out", str(t / "r")], ["eval_tasks 1", ">= 2"]),
    "negative study budget": (lambda t: ["reproduce", "reptile-overlap", "--time-budget", "-1", "--data-root",
                                         str(t), "--out", str(t / "r")], ["time_budget -1", ">= 0 minutes"]),
    "learned step sizes for joint training": (lambda t: ["train", "--config", "sinusoid-pretrained",
                                                        "--learn-inner-lr", "--out", str(t / "r"), *TINY],
                                              ["learn_inner_lr", "not joint"]),
    "test step size for a Meta-SGD run": (lambda t: ["eval", str(trained(t, "sinusoid-metasgd")), "--eval-lr", "0.5"],
                                          ["eval_lr", "learns its step sizes"]),
    "tuned step size for a Meta-SGD run": (lambda t: ["eval", str(trained(t, "sinusoid-metasgd")), "--tune-eval-lr"],
                                           ["tune_eval_lr", "learns its step sizes"]),
    "replacement without minibatches": (lambda t: ["train", "--inner-sampling", "replacement", "--out", str(t / "r"),
                                                   *TINY], ["inner_sampling 'replacement'", "inner_batch_size"]),
    "download for miniimagenet": (lambda t: ["train", "--config", "miniimagenet-maml", "--download",
                                             "--data-root", str(t), "--out", str(t / "r")],
                                  ["--download applies to family omniglot only", "family is miniimagenet"]),
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
    tuned = preset == "random-navigation"  # its step size is tuned: one candidate keeps it quick
    evals = (["--eval-tasks", "3", "--eval-episodes", "2", "--eval-steps", "1", *(["--eval-lr-grid", "0.1"] * tuned)]
             if rl else ["--eval-tasks", "4", "--eval-steps", "2", "--eval-shots", "5"])
    assert main(["train", "--config", preset, "--out", str(run), "--iterations", "2", "--meta-batch-size", "2",
                 "--no-progress", *train]) == 0
    assert main(["eval", str(run), *evals]) == 0
    curves = json.loads((run / "eval.json").read_text())["curves"]
    tasks, steps = (3, 1) if rl else (4, 2)  # as given to eval: every metric over those tasks, after 0..steps
    metrics = [m for curve in curves.values() for m in curve.values() if isinstance(m, dict)]
    assert metrics and all(m["tasks"] == tasks and len(m["mean"]) == steps + 1 for m in metrics), curves


def test_running_out_of_memory_is_one_line_with_the_sizes_to_lower(tmp_path, capsys, monkeypatch):
    """torch's allocation failure (a size too large for the machine that no check foresaw, e.g. --hidden
    100000,100000 asks for 40 GB at once) ends in one line with the sizes to lower, not a traceback."""
    import metagrad.cli as cli

    def fail(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(cli, "cmd_train", fail)
    err = cli_error(["train", "--out", str(tmp_path / "r")], capsys)
    assert "out of memory (asked for 40.0 GB at once)" in err and "hidden" in err and "shots" in err
    monkeypatch.setattr(cli, "cmd_train", lambda args: (_ for _ in ()).throw(RuntimeError("another failure")))
    with pytest.raises(RuntimeError, match="another failure"):  # other errors are not dressed up as memory
        main(["train", "--out", str(tmp_path / "r")])


def api_batch(tasks: int = 3, support: int = 5, query: int = 4, query_tasks: int | None = None):
    import torch

    from metagrad.tasks import Split, TaskBatch
    q = tasks if query_tasks is None else query_tasks
    return TaskBatch(Split(torch.randn(tasks, support, 1), torch.randn(tasks, support, 1)),
                     Split(torch.randn(q, query, 1), torch.randn(q, query, 1)))


API_CASES = {
    # name: (a call through the public API, words the ConfigError must hold)
    "no tasks": (lambda mg, net: mg.MAML(net).meta_gradient(api_batch(tasks=0)), ["no tasks"]),
    "task counts differ": (lambda mg, net: mg.MAML(net).meta_gradient(api_batch(query_tasks=2)),
                           ["same number of tasks", "query.x [2, 4, 1]"]),
    "empty query": (lambda mg, net: mg.MAML(net).meta_gradient(api_batch(query=0)), ["query set is empty"]),
    "empty support": (lambda mg, net: mg.MAML(net).meta_gradient(api_batch(support=0)), ["support set is empty"]),
    "empty query, evaluation": (lambda mg, net: mg.MAML(net).adaptation_metrics(api_batch(query=0), 1),
                                ["query set is empty"]),
    "infinite step": (lambda mg, net: mg.SGD(float("inf")), ["inner_lr inf", "finite"]),
    "step as text": (lambda mg, net: mg.SGD("0.1"), ["inner_lr '0.1'", "number"]),
    "fractional steps": (lambda mg, net: mg.MAML(net, inner_steps=1.5), ["inner_steps 1.5", "whole number"]),
    "torch optimizer as inner rule": (lambda mg, net: mg.MAML(net, inner=__import__("torch").optim.SGD),
                                      ["mg.SGD(0.01)", "outer step"]),
    "not a module": (lambda mg, net: mg.MAML(lambda x: x), ["torch.nn.Module", "function"]),
    "optimizer of another model": (
        lambda mg, net: mg.Trainer(mg.MAML(net), mg.tasks.Sinusoid(), __import__("torch").optim.Adam(
            __import__("torch").nn.Linear(1, 1).parameters()), iterations=1, meta_batch_size=2, progress=False),
        ["none of the learner's trainable parameters", "learner.parameters()"]),
    "adam beta1 of 1": (lambda mg, net: mg.Adam(0.01, betas=(1.0, 0.999)), ["betas (1.0, 0.999)", "[0, 1)"]),
    "adam beta2 above 1": (lambda mg, net: mg.Adam(0.01, betas=(0.0, 1.5)), ["betas (0.0, 1.5)", "[0, 1)"]),
    "adam one beta": (lambda mg, net: mg.Adam(0.01, betas=0.9), ["betas 0.9", "two numbers"]),
    "adam negative eps": (lambda mg, net: mg.Adam(0.01, eps=-1), ["eps -1", "positive"]),
    "learned steps shaped by a list": (lambda mg, net: mg.SGD(0.1, learn=True, params=list(net.parameters())),
                                       ["params list", "named_parameters"]),
    "combination as text": (lambda mg, net: mg.Reptile(net, inner_steps=2, combination="0,1"),
                            ["combination '0,1'", "sequence of numbers"]),
    "combination as a number": (lambda mg, net: mg.Reptile(net, combination=1), ["combination 1", "sequence"]),
    "carried state for joint training": (lambda mg, net: mg.JointTraining(net, inner_state="carried"),
                                         ["inner_state 'carried'", "joint training"]),
    "learned step sizes for joint training": (lambda mg, net: mg.JointTraining(net, inner=mg.SGD(0.1, learn=True,
                                                                                                 params=net)),
                                              ["joint training cannot meta-learn inner step sizes"]),
    "no loss function": (lambda mg, net: mg.MAML(net, loss_fn=None), ["loss_fn None", "mg.losses.mse"]),
    **{f"trainer {key}={value!r}": (
        lambda mg, net, key=key, value=value: api_trainer(mg, net, **{key: value}), [f"{key} {value!r}", words])
       for key, value, words in (("iterations", 2.5, "whole number >= 0"), ("iterations", -1, "whole number >= 0"),
                                 ("meta_batch_size", 0, "whole number >= 1"), ("log_every", 0, "whole number >= 1"),
                                 ("checkpoint_every", 0, "whole number >= 1"), ("val_tasks", 1.5, "whole number"),
                                 ("val_every", True, "whole number"), ("seed", -1, "2**63 - 1"),
                                 ("time_budget", float("nan"), "minutes >= 0"))},
}


def api_trainer(mg, net, **settings):
    """A Trainer on sinusoids with two tasks per step and one iteration, ``settings`` overriding."""
    import torch
    kwargs = {"iterations": 1, "meta_batch_size": 2, "progress": False, **settings}
    return mg.Trainer(mg.MAML(net), mg.tasks.Sinusoid(), torch.optim.Adam(net.parameters()), **kwargs)


@pytest.mark.parametrize("case", list(API_CASES))
def test_bad_input_through_the_api_is_a_config_error_naming_it(case):
    import torch

    import metagrad as mg
    from metagrad.errors import ConfigError
    call, words = API_CASES[case]
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with pytest.raises(ConfigError) as e:
        call(mg, net)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
