"""Training over 2 processes (torchrun, gloo on the loopback address) equals one process; a dead peer stops it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--iterations", "6", "--meta-batch-size", "7", "--checkpoint-every", "3", "--val-every", "0",
        "--log-every", "1", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "METAGRAD_DIST_TIMEOUT": "60"}


def torchrun(args: list[str], fresh: Path | None = None) -> subprocess.CompletedProcess:
    """``args`` under torchrun on 2 processes, which must succeed. Retried once (after removing ``fresh``) only when
    a process was aborted: gloo can abort a process whose peer closes its connections at exit (seen once in about
    40 runs of these tests, never in training itself)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    for attempt in range(2):
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "SIGABRT" not in proc.stderr or attempt:
            break
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def learner_tensors(run: Path) -> dict:
    return {k: v for k, v in load_file(str(run / "last.safetensors")).items() if k.startswith("/learner/")}


@pytest.mark.parametrize("config", ["sinusoid-maml", "sinusoid-reptile"])
def test_two_processes_equal_one(tmp_path, config):
    """7 tasks split 4 + 3 over two processes, gradients all-reduced: the same parameters as one process."""
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, "-m", "metagrad", "train", "--config", config, "--out", str(single), *ARGS],
                   check=True, env=env(), capture_output=True, timeout=300)
    proc = torchrun(["-m", "metagrad", "train", "--config", config, "--out", str(double), *ARGS], fresh=double)
    assert "on 2 processes" in proc.stdout
    a, b = learner_tensors(single), learner_tensors(double)
    assert a.keys() == b.keys() and a
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-6, k
    assert (double / "metrics.jsonl").read_text().count("\n") == 6  # one process writes the logs
    machines = [json.loads((run / "segments.jsonl").read_text())["machine"] for run in (single, double)]
    assert [m["processes"] for m in machines] == [1, 2]  # each segment says how many processes made it


def test_a_dead_process_stops_the_other_with_a_message(tmp_path):
    port = free_port()
    run = tmp_path / "run"
    procs = []
    for rank in (0, 1):
        e = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "metagrad", "train", "--out", str(run), "--iterations",
                                       "1000000", "--meta-batch-size", "4", "--log-every", "1", "--no-progress"],
                                      env=e, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            log = run / "metrics.jsonl"
            if log.exists() and log.read_text().count("\n") >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not start")
        procs[1].send_signal(signal.SIGKILL)
        code = procs[0].wait(timeout=90)  # stops instead of hanging
        err = procs[0].stderr.read()
        assert code == 2, err
        assert "another process of this run stopped" in err and "Traceback" not in err
    finally:
        for p in procs:
            p.kill()


def test_a_gpu_machine_joins_with_gloo_for_cpu_tensors(monkeypatch):
    """Meta-RL all-reduces CPU tensors: where CUDA is present the group must still have a CPU backend (plain nccl
    failed on a GPU machine with 'No backend type associated with device type cpu')."""
    import torch
    import torch.distributed as dist

    from metagrad.distributed import Distributed

    seen = []
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    assert Distributed.from_env() == Distributed(1, 2)
    backends = dict(part.split(":") for part in seen[0].split(","))
    assert backends == {"cpu": "gloo", "cuda": "nccl"}


def test_after_a_peer_failure_the_command_leaves_without_the_teardown(monkeypatch):
    """The CI once saw the surviving process print its message and then abort in the interpreter's teardown
    (gloo: 'terminate called without an active exception', exit -6 instead of 2): after a peer failure the entry
    point leaves with os._exit and the command's exit code; without one it returns normally."""
    import torch.distributed as dist

    from metagrad import __main__ as entry
    from metagrad import cli
    from metagrad import distributed as d

    def broken_all_reduce(tensor):
        raise RuntimeError("Connection reset by peer")

    def command():
        with pytest.raises(d.PeerFailure, match="another process of this run stopped"):
            d.Distributed(0, 2).any(True)
        return 2

    exits = []
    monkeypatch.setattr(d, "_peer_failed", False)
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(entry.os, "_exit", exits.append)
    assert entry.run() == 0 and exits == []
    monkeypatch.setattr(dist, "all_reduce", broken_all_reduce)
    monkeypatch.setattr(cli, "main", command)
    entry.run()
    assert exits == [2] and d.peer_failed()


