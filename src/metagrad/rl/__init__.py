"""Meta-reinforcement learning on the functional engine: environments, policies, sampler, baseline, TRPO and the
meta-RL algorithms (MAML, first-order MAML, SG-MRL, E-MAML, ProMP, joint training) with TRPO, VPG or PPO outer
steps."""

from .envs import ENVS, Navigation2D, Space, TaskEnv, make_env
from .metarl import ALGOS, MetaRL
from .policy import CategoricalMLPPolicy, GaussianMLPPolicy, Policy, make_policy
from .sampler import Trajectories, process, rollout

__all__ = ["ALGOS", "ENVS", "CategoricalMLPPolicy", "GaussianMLPPolicy", "MetaRL", "Navigation2D", "Policy", "Space",
           "TaskEnv", "Trajectories", "make_env", "make_policy", "process", "rollout"]
