"""Checkpoints: one atomic, checksummed file; round trip; damage detected in one line, never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from metagrad import checkpoint, files
from metagrad.errors import CheckpointError, ConfigError


def state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.Generator().get_state(),
            "nested": [1, 2.5, None, "x", {"a": torch.arange(3)}], "scalar": torch.tensor(3.0)}


def test_round_trip_keeps_every_tensor_and_value(tmp_path):
    s = state()
    checkpoint.save(tmp_path / "ck", s, {"iteration": 7, "config": {"algo": "maml"}})
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert info["iteration"] == 7 and info["config"] == {"algo": "maml"}
    assert set(loaded["optimizer"]["state"]) == {0, 1}  # integer keys survive (the optimizer needs them)
    for k, v in s["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg_sq"], s["optimizer"]["state"][0]["exp_avg_sq"])
    assert torch.equal(loaded["rng"], s["rng"]) and torch.equal(loaded["scalar"], s["scalar"])
    assert loaded["nested"][:4] == [1, 2.5, None, "x"] and torch.equal(loaded["nested"][4]["a"], torch.arange(3))
    opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt.load_state_dict(loaded["optimizer"])  # a real optimizer accepts it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]  # no temporary files left
    assert checkpoint.read_info(tmp_path / "ck")["iteration"] == 7


def test_the_json_file_is_a_readable_copy_that_nothing_reads_back(tmp_path):
    checkpoint.save(tmp_path / "ck", state(), {"iteration": 3})
    assert json.loads((tmp_path / "ck.json").read_text())["iteration"] == 3
    (tmp_path / "ck.json").write_text("{torn")
    assert checkpoint.load(tmp_path / "ck")[1]["iteration"] == 3
    (tmp_path / "ck.json").unlink()
    assert checkpoint.exists(tmp_path / "ck") and checkpoint.load(tmp_path / "ck")[1]["iteration"] == 3


def flip(path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped data byte", "flipped header byte", "empty",
                                    "not safetensors"])
def test_damage_is_detected_in_one_line(tmp_path, damage):
    checkpoint.save(tmp_path / "ck", state(), {"iteration": 1})
    path = tmp_path / "ck.safetensors"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "flipped data byte":
        flip(path, 5)
    elif damage == "flipped header byte":
        data = bytearray(path.read_bytes())
        at = data.index(b'iteration\\": 1') + len('iteration\\": ')
        data[at] = ord("2")  # still valid JSON, another iteration: only the checksum tells
        path.write_bytes(bytes(data))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("hello")
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(tmp_path / "ck")
    assert len(str(e.value).splitlines()) == 1 and "ck" in str(e.value)


class Crash(Exception):
    """A process killed in the middle of a write (in-process stand-in for kill -9)."""


STEPS = ["serialize", "write", "replace", "_fsync_dir", "write_json"]


def crash_at(monkeypatch, step: str) -> None:
    """Make the checkpoint write die at ``step`` (for the write: half the file on disk when it dies)."""
    import os

    def boom(*args, **kwargs):
        raise Crash(step)

    if step == "replace":
        monkeypatch.setattr(files.os, "replace", boom)
    elif step == "write":
        def half(fd):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise Crash(step)

        monkeypatch.setattr(files.os, "fsync", half)
    else:
        monkeypatch.setattr(files if step == "write_json" else checkpoint, step, boom)


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_of_a_write_leaves_a_whole_checkpoint(tmp_path, monkeypatch, step):
    """Old or new, but always a whole checkpoint: never a torn one."""
    checkpoint.save(tmp_path / "ck", {"x": torch.zeros(4)}, {"iteration": 1})
    with monkeypatch.context() as m:
        crash_at(m, step)
        with pytest.raises(Crash):
            checkpoint.save(tmp_path / "ck", {"x": torch.ones(4)}, {"iteration": 2})
    loaded, info = checkpoint.load(tmp_path / "ck")
    assert (info["iteration"], float(loaded["x"].sum())) in ((1, 0.0), (2, 4.0))
    assert info["iteration"] == (1 if step in ("serialize", "write", "replace") else 2)
    assert not list(tmp_path.glob(".*.tmp"))  # the dead write's temporary file is gone (a killed one: see below)
    checkpoint.save(tmp_path / "ck", {"x": torch.ones(4)}, {"iteration": 3})  # the next save goes through
    assert checkpoint.load(tmp_path / "ck")[1]["iteration"] == 3


def test_a_reader_never_sees_a_checkpoint_that_is_being_replaced(tmp_path):
    """`metagrad status`, a test's poll or a second process read `last` while the run replaces it: each read
    gives one whole checkpoint (its header and tensors from the same write), never an error."""
    import threading

    stem, done = tmp_path / "last", threading.Event()

    def writer():
        for i in range(300):  # headers of changing length, as a run's growing counters give
            checkpoint.save(stem, {"w": torch.full((50 + i % 7,), float(i))}, {"iteration": i, "note": "x" * (i % 13)})
        done.set()

    checkpoint.save(stem, {"w": torch.zeros(50)}, {"iteration": 0})
    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set():
        seen = checkpoint.read_info(stem)["iteration"]
        state, info = checkpoint.load(stem)
        assert torch.all(state["w"] == info["iteration"]) and len(state["w"]) == 50 + info["iteration"] % 7
        assert 0 <= seen <= info["iteration"] < 300  # one the writer saved, and no later than the load after it
        reads += 1
    thread.join()
    assert reads > 10


MERGER = """
import sys, time
from pathlib import Path
from metagrad.reproduce.metarl import Experiment, _merge
path, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
experiment = Experiment("locomotion-test", table=lambda r: "")
(path.parent / f"ready-{me}").touch()
while not (path.parent / f"ready-{other}").exists():  # both start merging together, whatever their imports took
    time.sleep(0.001)
