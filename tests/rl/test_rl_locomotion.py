"""MuJoCo locomotion task families: what a task changes (reward terms, model arrays), isolation between copies and
between tasks, termination, the horizon, seeding, and the error when the extra is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metagrad.errors import ConfigError
from metagrad.experiment import stored_config
from metagrad.rl import make_env, make_policy
from metagrad.rl.config import RLConfig
from metagrad.rl.envs.locomotion import FAMILIES, PARAM_ARRAYS, MujocoTaskEnv, make_simulator, rllab_advance
from metagrad.rl.sampler import rollout

# the papers' cost terms beside the task's forward term, per family: control weight, constant per step (rllab's ant:
# 0.05 survive, ant-vel 1 more; ProMP's walker 15 alive)
COSTS = {"cheetah-dir": (0.05, 0.0), "cheetah-vel": (0.05, 0.0), "cheetah-rand-vel": (0.05, 0.0),
         "ant-vel": (0.005, 1.05), "ant-dir": (0.005, 0.05), "swimmer-vel": (0.005, 0.0),
         "swimmer-rand-vel": (1e-4, 0.0), "walker-rand-vel": (1e-3, 15.0)}
RANGES = {"cheetah-vel": (0, 2), "cheetah-rand-vel": (0, 3), "ant-vel": (0, 3), "swimmer-vel": (0, 0.5),
          "swimmer-rand-vel": (0.1, 0.2), "walker-rand-vel": (0, 10)}


def x_position(sim) -> float:
    """The x coordinate whose change is the forward velocity (the torso body for Ant, the root joint otherwise)."""
    body = getattr(sim, "_main_body", None)
    return float(sim.data.body(body).xpos[0]) if body is not None else float(sim.data.qpos[0])


def step_and_measure(env: MujocoTaskEnv, tasks: torch.Tensor, actions: torch.Tensor):
    """One step of one episode per task; the rewards, the velocities measured from positions (rllab's ant: its
    centre-of-mass velocity, checked on its own below), the contact costs."""
    env.reset(tasks, 1)
    sims = env._pool[: tasks.shape[0]]
    before = [x_position(s) for s in sims]
    _, reward, done = env.step(actions)
    vel = np.array([(x_position(s) - b) / s.dt for s, b in zip(sims, before, strict=True)])
    if env.physics == "rllab":
        vel = np.array([s.data.subtree_linvel[s._main_body][0] for s in sims])
    contact = np.array([s.contact_cost if hasattr(s, "contact_cost") else 0.0 for s in sims])
    return reward[:, 0].double().numpy(), vel, contact, done


@pytest.mark.parametrize("family", sorted(COSTS))
def test_reward_is_the_task_forward_term_plus_the_papers_costs(family):
    env = MujocoTaskEnv(family, horizon=5)
    tasks = torch.tensor([[1.0], [-1.0]] if FAMILIES[family].task == "direction" else [[0.3], [1.7]])
    actions = torch.full((2, 1, env.action_space.shape[0]), 0.7)
    actions[..., 0] = 3.0  # out of range: clipped to 1 before stepping and before the control cost
    reward, vel, contact, done = step_and_measure(env, tasks, actions)
    assert not done.any()
    ctrl_weight, alive = COSTS[family]
    clipped = actions.clamp(-1, 1)[:, 0].double().numpy()
    costs = -ctrl_weight * (clipped**2).sum(-1) - contact + alive
    g = tasks[:, 0].double().numpy()
    forward = g * vel if FAMILIES[family].task == "direction" else -np.abs(vel - g)
    forward *= FAMILIES[family].forward_weight
    np.testing.assert_allclose(reward, forward + costs, rtol=1e-5, atol=1e-5)


def test_maml_zoos_swimmer_pays_for_missing_the_goal_velocity():
    """The SG-MRL code's swimmer (maml_zoo's SwimmerRandVelEnv): reward +|v - g| - 1e-4 |a|^2 at gym's 0.04 s per
    action, with gym's observation (joint angles without the root's x and y, then velocities)."""
    env = MujocoTaskEnv("swimmer-rand-vel", horizon=5)
    tasks = torch.tensor([[0.15], [0.15]])
    actions = torch.tensor([[[1.0, 1.0]], [[-1.0, 1.0]]])
    reward, vel, _, _ = step_and_measure(env, tasks, actions)
    np.testing.assert_allclose(reward, np.abs(vel - 0.15) - 1e-4 * 2, rtol=1e-5, atol=1e-6)
    assert env._pool[0].dt == pytest.approx(0.04) and env.obs_dim == 3 + 5


@pytest.mark.parametrize(("family", "sizes"), [("cheetah-dir", (8, 9, 0, 3)), ("swimmer-vel", (5, 5, 0, 3)),
                                              ("ant-vel", (15, 14, 14 * 6 + 9, 3))])
def test_rllab_observation_is_the_joints_and_the_torso_centre_of_mass(family, sizes):
    """The MAML paper's families see rllab's observation: joint positions (the cheetah without its x), velocities,
    for the ant contact forces and orientation, then the torso's subtree centre of mass, which moves with the robot."""
    import mujoco

    env = MujocoTaskEnv(family, horizon=20, seed=1)
    assert env.obs_dim == sum(sizes)
    actions = torch.rand(20, 1, 1, env.action_space.shape[0], generator=torch.Generator().manual_seed(0)) * 2 - 1
    first = env.reset(env.sample_tasks(1, torch.Generator().manual_seed(0)), 1)[0, 0].double().numpy()
    for a in actions:
        obs = env.step(a)[0][0, 0].double().numpy()
    sim = env._pool[0]
    qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
    np.testing.assert_allclose(obs[: sizes[0]], qpos[len(qpos) - sizes[0]:], atol=1e-6)
    np.testing.assert_allclose(obs[sizes[0]: sizes[0] + sizes[1]], qvel, atol=1e-5)
    mujoco.mj_forward(sim.model, sim.data)  # the centre of mass of the current positions
    torso = sim.model.body("torso").id
    tol = 1e-6 if family != "ant-vel" else 0.05  # the ant's positions are one substep old
    np.testing.assert_allclose(obs[-3:], sim.data.subtree_com[torso], atol=tol)
    assert abs(obs[-3] - first[-3]) > 1e-3  # the centre of mass moved along the track


