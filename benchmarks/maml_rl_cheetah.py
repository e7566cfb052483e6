"""pytorch-maml-rl's MAML-TRPO (its sampler, linear baseline and ``MAMLTRPO``, unchanged) trained on metagrad's
half-cheetah direction environment, for the side-by-side comparison with metagrad's MAML-TRPO (issue 18, the
half-cheetah gap). Runs in pytorch-maml-rl's own environment (``benchmarks/setup_maml_rl.sh``, plus mujoco and
gymnasium for metagrad's environment); resumes from its folder.

    benchmarks/.venv-maml-rl/bin/python benchmarks/maml_rl_cheetah.py --repo PATH --out results/long/maml-rl-cheetah-dir

The environment (``--shim thin``, new runs' default: ``ThinCheetahDir``) is one gymnasium ``HalfCheetah-v5``
stepped in MuJoCo by metagrad's own helpers, with no tensors: the simulator, rllab observation, reward, clipping and
reset of one copy of ``metagrad.rl.envs.make_env("cheetah-dir")`` (equal to the bit: tests/test_maml_rl_cheetah_shim.py)
at about gymnasium's own cost per step; gym's TimeLimit ends episodes at ``--horizon``. ``--shim copy`` steps a copy
of ``make_env`` itself through tensors (about 7x the CPU per step), as runs did before the option; a run folder
resumes with its own shim (``copy`` where its ``settings.json`` has none). Settings default to the MAML
paper's (2 x 100 ReLU, 40 tasks x 20 episodes x 200 steps, inner step 0.1, max KL 0.02), metagrad's preset too.
Each iteration appends to ``metrics.jsonl`` (returns before and after the inner step, seconds) and writes the
policy atomically to ``policy.pt`` (and to ``best.pt`` when its training return after the step is the best so far);
the command continues from there. ``--test`` evaluates ``best.pt`` as metagrad's runs are tested (its weights in
metagrad's Gaussian policy, checked to give the same distribution; the MAML paper's 40 held-out tasks x 20
episodes, steps 0.1 then 0.05, metagrad's adaptation step) and writes ``test.json``:

    benchmarks/.venv-maml-rl/bin/python benchmarks/maml_rl_cheetah.py --repo PATH --out DIR --test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLDER_RUNS = {"threads": 0, "shim": "copy"}
"""Settings of runs from before each option, which their ``settings.json`` lacks: they resume with these."""


class ThinCheetahDir:
    """metagrad's half-cheetah direction task on one gymnasium ``HalfCheetah-v5`` simulator, in pytorch-maml-rl's task
    API (``sample_tasks``, ``reset_task``, gym-0.17 ``seed``/``reset``/``step``) without needing gym 0.17: the same
    simulator, rllab observation (float32), clipping, reward and reset distribution as one copy of
    ``make_env("cheetah-dir")``, stepped in MuJoCo with metagrad's own helpers and no tensors."""

    def __init__(self) -> None:
        import mujoco
        import numpy as np

        from metagrad.rl.envs.locomotion import FAMILIES, RLLAB_OBS, direct_stepper, make_simulator, rllab_observer

        family = FAMILIES["cheetah-dir"]
        self.sim = make_simulator(family.env_id, **family.env_kwargs)  # frame_skip 1, control cost weight 0.05
        self._observe = rllab_observer(self.sim, *RLLAB_OBS[family.env_id], mujoco)
        self._step = direct_stepper(self.sim, self._observe, mujoco)  # (observation, x velocity)
        space = self.sim.action_space
        self.action_low, self.action_high = space.low.astype(np.float32), space.high.astype(np.float32)
        self._low, self._high = space.low.astype(np.float64), space.high.astype(np.float64)
        self._ctrl_weight = float(self.sim._ctrl_cost_weight)  # as MujocoTaskEnv reads it
        self.obs_dim = self._observe(None).size
        self._np, self._seed, self._tasks = np, None, np.random.RandomState()
        self.reset_task({"direction": 1.0})

    def seed(self, seed: int | None = None) -> list[int | None]:
        """Seed the simulator's generator at the next reset (gymnasium's ``reset(seed=)``; later resets go on
        drawing from it) and the task generator, as pytorch-maml-rl's environments draw tasks from their seeded
        ``np_random`` (its sampler seeds the environment it samples tasks from with ``--seed``)."""
        self._seed = None if seed is None else int(seed)
        self._tasks = self._np.random.RandomState(seed)
        return [seed]

    def sample_tasks(self, num_tasks: int) -> list[dict]:
        """Directions -1 or +1 with probability 1/2 each, as pytorch-maml-rl's ``HalfCheetahDirEnv``."""
        return [{"direction": float(d)} for d in 2 * self._tasks.binomial(1, 0.5, size=num_tasks) - 1]

    def reset_task(self, task: dict) -> None:
        """The direction the following episodes are rewarded for."""
        self.direction, self._task = float(task["direction"]), task

    def reset(self):
        """gymnasium's reset (qpos + U(-0.1, 0.1), qvel + N(0, 0.1^2)), then rllab's observation, as
        ``CopyTaskEnv.reset`` gives it."""
        obs = self.sim.reset(seed=self._seed)[0]
        self._seed = None
        return self._observe(obs).astype(self._np.float32)

    def step(self, action) -> tuple:
        """Clip, step, reward d * v - w |a|^2 of the clipped action (``MujocoTaskEnv._rewards``, rounded to float32
        as metagrad's); never done (gym's TimeLimit ends episodes at the horizon, writing in the step's own info)."""
        np = self._np
        act = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), self._low, self._high)
        obs, velocity = self._step(act)
        reward = self.direction * velocity - self._ctrl_weight * np.sum(np.square(act))
        return obs.astype(np.float32), float(np.float32(reward)), False, {"task": self._task}