for i in range(150):
    _merge(path, f"{me}{i}", {"i": i}, experiment)
"""


def test_two_commands_merging_one_results_file_lose_nothing(tmp_path):
    """Two reproduction commands (two `--algo` subsets into one --out) adding their methods to results.json at the
    same moments: every method of both is there, and no temporary file is left."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    path = tmp_path / "results.json"
    procs = [subprocess.Popen([sys.executable, "-c", MERGER, str(path), me, other], env=env,
                              stderr=subprocess.PIPE, text=True) for me, other in (("a", "b"), ("b", "a"))]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    methods = json.loads(path.read_text())["methods"]
    assert set(methods) == {f"{me}{i}" for me in "ab" for i in range(150)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.json.lock", "ready-a", "ready-b", "results.json"]


def test_atomic_writes_keep_the_file_mode_and_follow_the_umask(tmp_path):
    """A rewritten file keeps its mode; a new one gets what a plain write would (0o666 less the umask)."""
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    kept.chmod(0o600)
    files.write_json(kept, {"a": 1})
    assert kept.stat().st_mode & 0o777 == 0o600 and json.loads(kept.read_text()) == {"a": 1}
    new = tmp_path / "new.json"
    files.write_json(new, {})
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_checkpoint_gets_a_plain_files_mode_and_keeps_its_own(tmp_path):
    """safetensors writes its files for the owner alone (0600); a checkpoint gets what a plain write would, so a
    run folder shared with a group stays readable to it, and a mode the user gave a checkpoint survives the next
    save."""
    plain = tmp_path / "plain"
    plain.write_text("")
    checkpoint.save(tmp_path / "last", {"w": torch.zeros(2)}, {"iteration": 1})
    assert (tmp_path / "last.safetensors").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    (tmp_path / "last.safetensors").chmod(0o640)
    checkpoint.save(tmp_path / "last", {"w": torch.ones(2)}, {"iteration": 2})
    assert (tmp_path / "last.safetensors").stat().st_mode & 0o777 == 0o640
    assert checkpoint.load(tmp_path / "last")[1]["iteration"] == 2


HOLD = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); " \
       "print('ready', flush=True); time.sleep(120)"


