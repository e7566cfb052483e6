"""Environments stepped in worker processes (``make_env(..., workers=N)``) give the one-process environment's
episodes to the bit: the same reset seeds per copy, tasks and ends, whatever share of the tasks each worker holds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import all_ended, group_killed_after, spawned_workers
from metagrad import checkpoint
from metagrad.errors import CheckpointError, ConfigError, MetagradError
from metagrad.rl import make_env, make_policy
from metagrad.rl.sampler import rollout

pytest.importorskip("mujoco")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def episodes(env, tasks: torch.Tensor, seed: int) -> list:
    """Two rollouts of a fixed random policy (the second reset reseeded as the sampler does)."""
    torch.manual_seed(0)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(8,))
    params = dict(policy.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    first = rollout(env, policy, params, tasks, 3, generator)
    env.reseed(41)
    return [first, rollout(env, policy, params, tasks, 3, generator)]


@pytest.mark.parametrize(("name", "options", "workers"), [("cheetah-dir", {"oracle": True}, 3), ("ant-dir", {}, 2),
                                                          ("hopper-rand-params", {}, 2)])
def test_worker_processes_give_the_same_episodes(name, options, workers):
    """5 tasks over 3 workers (shares of 2, 1 and 2 tasks) or 2 (3 and 2) against one process: the oracle's goal in
    the observation, the ant's own stepper, the hopper's model changed by its task and its episodes ending early."""
    one = make_env(name, horizon=30, seed=3, **options)
    tasks = one.sample_tasks(5, torch.Generator().manual_seed(1))
    expected = episodes(one, tasks, 7)
    split = make_env(name, horizon=30, seed=3, workers=workers, **options)
    try:
        assert split.obs_dim == one.obs_dim and split.task_dim == one.task_dim
        got = episodes(split, tasks, 7)
    finally:
        split.close()
    for a, b in zip(expected, got, strict=True):
        for field in ("obs", "actions", "rewards", "mask"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    if name == "hopper-rand-params":
        assert not bool(expected[0].mask.all())  # early ends exercised


def test_bad_workers_and_worker_errors_are_named():
    from metagrad.rl.envs.processes import ProcessCopies

    with pytest.raises(ConfigError, match="workers 0"):
        make_env("cheetah-dir", workers=0)
    with pytest.raises(ConfigError, match="is not stepped copy by copy"):
        ProcessCopies("navigation2d", 2)
    env = make_env("cheetah-dir", workers=2)
    try:
        with pytest.raises(MetagradError, match=r"an environment worker failed: ConfigError: .*directions, -1 or 1"):
            env.reset(torch.full((2, 1), 0.5), 1)  # found in the worker's own check
    finally:
        env.close()


def test_a_run_with_env_workers_trains_as_one_process(tmp_path):
    """``env_workers`` through the config: two iterations of MAML-TRPO on half-cheetah end with the same policy as
    in one process; navigation2d (one tensor) refuses it."""
    from metagrad.rl.config import RLConfig
    from metagrad.rl.train import RLTrainer, build

    def trained(workers: int) -> dict:
        cfg = RLConfig(env="cheetah-dir", horizon=10, meta_batch_size=3, episodes=2, iterations=2, hidden=(8,),
                       env_workers=workers)
        trainer = RLTrainer(*build(cfg), cfg, None, progress=False)
        try:
            trainer.fit()
        finally:
            getattr(trainer.learner.env, "close", lambda: None)()
        return {k: v.clone() for k, v in trainer.learner.policy.state_dict().items()}

    one, two = trained(1), trained(2)
    assert all(torch.equal(one[k], two[k]) for k in one)
    with pytest.raises(ConfigError, match="env_workers 2: navigation2d"):
        build(RLConfig(env="navigation2d", env_workers=2))


def test_copy_environments_sample_on_one_torch_thread_with_the_same_episodes(monkeypatch):
    """The sampler holds torch at the environment's ``sampling_threads`` (1 for simulator copies, whose idle OpenMP
    threads would spin on the workers' cores) while it steps, restores the caller's count after, and the episodes
    are those of a rollout on the caller's two threads, to the bit (a 2 x 100 policy: products of the papers' size)."""
    env = make_env("cheetah-dir", horizon=20, seed=3)
    assert env.sampling_threads == 1 and make_env("navigation2d").sampling_threads is None
    seen = []
    step = type(env).step
    monkeypatch.setattr(type(env), "step", lambda self, a: (seen.append(torch.get_num_threads()), step(self, a))[1])
    tasks = env.sample_tasks(4, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(100, 100))
    params = dict(policy.named_parameters())
    kept = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = rollout(env, policy, params, tasks, 5, torch.Generator().manual_seed(7))
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(env, "sampling_threads", None)
        two = rollout(env, policy, params, tasks, 5, torch.Generator().manual_seed(7))
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(kept)
    for field in ("obs", "actions", "rewards", "mask", "old_dist"):
        assert torch.equal(getattr(one, field), getattr(two, field)), field


def test_a_failed_reset_uses_no_seeds_in_one_process_or_in_workers(monkeypatch):
    """A reset refused for its tasks (found in the workers) or failing in a copy's own reset, after its seeds were
    drawn, leaves the seed stream where it was, ``reseed``'s number included: the next reset starts from the states
    a reset that never failed gives."""
    fresh = make_env("cheetah-dir", horizon=10, seed=3)
    one = make_env("cheetah-dir", horizon=10, seed=3)
    split = make_env("cheetah-dir", horizon=10, seed=3, workers=2)
    try:
        assert split.sampling_threads == 1  # not TaskEnv's None: the workers' cores stay theirs
        tasks = one.sample_tasks(3, torch.Generator().manual_seed(1))
        for env in (fresh, one, split):
            env.reseed(5)
        for env in (one, split):
            with pytest.raises((ConfigError, MetagradError), match="directions, -1 or 1"):
                env.reset(torch.full((2, 1), 0.5), 1)
        calls = []
        reset_copy = type(one)._reset_copy

        def fails_once(self, env, seed):
            calls.append(seed)
            if len(calls) == 1:
                raise RuntimeError("the simulator failed")
            return reset_copy(self, env, seed)

        monkeypatch.setattr(type(one), "_reset_copy", fails_once)
        with pytest.raises(RuntimeError, match="the simulator failed"):
            one.reset(tasks, 2)
        monkeypatch.undo()
        expected = fresh.reset(tasks, 2)
        assert torch.equal(one.reset(tasks, 2), expected) and torch.equal(split.reset(tasks, 2), expected)
    finally:
        split.close()


RUN = ["train", "--config", "maml-trpo-navigation", "--env", "cheetah-dir", "--horizon", "20", "--meta-batch-size",
       "4", "--episodes", "4", "--hidden", "8", "--iterations", "20", "--checkpoint-every", "1", "--no-progress"]
LOGGED = ("iteration", "return_pre", "return_post", "kl", "grad_norm", "env_steps")


def _launch(out, *extra: str) -> subprocess.Popen:
    """``metagrad train`` with two simulator workers in a session of its own: its process group is what a terminal's
    Ctrl-C or a scheduler's SIGTERM reaches, workers included."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "metagrad", *RUN, "--env-workers", "2", "--out", str(out), *extra],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _iteration_past(out, proc: subprocess.Popen, done: int) -> int:
    """Wait until the run has checkpointed two iterations past ``done``; return the workers' process ids."""
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None:
        with contextlib.suppress(CheckpointError):
            if checkpoint.read_info(out / "last")["iteration"] >= done + 2:
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    return spawned_workers(proc)