def run_settings(given: dict, stored: dict | None) -> tuple[dict, list[str]]:
    """The settings a run goes on with, and the names of those ``given`` that differ from a folder's ``stored`` ones
    (a run's own shim where none is given: ``copy`` for folders from before the option, ``thin`` for new ones)."""
    before = None if stored is None else {**OLDER_RUNS, **stored}
    settings = {**given, "shim": given["shim"] or ("thin" if before is None else before["shim"])}
    differ = [] if before is None else sorted(k for k in {*settings, *before} if settings.get(k) != before.get(k))
    return settings, differ


def register_shim(horizon: int, shim: str = "thin") -> str:
    """Register metagrad's half-cheetah direction as a gym 0.17 environment with pytorch-maml-rl's task API:
    ``thin`` (``ThinCheetahDir``) or ``copy`` (one copy of ``make_env("cheetah-dir")``, tensors at every step: the
    runs before the thin shim)."""
    import gym
    import numpy as np

    if shim == "thin":
        class MetagradThinCheetahDir(ThinCheetahDir, gym.Env):
            """``ThinCheetahDir`` with gym's spaces."""

            def __init__(self) -> None:
                ThinCheetahDir.__init__(self)
                self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
                self.action_space = gym.spaces.Box(self.action_low, self.action_high, dtype=np.float32)

        cls = MetagradThinCheetahDir
    elif shim == "copy":
        import torch

        from metagrad.rl.envs import make_env

        class MetagradCheetahDir(gym.Env):
            """One copy of metagrad's environment; ``sample_tasks``/``reset_task`` as pytorch-maml-rl's samplers
            call."""

            def __init__(self) -> None:
                self.env = make_env("cheetah-dir")
                self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.env.obs_dim,), np.float32)
                space = self.env.action_space
                self.action_space = gym.spaces.Box(space.low, space.high, space.shape, np.float32)
                self.task = torch.ones(1, 1)

            def seed(self, seed: int | None = None) -> list[int]:
                if seed is not None:
                    self.env.reseed(int(seed))
                return [seed]

            def sample_tasks(self, num_tasks: int) -> list[dict]:
                return [{"direction": float(d)} for d in 2 * np.random.binomial(1, 0.5, size=num_tasks) - 1]

            def reset_task(self, task: dict) -> None:
                self.task = torch.tensor([[task["direction"]]])

            def reset(self) -> np.ndarray:
                return self.env.reset(self.task, 1)[0, 0].numpy()

            def step(self, action: np.ndarray) -> tuple:
                obs, reward, done = self.env.step(torch.as_tensor(action, dtype=torch.float32).reshape(1, 1, -1))
                return obs[0, 0].numpy(), float(reward[0, 0]), bool(done[0, 0]), {"task": self.task}

        cls = MetagradCheetahDir
    else:
        raise ValueError(f"unknown shim {shim!r}; choose thin or copy")
    setattr(sys.modules[__name__], cls.__name__, cls)
    name = f"{cls.__name__}-v0"
    gym.envs.registration.register(name, entry_point=f"{__name__}:{cls.__name__}", max_episode_steps=horizon)
    return name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="a checkout of tristandeleu/pytorch-maml-rl")
    p.add_argument("--out", required=True)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--time-budget", type=float, default=0, help="minutes for this segment (0: none)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads of the learner (0: the environment's)")
    p.add_argument("--hidden", default="100,100")
    p.add_argument("--activation", default="relu")
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--meta-batch-size", type=int, default=40)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--max-kl", type=float, default=0.02, help="TRPO step (metagrad's locomotion runs: 0.02, the KL "
                   "step of the MAML paper's half-cheetah run; pytorch-maml-rl's config: 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shim", choices=("thin", "copy"), default=None, help="the environment: thin (one simulator "
                   "stepped directly; new runs' default) or copy (one copy of make_env, tensors at every step: the "
                   "runs before it, whose settings.json lacks the key and resume with it)")
    p.add_argument("--test", action="store_true", help="evaluate OUT/best.pt on held-out tasks instead of training")
    p.add_argument("--last", action="store_true", help="with --test: evaluate the last policy (OUT/policy.pt) into "
                   "OUT/test-last.json")
    args = p.parse_args()
    sys.path[:0] = [str(Path(args.repo).resolve()), str(ROOT / "src")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # its sampler forks workers: OpenMP started before a fork hangs
    import torch

    def lstsq(b, a):  # torch < 2.0's torch.lstsq(B, A) -> (solution, QR)
        return torch.linalg.lstsq(a, b).solution, None

    torch.lstsq = lstsq
    import gym
    from maml_rl.baseline import LinearFeatureBaseline
    from maml_rl.metalearners import MAMLTRPO
    from maml_rl.policies import NormalMLPPolicy
    from maml_rl.samplers import MultiTaskSampler

    from metagrad.files import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    stored = json.loads(settings_file.read_text()) if settings_file.exists() else None
    given = {k: v for k, v in vars(args).items()
             if k not in ("out", "time_budget", "iterations", "repo", "test", "last")}
    settings, differ = run_settings(given, stored)
    if differ:
        sys.exit(f"{out} holds a run with other settings ({settings_file}: {', '.join(differ)}); use another --out")
    args.shim = settings["shim"]
    if stored is None:  # an existing run's file stays as it is
        settings_file.write_text(json.dumps(settings, indent=1) + "\n")
    name = register_shim(args.horizon, args.shim)
    env = gym.make(name)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    activation = {"relu": torch.relu, "tanh": torch.tanh}[args.activation]
    torch.manual_seed(args.seed)
    policy = NormalMLPPolicy(env.observation_space.shape[0], env.action_space.shape[0], hidden_sizes=hidden,
                             nonlinearity=activation)
    metrics, state = out / "metrics.jsonl", out / "policy.pt"
    logged = metrics.read_text().splitlines() if metrics.exists() else []
    done = len(logged)
    if done and state.exists():
        policy.load_state_dict(torch.load(state))
        torch.manual_seed(segment_seed(args.seed, done, args.workers, args.episodes))  # its workers' action noise
    if args.test:
        return test(policy, out, done, hidden, args.activation, args.last)
    best_so_far = max((json.loads(line)["return_post"] for line in logged), default=float("-inf"))
    policy.share_memory()
    baseline = LinearFeatureBaseline(env.observation_space.shape[0])
    sampler = MultiTaskSampler(name, env_kwargs={}, batch_size=args.episodes, policy=policy, baseline=baseline,
                               env=env, seed=segment_seed(args.seed, done, args.workers, args.episodes),
                               num_workers=args.workers)
    if args.threads:  # the learner's own, set once the sampler's workers run (they keep the environment's)
        torch.set_num_threads(args.threads)
    learner = MAMLTRPO(policy, fast_lr=0.1, first_order=False, device="cpu")
    start = time.monotonic()
    for it in range(done, args.iterations):
        if args.time_budget and time.monotonic() - start > 60 * args.time_budget:
            break
        t0 = time.perf_counter()
        before = {k: v.clone() for k, v in policy.state_dict().items()}
        tasks = sampler.sample_tasks(num_tasks=args.meta_batch_size)
        futures = sampler.sample_async(tasks, num_steps=1, fast_lr=0.1, gamma=0.99, gae_lambda=1.0, device="cpu")
        logs = learner.step(*futures, max_kl=args.max_kl, cg_iters=10, cg_damping=1e-5, ls_max_steps=15,
                            ls_backtrack_ratio=0.8)
        train, valid = sampler.sample_wait(futures)
        row = {"iteration": it + 1,
               "return_pre": float(sum(e.rewards.sum(0).mean() for e in train[0]) / len(train[0])),
               "return_post": float(sum(e.rewards.sum(0).mean() for e in valid) / len(valid)),
               "kl_after": float(sum(logs["kl_after"]) / len(logs["kl_after"])) if "kl_after" in logs else None,
               "env_steps": int(sum(sum(e.lengths) for e in train[0]) + sum(sum(e.lengths) for e in valid)),
               "seconds": round(time.perf_counter() - t0, 2)}
        save(policy.state_dict(), state)
        if row["return_post"] > best_so_far:  # the policy this iteration's episodes were sampled from
            best_so_far = row["return_post"]
            save(before, out / "best.pt")
            write_json(out / "best.json", {"iteration": it + 1, "return_post": best_so_far})
        with metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    sampler.close()


def segment_seed(seed: int, done: int, workers: int, episodes: int) -> int:
    """The sampler's seed for a segment resumed after ``done`` iterations. Its sampler seeds worker i's environments
    with ``seed + i * episodes + 0..episodes-1``, so each segment takes the next ``workers * episodes`` seeds: none
    that an earlier segment used (``seed + done``, before 2026-12-07, made a segment resumed one iteration later
    redraw 19 of every 20 streams). Also the torch seed of a resumed segment, whose forked workers draw the action
    noise from it."""
    return seed + done * workers * episodes


def save(state: dict, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a killed run leaves the old file or the new one."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def metagrad_policy(policy, learner) -> None:
    """Copy pytorch-maml-rl's ``NormalMLPPolicy`` weights into metagrad's ``GaussianMLPPolicy`` and check that both
    give the same action distribution on random observations."""
    import torch

    src = policy.state_dict()
    layers = [m for m in learner.policy.mean if isinstance(m, torch.nn.Linear)]
    names = [f"layer{i}" for i in range(1, len(layers))] + ["mu"]
    with torch.no_grad():
        for layer, name in zip(layers, names, strict=True):
            layer.weight.copy_(src[f"{name}.weight"])
            layer.bias.copy_(src[f"{name}.bias"])
        learner.policy.log_std.copy_(src["sigma"])
        obs = torch.randn(64, layers[0].in_features)
        theirs, ours = policy(obs), learner.policy(obs)
        mean, log_std = ours[:, : learner.policy.action_dim], ours[:, learner.policy.action_dim:]
        if not (torch.allclose(theirs.mean, mean, atol=1e-5) and torch.allclose(theirs.stddev, log_std.exp())):
            raise SystemExit("the copied policy gives another distribution than pytorch-maml-rl's: check the layers")


def test(policy, out: Path, done: int, hidden: tuple[int, ...], activation: str, last: bool = False) -> None:
    """Evaluate ``OUT/best.pt`` (else, or with ``last``, ``policy.pt``: the run's ``done`` iterations) in metagrad's
    policy of the same ``hidden`` sizes and ``activation`` with metagrad's test of the half-cheetah runs; write
    ``OUT/test.json`` (``test-last.json`` with ``last``)."""
    import torch

    from metagrad.files import write_json
    from metagrad.reproduce import locomotion, metarl
    from metagrad.rl.evaluate import evaluate
    from metagrad.rl.train import build

    ckpt = out / "best.pt" if (out / "best.pt").exists() and not last else out / "policy.pt"
    policy.load_state_dict(torch.load(ckpt))
    cfg = metarl.method_config("maml-trpo", False, None, None, {"hidden": hidden, "activation": activation},
                               locomotion.experiment("cheetah-dir").base)
    learner, _ = build(cfg)
    metagrad_policy(policy, learner)
    t0 = time.perf_counter()
    curve, _, _ = evaluate(learner, cfg)
    best = json.loads((out / "best.json").read_text()) if ckpt.name == "best.pt" else None
    result = {"checkpoint": ckpt.name, "best": best, "iterations": done, "curve": curve,
              "eval_seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / ("test-last.json" if last else "test.json"), result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