def hold_lock(path) -> subprocess.Popen:
    """Another process writing ``path``, as ``files.replace_atomically`` does: it holds the file's lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    return holder


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks")
def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    """A run folder's start clears the half-written files of writers that were killed, not the one another command
    is writing right now into the same folder (e.g. an evaluation's paths.pt), nor one too young to tell."""
    killed, live, young = (tmp_path / f".{name}.abcd1234.tmp" for name in ("last.json", "paths.pt", "config.toml"))
    for f in (killed, live, young):
        f.write_text("half")
    for f in (killed, live):
        os.utime(f, (f.stat().st_atime - 600, f.stat().st_mtime - 600))
    holder = hold_lock(live)
    try:
        assert files.remove_stale_temps(tmp_path) == [killed]
    finally:
        holder.kill()
        holder.wait()
    assert live.exists() and young.exists()
    assert files.remove_stale_temps(tmp_path) == [live]  # its writer gone: it goes too


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks")
def test_a_writer_holds_its_temporary_file_until_it_is_in_place(tmp_path):
    held = []

    def write(f):
        f.write(b"x")
        held.extend(files._being_written(t) for t in tmp_path.glob(".y.txt.*.tmp"))

    files.replace_atomically(tmp_path / "y.txt", write)
    assert held == [True] and (tmp_path / "y.txt").read_bytes() == b"x" and not list(tmp_path.glob(".*.tmp"))


def _trainer(run_dir, hidden=8, optimizer=torch.optim.Adam, iterations=3, learned_lr=False, named=False, **kw):
    import metagrad as mg

    torch.manual_seed(0)
    model = mg.models.MLP(1, [hidden], 1)
    learner = mg.MAML(model, inner=mg.SGD(0.01, learn=True, params=model) if learned_lr else mg.SGD(0.01))
    params = learner.named_parameters() if named else learner.parameters()
    return mg.Trainer(learner, mg.tasks.Sinusoid(), optimizer(params, lr=1e-3, **kw), iterations=iterations,
                      meta_batch_size=2, run_dir=run_dir, progress=False)


@pytest.mark.parametrize(("change", "words"), [
    ({"hidden": 16}, ["does not fit this learner", "model.0.weight", "build the learner as it was saved"]),
    ({"optimizer": torch.optim.SGD}, ["saved with the outer optimizer Adam, this trainer's is SGD",
                                      "resume with Adam"]),
    ({"learned_lr": True}, ["trained with learner learn_inner_lr False, this Trainer has True"]),
])
def test_resuming_with_another_model_or_optimizer_is_refused_and_loads_nothing(tmp_path, change, words):
    """A run resumed through the Python API with a learner or outer optimizer unlike the one it was saved with: one
    line naming the difference, before anything is loaded (torch alone raised a size table, or KeyError 'momentum'
    at the next step after taking Adam's state into SGD)."""
    _trainer(tmp_path).fit()
    other = _trainer(tmp_path, iterations=5, **change)
    before = [p.detach().clone() for p in other.learner.parameters()]
    with pytest.raises(CheckpointError) as e:
        other.fit(resume=True)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert all(torch.equal(a, p) for a, p in zip(before, other.learner.parameters(), strict=True))
    assert _trainer(tmp_path, iterations=5).fit(resume=True).iteration == 5  # the run itself is intact


def test_a_resumed_run_keeps_its_own_optimizer_kernel_and_takes_named_parameters(tmp_path):
    """torch takes `fused` from the saved groups: a run started eager and resumed compiled (whose optimizer is
    fused) would step per tensor again; it keeps the resumed optimizer's. An optimizer built from
    `named_parameters()` (torch adds `param_names` to its groups) resumes one built from `parameters()`."""
    _trainer(tmp_path / "a").fit()
    resumed = _trainer(tmp_path / "a", iterations=5, fused=True)
    assert resumed.fit(resume=True).iteration == 5
    assert resumed.optimizer.param_groups[0]["fused"] is True
    _trainer(tmp_path / "b", named=True).fit()
    assert _trainer(tmp_path / "b", iterations=5).fit(resume=True).iteration == 5


@pytest.mark.parametrize("schedule", ["lambda", "step"])
def test_a_run_resumed_with_a_lower_step_size_keeps_its_schedules_shape(tmp_path, schedule):
    """The divergence advice (lower the outer step size, resume) on a run with a schedule: the step size in force is
    scaled as the base is, for any multiplicative schedule (a StepLR raised AttributeError 'lr_lambdas')."""
    import metagrad as mg

    def trainer(lr, iterations):
        torch.manual_seed(0)
        learner = mg.MAML(mg.models.MLP(1, [8], 1), inner=mg.SGD(0.01))
        opt = torch.optim.SGD(learner.parameters(), lr=lr)
        sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 ** it) if schedule == "lambda" else
                 torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
        return mg.Trainer(learner, mg.tasks.Sinusoid(), opt, scheduler=sched, iterations=iterations,
                          meta_batch_size=2, run_dir=tmp_path, progress=False)

    trainer(1e-2, 3).fit()
    resumed = trainer(1e-3, 5)
    resumed.fit(resume=True)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 5)