def test_signals_and_kills_under_env_workers_lose_nothing(tmp_path):
    """A run with ``env_workers 2``: Ctrl-C and SIGTERM to its whole process group (the workers died of Ctrl-C and
    the run ended in an error, unsaved), kill -9 of a worker (the run ended silently with code 0: the broken pipe
    read as a closed stdout), kill -9 of the main process (the orphaned workers must end, quietly). After each, the
    command resumes; the whole equals an uninterrupted run, logged values and final policy to the bit."""
    from metagrad.cli import main

    assert main([*RUN, "--out", str(tmp_path / "straight")]) == 0  # one process: the same episodes (tests above)
    out, done = tmp_path / "run", 0
    for fault in ("SIGINT", "kill-worker", "kill-main", "SIGTERM"):
        proc = _launch(out, *(["--resume"] if done else []))
        with group_killed_after(proc):
            workers = _iteration_past(out, proc, done)
            assert len(workers) == 2, workers
            if fault in ("SIGINT", "SIGTERM"):
                os.killpg(proc.pid, getattr(signal, fault))
            else:
                os.kill(workers[0] if fault == "kill-worker" else proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=120)
            assert all_ended(workers, within=15), (fault, workers)  # (before the group is killed on the way out)
        assert "Traceback" not in err, (fault, err)
        if fault == "kill-worker":
            assert proc.returncode == 2, err
            assert err.strip().splitlines()[-1] == (
                "metagrad train: error: an environment worker stopped in the middle of the run (worker 1 of 2 killed "
                "by SIGKILL) (any checkpoint it wrote is whole: run the command again, with --resume once it has "
                "written one)")
        elif fault == "kill-main":
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 128 + getattr(signal, fault), err
            assert "checkpoint saved" in err, err
        done = checkpoint.read_info(out / "last")["iteration"]
    assert main([*RUN, "--env-workers", "2", "--out", str(out), "--resume"]) == 0
    straight, _ = checkpoint.load(tmp_path / "straight" / "last")
    resumed, _ = checkpoint.load(out / "last")
    assert straight["learner"].keys() == resumed["learner"].keys()
    assert all(torch.equal(v, resumed["learner"][k]) for k, v in straight["learner"].items())

    def logged(run):
        lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: ln[k] for k in LOGGED} for ln in lines if "return_post" in ln]

    assert logged(out) == logged(tmp_path / "straight") and len(logged(out)) == 20