@pytest.mark.parametrize("frame_skip", [1, 5])
@pytest.mark.parametrize("observation", ["gym", "rllab"])
@pytest.mark.parametrize("family", ["cheetah-dir", "cheetah-vel", "swimmer-vel", "ant-vel:gym", "ant-dir:gym"])
def test_direct_mujoco_steps_give_gymnasiums_observations_and_rewards_to_the_bit(family, observation, frame_skip):
    """The half-cheetah, swimmer and ant step in MuJoCo directly; through gymnasium's ``step`` instead, the same
    tasks, seeds and actions give the same states, velocities and costs (float64) and the same observations,
    rewards and ends (float32), over two resets of the same simulators (the ant's episodes end early, some here;
    ``:gym``: with gymnasium's physics; rllab's ant is checked against rllab's computation below)."""
    family, _, physics = family.partition(":")
    horizon = (200 if frame_skip == 1 else 50) if family.startswith("ant") else 15
    direct, gym = (MujocoTaskEnv(family, horizon=horizon, seed=7, frame_skip=frame_skip, observation=observation,
                                 physics=physics or "auto") for _ in range(2))
    assert direct.direct and gym.direct
    gym.direct = False
    tasks = direct.sample_tasks(3, torch.Generator().manual_seed(0))
    gen, ended_early = torch.Generator().manual_seed(1), 0
    for _ in range(2):
        assert torch.equal(direct.reset(tasks, 2), gym.reset(tasks, 2))
        for step in range(horizon):
            actions = torch.randn(3, 2, direct.action_space.shape[0], generator=gen) * 1.5  # some clipped
            for a, b in zip(direct.step(actions), gym.step(actions), strict=True):
                assert torch.equal(a, b)
            ended_early += int(direct._done.sum()) if step < horizon - 1 else 0
            alive = ~direct._done
            np.testing.assert_array_equal(direct._xv[alive], gym._xv[alive])
            np.testing.assert_array_equal(direct._extra[alive], gym._extra[alive])
            for s, t in zip(direct._pool[:6], gym._pool[:6], strict=True):
                np.testing.assert_array_equal(s.data.qpos, t.data.qpos)
                np.testing.assert_array_equal(s.data.qvel, t.data.qvel)
    assert ended_early > 0 or not family.startswith("ant")
    assert not MujocoTaskEnv("walker-rand-vel").direct and not MujocoTaskEnv("hopper-rand-params").direct


@pytest.mark.parametrize(("family", "frame_skip", "dt"), [("cheetah-dir", 0, 0.01), ("cheetah-vel", 0, 0.01),
                                                       ("cheetah-rand-vel", 0, 0.05), ("cheetah-dir", 5, 0.05),
                                                       ("swimmer-rand-vel", 0, 0.04), ("ant-vel", 0, 0.02),
                                                       ("ant-dir", 0, 0.02), ("walker-rand-vel", 0, 0.016),
                                                       ("walker-rand-params", 0, 0.01),
                                                       ("hopper-rand-params", 0, 0.008)])
def test_time_step_per_action_is_the_papers(family, frame_skip, dt):
    """The MAML paper's half-cheetah (rllab) steps 0.01 s per action; ProMP's and the SG-MRL code's (gym) 5 x 0.01 s,
    which ``frame_skip=5`` gives the MAML paper's families too; ProMP's walker 8 x 0.002 s, rand_param_envs' walker
    5 x 0.002 s and hopper 4 x 0.002 s (gymnasium's walker default, 4, was half and 80% of these)."""
    env = MujocoTaskEnv(family, horizon=3, frame_skip=frame_skip)
    env.reset(env.sample_tasks(1, torch.Generator().manual_seed(0)), 1)
    sim = env._pool[0]
    start = sim.data.time
    env.step(torch.zeros(1, 1, env.action_space.shape[0]))
    assert sim.dt == pytest.approx(dt) and sim.data.time - start == pytest.approx(dt)


