"""Meta-reinforcement learning: task families (2D navigation in pure torch, HalfCheetah direction and
velocity on gymnasium/MuJoCo, imported lazily), the Gaussian MLP policy, returns / baseline / GAE,
policy-gradient losses, TRPO, and the outer rules "trpo" and "promp" (core.rl.outer). The learners are
core.learners.rl (kind "rl"). docs/RL.md has the conventions and where they differ from the papers."""

from ..registry import register_family
from . import policy  # noqa: F401 (registers the model "gaussian-mlp")
from .cheetah import HalfCheetahDirection, HalfCheetahVelocity
from .family import RLFamily, RLTasks, Trajectories
from .navigation import Navigation2D

for _cls in (Navigation2D, HalfCheetahDirection, HalfCheetahVelocity):
    register_family(_cls)

__all__ = ["Navigation2D", "HalfCheetahDirection", "HalfCheetahVelocity", "RLFamily", "RLTasks", "Trajectories"]
