"""The command line: bad input gives one line and exit code 2; train, eval and reproduce write their files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import cli_error
from metagrad import provenance
from metagrad.cli import bars_off, main

TINY = ["--iterations", "20", "--meta-batch-size", "4", "--val-every", "10", "--checkpoint-every", "10",
        "--no-progress"]


@pytest.mark.parametrize(("argv", "match"), [
    (["train", "--inner-lr", "-0.1"], "inner_lr -0.1 must be positive"),
    (["train", "--shots", "0"], "shots 0 must be a whole number >= 1"),
    (["train", "--algo", "mamll"], "unknown algo 'mamll' (did you mean 'maml'?)"),
    (["train", "--config", "missing.toml"], "config file 'missing.toml' not found"),
    (["train", "--config", "sinusoid-mmal"], "config file 'sinusoid-mmal' not found (did you mean 'sinusoid-maml'?)"),
    (["train", "--shots", "ten"], "'ten' is not an integer"),
    (["train", "--nonsense"], "unrecognized arguments: --nonsense"),
    (["reproduce", "imagenet"], "invalid choice: 'imagenet'"),
    (["eval", "no/such/run"], "no 'last' checkpoint in no/such/run: there is no folder no/such/run; check the path"),
    (["train", "--set", "inner_lr=-0.1"], "inner_lr -0.1 must be positive"),
    (["train", "--set", "inner_lrr=0.1"], "--set inner_lrr: not a config value this command takes (did you mean "
                                          "'inner_lr'?)"),
    (["train", "--set", "inner_lr"], "--set takes KEY=VALUE, got 'inner_lr'"),
    (["train", "--inner-lr", "0.1", "--set", "inner_lr=0.2"], "inner_lr is already given; give it once"),
    (["train", "--set", "inner_lr=0.2", "--inner-lr", "0.1"], "inner_lr is given twice (--inner-lr and --set"),
    (["train", "--set", "compile=false", "--compile"], "compile is given twice (--compile and --set"),
    (["train", "--set", "inner_lr="], "inner_lr is empty"),
    (["eval", "no/such/run", "--set", "inner_steps=2"], "--set inner_steps: a training setting, not a value this "
                                                        "command changes"),
    (["eval", "no/such/run", "--set", "inner_stepz=2"], "--set inner_stepz: not a config value this command takes"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert match in cli_error(argv, capsys)


def test_a_config_key_with_a_typo(capsys, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[algo]\ninner_step = 5\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'inner_step' in [algo] (did you mean 'inner_steps'?)" in err and "\n" not in err


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metagrad", "train", "--algo", "nope"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown algo 'nope'" in proc.stderr


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path):
    """`metagrad status | head -1`: the pipe's reader gone before the output is written ends the command quietly
    with exit code 0 (it was 'cannot write or read: Broken pipe', exit 2)."""
    (tmp_path / "long" / "navigation").mkdir(parents=True)  # one row's folder, empty: a table of every row
    proc = subprocess.Popen([sys.executable, "-m", "metagrad", "status", str(tmp_path / "long")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the interpreter has started: every write the command makes meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait() == 0 and err == "", err


def test_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert {"last.json", "last.safetensors", "best.json", "best.safetensors", "metrics.jsonl", "config.toml"} <= {
        p.name for p in run.iterdir()}
    assert main(["train", "--out", str(run), *TINY]) == 2  # an existing run is kept
    assert "pass --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", *TINY[:-1], "--iterations", "30", "--no-progress"]) == 0
    assert json.loads((run / "last.json").read_text())["iteration"] == 30
    assert main(["eval", str(run), "--eval-tasks", "50", "--eval-shots", "5,10", "--eval-steps", "3"]) == 0
    out = json.loads((run / "eval.json").read_text())
    assert out["iteration"] == 30 and set(out["curves"]) == {"5", "10"}
    assert out["commit"] == provenance.commit() and out["machine"]["cpus"] >= 1 and "command" in out  # made where
    curve = out["curves"]["5"]["loss"]
    assert len(curve["mean"]) == 4 and len(curve["ci95"]) == 4 and curve["tasks"] == 50
    assert all(h > 0 for h in curve["ci95"])


def test_set_key_value_is_the_keys_own_option(tmp_path, capsys):
    """``--set`` (the form ``reproduce`` takes) reaches the run's config and its evaluation as the options do."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--set", "inner-steps=2", "--set", "hidden=8,8", "--set", "compile=false",
                 *TINY]) == 0
    saved = (run / "config.toml").read_text()
    assert "inner_steps = 2" in saved and "hidden = [8, 8]" in saved
    assert main(["eval", str(run), "--set", "eval_tasks=5", "--set", "eval_steps=2", "--eval-shots", "5"]) == 0
    out = json.loads((run / "eval.json").read_text())
    assert len(out["curves"]["5"]["loss"]["mean"]) == 3