def test_the_ant_is_rllabs_ant_xml_and_physics_gym_gives_gymnasiums():
    """The MAML code's ant (rllab's ant.xml): 0.02 s per simulator step, one per action, softer contacts; the patch
    changes nothing else of gymnasium's compiled Ant-v5 model, which ``physics="gym"`` keeps (5 x 0.01 s)."""
    rllab, gym = MujocoTaskEnv("ant-dir", horizon=3), MujocoTaskEnv("ant-dir", horizon=3, physics="gym")
    a, b = rllab._pool[0].model, gym._pool[0].model
    assert (a.opt.timestep, rllab._pool[0].frame_skip, b.opt.timestep, gym._pool[0].frame_skip) == (0.02, 1, 0.01, 5)
    arrays = [n for n in dir(a) if not n.startswith("_") and isinstance(getattr(a, n), np.ndarray)]
    assert len(arrays) > 50
    assert [n for n in arrays if not np.array_equal(getattr(a, n), getattr(b, n))] == ["geom_solimp"]
    np.testing.assert_array_equal(a.geom_solimp[:, :3], np.tile([0.8, 0.8, 0.01], (a.ngeom, 1)))
    np.testing.assert_array_equal(a.geom_solimp[:, 3:], b.geom_solimp[:, 3:])
    fields = [n for n in dir(a.opt) if not n.startswith("_") and n != "timestep"]
    assert all(np.array_equal(getattr(a.opt, n), getattr(b.opt, n)) for n in fields)
    with pytest.raises(ConfigError, match="ant families"):
        MujocoTaskEnv("cheetah-dir", physics="rllab")
    with pytest.raises(ConfigError, match="unknown physics"):
        MujocoTaskEnv("ant-vel", physics="mujoco131")


def test_rllabs_ant_starts_bent_from_init_qpos_with_rllabs_reset_noise():
    """rllab's MujocoEnv starts from the model's init_qpos numeric (torso 0.55, ankles ±1 rad) plus N(0, 0.01^2) on the
    positions and N(0, 0.1^2) on the velocities, and its first observation holds the start's contact forces;
    gymnasium's from the rest pose (torso 0.75, ankles 0) plus U(-0.1, 0.1). Both are seeded: the same seed gives
    the same start."""
    import copy

    import mujoco

    starts = {}
    for physics in ("rllab", "gym"):
        env = MujocoTaskEnv("ant-vel", horizon=3, seed=3, physics=physics)
        obs = env.reset(env.sample_tasks(10, torch.Generator().manual_seed(0)), 20)
        qpos = np.stack([s.data.qpos.copy() for s in env._pool[:200]])
        qvel = np.stack([s.data.qvel.copy() for s in env._pool[:200]])
        starts[physics] = qpos, qvel
        np.testing.assert_array_equal(obs.flatten(0, 1)[:, :15].numpy(), qpos.astype(np.float32))  # rllab's obs
        if physics == "rllab":  # the contact forces of the start state, as forward and rnePostConstraint give them
            d = copy.copy(env._pool[0].data)
            mujoco.mj_forward(env._pool[0].model, d)
            mujoco.mj_rnePostConstraint(env._pool[0].model, d)
            forces = np.clip(d.cfrc_ext, -1, 1).ravel().astype(np.float32)
            assert np.abs(forces).sum() > 1 and np.array_equal(obs[0, 0, 29:29 + forces.size].numpy(), forces)
        again = MujocoTaskEnv("ant-vel", horizon=3, seed=3, physics=physics)
        assert torch.equal(again.reset(env.sample_tasks(10, torch.Generator().manual_seed(0)), 20), obs)
    init = np.array([0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0])
    qpos, qvel = starts["rllab"]
    assert np.abs((qpos - init).std(0) - 0.01).max() < 0.003 and np.abs(qvel.std(0) - 0.1).max() < 0.03
    qpos, qvel = starts["gym"]
    assert np.abs(qpos[:, 2].mean() - 0.75) < 0.01 and np.abs(qpos[:, 7:]).max() <= 0.1
    assert np.abs(qpos[:, 7:].std(0) - 0.1 / 3**0.5).max() < 0.015  # uniform on ±0.1