def test_a_distributed_setup_that_cannot_work_is_named_before_anything_is_written(tmp_path, monkeypatch):
    """WORLD_SIZE without torchrun's other variables, a timeout that is no number, peers that never join, and more
    processes than tasks: each a message, and no run folder left behind to block the corrected command."""
    import torch.distributed as dist

    import metagrad as mg
    from metagrad.distributed import Distributed, timeout
    from metagrad.errors import MetagradError
    from metagrad.rl.config import preset
    from metagrad.rl.train import RLTrainer, build

    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(MetagradError, match="WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT not: start"):
        Distributed.from_env()
    for bad in ("abc", "-1", "inf"):
        monkeypatch.setenv("METAGRAD_DIST_TIMEOUT", bad)
        with pytest.raises(MetagradError, match=f"METAGRAD_DIST_TIMEOUT='{bad}' must be a positive number"):
            timeout()
    monkeypatch.setenv("METAGRAD_DIST_TIMEOUT", "1")
    for key, value in (("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(MetagradError, match="the 2 processes of the run did not all join within 1 s"):
        Distributed.from_env()  # rank 1 never starts

    two = Distributed(0, 2)
    learner = mg.MAML(mg.models.MLP(1, [4], 1), inner=mg.SGD(0.1))
    optimizer = torch.optim.Adam(learner.parameters())
    with pytest.raises(MetagradError, match="meta_batch_size 1 is smaller than the 2 processes"):
        mg.Trainer(learner, mg.tasks.Sinusoid(), optimizer, iterations=2, meta_batch_size=1,
                   run_dir=tmp_path / "sup", distributed=two)
    cfg = preset("maml-trpo").replace(meta_batch_size=1, horizon=4, episodes=2, hidden=(4,))
    with pytest.raises(MetagradError, match="meta_batch_size 1 is smaller than the 2 processes"):
        RLTrainer(*build(cfg), cfg, tmp_path / "rl", progress=False, distributed=two)
    carried = mg.Reptile(mg.models.MLP(1, [4], 1), inner=mg.Adam(0.1), inner_steps=2, inner_state="carried")
    with pytest.raises(MetagradError, match="'carried' runs the tasks of a meta-batch in order in one process"):
        mg.Trainer(carried, mg.tasks.Sinusoid(), torch.optim.Adam(carried.parameters()), iterations=2,
                   meta_batch_size=4, run_dir=tmp_path / "carried", distributed=two)  # once: after its first files
    assert not (tmp_path / "sup").exists() and not (tmp_path / "rl").exists() and not (tmp_path / "carried").exists()
    for key, value, match in (("RANK", "5", "RANK='5' must be a process number from 0 to 1"),
                              ("RANK", "0", "MASTER_PORT='notaport' must be a port number")):
        monkeypatch.setenv(key, value)
        monkeypatch.setenv("MASTER_PORT", "notaport")
        with pytest.raises(MetagradError, match=match):  # once a traceback of C++ frames or a ValueError
            Distributed.from_env()


def test_a_trainer_under_torchrun_without_its_group_is_refused(tmp_path, monkeypatch):
    """The README's Python example run under torchrun trained the whole run on every process into one folder (the
    second failing midway on its lock) and `reproduce sinusoid` did the same: refused, naming what shares the work."""
    import metagrad as mg
    from metagrad import distributed
    from metagrad.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_joined", False)
    learner = mg.MAML(mg.models.MLP(1, [4], 1), inner=mg.SGD(0.1))
    with pytest.raises(ConfigError, match=r"one of WORLD_SIZE=2 that torchrun started.*Distributed.from_env\(\)"):
        mg.Trainer(learner, mg.tasks.Sinusoid(), torch.optim.Adam(learner.parameters()), iterations=2,
                   meta_batch_size=4, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(distributed, "_joined", True)  # a command that joined its group, evaluating afterwards
    mg.Trainer(learner, mg.tasks.Sinusoid(), torch.optim.Adam(learner.parameters()), iterations=2,
               meta_batch_size=4, run_dir=tmp_path / "run")


UNSEEDED = """
import sys, torch
import metagrad as mg
from metagrad.distributed import Distributed
from metagrad.loop import RunLoop
group = Distributed.from_env()
torch.manual_seed(group.rank)  # each process its own initialisation, as an unseeded script's
learner = mg.MAML(mg.models.MLP(1, [8], 1), inner=mg.SGD(0.01))
start = [p.detach().clone() for p in learner.parameters()]
together = []
start_together = RunLoop.start_together
def recorded(loop):  # the parameters as training begins, once the processes have been brought together
    start_together(loop)
    together.extend(p.detach().clone() for p in learner.parameters())
RunLoop.start_together = recorded
trainer = mg.Trainer(learner, mg.tasks.Sinusoid(), torch.optim.Adam(learner.parameters(), 1e-3), iterations=3,
                     meta_batch_size=4, run_dir=sys.argv[1], progress=False, distributed=group)
trainer.fit()
torch.save({"start": start, "together": together, "end": [p.detach() for p in learner.parameters()]},
           f"{sys.argv[1]}-{group.rank}.pt")
group.close()
"""


def test_processes_initialised_apart_train_one_model(tmp_path):
    """Without a seed every process builds another model, and nothing brought them together (after 300 iterations
    two processes' models differed by 1.88, only process 0's saved): a new run starts from process 0's."""
    script = tmp_path / "unseeded.py"
    script.write_text(UNSEEDED)
    run = tmp_path / "run"
    torchrun([str(script), str(run)], fresh=run)  # a retry after gloo aborted a process starts the run afresh
    zero, one = (torch.load(f"{run}-{rank}.pt") for rank in (0, 1))
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(zero["start"], one["start"], strict=True))
    for start, a, b in zip(zero["start"], zero["together"], one["together"], strict=True):
        assert torch.equal(a, start) and torch.equal(b, start)  # process 0's initialisation, in both
    for a, b in zip(zero["end"], one["end"], strict=True):
        assert torch.equal(a, b)


def test_a_stop_asked_for_while_the_processes_agree_is_kept_for_the_next_check():
    """A signal that lands while a process waits in the all-reduce of ``_stop_reason`` sets the flag after its value
    was sent: the agreed answer (no stop) once overwrote the flag, and the run trained on after saying it would stop
    (an outside check: 3 of 17 SIGTERMs to one torchrun worker)."""
    from metagrad.loop import RunLoop

    loop = RunLoop(None, iterations=10)

    class SignalDuringExchange:
        def any(self, flag: bool) -> bool:
            loop.request_stop()  # the handler runs inside the exchange; the value sent was read before
            return flag

    loop.dist = SignalDuringExchange()
    assert loop._stop_reason(time.perf_counter()) is None  # every process agreed on "go on" for this iteration
    assert loop._stop_reason(time.perf_counter()) == "interrupted"  # and stops at the next
