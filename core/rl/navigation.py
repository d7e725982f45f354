"""2D navigation (MAML, Finn et al. 2017, section 5.3; rllab's PointEnvRandGoal), pure torch and
batched over tasks and trajectories.

A point agent starts at the origin; a task is a goal drawn uniformly in the unit square
[-0.5, 0.5]^2. Each step the action is clipped to [-0.1, 0.1] per coordinate and added to the
position; the reward is minus the distance to the goal after the move; the episode ends when both
coordinates are within 0.01 of the goal, or after `horizon` = 100 steps. The observation is the
position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .family import Act, RLFamily, Trajectories


@dataclass(frozen=True)
class Navigation2D(RLFamily):
    goal_range: tuple[float, float] = (-0.5, 0.5)
    horizon: int = 100
    max_action: float = 0.1  # actions clipped to [-max_action, max_action] per coordinate
    goal_tolerance: float = 0.01  # done when |x - gx| < tol and |y - gy| < tol
    name = "navigation2d"
    obs_dim = 2
    act_dim = 2
    task_dim = 2

    def __post_init__(self) -> None:
        lo, hi = self.goal_range
        if not lo < hi:
            raise ValueError(f"navigation2d: goal_range must be [low, high] with low < high (got {list(self.goal_range)})")
        if int(self.horizon) != self.horizon or self.horizon < 1:
            raise ValueError(f"navigation2d: horizon must be an integer >= 1 (got {self.horizon!r})")
        if not self.max_action > 0:
            raise ValueError(f"navigation2d: max_action must be > 0 (got {self.max_action!r})")

    def draw_tasks(self, g: torch.Generator, n: int) -> torch.Tensor:
        lo, hi = self.goal_range
        return torch.rand((n, 2), generator=g, dtype=torch.float64) * (hi - lo) + lo

    def rollout(self, act: Act, tasks: torch.Tensor, seeds: torch.Tensor, dtype=torch.float32) -> Trajectories:
        """Every trajectory of every task at once: one policy call per time step on [T, N, 2]."""
        n_tasks, n = seeds.shape
        goal = tasks.to(dtype).unsqueeze(1)  # [T, 1, 2]
        pos = torch.zeros(n_tasks, n, 2, dtype=dtype, device=tasks.device)
        alive = torch.ones(n_tasks, n, dtype=dtype, device=tasks.device)
        obs, actions, rewards, masks = [], [], [], []
        for t in range(self.horizon):
            a = act(pos, t)
            obs.append(pos)
            actions.append(a)
            pos = pos + a.clamp(-self.max_action, self.max_action) * alive.unsqueeze(-1)
            offset = pos - goal
            rewards.append(-offset.norm(dim=-1) * alive)
            masks.append(alive)
            alive = alive * ~(offset.abs() < self.goal_tolerance).all(-1)
        return Trajectories(torch.stack(obs, 2), torch.stack(actions, 2), torch.stack(rewards, 2),
                            torch.stack(masks, 2))