def test_a_python_trainer_built_otherwise_than_its_run_is_refused(tmp_path):
    """The command line checks a resumed run's whole config; a Trainer of the Python API with another meta-batch
    size, seed or schedule resumed silently (the seed came from the checkpoint and did nothing)."""
    import metagrad as mg

    def trainer(**kw):
        torch.manual_seed(0)
        learner = mg.MAML(mg.models.MLP(1, [8], 1), inner=mg.SGD(0.01))
        args = {"iterations": 3, "meta_batch_size": 2, "seed": 0, **kw}
        return mg.Trainer(learner, mg.tasks.Sinusoid(), torch.optim.Adam(learner.parameters()), run_dir=tmp_path,
                          progress=False, **args)

    trainer().fit()
    for change, words in (({"meta_batch_size": 4}, "meta_batch_size 2, this Trainer has 4"),
                          ({"seed": 7}, "seed 0, this Trainer has 7")):
        with pytest.raises(CheckpointError, match=words):
            trainer(iterations=5, **change).fit(resume=True)
    assert trainer(iterations=5).fit(resume=True).iteration == 5


def test_a_python_trainer_of_another_algorithm_or_tasks_is_refused_and_new_step_sizes_are_recorded(tmp_path):
    """A Trainer resumed with another inner_steps, first_order, inner rule or task distribution trained on as
    another run without a word; new step sizes were neither refused nor recorded (the docs promise resumed_with
    in metrics.jsonl, as the command line writes)."""
    import json

    import metagrad as mg

    def trainer(lr=0.01, outer=1e-3, tasks=None, inner=None, iterations=5, **kw):
        torch.manual_seed(0)
        learner = mg.MAML(mg.models.MLP(1, [8], 1), inner=inner or mg.SGD(lr), **kw)
        return mg.Trainer(learner, tasks or mg.tasks.Sinusoid(), torch.optim.Adam(learner.parameters(), outer),
                          iterations=iterations, meta_batch_size=2, run_dir=tmp_path, progress=False)

    trainer(iterations=3).fit()
    for change, words in (({"inner_steps": 2}, "learner inner_steps 1, this Trainer has 2"),
                          ({"first_order": True}, "learner first_order False, this Trainer has True"),
                          ({"inner": mg.Adam(0.01)}, "learner inner 'SGD', this Trainer has 'Adam'"),
                          ({"tasks": mg.tasks.Sinusoid(shots=20)}, "tasks shots 10, this Trainer has 20")):
        with pytest.raises(CheckpointError, match=words):
            trainer(**change).fit(resume=True)
    resumed = trainer(lr=0.02, outer=5e-4)
    resumed.fit(resume=True)
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"iteration": 3, "resumed_with": {"inner_lr": [0.02], "outer_lr": [5e-4]}} in log
    assert resumed.optimizer.param_groups[0]["lr"] == 5e-4


def test_switches_must_be_booleans_and_learned_step_sizes_must_be_in_the_optimizer():
    """first_order="False" (a flag read from a file) ran first-order MAML; an optimizer over model.parameters()
    left Meta-SGD's step sizes untrained, with gradients every iteration."""
    import metagrad as mg

    model = mg.models.MLP(1, [8], 1)
    for kw, words in (({"first_order": "False"}, "first_order 'False' must be True or False"),
                      ({"recompute": 1}, "recompute 1 must be True or False"),
                      ({"compile": 1}, "compile 1 must be True or False")):
        with pytest.raises(ConfigError, match=words):
            mg.MAML(model, inner=mg.SGD(0.01), **kw)
    with pytest.raises(ConfigError, match="learn 'yes' must be True or False"):
        mg.SGD(0.01, learn="yes")
    learner = mg.MAML(model, inner=mg.SGD(0.01, learn=True))
    with pytest.raises(ConfigError, match=r"not the inner rule's learned ones \(lr\..*build it from "
                                          r"learner\.parameters\(\)"):
        mg.Trainer(learner, mg.tasks.Sinusoid(), torch.optim.Adam(model.parameters()), iterations=1,
                   meta_batch_size=2, progress=False)
