"""HalfCheetah-Direction and HalfCheetah-Velocity (MAML, Finn et al. 2017, section 5.3) on gymnasium's
MuJoCo HalfCheetah-v5, stepped as one gymnasium SyncVectorEnv per batch of trajectories.

gymnasium is imported when a rollout first needs it (core/ imports torch and numpy only; install the
extra: `pip install 'metasweep[rl]'`); `check_episode` raises a ValueError naming the install when
MuJoCo cannot load, so a trial fails before training.

Rewards follow the MAML paper's tasks (rllab's half_cheetah_env_rand_direc / _rand): with v the
forward velocity (x after - x before) / dt and a the action clipped to [-1, 1],
- direction: r = d * v - 0.05 * |a|^2, d = +1 (forward) or -1 (backward), each with probability 1/2;
- velocity: r = -|v - v_goal| - 0.05 * |a|^2, v_goal ~ U[0, 2].
(0.05 = rllab's 0.5 * 1e-1.) Horizon 200. The observation is HalfCheetah-v5's 17 numbers (positions
but the x coordinate, velocities), its reset noise seeded per trajectory.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .family import Act, RLFamily, Trajectories

ENV_ID = "HalfCheetah-v5"
_POOLS: dict[int, object] = {}  # number of environments -> a SyncVectorEnv (per process; stateless between rollouts)


def mujoco_problem() -> str | None:
    """None when gymnasium's HalfCheetah-v5 loads here, else why not (for errors and test skips)."""
    try:
        vector_env(1)
    except Exception as e:  # ImportError, MuJoCo's own errors (no GL is fine: nothing renders)
        return f"{ENV_ID} cannot load ({type(e).__name__}: {e}); install the extra: pip install 'metasweep[rl]'"
    return None


@contextmanager
def quiet_mujoco():
    """MuJoCo's compiler warns that HalfCheetah's model file uses a deprecated attribute on every make
    (to stderr and to MUJOCO_LOG.TXT in the working folder): silenced while making environments."""
    import mujoco

    old = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda msg: None)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(old)


def vector_env(n: int):
    """A SyncVectorEnv of n HalfCheetah-v5 environments, made once per process and size."""
    if n not in _POOLS:
        import gymnasium as gym

        with quiet_mujoco():
            _POOLS[n] = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID) for _ in range(n)])
    return _POOLS[n]


@dataclass(frozen=True)
class _Cheetah(RLFamily):
    horizon: int = 200
    ctrl_cost: float = 0.05
    obs_dim = 17
    act_dim = 6
    task_dim = 1
    eval_chunk = 20  # evaluation tasks per batch: 20 x (queries + shots) environments (800 at 20 + 20)

    def __post_init__(self) -> None:
        if int(self.horizon) != self.horizon or self.horizon < 1:
            raise ValueError(f"{self.name}: horizon must be an integer >= 1 (got {self.horizon!r})")
        if not self.ctrl_cost >= 0:
            raise ValueError(f"{self.name}: ctrl_cost must be >= 0 (got {self.ctrl_cost!r})")

    def check_episode(self, split: str, shots: int, queries: int) -> None:
        super().check_episode(split, shots, queries)
        problem = mujoco_problem()
        if problem:
            raise ValueError(f"task family {self.name}: {problem}")

    def task_reward(self, tasks: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rollout(self, act: Act, tasks: torch.Tensor, seeds: torch.Tensor, dtype=torch.float32) -> Trajectories:
        """All T x N trajectories in one vector environment: one batched policy call per time step."""
        n_tasks, n = seeds.shape
        env = vector_env(n_tasks * n)
        task = np.repeat(tasks.detach().cpu().double().numpy()[:, 0], n)  # [T * N]
        o, _ = env.reset(seed=[int(s) for s in seeds.flatten().tolist()])
        obs, actions, rewards = [], [], []
        for t in range(self.horizon):
            ob = torch.as_tensor(o, dtype=dtype, device=tasks.device).reshape(n_tasks, n, self.obs_dim)
            a = act(ob, t)
            obs.append(ob)
            actions.append(a)
            clipped = a.detach().reshape(n_tasks * n, self.act_dim).double().clamp(-1.0, 1.0).cpu().numpy()
            if not np.isfinite(clipped).all():  # a NaN policy: no simulation of NaN controls
                rewards += [torch.full((n_tasks, n), float("nan"), dtype=dtype, device=tasks.device)] * (self.horizon - t)
                obs += [ob] * (self.horizon - t - 1)
                actions += [a] * (self.horizon - t - 1)
                break
            o, _, _, _, info = env.step(clipped)
            r = self.task_reward(task, np.asarray(info["x_velocity"])) - self.ctrl_cost * (clipped**2).sum(-1)
            rewards.append(torch.as_tensor(r, dtype=dtype, device=tasks.device).reshape(n_tasks, n))
        rewards_t = torch.stack(rewards, 2)
        return Trajectories(torch.stack(obs, 2), torch.stack(actions, 2), rewards_t, torch.ones_like(rewards_t))


@dataclass(frozen=True)
class HalfCheetahDirection(_Cheetah):
    name = "cheetah-dir"

    def draw_tasks(self, g: torch.Generator, n: int) -> torch.Tensor:
        return (torch.randint(0, 2, (n, 1), generator=g) * 2 - 1).double()

    def task_reward(self, tasks: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        return tasks * velocity


@dataclass(frozen=True)
class HalfCheetahVelocity(_Cheetah):
    velocity_range: tuple[float, float] = (0.0, 2.0)
    name = "cheetah-vel"

    def draw_tasks(self, g: torch.Generator, n: int) -> torch.Tensor:
        lo, hi = self.velocity_range
        return torch.rand((n, 1), generator=g, dtype=torch.float64) * (hi - lo) + lo

    def task_reward(self, tasks: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        return -np.abs(velocity - tasks)
