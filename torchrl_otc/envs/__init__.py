"""Environments of the paper's experiments as TorchRL envs, and the task registry.

Simulators (``gymnasium_robotics``/``mujoco``, ``vmas``, ``mpe2``, ``smacv2``) are imported only when an
environment is built, so ``import torchrl_otc.envs`` needs none of them.
"""

from torchrl_otc.envs.joint import JointEnv, agent_to_joint_actions, joint_to_agent_actions
from torchrl_otc.envs.mamujoco import MaMuJoCoEnv
from torchrl_otc.envs.mpe import OneHotJointEnv, make_pettingzoo_env, make_vmas_env
from torchrl_otc.envs.nonstationary_nav import NonStationaryNavEnv, beta_schedule
from torchrl_otc.envs.partner_modes import PartnerDeployments, PartnerModesEnv
from torchrl_otc.envs.registry import (
    TASKS,
    TaskSpec,
    UnknownTaskError,
    get_task,
    list_tasks,
    make_env,
)
from torchrl_otc.envs.smac_like import SMAC_LIKE_MAPS, SmacLikeEnv

__all__ = [
    "JointEnv",
    "MaMuJoCoEnv",
    "NonStationaryNavEnv",
    "OneHotJointEnv",
    "PartnerDeployments",
    "PartnerModesEnv",
    "SMAC_LIKE_MAPS",
    "SmacLikeEnv",
    "TASKS",
    "TaskSpec",
    "UnknownTaskError",
    "agent_to_joint_actions",
    "beta_schedule",
    "get_task",
    "joint_to_agent_actions",
    "list_tasks",
    "make_env",
    "make_pettingzoo_env",
    "make_vmas_env",
]