@pytest.mark.parametrize("observation,frame_skip", [("rllab", 0), ("gym", 0), ("rllab", 2)])
def test_rllabs_ant_steps_forwards_and_reads_the_centre_of_mass_velocity(observation, frame_skip):
    """rllab's ant, stepped as rllab's MujocoEnv and ``AntEnvRand`` do, written out here on a copy of each simulator:
    ``mj_step``, ``forward``, the contact forces of the new state, and the forward velocity as rllab's
    ``body_comvels``: each body's linear momentum (``mj_objectVelocity`` at its centre of mass) summed over the robot,
    over its mass. The environment gives the same states to the bit (it skips stages the last ``forward`` did), and
    the same velocities, costs, ends and observations, over whole episodes."""
    import copy

    import mujoco

    env = MujocoTaskEnv("ant-vel", horizon=60, seed=5, observation=observation, frame_skip=frame_skip)
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    env.reset(tasks, 2)
    gen, ended = torch.Generator().manual_seed(2), 0
    for t in range(60):
        sims = env._pool[:4]
        alive = ~env._done.copy()
        twins = [copy.copy(s.data) for s in sims]
        actions = torch.randn(2, 2, 8, generator=gen) * 1.5
        obs, _, done = env.step(actions)
        for i, (sim, d) in enumerate(zip(sims, twins, strict=True)):
            if not alive[i]:
                continue
            m = sim.model
            d.ctrl[:] = np.clip(actions.reshape(4, 8)[i].double().numpy(), -1, 1)
            mujoco.mj_step(m, d, sim.frame_skip)
            mujoco.mj_forward(m, d)
            mujoco.mj_rnePostConstraint(m, d)
            for name in ("qpos", "qvel", "qacc", "qacc_warmstart", "act", "efc_force", "cfrc_ext", "xpos", "time"):
                np.testing.assert_array_equal(getattr(sim.data, name), getattr(d, name), err_msg=name)
            velocities = np.zeros((m.nbody, 6))
            for b in range(m.nbody):
                mujoco.mj_objectVelocity(m, d, mujoco.mjtObj.mjOBJ_BODY, b, velocities[b], 0)
            robot = [b for b in range(1, m.nbody)]  # the torso's subtree: every body but the world
            com_velocity = (m.body_mass[robot, None] * velocities[robot, 3:]).sum(0) / m.body_mass[robot].sum()
            assert env._xv[i] == pytest.approx(com_velocity[0], abs=1e-9)
            contact = 5e-4 * np.sum(np.square(np.clip(d.cfrc_ext, -1, 1)))
            healthy = 0.2 <= d.qpos[2] <= 1.0
            expected = -0.005 * np.sum(np.square(d.ctrl)) - contact + 0.05  # rllab's survive reward, every step
            assert env._extra[i] == pytest.approx(expected, abs=1e-9)
            assert bool(done.flatten()[i]) == (not healthy or t == 59)  # or the horizon
            if observation == "rllab":
                want = np.concatenate((d.qpos, d.qvel, np.clip(d.cfrc_ext, -1, 1).ravel(), d.xmat[1], d.subtree_com[1]))
                np.testing.assert_allclose(obs.flatten(0, 1)[i].numpy(), want.astype(np.float32), rtol=1e-5, atol=1e-6)
            ended += int(not healthy)
    assert ended > 0  # episodes ended early among them, and later steps left them alone
    env.direct = False
    with pytest.raises(ConfigError, match="directly"):
        env.reset(tasks, 1)


def test_rllabs_stepping_refuses_what_it_does_not_write_out():
    import mujoco

    sim = MujocoTaskEnv("ant-vel", horizon=5)._make()
    sim.model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
    with pytest.raises(ConfigError, match="RK4"):
        rllab_advance(sim.model, sim.data, 1, mujoco)
    sim = MujocoTaskEnv("ant-vel", horizon=5)._make()
    sim.model.opt.enableflags |= mujoco.mjtEnableBit.mjENBL_FWDINV
    with pytest.raises(ConfigError, match="FWDINV"):
        rllab_advance(sim.model, sim.data, 1, mujoco)


@pytest.mark.parametrize("bad", [float("nan"), 2e10])
def test_rllabs_stepping_follows_mj_step_where_its_checks_reset_a_bad_state(bad, tmp_path, monkeypatch):
    """A velocity that ``mj_checkVel`` resets (non-finite, or beyond 1e10) after the last forward: the skipped stages
    are no longer the state's, and the step runs the whole forward pass as ``mj_step`` does."""
    import copy

    import mujoco

    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to MUJOCO_LOG.TXT in the working directory

    env = MujocoTaskEnv("ant-vel", horizon=5)
    sim = env._make()
    env._reset_copy(sim, 0)
    sim.data.qvel[3] = bad
    twin = copy.copy(sim.data)
    sim.data.ctrl[:] = twin.ctrl[:] = 0.5
    rllab_advance(sim.model, sim.data, 1, mujoco)()
    mujoco.mj_step(sim.model, twin)
    mujoco.mj_forward(sim.model, twin)
    for name in ("qpos", "qvel", "qacc", "xpos"):
        np.testing.assert_array_equal(getattr(sim.data, name), getattr(twin, name), err_msg=name)
    assert sim.data.warning[mujoco.mjtWarning.mjWARN_BADQVEL].number == 1


def test_an_ant_run_stored_before_rllabs_physics_resumes_only_with_gymnasiums():
    """A run folder whose stored config has no ``physics`` ran gymnasium's ant: read back as ``gym``, so continuing it
    under the new default is a config difference, not a silent change of simulator (other families: ``auto``)."""
    for env, physics in (("ant-vel", "gym"), ("cheetah-dir", "auto")):
        sections = RLConfig(env=env).to_sections()
        del sections["env"]["physics"]
        saved = stored_config(sections)
        assert saved.physics == physics
        assert RLConfig(env=env).resume_differences(saved) == (["physics"] if physics == "gym" else [])


