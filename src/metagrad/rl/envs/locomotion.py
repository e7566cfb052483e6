"""MuJoCo locomotion task families of the meta-RL papers, on gymnasium's v5 environments (MAML 5.3, SG-MRL
appendix H, the trade-off paper / ProMP).

One gymnasium environment (unwrapped: no TimeLimit, no checker) per (task, episode) copy, each with its own MjModel;
instances are cached and reused across resets. Rewards follow the papers' code (rllab / maml_rl / ProMP):

- ``cheetah-dir``: task = direction d = ±1 (p = 1/2 each); reward = d * x_velocity - 0.05 |a|^2.
- ``cheetah-vel``: goal velocity g ~ U[0, 2]; reward = -|x_velocity - g| - 0.05 |a|^2.
  (These two are rllab's, the MAML paper's: one simulator step of 0.01 s per action (frame_skip 1), so an episode
  of 200 steps is 2 s; gymnasium's default of 5 steps would make it 10 s of coarser control.)
- ``cheetah-rand-vel``: g ~ U[0, 3] (ProMP HalfCheetahRandVel); same reward.
  (0.05 = rllab's 0.5 * 1e-1, as maml_rl and ProMP; gymnasium's own default would be 0.1.)
- ``ant-vel`` (g ~ U[0, 3]) and ``ant-dir`` (d = ±1): the forward term as above (plus 1 per step for ant-vel,
  rllab's "make it happy, not suicidal"), plus rllab's ant costs:
  - 0.005 |a|^2 (control) - 5e-4 |clip(contact forces, -1, 1)|^2 (contact) + 0.05 (survive; on rllab's physics
  also on the step that ends the episode, as rllab's ant);
  episodes end on gymnasium's unhealthy condition (torso height outside [0.2, 1.0], as rllab). The simulator as
  rllab's ant.xml sets it (``RLLAB_ANT``: 0.02 s per action, softer contacts), not gymnasium's 5 x 0.01 s.
- ``swimmer-vel``: g ~ U[0, 0.5] (the speeds a trained swimmer reaches); reward -1.5 |x_velocity - g| - 0.005 |a|^2
  (rllab's weights) on gymnasium's swimmer (RK4, 4 x 0.01 s per action, gear 150), not rllab's swimmer.xml (Euler,
  50 x 0.001 s, gear 1 with controls in [-50, 50]); no paper table uses it.
- ``swimmer-rand-vel``: maml_zoo's (the library of the SG-MRL code, Table 2's swimmer): g ~ U[0.1, 0.2], gym's 4
  simulator steps per action and gym's observation, reward **+**|x_velocity - g| - 1e-4 |a|^2: its code's sign, which
  pays for moving away from the goal velocity (so Table 2's swimmer returns are positive; ``swimmer-vel`` is the
  goal-tracking family).
- ``walker-rand-vel``: ProMP's: g ~ U[0, 10]; reward -|x_velocity - g| + 15 (alive, on every step, the one that ends
  the episode too) - 1e-3 |a|^2; 8 simulator steps of 0.002 s per action on the older walker2d.xml; ends when the
  height leaves (0.8, 2.0) or |angle| >= 1 (the same health check as gymnasium's Walker2d).
- ``hopper-rand-params``, ``walker-rand-params``: rand_param_envs' (ProMP's): per task, element-wise, body_mass and
  body_inertia times 1.5^U(-3,3), dof_damping times 1.3^U(-3,3), geom_friction times 1.5^U(-3,3); the task is the
  natural log of those factors, flattened in that order; reward x_velocity + 1 (alive, on every step, the last one
  too) - 1e-3 |a|^2 and termination as gymnasium's hopper and walker; the hopper 4 simulator steps of 0.002 s per
  action, the walker 5 on the older walker2d.xml.

Actions are clipped to the action space before stepping (the simulator clamps controls anyway) and the control
cost is that of the clipped action.

Observations (``Family.observation``): the MAML paper's families (cheetah-dir, cheetah-vel, ant-*; swimmer-vel too)
see rllab's, as maml_rl and pytorch-maml-rl do: the joint positions and velocities plus the torso's subtree centre
of mass (x, y, z; the cheetah drops the root's x from the positions, the ant adds its clipped external contact forces
and the torso's orientation): 20 numbers for the cheetah where gymnasium's own has 17, with no position along the
track. maml_zoo's (cheetah-rand-vel, swimmer-rand-vel) and the trade-off families see the environment's own
observation (ProMP's, up to qvel clipping), as float32.

The half-cheetah and swimmer families (no early end, a reward of x velocity and control cost only) are stepped in
MuJoCo directly (``direct_stepper``), and so are the ant's (``ant_stepper``: its contact cost, survive reward and
end as well), not through gymnasium's ``step``: the same observations, rewards and ends, to the bit, without the
Python that builds gymnasium's observation, reward and info on every step of every copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError, check_choice, check_whole
from ...settings import check_seed
from .base import Space
from .copies import CopyTaskEnv
from .gym import require, require_gymnasium

PARAM_ARRAYS = (("body_mass", 1.5), ("body_inertia", 1.5), ("dof_damping", 1.3), ("geom_friction", 1.5))
"""Randomized model arrays and the base of their factor ``base ** U(-3, 3)``."""
LOG_SCALE_LIMIT = 3.0
OBSERVATIONS = ("gym", "rllab")
RLLAB_OBS = {"HalfCheetah-v5": (1, False, True), "Ant-v5": (0, True, False), "Swimmer-v5": (0, False, True)}
"""rllab's observation per robot: the first joint position kept; whether contact forces and the torso's orientation
are included (the torso's subtree centre of mass always follows); whether body positions are recomputed after the step
(rllab's ``forward``; not for the ant, whose gymnasium velocity is measured from them: its stay at the last substep's
start, 0.01 s behind)."""

_CHEETAH = {"ctrl_cost_weight": 0.05}
_RLLAB_CHEETAH = {**_CHEETAH, "frame_skip": 1}
_ANT = {"ctrl_cost_weight": 0.005, "contact_cost_weight": 5e-4, "healthy_reward": 0.05}
_ANT_TERMS = ("reward_ctrl", "reward_contact", "reward_survive")

PHYSICS = ("gym", "rllab")
RLLAB_ANT = {"frame_skip": 1, "timestep": 0.02, "solimp": (0.8, 0.8, 0.01), "qpos_noise": 0.01, "qvel_noise": 0.1}
"""rllab's ant.xml and MujocoEnv, which the MAML code's ant families use (maml_rl's ``AntEnvRand``,
``AntEnvRandDirec``): 0.02 s per simulator step and one step per action (rllab's MujocoEnv steps once where the model
names no frame_skip), softer contacts (its default geom's solimp), and episodes that start from the model's
``init_qpos`` numeric (the torso at 0.55, the ankles bent ±1 rad; gymnasium's Ant-v5 has the same numeric and starts
from the model's rest pose, torso 0.75, ankles 0) plus N(0, 0.01^2) on the positions and N(0, 0.1^2) on the
velocities (gymnasium: U(-0.1, 0.1) and N(0, 0.1^2)); after each action, ``forward`` on the new state (what the
observation and contact cost read) and the robot's centre-of-mass velocity as the forward velocity (``ant_stepper``).
Gymnasium's Ant-v5 steps 5 x 0.01 s per action. The motors are the same behind rllab's normalize() (ctrlrange 150,
gear 1) and gymnasium's (ctrlrange 1, gear 150)."""

DIRECT_ROBOTS = {"HalfCheetah-v5": ("reward_ctrl",), "Swimmer-v5": ("reward_ctrl",), "Ant-v5": _ANT_TERMS}
"""Robots ``MujocoTaskEnv`` steps in MuJoCo directly, with the ``info`` terms their families add there: the half-
cheetah and swimmer never end and add the control cost only (``direct_stepper``), the ant adds its contact cost and
survive reward and ends when unhealthy (``ant_stepper``)."""


@dataclass(frozen=True)
class Family:
    """A task family: the gymnasium id, the kind of task (``direction``, ``velocity`` or ``params``), the goal
    velocity range, constructor arguments that set the papers' cost weights, the ``info`` terms added to the
    task's forward term, the observation (``gym`` or ``rllab``), a constant reward per step, the forward term's
    weight w (direction: w d v; velocity: -w |v - g|, so w < 0 gives maml_zoo's swimmer its +|v - g|) and the
    simulator's settings (``gym``, or ``rllab``: ``RLLAB_ANT``)."""

    env_id: str
    task: str
    low: float = 0.0
    high: float = 0.0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    terms: tuple[str, ...] = ("reward_ctrl",)
    observation: str = "gym"
    bonus: float = 0.0
    forward_weight: float = 1.0
    physics: str = "gym"


# ProMP's and rand_param_envs' walker: the older walker2d.xml (gymnasium's v5 file gives the right foot the left one's
# friction, 1.9 for 0.9); the alive bonus is the family's own, paid on every step, the last one too (gymnasium's v5
# pays it only while healthy)
_PROMP_WALKER = {"xml_file": "walker2d.xml", "healthy_reward": 0.0}

FAMILIES: dict[str, Family] = {
    "cheetah-dir": Family("HalfCheetah-v5", "direction", env_kwargs=_RLLAB_CHEETAH, observation="rllab"),
    "cheetah-vel": Family("HalfCheetah-v5", "velocity", 0.0, 2.0, _RLLAB_CHEETAH, observation="rllab"),
    "cheetah-rand-vel": Family("HalfCheetah-v5", "velocity", 0.0, 3.0, _CHEETAH),
    "ant-vel": Family("Ant-v5", "velocity", 0.0, 3.0, _ANT, _ANT_TERMS, "rllab", bonus=1.0, physics="rllab"),
    "ant-dir": Family("Ant-v5", "direction", env_kwargs=_ANT, terms=_ANT_TERMS, observation="rllab",
                      physics="rllab"),
    "swimmer-vel": Family("Swimmer-v5", "velocity", 0.0, 0.5, {"ctrl_cost_weight": 0.005}, observation="rllab",
                          forward_weight=1.5),
    "swimmer-rand-vel": Family("Swimmer-v5", "velocity", 0.1, 0.2, {"ctrl_cost_weight": 1e-4}, forward_weight=-1.0),
    "walker-rand-vel": Family("Walker2d-v5", "velocity", 0.0, 10.0, {**_PROMP_WALKER, "frame_skip": 8}, bonus=15.0),
    "hopper-rand-params": Family("Hopper-v5", "params", env_kwargs={"healthy_reward": 0.0}, terms=(), bonus=1.0),
    "walker-rand-params": Family("Walker2d-v5", "params", env_kwargs={**_PROMP_WALKER, "frame_skip": 5}, terms=(),
                                 bonus=1.0),
}


def make_simulator(env_id: str, **kwargs: Any) -> Any:
    """One unwrapped gymnasium MuJoCo environment (its own MjModel; no TimeLimit or checker wrappers)."""
    gym = require_gymnasium()
    require("mujoco")
    return gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped


def rllab_observer(env: Any, qpos_from: int, contacts: bool, recompute: bool,
                   mujoco: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function giving rllab's observation of ``env`` (its arguments: ``RLLAB_OBS``); it reads the simulator's
    arrays through views made once, since it runs after every step of every copy."""
    model, data = env.model, env.data
    torso = model.body("torso").id
    qpos, qvel, com = data.qpos[qpos_from:], data.qvel, data.subtree_com[torso]
    cfrc, xmat = data.cfrc_ext, data.xmat[torso]
    kinematics, com_positions = mujoco.mj_kinematics, mujoco.mj_comPos

    def observe(_: np.ndarray) -> np.ndarray:
        if recompute:  # the step leaves body positions at its last substep's start; rllab calls forward
            kinematics(model, data)
            com_positions(model, data)
        if contacts:
            return np.concatenate((qpos, qvel, np.clip(cfrc, -1, 1).ravel(), xmat, com))
        return np.concatenate((qpos, qvel, com))

    return observe


def gym_observer(env: Any) -> Callable[[Any], np.ndarray]:
    """gymnasium's own observation of a half-cheetah, swimmer or ant (its ``_get_obs``: the joint positions after
    the excluded root coordinates, the velocities, and the ant's clipped contact forces after the world body's), read
    through views made once."""
    qpos, qvel = env.data.qpos[env.observation_structure["skipped_qpos"]:], env.data.qvel
    if not env.observation_structure.get("cfrc_ext"):
        return lambda _: np.concatenate((qpos, qvel))
    cfrc, (low, high) = env.data.cfrc_ext[1:], env._contact_force_range
    return lambda _: np.concatenate((qpos, qvel, np.clip(cfrc, low, high).ravel()))


def direct_stepper(env: Any, observe: Callable[[Any], np.ndarray],
                   mujoco: Any) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    """A function stepping a half-cheetah or swimmer ``env`` with one action as its gymnasium ``step`` does, and
    returning ``observe``'s observation and the x velocity.

    gymnasium's ``step`` sets the controls, calls ``mj_step`` ``frame_skip`` times and then ``mj_rnePostConstraint``
    (the bodies' accelerations and contact forces, which neither these robots' observations nor the next step
    read: skipped here), then builds its observation, reward and info. The velocity is computed as it does (the root
    joint's x after minus before, over ``dt``); the control cost is left to the caller, for all copies at once."""
    model, data = env.model, env.data
    qpos, ctrl, nstep, dt = data.qpos, data.ctrl, env.frame_skip, env.dt
    mj_step = mujoco.mj_step

    def step(action: np.ndarray) -> tuple[np.ndarray, float]:
        x = qpos[0]
        ctrl[:] = action
        mj_step(model, data, nstep)
        return observe(None), (qpos[0] - x) / dt

    return step


def rllab_advance(model: Any, data: Any, nstep: int, mujoco: Any) -> Callable[[], None]:
    """A function doing rllab's simulator work for one action: ``mj_step`` ``nstep`` times, then ``mj_forward``
    on the new state. That ``mj_forward`` has already done the position and velocity stages of the next action's
    first ``mj_step`` (they read only the positions and velocities, unchanged since; a reset ends in ``mj_forward``
    too), so that step runs only its acceleration stage, with the new controls, before integrating: the same
    arithmetic to the bit (a test compares every array the step writes), without one forward pass's costliest
    stages. Where ``mj_step``'s checks reset a bad state, the whole forward pass runs, as in ``mj_step``. Only for
    data that nothing else steps (each action ends in ``mj_forward``)."""
    if model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4:  # the ant.xml's: mj_step's integrator is written here
        raise ConfigError(f"rllab's stepping integrates as the ant.xml says, with RK4; this model has integrator "
                          f"{model.opt.integrator}")
    if model.opt.enableflags & mujoco.mjtEnableBit.mjENBL_FWDINV:
        raise ConfigError("rllab's stepping does not compare forward and inverse dynamics; clear mjENBL_FWDINV")
    resets = [data.warning[w] for w in (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL)]
    integrate, velocity_stage = partial(mujoco.mj_RungeKutta, model, data, 4), mujoco.mjtStage.mjSTAGE_VEL
    check_pos, check_vel, check_acc = mujoco.mj_checkPos, mujoco.mj_checkVel, mujoco.mj_checkAcc
    forward_skip, forward, mj_step = mujoco.mj_forwardSkip, mujoco.mj_forward, mujoco.mj_step

    def advance() -> None:
        before = [w.number for w in resets]
        check_pos(model, data)  # mj_step's own order: checks, forward pass, check, integrator
        check_vel(model, data)
        if [w.number for w in resets] == before:
            forward_skip(model, data, velocity_stage, 0)
        else:  # the checks reset the state: its stages are not the last forward's
            forward(model, data)
        check_acc(model, data)
        integrate()
        if nstep > 1:
            mj_step(model, data, nstep - 1)
        forward(model, data)

    return advance


def ant_stepper(env: Any, observe: Callable[[Any], np.ndarray], mujoco: Any,
                rllab: bool = False) -> Callable[[np.ndarray], tuple[np.ndarray, float, float, bool]]:
    """A function stepping an ant ``env`` with one action as its gymnasium ``step`` does (``rllab``: as rllab's
    MujocoEnv and ant families do), and returning ``observe``'s observation, the x velocity, the sum of
    ``_ANT_TERMS`` (its control and contact costs, negated, and the survive reward, added in that order as
    ``MujocoTaskEnv._record`` adds them) and whether the episode ends.

    gymnasium's velocity is the torso's body position after minus before, over ``dt`` (positions one substep behind
    the state: with one substep per action, the previous action's motion); its health check reads the joint positions
    and velocities, its contact cost the contact forces that ``mj_rnePostConstraint`` computes after the substeps.
    rllab's calls ``forward`` after stepping (positions, contacts and velocities of the new state, which its
    observation and contact cost read) and its velocity is the whole robot's centre-of-mass velocity (the torso's
    subtree: ``get_body_comvel``), MuJoCo's ``subtree_linvel`` (stepped by ``rllab_advance``); its survive reward
    is paid on every step, the one where the ant falls too (gymnasium's only while healthy)."""
    model, data = env.model, env.data
    ctrl, qpos, qvel, cfrc = data.ctrl, data.qpos, data.qvel, data.cfrc_ext
    torso, nstep, dt = data.xpos[env._main_body], env.frame_skip, env.dt
    (low, high), (min_z, max_z) = env._contact_force_range, env._healthy_z_range
    ctrl_w, contact_w, healthy_reward = env._ctrl_cost_weight, env._contact_cost_weight, env._healthy_reward
    terminate = env._terminate_when_unhealthy
    post_constraint, subtree_velocities = mujoco.mj_rnePostConstraint, mujoco.mj_subtreeVel
    advance = rllab_advance(model, data, nstep, mujoco) if rllab else partial(mujoco.mj_step, model, data, nstep)
    com_velocity = data.subtree_linvel[env._main_body]

    def step(action: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
        x = torso[0]
        ctrl[:] = action
        advance()
        post_constraint(model, data)
        if rllab:
            subtree_velocities(model, data)
        velocity = com_velocity[0] if rllab else (torso[0] - x) / dt
        healthy = bool(np.isfinite(qpos).all() and np.isfinite(qvel).all() and min_z <= qpos[2] <= max_z)
        survive = healthy_reward if healthy or rllab else 0.0
        costs = -(ctrl_w * np.sum(np.square(action))) - contact_w * np.sum(np.square(np.clip(cfrc, low, high)))
        return observe(None), float(velocity), costs + survive, terminate and not healthy

    return step


class MujocoTaskEnv(CopyTaskEnv):
    """A locomotion task family (``FAMILIES``) as a ``TaskEnv``; ``horizon`` steps per episode (default 200);
    ``frame_skip`` simulator steps per action (0: the family's own); ``observation`` ``gym`` or ``rllab`` (``auto``:
    the family's own); ``oracle``: the task's goal (direction or velocity) appended to the observation (the MAML
    paper's oracle baseline); ``action_scale``: the simulator's action is the policy's times this, before clipping
    (maml_zoo's ``normalize()`` with scale 10, as the SG-MRL and ProMP code ran, is 0.1; ``action_space`` is then
    the policy's range); ``physics``: the simulator's settings, ``gym`` or ``rllab`` (rllab's ant.xml, ``RLLAB_ANT``;
    ``auto``: the family's own, rllab's for the MAML paper's ant families).

    ``direct`` is True where the family is stepped in MuJoCo directly (``DIRECT_ROBOTS``); setting it False before a
    ``reset`` steps through gymnasium's ``step`` instead (the same numbers, slower: the tests compare the two)."""

    def __init__(self, family: str, horizon: int = 200, seed: int = 0, frame_skip: int = 0,
                 observation: str = "auto", oracle: bool = False, action_scale: float = 1.0, physics: str = "auto"):
        check_choice("locomotion family", family, tuple(FAMILIES))
        check_whole("horizon", horizon, 1)
        check_seed("seed", seed)
        check_whole("frame_skip", frame_skip, 0, "0: the task family's own")
        if not (isinstance(action_scale, int | float) and 0 < action_scale < math.inf):
            raise ConfigError(f"action_scale {action_scale!r} must be a positive number (1: the simulator's units)")
        if not isinstance(oracle, bool):
            raise ConfigError(f"oracle {oracle!r} must be True or False")
        self.family_name, self.family = family, FAMILIES[family]
        observation = self.family.observation if observation == "auto" else observation
        if observation not in OBSERVATIONS:
            raise ConfigError(f"unknown observation '{observation}'; choose one of auto, {', '.join(OBSERVATIONS)}")
        if observation == "rllab" and self.family.env_id not in RLLAB_OBS:
            raise ConfigError(f"observation 'rllab' is defined for the half-cheetah, ant and swimmer families, not "
                              f"{family}; use auto or gym")
        self.physics = self.family.physics if physics == "auto" else physics
        if self.physics not in PHYSICS:
            raise ConfigError(f"unknown physics '{physics}'; choose one of auto, {', '.join(PHYSICS)}")
        if self.physics == "rllab" and self.family.env_id != "Ant-v5":
            raise ConfigError(f"physics 'rllab' (rllab's ant.xml) is defined for the ant families, not {family}; "
                              "use auto or gym (the half-cheetah's model is the same in both; frame_skip sets its "
                              "steps per action)")
        rllab = {"frame_skip": RLLAB_ANT["frame_skip"]} if self.physics == "rllab" else {}
        self._env_kwargs = {**self.family.env_kwargs, **rllab, **({"frame_skip": frame_skip} if frame_skip else {})}
        self._mujoco = require("mujoco")
        probe = self._make()
        space = probe.action_space
        self._rllab = observation == "rllab"
        first = probe.reset(seed=seed)[0]
        observer = self._observer(probe)
        obs_dim = (first if observer is None else observer(first)).size
        super().__init__(horizon, seed, obs_dim, space.low, space.high, action_scale)
        self.action_space = Space("box", tuple(space.shape), float(space.low.min()) / action_scale,
                                  float(space.high.max()) / action_scale)
        self._pool: list[Any] = [probe]  # simulators by copy index, reused across resets
        self._defaults = {name: getattr(probe.model, name).copy() for name, _ in PARAM_ARRAYS}
        self._sizes = [a.size for a in self._defaults.values()]
        self.task_dim = sum(self._sizes) if self.family.task == "params" else 1
        self._forward, self._terms = self.family.task != "params", self.family.terms
        if oracle and not self._forward:
            raise ConfigError(f"oracle (the goal in the observation) is defined for the goal velocity and direction "
                              f"families, not {family}; set oracle false")
        self.oracle = oracle
        self.obs_dim += self.task_dim if oracle else 0
        self._goal = np.zeros(0)
        self._xv = np.zeros(0)
        self._extra = np.zeros(0)
        self.direct = DIRECT_ROBOTS.get(self.family.env_id) == self._terms
        self._ant = self._terms == _ANT_TERMS  # its stepper gives every term and the end (``ant_stepper``)
        self._ctrl_weight = float(getattr(probe, "_ctrl_cost_weight", 0.0))
        self._steppers: list[Callable[[np.ndarray], tuple[Any, ...]]] = []

    def _make(self) -> Any:
        env = make_simulator(self.family.env_id, **self._env_kwargs)
        if self.physics == "rllab":
            env.model.opt.timestep = RLLAB_ANT["timestep"]
            env.model.geom_solimp[:, :3] = RLLAB_ANT["solimp"]
            env.init_qpos = env.model.numeric("init_qpos").data.copy()
        return env

    def _reset_copy(self, env: Any, seed: int) -> np.ndarray:
        """gymnasium's reset (seeding the copy's generator), then with rllab's physics rllab's start: ``init_qpos``
        plus N(0, 0.01^2), velocities N(0, 0.1^2), drawn from that generator, and the contact forces of that state
        (rllab's MuJoCo 1.31 computed them in ``forward``; MuJoCo 3 in ``mj_rnePostConstraint``, which gymnasium's
        reset skips: its first observation shows none)."""
        obs = super()._reset_copy(env, seed)
        if self.physics != "rllab":
            return obs
        rng = env.np_random
        env.set_state(env.init_qpos + RLLAB_ANT["qpos_noise"] * rng.standard_normal(env.model.nq),
                      env.init_qvel + RLLAB_ANT["qvel_noise"] * rng.standard_normal(env.model.nv))
        self._mujoco.mj_rnePostConstraint(env.model, env.data)
        return env._get_obs()

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        check_whole("num_tasks", num_tasks, 0)
        u = torch.rand(num_tasks, self.task_dim, generator=generator)
        if self.family.task == "direction":
            return torch.where(u < 0.5, -1.0, 1.0)
        if self.family.task == "velocity":
            return self.family.low + (self.family.high - self.family.low) * u
        log_base = torch.tensor([math.log(b) for (_, b), size in zip(PARAM_ARRAYS, self._sizes, strict=True)
                                 for _ in range(size)])
        return (2 * u - 1) * LOG_SCALE_LIMIT * log_base

    def param_factors(self, task: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """The multiplicative factor of each randomized model array for a ``params`` task (its exp)."""
        flat = np.exp(np.asarray(task, dtype=np.float64).reshape(-1))
        if flat.size != self.task_dim:
            raise ConfigError(f"a {self.family_name} task has {self.task_dim} log-scale factors, got {flat.size}")
        parts = np.split(flat, np.cumsum(self._sizes)[:-1])
        return {name: p.reshape(self._defaults[name].shape) for (name, _), p in zip(PARAM_ARRAYS, parts, strict=True)}

    def set_params(self, env: Any, task: Tensor | np.ndarray | None) -> None:
        """Give ``env``'s model the default arrays times the task's factors (``None``: the defaults), then
        recompute the derived constants; nothing of an earlier task survives since every array is rewritten."""
        factors = self.param_factors(task) if task is not None else {}
        for name, default in self._defaults.items():
            getattr(env.model, name)[:] = default * factors[name] if name in factors else default
        self._mujoco.mj_setConst(env.model, env.data)

    def _observer(self, env: Any) -> Callable[[np.ndarray], np.ndarray] | None:
        """rllab's observation of ``env`` for ``rllab`` families (made once per simulator), else None."""
        if not self._rllab:
            return None
        if not hasattr(env, "_metagrad_observer"):
            env._metagrad_observer = rllab_observer(env, *RLLAB_OBS[self.family.env_id], self._mujoco)
        return env._metagrad_observer

    def _stepper(self, env: Any) -> Callable[[np.ndarray], tuple[Any, ...]]:
        """``env``'s ``direct_stepper`` or ``ant_stepper`` with the learner's observation (made once per
        simulator)."""
        if not hasattr(env, "_metagrad_step"):
            observe = self._observer(env) or gym_observer(env)
            if self._ant:
                env._metagrad_step = ant_stepper(env, observe, self._mujoco, rllab=self.physics == "rllab")
            else:
                env._metagrad_step = direct_stepper(env, observe, self._mujoco)
        return env._metagrad_step

    def _prepare(self, tasks: Tensor, episodes: int) -> list[Any]:
        if self.physics == "rllab" and not self.direct:
            raise ConfigError("rllab's ant steps only in MuJoCo directly (gymnasium's step is gymnasium's ant); keep "
                              "direct True or use physics 'gym'")
        n = tasks.shape[0] * episodes
        if tasks.ndim != 2 or tasks.shape[1] != self.task_dim:
            raise ConfigError(f"{self.family_name} tasks must be [T, {self.task_dim}], got {list(tasks.shape)}")
        while len(self._pool) < n:
            self._pool.append(self._make())
        copies = self._pool[:n]
        values = tasks.detach().cpu().double().numpy()
        if self.family.task == "direction" and not np.isin(values, (-1.0, 1.0)).all():
            raise ConfigError(f"{self.family_name} tasks are directions, -1 or 1; got {values[:, 0].tolist()[:5]}")
        if self.family.task == "params":
            for i, env in enumerate(copies):
                self.set_params(env, values[i // episodes])
        self._goal = np.repeat(values[:, 0], episodes) if self.family.task != "params" else np.zeros(n)
        self._xv, self._extra = np.zeros(n), np.zeros(n)
        self._steppers = [self._stepper(env) for env in copies] if self.direct else []
        return copies

    def _simulate(self, act: np.ndarray) -> None:
        """Direct families: each alive copy through its stepper; the half-cheetah's and swimmer's control cost then
        for all copies at once, as gymnasium's ``reward_ctrl`` (numpy's row sums equal its per-action sums, to the
        bit), the ant's terms and ends from its stepper. Others: gymnasium's ``step``."""
        if not self.direct:
            super()._simulate(act)
            return
        obs, xv, steppers = self._obs, self._xv, self._steppers
        if self._ant:
            extra, done = self._extra, self._done
            for i in self._alive:
                obs[i], xv[i], extra[i], done[i] = steppers[i](act[i])
            return
        for i in self._alive:
            obs[i], xv[i] = steppers[i](act[i])
        self._extra = -(self._ctrl_weight * np.sum(np.square(act), axis=1))

    def _task_features(self) -> np.ndarray | None:
        """The oracle's extra input: each copy's goal (direction or velocity), as the MAML paper's oracle sees it."""
        return self._goal[:, None].astype(np.float32) if self.oracle else None

    def _record(self, i: int, info: dict[str, Any]) -> None:
        if self._forward:
            self._xv[i] = info["x_velocity"]
            extra = 0.0
            for k in self._terms:
                extra += info[k]
            self._extra[i] = extra

    def _rewards(self, env_rewards: np.ndarray, actions: np.ndarray) -> np.ndarray:
        w, bonus = self.family.forward_weight, self.family.bonus
        if self.family.task == "direction":
            return w * self._goal * self._xv + self._extra + bonus
        if self.family.task == "velocity":
            return -w * np.abs(self._xv - self._goal) + self._extra + bonus
        return env_rewards + bonus
