"""Sampling trajectories with a (possibly adapted) policy, and the inner policy-gradient step on them.

`Episodes` hold one batch of tasks' trajectories flattened for the losses of core.rl.pg: x [T, n,
obs_dim], y [T, n, act_dim + 3] (action, normalised GAE advantage, weight, log pi_old), the sampling
policy's output `dist` [T, n, 2 act_dim] (for the KL) and each trajectory's undiscounted return [T, N].
n = N * horizon. Everything here runs without a graph but the inner step, whose gradient the outer
rules (core.rl.outer) take through `adapt_through`.

Noise. Meta-training draws action noise and reset seeds from the trial's generator in one fixed order
(`draw_noise`). Evaluation task i draws its own from the seeds of its evaluation noise (one seed per
inner step, core.learners.rl), query trajectories first and then support trajectories one at a time,
so the first k support trajectories are the same whatever the largest evaluated k (nested shots).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..adapt import adapt
from ..model import Params
from .advantages import advantages
from .family import Trajectories
from .pg import INNER_LOSSES, pack
from .policy import log_prob, sample

SEED_HIGH = 2**62


class Episodes(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    dist: torch.Tensor
    returns: torch.Tensor


def draw_noise(family, g: torch.Generator, n_tasks: int, n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(action noise [T, N, H, act_dim], reset seeds [T, N]) for N trajectories in each of T tasks."""
    eps = torch.randn((n_tasks, n, family.horizon, family.act_dim), generator=g, dtype=torch.float64).to(dtype)
    return eps, torch.randint(0, SEED_HIGH, (n_tasks, n), generator=g)


def eval_noise(family, seeds: torch.Tensor, n_query: int, n_support: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise of one evaluation step for every task from its seed (seeds [T] int64): `n_query` query
    trajectories, then `n_support` support trajectories drawn one by one (nested): ([T, q + k, H, A], [T, q + k])."""
    epss, resets = [], []
    shape = (family.horizon, family.act_dim)
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(int(seed))
        eps = [torch.randn((n_query, *shape), generator=g, dtype=torch.float64)]
        reset = [torch.randint(0, SEED_HIGH, (n_query,), generator=g)]
        for _ in range(n_support):
            eps.append(torch.randn((1, *shape), generator=g, dtype=torch.float64))
            reset.append(torch.randint(0, SEED_HIGH, (1,), generator=g))
        epss.append(torch.cat(eps))
        resets.append(torch.cat(reset))
    return torch.stack(epss).to(dtype), torch.stack(resets)


def rollout(setup, fast: Params, tasks: torch.Tensor, eps: torch.Tensor, seeds: torch.Tensor):
    """Trajectories of the policy `fast` (adapted parameters carry a task dimension) with action
    noise eps, and the policy's outputs at their states [T, N, H, 2 act_dim]. No graph."""
    dists = []

    def act(obs: torch.Tensor, t: int) -> torch.Tensor:
        dist = setup.model.forward(fast, obs)
        dists.append(dist)
        return sample(dist, eps[:, :, t])

    with torch.no_grad():
        traj = setup.family.rollout(act, tasks, seeds, dtype=setup.dtype)
    return traj, torch.stack(dists, 2)


def episodes(setup, traj: Trajectories, dists: torch.Tensor) -> Episodes:
    """Advantages (linear baseline fitted to these trajectories' own returns, GAE, normalised per
    task) and the flattened samples of the losses."""
    hp = setup.hp
    T = traj.obs.shape[0]
    with torch.no_grad():
        adv = advantages(traj.rewards, traj.obs, traj.mask, hp.get("gamma"), hp.get("gae_lambda"))
        weight = traj.mask / traj.mask.sum((1, 2), keepdim=True).clamp_min(1)
        actions = traj.actions.reshape(T, -1, traj.actions.shape[-1])
        dist = dists.reshape(T, -1, dists.shape[-1])
        y = pack(actions, adv.reshape(T, -1), weight.reshape(T, -1), log_prob(dist, actions))
    return Episodes(traj.obs.reshape(T, -1, traj.obs.shape[-1]), y, dist, traj.returns())


def split(traj: Trajectories, dists: torch.Tensor, n: int) -> tuple[tuple, tuple]:
    """The first n trajectories of each task and the rest: ((traj, dists), (traj, dists))."""
    first = Trajectories(*(t[:, :n] for t in traj)), dists[:, :n]
    rest = Trajectories(*(t[:, n:] for t in traj)), dists[:, n:]
    return first, rest


def step_noise(noise: dict, step: int) -> dict:
    """The mask noise of inner step `step` as a one-step slice (row masks: one draw for every step)."""
    return {k: v[:, min(step, v.shape[1] - 1)].unsqueeze(1) for k, v in noise.items() if k != "rollout"}


def inner_step(learner, setup, params: Params, ep: Episodes, noise: dict, step: int,
               mask_mode: str = "sample") -> Params:
    """theta' = theta - alpha grad L_inner(theta) on the episodes (MAML eq. 1 with the policy-gradient
    loss; core.adapt, so every inner-loop switch applies: ANIL's head only, first order, masks, T,
    Meta-SGD). `params` are the meta-parameters at step 0, the adapted ones (task dimension) after.
    A graph through the step when `params` require grad and grad mode is on."""
    hp = setup.hp
    return adapt(params, ep.x, ep.y, model=setup.model, variant=learner.variant, alpha=hp.alpha,
                 temperature=hp.temperature, steps=1, loss_fn=INNER_LOSSES[learner.inner_loss],
                 noise=step_noise(noise, step), mask_mode=mask_mode, batched=True, task_params=step > 0)


def adapt_through(learner, setup, params: Params, support: list[Episodes], noise: dict) -> Params:
    """The adapted parameters after one inner step per support batch (fixed trajectories): a
    deterministic, differentiable function of the meta-parameters."""
    fast = params
    for s, ep in enumerate(support):
        fast = inner_step(learner, setup, fast, ep, noise, s)
    return fast