def test_opposite_directions_negate_the_forward_reward_of_the_same_motion():
    actions = torch.rand(4, 1, 1, 6, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = {}
    for d in (1.0, -1.0):
        env = MujocoTaskEnv("cheetah-dir", horizon=10, seed=3)  # same seed: the same initial state
        obs = [env.reset(torch.tensor([[d]]), 1)]
        rewards = []
        for a in actions:
            o, r, _ = env.step(a)
            obs.append(o)
            rewards.append(float(r))
        out[d] = (torch.stack(obs), np.array(rewards))
    assert torch.equal(out[1.0][0], out[-1.0][0])  # the task does not change the dynamics
    ctrl = -0.05 * (actions**2).sum((1, 2, 3)).double().numpy()
    forward_plus, forward_minus = out[1.0][1] - ctrl, out[-1.0][1] - ctrl
    np.testing.assert_allclose(forward_minus, -forward_plus, rtol=1e-4, atol=1e-5)
    assert np.abs(forward_plus).min() > 1e-3


@pytest.mark.parametrize("family", sorted(RANGES))
def test_velocity_goals_fill_their_range(family):
    env = MujocoTaskEnv(family)
    goals = env.sample_tasks(400, torch.Generator().manual_seed(0))
    low, high = RANGES[family]
    assert goals.shape == (400, 1) and goals.min() >= low and goals.max() <= high
    assert goals.min() < low + 0.05 * (high - low) and goals.max() > high - 0.05 * (high - low)


def test_directions_are_plus_or_minus_one_with_equal_probability():
    d = MujocoTaskEnv("ant-dir").sample_tasks(2000, torch.Generator().manual_seed(0))
    assert set(d.flatten().tolist()) == {-1.0, 1.0} and abs(float(d.mean())) < 0.07


def model_arrays(sim) -> dict[str, np.ndarray]:
    """Every numeric array of the model (copies), to check what a task changes and what it leaves alone."""
    out = {}
    for name in dir(sim.model):
        if name.startswith("_"):
            continue
        v = getattr(sim.model, name, None)
        if isinstance(v, np.ndarray) and v.dtype.kind in "fi":
            out[name] = v.copy()
    return out


DERIVED = {"body_subtreemass", "body_invweight0", "dof_invweight0", "tendon_invweight0", "dof_M0", "body_inertia",
           "body_mass", "dof_damping", "geom_friction", "actuator_acc0", "actuator_length0", "tendon_length0",
           "cam_pos0", "cam_poscom0", "cam_mat0", "light_pos0", "light_poscom0", "light_dir0", "stat"}


@pytest.mark.parametrize("family", ["hopper-rand-params", "walker-rand-params"])
def test_rand_params_scale_exactly_the_four_arrays_per_copy_and_leave_nothing_behind(family):
    env = MujocoTaskEnv(family, horizon=3)
    fresh = model_arrays(make_simulator(FAMILIES[family].env_id, **FAMILIES[family].env_kwargs))
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    sizes = [fresh[name].size for name, _ in PARAM_ARRAYS]
    assert tasks.shape == (2, sum(sizes))
    bounds = torch.tensor([3 * np.log(base) for (_, base), s in zip(PARAM_ARRAYS, sizes, strict=True)
                           for _ in range(s)], dtype=torch.float32)
    assert (tasks.abs() <= bounds + 1e-6).all()
    env.reset(tasks, 2)
    sims = env._pool[:4]
    assert len({id(s.model) for s in sims}) == 4  # every copy owns its model
    for c, sim in enumerate(sims):
        factors = np.exp(tasks[c // 2].double().numpy())
        now = model_arrays(sim)
        offset = 0
        for name, _ in PARAM_ARRAYS:
            size = fresh[name].size
            expected = fresh[name] * factors[offset: offset + size].reshape(fresh[name].shape)
            np.testing.assert_allclose(now[name], expected, rtol=1e-12, atol=0)
            offset += size
        unchanged = [k for k in fresh if k not in DERIVED]
        assert len(unchanged) > 50
        for k in unchanged:
            np.testing.assert_array_equal(now[k], fresh[k], err_msg=k)
        # mj_setConst ran: derived constants follow the new masses (the world's subtree holds every body)
        assert now["body_subtreemass"][0] == pytest.approx(now["body_mass"].sum(), rel=1e-12)
    # the two tasks' copies differ; the two episodes of one task agree
    assert not np.array_equal(sims[0].model.body_mass, sims[2].model.body_mass)
    assert np.array_equal(sims[0].model.dof_damping, sims[1].model.dof_damping)
    # task B after task A: B's factors on the defaults, not on A's arrays
    other = env.sample_tasks(1, torch.Generator().manual_seed(1))
    env.reset(other, 1)
    np.testing.assert_allclose(sims[0].model.body_mass, fresh["body_mass"] * np.exp(other[0, : sizes[0]].double()
                                                                                     .numpy()), rtol=1e-12)
    # the defaults come back exactly, derived constants (mj_setConst) included
    env.set_params(sims[0], None)
    restored = model_arrays(sims[0])
    for k in fresh:
        np.testing.assert_allclose(restored[k], fresh[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_rand_params_change_the_dynamics_and_the_reward_is_the_environments_own():
    env = MujocoTaskEnv("hopper-rand-params", horizon=4, seed=5)
    task = env.sample_tasks(1, torch.Generator().manual_seed(2))
    obs0 = env.reset(task, 1)
    seed = int(np.random.SeedSequence([5, 0]).generate_state(1)[0])
    reference = make_simulator("Hopper-v5")
    env.set_params(reference, task[0])
    default = make_simulator("Hopper-v5")
    o_ref, _ = reference.reset(seed=seed)
    default.reset(seed=seed)
    np.testing.assert_allclose(obs0[0, 0].numpy(), o_ref, rtol=1e-6, atol=1e-6)
    a = np.array([0.5, -0.3, 0.8])
    obs, reward, _ = env.step(torch.tensor(a, dtype=torch.float32).view(1, 1, 3))
    o_ref, r_ref, *_ = reference.step(a)
    o_def, *_ = default.step(a)
    np.testing.assert_allclose(obs[0, 0].numpy(), o_ref, rtol=1e-5, atol=1e-5)
    assert float(reward) == pytest.approx(r_ref, rel=1e-5)
    assert np.abs(o_def - o_ref).max() > 1e-3  # the physical parameters matter


@pytest.mark.parametrize("family", ["walker-rand-vel", "walker-rand-params", "hopper-rand-params"])
def test_the_alive_bonus_is_paid_on_the_step_that_ends_the_episode_too(family):
    """ProMP's and rand_param_envs' reward: x-velocity (or its distance to the goal) + the alive bonus on every step,
    the one where the robot falls included (gymnasium's v5 pays it only while healthy), - 1e-3 |a|^2; measured from
    the simulator's positions."""
    env = MujocoTaskEnv(family, horizon=200, seed=1)
    tasks = env.sample_tasks(3, torch.Generator().manual_seed(1))
    env.reset(tasks, 2)
    sims, gen = env._pool[:6], torch.Generator().manual_seed(1)
    bonus = 15.0 if family == "walker-rand-vel" else 1.0
    goals = np.repeat(tasks[:, 0].double().numpy(), 2)
    ends = 0
    done = torch.zeros(3, 2, dtype=torch.bool)
    for _ in range(200):
        before, x = done.flatten(), [float(s.data.qpos[0]) for s in sims]
        actions = torch.randn(3, 2, env.action_space.shape[0], generator=gen) * 3
        _, reward, done = env.step(actions)
        for i in np.flatnonzero(~before.numpy()):
            v = (float(sims[i].data.qpos[0]) - x[i]) / sims[i].dt
            forward = -abs(v - goals[i]) if family == "walker-rand-vel" else v
            a = actions.view(6, -1)[i].clamp(-1, 1).double().numpy()
            expected = forward + bonus - 1e-3 * float((a**2).sum())
            assert float(reward.flatten()[i]) == pytest.approx(expected, rel=1e-5, abs=1e-4)
            ends += bool(done.flatten()[i])
        if done.all():
            break
    assert ends >= 3  # falls checked, not only healthy steps


def test_the_walkers_are_on_the_older_walker2d_xml():
    """ProMP and rand_param_envs load walker2d.xml: the right foot's friction 0.9 (gymnasium's v5 file: 1.9)."""
    for family in ("walker-rand-vel", "walker-rand-params"):
        model = MujocoTaskEnv(family, horizon=3)._pool[0].model
        assert model.geom("foot_geom").friction[0] == pytest.approx(0.9)
        assert model.geom("foot_left_geom").friction[0] == pytest.approx(1.9)


@pytest.mark.parametrize("family", ["walker-rand-vel", "hopper-rand-params"])
def test_falling_ends_the_episode_and_later_steps_are_ignored(family):
    env = MujocoTaskEnv(family, horizon=200, seed=0)
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    env.reset(tasks, 2)
    sims = env._pool[:4]
    gen = torch.Generator().manual_seed(0)
    ended_at = [None] * 4
    obs, done = torch.zeros(2, 2, env.obs_dim), torch.zeros(2, 2, dtype=torch.bool)
    for t in range(200):
        before, obs_before = done.flatten(), obs.clone()
        obs, reward, done = env.step(torch.randn(2, 2, env.action_space.shape[0], generator=gen) * 3)
        flat = done.flatten()
        assert (flat >= before).all()  # once done, always done
        for i in range(4):
            if flat[i] and not before[i]:
                ended_at[i] = t
                if t < 199:
                    assert not sims[i].is_healthy  # ended by gymnasium's health check
                    if family == "walker-rand-vel":
                        z, angle = sims[i].data.qpos[1:3]
                        assert not (0.8 < z < 2.0) or abs(angle) >= 1
            elif before[i]:
                assert reward.flatten()[i] == 0 and torch.equal(obs.view(4, -1)[i], obs_before.view(4, -1)[i])
    assert all(e is not None for e in ended_at)
    assert min(e for e in ended_at) < 199  # violent random actions topple the robots before the horizon


def test_horizon_is_respected_and_rollout_masks_it():
    env = make_env("cheetah-vel", horizon=7)
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    env.reset(tasks, 3)
    for t in range(7):
        _, _, done = env.step(torch.zeros(2, 3, 6))
        assert bool(done.all()) == (t == 6) and bool(done.any()) == (t == 6)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(8,))
    traj = rollout(env, policy, dict(policy.named_parameters()), tasks, 3, torch.Generator().manual_seed(0))
    assert traj.obs.shape == (2, 3, 7, 20) and traj.mask.all()


def seeded_rollout(seed: int, family: str = "walker-rand-vel"):
    env = make_env(family, horizon=30, seed=seed)
    torch.manual_seed(0)
    policy = make_policy(env.action_space, env.obs_dim, hidden=(16,))
    tasks = env.sample_tasks(2, torch.Generator().manual_seed(0))
    params = dict(policy.named_parameters())
    gen = torch.Generator().manual_seed(1)
    return [rollout(env, policy, params, tasks, 2, gen) for _ in range(2)]


def test_a_seeded_rollout_is_reproducible_and_successive_resets_differ():
    a, b, c = seeded_rollout(0), seeded_rollout(0), seeded_rollout(1)
    for x, y in zip(a, b, strict=True):
        for field in ("obs", "actions", "rewards", "mask"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field
    assert not torch.equal(a[0].obs[:, :, 0], a[1].obs[:, :, 0])  # the second reset draws new initial states
    assert not torch.equal(a[0].obs[:, :, 0], c[0].obs[:, :, 0])  # another seed, other initial states
    assert not torch.equal(a[0].obs[:, 0, 0], a[0].obs[:, 1, 0])  # episodes of a task start apart


def test_bad_names_options_and_tasks_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'cheetah-dir'"):
        make_env("cheetah-dri")
    with pytest.raises(ConfigError, match="takes no option split"):
        make_env("cheetah-dir", split="test")
    with pytest.raises(ConfigError, match="horizon 0 must be a whole number >= 1"):
        make_env("ant-vel", horizon=0)
    env = make_env("hopper-rand-params")
    with pytest.raises(ConfigError, match=rf"tasks must be \[T, {env.task_dim}\]"):
        env.reset(torch.zeros(2, 1), 1)


@pytest.mark.parametrize("missing", ["mujoco", "gymnasium"])
def test_a_missing_package_names_the_extra(monkeypatch, missing):
    monkeypatch.setitem(__import__("sys").modules, missing, None)
    with pytest.raises(ConfigError, match=rf"this needs {missing}; install the rl extra: pip install 'metagrad\[rl\]'"):
        make_env("cheetah-dir")


def test_frame_skip_is_checked():
    from metagrad.rl.config import RLConfig
    from metagrad.rl.train import build

    with pytest.raises(ConfigError, match="frame_skip -1"):
        RLConfig(env="cheetah-dir", frame_skip=-1).validate()
    with pytest.raises(ConfigError, match="frame_skip 5 is for the MuJoCo"):
        build(RLConfig(env="navigation2d", frame_skip=5))


def test_observation_option_selects_gymnasiums_or_rllabs_and_is_checked():
    """``observation='gym'`` gives gymnasium's own (ProMP's and the SG-MRL code's half-cheetah), ``rllab`` appends the
    torso's centre of mass to it for the cheetah; neither changes the dynamics or the rewards."""
    from metagrad.rl.config import RLConfig
    from metagrad.rl.train import build

    actions = torch.rand(5, 1, 1, 6, generator=torch.Generator().manual_seed(2)) * 2 - 1
    runs = {}
    for observation in ("gym", "rllab"):
        env = MujocoTaskEnv("cheetah-dir", horizon=5, seed=4, observation=observation)
        sim = env._pool[0]
        gym_obs = [env.reset(torch.tensor([[1.0]]), 1)[0, 0]]
        rewards = []
        for a in actions:
            o, r, _ = env.step(a)
            gym_obs.append(o[0, 0])
            rewards.append(float(r))
            if observation == "gym":  # the simulator's own observation, untouched
                np.testing.assert_allclose(o[0, 0].numpy(), sim._get_obs(), atol=1e-6)
        runs[observation] = (torch.stack(gym_obs), rewards)
    assert runs["gym"][0].shape[-1] == 17 and runs["rllab"][0].shape[-1] == 20
    assert torch.equal(runs["gym"][0], runs["rllab"][0][:, :17]) and runs["gym"][1] == runs["rllab"][1]
    assert MujocoTaskEnv("cheetah-rand-vel", observation="rllab").obs_dim == 20
    with pytest.raises(ConfigError, match="unknown observation 'pixels'"):
        RLConfig(env="cheetah-dir", observation="pixels").validate()
    with pytest.raises(ConfigError, match="rllab' is defined for the half-cheetah, ant and swimmer"):
        make_env("hopper-rand-params", observation="rllab")
    with pytest.raises(ConfigError, match="observation gym is for the MuJoCo"):
        build(RLConfig(env="navigation2d", observation="gym"))
    assert build(RLConfig(env="cheetah-dir", observation="gym"))[0].env.obs_dim == 17


@pytest.mark.parametrize("family", ["cheetah-vel", "cheetah-dir", "ant-dir"])
def test_the_oracle_sees_the_goal_and_otherwise_the_same_observation(family):
    """The MAML paper's oracle: the task's goal appended to the observation; dynamics and rewards unchanged."""
    from metagrad.rl.envs.locomotion import MujocoTaskEnv

    plain, oracle = MujocoTaskEnv(family, horizon=5, seed=3), MujocoTaskEnv(family, horizon=5, seed=3, oracle=True)
    assert oracle.obs_dim == plain.obs_dim + 1
    tasks = plain.sample_tasks(3, torch.Generator().manual_seed(0))
    a, b = plain.reset(tasks, 2), oracle.reset(tasks, 2)
    torch.testing.assert_close(b[..., :-1], a, rtol=0, atol=0)
    assert torch.equal(b[..., -1], tasks[:, None, 0].float().expand(3, 2))
    actions = torch.rand(3, 2, *plain.action_space.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    (oa, ra, _), (ob, rb, _) = plain.step(actions), oracle.step(actions)
    assert torch.equal(ob[..., :-1], oa) and torch.equal(rb, ra) and torch.equal(ob[..., -1], b[..., -1])


def test_the_oracle_is_refused_where_there_is_no_goal():
    from metagrad.rl.config import RLConfig
    from metagrad.rl.envs.locomotion import MujocoTaskEnv
    from metagrad.rl.train import build

    with pytest.raises(ConfigError, match="oracle"):
        MujocoTaskEnv("hopper-rand-params", oracle=True)
    with pytest.raises(ConfigError, match="oracle True is for navigation2d and the MuJoCo locomotion families"):
        build(RLConfig(env="ml1-reach", oracle=True))
    learner, _ = build(RLConfig(env="cheetah-dir", oracle=True, horizon=5, hidden=(8,)))
    assert learner.env.oracle and learner.policy.mean[0].in_features == learner.env.obs_dim


@pytest.mark.parametrize("family", ["cheetah-dir", "hopper-rand-params"])
def test_action_scale_steps_the_simulator_with_the_scaled_clipped_action(family):
    """``action_scale=0.1`` (the SG-MRL code's normalize() with scale 10): the policy's action u steps the simulator
    as 0.1 u does at scale 1, clipping (and the control cost) included, to the bit; the policy's range is [-10, 10]."""
    plain, scaled = MujocoTaskEnv(family, horizon=4, seed=5), MujocoTaskEnv(family, horizon=4, seed=5,
                                                                            action_scale=0.1)
    assert (scaled.action_space.low, scaled.action_space.high) == (-10.0, 10.0)
    tasks = plain.sample_tasks(2, torch.Generator().manual_seed(0))
    assert torch.equal(plain.reset(tasks, 2), scaled.reset(tasks, 2))
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):  # up to 15 in the policy's units: beyond the simulator's limits after scaling, clipped
        u = (torch.rand(2, 2, *plain.action_space.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 15
        (oa, ra, da), (ob, rb, db) = plain.step(u * 0.1), scaled.step(u)
        assert torch.equal(oa, ob) and torch.equal(ra, rb) and torch.equal(da, db)


def test_action_scale_is_checked():
    from metagrad.rl.config import RLConfig
    from metagrad.rl.train import build

    with pytest.raises(ConfigError, match=r"action_scale 0\.0 must be a positive number"):
        RLConfig(env="cheetah-dir", action_scale=0.0).validate()
    with pytest.raises(ConfigError, match="action_scale -1 must be a positive number"):
        MujocoTaskEnv("cheetah-dir", action_scale=-1)
    with pytest.raises(ConfigError, match=r"action_scale 0\.1 is for the MuJoCo locomotion families"):
        build(RLConfig(env="navigation2d", action_scale=0.1))
    assert build(RLConfig(env="cheetah-dir", action_scale=0.1))[0].env.action_space.high == 10.0


def test_the_ant_rows_take_the_maml_codes_settings():
    """`reproduce locomotion` on the ant: the MAML code's KL step of 0.01 (the cheetah's run took 0.02), losses
    averaged over each task's valid steps, 40 episodes per step on the forward/backward task (the paper's section
    5.3), at test too, and that task's test steps 0.1 then 0.001 (its test script's)."""
    from metagrad.reproduce import locomotion
    from metagrad.reproduce.metarl import method_config

    cfg = {env: method_config("maml-trpo", True, None, None, {}, locomotion.experiment(env).settings("maml-trpo"))
           for env in ("ant-vel", "ant-dir", "cheetah-dir")}
    assert [(c.max_kl, c.episodes, c.eval_episodes) for c in cfg.values()] == [(0.01, 20, 20), (0.01, 40, 40),
                                                                               (0.02, 20, 20)]
    assert [(c.loss_mean, c.eval_lr, c.eval_later) for c in cfg.values()] == [
        ("steps", (0.1, 0.05), 0.5), ("steps", (0.1, 0.001), 0.01), ("slots", (0.1, 0.05), 0.5)]
    assert method_config("maml-trpo", True, None, None, {"max_kl": "0.02"},
                         locomotion.experiment("ant-vel").settings("maml-trpo")).max_kl == 0.02