@pytest.mark.parametrize("experiment", ["sinusoid", "sinusoid-reptile"])
def test_reproduce_writes_table_results_and_figures(experiment, tmp_path, capsys):
    out = tmp_path / experiment
    assert main(["reproduce", experiment, "--iterations", "20", "--eval-tasks", "30", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == experiment and "paper" in results
    for method in results["methods"].values():
        for curve in method["curves"].values():
            assert curve["loss"]["tasks"] == 30 and len(curve["loss"]["mean"]) == len(curve["loss"]["ci95"])
    for png in ("adaptation_curves.png", "fits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(out / png) in printed
    assert "paper" in printed and "±" in printed
    if experiment == "sinusoid":
        assert "| MAML (paper) | - | 0.67 | 0.38 | 0.35 |" in printed
        assert "| pretrained (paper) | - | 2.41 | 2.23 | 2.19 |" in printed
        assert "| context vector |" in printed and set(results["methods"]) == {"maml", "pretrained", "oracle",
                                                                             "context"}
        # MAML Figure 2, left: K = 5 points from [-5, 0] only, the fit drawn over [-5, 5], the MSE on [0, 5] noted
        half = results["half_range"]
        assert half["seen"] == [-5.0, 0.0] and half["unseen"] == [0.0, 5.0] and half["shots"] == 5
        assert len(half["figure"]["support_x"]) == 5 and all(-5 <= x <= 0 for x in half["figure"]["support_x"])
        assert {m: len(r["loss"]["mean"]) for m, r in half["methods"].items()} == dict.fromkeys(results["methods"], 11)
        assert "MSE on the unseen half [0.0, 5.0]" in printed
        png = out / "sinusoid_half_range.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in printed
    else:
        assert "half_range" not in results and not (out / "sinusoid_half_range.png").exists()


def test_meta_rl_trains_and_evaluates_like_a_supervised_run(tmp_path, capsys):
    """`metagrad train --config <meta-RL preset>` and `metagrad eval RUN` work as for supervised runs; an option
    of the other kind of config is refused, not ignored."""
    from metagrad.cli import main

    run = tmp_path / "nav"
    small = ["--iterations", "2", "--meta-batch-size", "2", "--episodes", "2", "--horizon", "8", "--hidden", "8"]
    assert main(["train", "--config", "maml-trpo-navigation", "--out", str(run), "--no-progress", *small]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    assert main(["eval", str(run), "--checkpoint", "best", "--eval-tasks", "3", "--eval-episodes", "2",
                 "--eval-steps", "1"]) == 0
    data = json.loads((run / "eval.json").read_text())
    curve = data["curves"]["2"]["return"]
    assert len(curve["mean"]) == 2 and curve["tasks"] == 3
    err = cli_error(["train", "--config", "maml-trpo-navigation", "--family", "omniglot", "--out",
                     str(tmp_path / "x")], capsys)
    assert "--family does not apply to a meta-RL config" in err
    err = cli_error(["train", "--config", "sinusoid-maml", "--max-kl", "0.1", "--out", str(tmp_path / "y")], capsys)
    assert "--max-kl does not apply to a supervised config" in err


def test_the_resume_hint_keeps_the_users_options(tmp_path, capsys):
    """After a time budget, the printed command continues the run with the same options (it must not fail on a
    config that differs from the checkpoint's)."""
    import shlex

    from metagrad.cli import main

    run = tmp_path / "r"
    args = ["train", "--config", "sinusoid-maml", "--iterations", "100000", "--val-tasks", "7", "--out", str(run),
            "--no-progress", "--time-budget", "0.002"]
    assert main(args) == 0
    hint = capsys.readouterr().err.strip().split("continue with: ")[1]
    assert "--val-tasks 7" in hint and hint.endswith("--resume")
    again = shlex.split(hint)[1:]
    assert main(again) == 0


def test_the_resume_hint_of_a_torchrun_process_starts_torchrun(monkeypatch):
    """Continued on another number of processes a run leaves the bit-for-bit path: the hint says how it was run."""
    import argparse

    from metagrad.cli.train import resume_hint

    args = argparse.Namespace(argv=["train", "--out", "r"], out_dir="r")
    assert resume_hint(args) == "metagrad train --out r --resume"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_hint(args) == "torchrun --standalone --nproc_per_node=2 -m metagrad train --out r --resume"
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resume_hint(args).startswith("torchrun --nnodes=... --nproc_per_node=2 -m metagrad train")


def test_resume_without_options_takes_the_runs_own_config(tmp_path, capsys):
    """`metagrad train --out RUN --resume` (the README's) continues a run made with any preset and options; an
    option that contradicts the run names both values."""
    from metagrad import checkpoint

    run = tmp_path / "r"
    assert main(["train", "--config", "linreg-maml", "--iterations", "100000", "--meta-batch-size", "3",
                 "--time-budget", "0.002", "--out", str(run), "--no-progress"]) == 0
    first = checkpoint.read_info(run / "last")["iteration"]
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    info = checkpoint.read_info(run / "last")
    assert info["iteration"] > first and info["config"]["task"]["family"] == "linreg"
    capsys.readouterr()
    err = cli_error(["train", "--out", str(run), "--meta-batch-size", "4", "--resume"], capsys)
    assert "meta_batch_size 3 in the run, 4 given" in err


def test_eval_warns_when_the_adapted_models_diverge(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--iterations", "2", "--meta-batch-size", "2", "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--eval-tasks", "3", "--eval-steps", "1", "--eval-lr", "0.01"]) == 0
    assert "diverged" not in capsys.readouterr().err
    assert main(["eval", str(run), "--eval-tasks", "3", "--eval-steps", "1", "--eval-lr", "1e30"]) == 0
    err = capsys.readouterr().err
    assert "diverged" in err and "lower --eval-lr" in err


def test_eval_reports_the_step_sizes_its_steps_took(tmp_path, capsys):
    """A schedule longer than the steps is not listed whole: the table names the sizes used."""
    run = tmp_path / "r"
    assert main(["train", "--iterations", "2", "--meta-batch-size", "2", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--eval-tasks", "3", "--eval-steps", "2", "--eval-lr", "0.01,0.02,0.03"]) == 0
    assert "(step size [0.01, 0.02])" in capsys.readouterr().out  # eval.json keeps the schedule (figures go further)


def test_no_progress_also_silences_the_data_loaders_bars(tmp_path, capsys, monkeypatch):
    """--no-progress reaches bars the command does not draw itself (Omniglot's decoding, 1623 classes)."""
    from metagrad.tasks.images import _progress

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    list(_progress(list(range(60)), "decoding"))
    assert "decoding" in capsys.readouterr().err  # a bar without the option: the check below can fail
    with bars_off(True):
        list(_progress(list(range(60)), "decoding"))
    assert "decoding" not in capsys.readouterr().err
    assert "TQDM_DISABLE" not in os.environ  # the setting ends with the command

    def run(args):  # the command as main runs it, with its options parsed
        list(_progress(list(range(60)), "decoding"))
        return 0

    monkeypatch.setattr("metagrad.cli.run_command", run)
    assert main(["train", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "decoding" not in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path)]) == 0
    assert "decoding" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--no-progress"]) == 0  # evaluating an Omniglot run decodes it too
    assert "decoding" not in capsys.readouterr().err


def test_every_command_that_trains_evaluates_or_loads_data_takes_no_progress():
    """--no-progress is offered wherever a bar can appear (train, eval, reproduce, both trade-off studies); only the
    commands that read result files (compare, curves, status) go without it."""
    import argparse

    from metagrad.cli import build_parser

    def leaves(parser, path=()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))

    found = {" ".join(path): any("--no-progress" in a.option_strings for a in p._actions)
             for path, p in leaves(build_parser())}
    assert found == {"train": True, "eval": True, "reproduce": True, "tradeoff linreg": True, "tradeoff rl": True,
                     "compare": False, "curves": False, "status": False}


def test_reproduce_compile_reaches_every_trained_method_and_is_refused_where_none_is(monkeypatch, capsys, tmp_path):
    """``--compile`` sets ``compile`` in the configs the sinusoid, few-shot and meta-RL reproductions train with (what
    a GPU run of the convolutions needs); the studies that train with plain autograd refuse it."""
    from metagrad.cli import build_parser, metarl_request
    from metagrad.reproduce import fewshot, sinusoid
    from metagrad.reproduce.metarl import method_configs

    seen: dict = {}
    monkeypatch.setattr(fewshot, "run", lambda *a, overrides, **k: seen.update(fewshot=(a, overrides)))
    monkeypatch.setattr(sinusoid, "run", lambda exp, out, overrides, **k: seen.update(sinusoid=(exp, overrides)))
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    assert main(["reproduce", "omniglot", "--ways", "20", "--compile", *out]) == 0
    (dataset, algo, ways, shots, _), overrides = seen["fewshot"]
    assert fewshot.setting_config(dataset, algo, ways, shots).replace(**overrides).compile is True
    assert main(["reproduce", "sinusoid", "--compile", *out]) == 0
    exp, overrides = seen["sinusoid"]
    assert all(sinusoid._method_config(exp, m, False, 2, overrides).compile for m in exp.methods)
    assert main(["reproduce", "sinusoid", *out]) == 0 and "compile" not in seen["sinusoid"][1]

    args = build_parser().parse_args(["reproduce", "navigation", "--algo", "maml-trpo,maml-vpg", "--compile"])
    experiment, methods, _, sets = metarl_request(args)
    assert all(cfg.compile for cfg in method_configs(experiment, methods, False, 2, None, sets))
    assert main(["reproduce", "navigation", "--compile", "--set", "compile=false", *out]) != 0
    assert "--compile and --set compile=false: give one of them" in capsys.readouterr().err

    for study in ("reptile-gradients", "sinusoid-multitask"):
        assert main(["reproduce", study, "--compile", *out]) != 0
        assert "trains with plain autograd" in capsys.readouterr().err


def test_train_help_says_which_kind_of_config_an_option_serves(capsys, monkeypatch):
    """Shared options give both meanings and defaults where they differ; options a meta-RL config refuses say so;
    eval's help too."""
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens ("meta-" / "RL")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0  # help asked for is not an error
    text = " ".join(capsys.readouterr().out.split())
    assert "(built-in default: 2000; meta-RL: 10)" in text  # --checkpoint-every
    assert "metrics.jsonl (built-in default: 100); supervised configs only" in text  # --log-every
    assert ("--outer-lr FLOAT outer step size (Reptile: epsilon); meta-RL: step size of outer 'vpg' and 'ppo' "
            "(built-in default: 0.001)") in text  # refused with meta-RL's default outer, trpo
    assert "--init-std FLOAT" in text and "--seed INT seed of the initialization and the task sampler; meta-RL:" in text
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "support sizes K to evaluate (built-in default: 5,10,20); supervised configs only" in text


@pytest.mark.parametrize("command", ["train", "eval", "reproduce", "tradeoff", "compare", "curves", "status"])
def test_help_shows_no_escaped_percent_signs(command, capsys):
    """argparse formats help strings (so they write %%) but not descriptions: an escaped sign there printed as %%.
    Each command's help is its own (its usage line) and ends the process with status 0."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "%%" not in out and out.startswith(f"usage: metagrad {command} ")


@pytest.mark.parametrize(("command", "argv", "again"),
                         [("tradeoff", ["tradeoff", "rl"], "run the command again and it resumes"),
                          ("reproduce", ["reproduce", "sinusoid"], "run the command again and it resumes"),
                          ("train", ["train"], "run the command again, with --resume once it has written one")])
def test_an_interrupt_between_runs_says_the_command_resumes(monkeypatch, capsys, command, argv, again):
    """Ctrl-C outside a training loop (between a study's runs, while one is built) said only "interrupted", where one
    inside a run says how to go on: both say how the command goes on, in the words a full disk gets."""
    import metagrad.cli as cli
    from metagrad.cli.parser import EXIT_INTERRUPTED

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"cmd_{command}", interrupted)
    assert main(argv) == EXIT_INTERRUPTED
    said = capsys.readouterr().err.strip()
    assert said == f"metagrad {command}: interrupted (any checkpoint it wrote is whole: {again})"


@pytest.mark.parametrize("reader_left", [True, False])
def test_a_broken_pipe_is_success_only_when_stdout_lost_its_reader(monkeypatch, capsys, reader_left):
    """`metagrad eval RUN | head` ends quietly with 0; a broken pipe elsewhere (a simulator worker killed under a
    run: it ended a training run silently with 0, nothing saved) is an error with code 2."""
    import os
    import sys

    import metagrad.cli as cli

    def writes(args):
        raise BrokenPipeError(32, "Broken pipe")

    read, write = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(write, 1)
        os.close(write)
        if reader_left:
            os.close(read)
        monkeypatch.setattr(cli, "cmd_status", writes)
        monkeypatch.setattr(sys, "stdout", os.fdopen(os.dup(1), "w"))
        code = main(["status", "results"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        if not reader_left:
            os.close(read)
    assert code == (0 if reader_left else 2)
    err = capsys.readouterr().err
    assert ("Broken pipe" in err) is not reader_left
    assert ("a process it wrote to has ended" in err) is not reader_left


def test_a_signal_after_the_command_finished_does_not_turn_it_into_a_failure():
    """Ctrl-C (or SIGTERM) landing after the command's work and output were done, in the interpreter's teardown,
    ended a finished run with exit -2 and nothing said (outside fault audit): once done, the command ignores them."""
    script = ("import os, signal, sys, time\n"
              "import metagrad.cli\n"
              "metagrad.cli.main = lambda: 0\n"
              "from metagrad.__main__ import run\n"
              "code = run()\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(0.2)\n"
              "print('finished', code)\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "finished 0", "")