@pytest.mark.parametrize("guarded", [True, False])
def test_a_script_ending_with_its_workers_open_exits(tmp_path, guarded):
    """Workers ignore SIGTERM (the main process's to act on), which is how multiprocessing ends daemon processes at
    exit: a script whose environment is still alive at its end waited for them forever, unless ``close`` runs first.
    Without ``if __name__ == "__main__":`` each worker dies importing the script again: the error says so."""
    body = ('env = make_env("cheetah-dir", horizon=5, workers=2)\n'
            'env.reset(env.sample_tasks(2, torch.Generator().manual_seed(0)), 1)\n'
            'print(*(p.pid for p in env._procs))\n')
    script = tmp_path / "script.py"
    script.write_text("import torch\nfrom metagrad.rl import make_env\n"
                      + ('if __name__ == "__main__":\n' + "".join(f"    {ln}\n" for ln in body.splitlines())
                         if guarded else body))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90)
    if not guarded:
        assert done.returncode == 1
        assert "MetagradError: an environment worker stopped before its first answer (worker " in done.stderr
        assert "start them under `if __name__ == '__main__':`" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert all_ended([int(p) for p in done.stdout.split()], within=0) and len(done.stdout.split()) == 2


def test_workers_hold_stop_signals_from_birth(tmp_path):
    """In a fresh process the first spawn starts multiprocessing's resource tracker, which unblocked SIGINT and
    SIGTERM in the spawning thread before the workers were made: for the seconds a worker spends importing torch, a
    terminal's Ctrl-C killed it. Each worker must block or ignore both from its start."""
    script = tmp_path / "script.py"
    script.write_text('from pathlib import Path\nfrom metagrad.rl import make_env\nif __name__ == "__main__":\n'
                      '    env = make_env("cheetah-dir", horizon=5, workers=2)\n'
                      '    for p in env._procs:\n'
                      '        status = dict(ln.split(":", 1) for ln in Path(f"/proc/{p.pid}/status").read_text()'
                      '.splitlines())\n'
                      '        print(int(status["SigBlk"], 16) | int(status["SigIgn"], 16))\n'
                      '    env.close()\n')
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    held = [int(v) for v in done.stdout.split()]
    both = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    assert len(held) == 2 and all(h & both == both for h in held), held
