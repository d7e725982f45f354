"""What every reinforcement-learning task family provides, and the shapes of what it returns.

A task is a vector of parameters (a goal position, a direction, a target velocity); a family draws
tasks and rolls a policy out in them. Rollouts are functions of their inputs: the policy's action
noise is drawn outside (the learner's `act` closes over it) and each trajectory's reset is seeded by
an integer, so a rollout is deterministic given (parameters, tasks, noise, seeds) - what exact resume,
paired evaluation and finite-difference tests need.

Evaluation task i is, as in every family, a pure function of (family config, split, eval seed, i):
`eval_tasks` draws its parameters from the generator of core.tasks.task_seed. The trajectories an
evaluation samples come from the learner's evaluation noise (core.evaluate.eval_noise, stream 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..tasks.base import FamilyBase, task_seed

Act = Callable[[torch.Tensor, int], torch.Tensor]  # (observations [T, N, obs_dim], time step t) -> actions [T, N, act_dim]


class Trajectories(NamedTuple):
    """N trajectories of horizon H in each of T tasks. `mask` is 1 while the episode runs (0 after a
    terminal step: navigation's goal reached); rewards after the end are 0."""

    obs: torch.Tensor  # [T, N, H, obs_dim]: the state each action was taken in
    actions: torch.Tensor  # [T, N, H, act_dim]: as sampled (before the environment clips them)
    rewards: torch.Tensor  # [T, N, H]
    mask: torch.Tensor  # [T, N, H]

    def returns(self) -> torch.Tensor:
        """Undiscounted return of each trajectory, sum_t r_t: [T, N] (the papers' "average return")."""
        return (self.rewards * self.mask).sum(-1)


class RLTasks(NamedTuple):
    """A batch of RL tasks: their parameters, and how many trajectories an inner step uses (support,
    the "shots") and how many measure a policy's return (query). Duck-types core.tasks.Batch where
    evaluation uses it (`to`, `shots`)."""

    params: torch.Tensor  # [T, task_dim]
    support: int
    query: int

    def to(self, device=None, dtype=None) -> RLTasks:
        return self._replace(params=self.params.to(device=device, dtype=dtype))

    def shots(self, k: int, ways: int = 1) -> RLTasks:
        return self._replace(support=int(k))

    @property
    def n_tasks(self) -> int:
        return self.params.shape[0]


@dataclass(frozen=True)
class RLFamily(FamilyBase):
    """Base of RL families: `problem = "rl"` (supervised learners refuse them, core.setup), the
    policy model, and evaluation tasks from task_seed. Subclasses set obs_dim, act_dim, task_dim,
    horizon (a field) and implement `draw_tasks` and `rollout`."""

    problem = "rl"
    loss = "reinforce"  # the inner loop's loss by default (core.rl.pg); evaluation reports returns
    model = "gaussian-mlp"
    output_dim = 0  # no labels

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.obs_dim,)

    def draw_tasks(self, g: torch.Generator, n: int) -> torch.Tensor:
        """Parameters of n tasks [n, task_dim], float64."""
        raise NotImplementedError

    def rollout(self, act: Act, tasks: torch.Tensor, seeds: torch.Tensor, dtype=torch.float32) -> Trajectories:
        """Roll `act` out for `horizon` steps: N = seeds.shape[1] trajectories in each of the T tasks
        (tasks [T, task_dim]); trajectory (i, j) resets with seed seeds[i, j] (int64)."""
        raise NotImplementedError

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> RLTasks:
        return RLTasks(self.draw_tasks(g, n_tasks), shots, queries)

    def eval_tasks(self, split: str, eval_seed: int, indices, max_shots: int, queries: int) -> RLTasks:
        params = [self.draw_tasks(torch.Generator().manual_seed(task_seed(self.key(), split, eval_seed, i)), 1)
                  for i in indices]
        return RLTasks(torch.cat(params), int(max_shots), int(queries))

    def check_episode(self, split: str, shots: int, queries: int) -> None:
        if shots < 2 or queries < 1:
            raise ValueError(f"task family {self.name}: an inner step needs >= 2 trajectories (shots, got {shots}) "
                             f"and a return needs >= 1 query trajectory (queries, got {queries})")
