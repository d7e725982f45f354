"""Policy-gradient objectives on flattened trajectories, as losses of (policy output, target).

A task's samples are its trajectories' steps flattened: observations x [(T,) n, obs_dim] and targets
y [(T,) n, act_dim + 3] = [action, advantage A, weight w, log pi_old(a|s)], where w = mask / (valid
steps of the task) (rllab's mean over valid steps) and pi_old is the policy that sampled the step.
The policy output is [mu, log sigma] (core.rl.policy). Each loss sums over the sample dimension, so
the same function gives one task's scalar and, batched, one value per task [T] (what core.adapt's
batched inner loop needs: registered under both in core.losses).

- REINFORCE (MAML's inner step; Williams 1992): L(theta) = - sum_i w_i A_i log pi_theta(a_i|s_i);
  its gradient is the vanilla policy-gradient estimate -E[grad log pi A].
- LVC (ProMP's inner step, Rothfuss et al. 2019, eq. 10): L(theta) = - sum_i w_i A_i
  pi_theta(a_i|s_i) / pi_old(a_i|s_i): the same gradient at theta = theta_old, with the
  low-variance curvature estimate as its Hessian.
- TRPO's surrogate (Schulman et al. 2015): sum_i w_i A_i pi_theta / pi_old, with the mean KL
  sum_i w_i KL(pi_old(.|s_i) || pi_theta(.|s_i)) as its trust region.
- PPO's clipped surrogate (ProMP's outer objective): sum_i w_i min(r_i A_i, clip(r_i, 1 - eps, 1 + eps) A_i).
"""

from __future__ import annotations

import torch

from ..losses import register_loss
from .policy import kl, log_prob


def unpack(y: torch.Tensor, act_dim: int):
    """(actions, advantages, weights, old log-probabilities) of a target tensor."""
    return y[..., :act_dim], y[..., act_dim], y[..., act_dim + 1], y[..., act_dim + 2]


def pack(actions: torch.Tensor, adv: torch.Tensor, weight: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    return torch.cat([actions, adv.unsqueeze(-1), weight.unsqueeze(-1), old_logp.unsqueeze(-1)], -1)


def reinforce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, adv, w, _ = unpack(y, out.shape[-1] // 2)
    return -(w * adv * log_prob(out, a)).sum(-1)


def lvc(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a, adv, w, old = unpack(y, out.shape[-1] // 2)
    return -(w * adv * torch.exp(log_prob(out, a) - old)).sum(-1)


def surrogate(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRPO's surrogate advantage (to maximise): [(T,)]."""
    return -lvc(out, y)


def clipped_surrogate(out: torch.Tensor, y: torch.Tensor, clip: float) -> torch.Tensor:
    a, adv, w, old = unpack(y, out.shape[-1] // 2)
    ratio = torch.exp(log_prob(out, a) - old)
    return (w * torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)).sum(-1)


def mean_kl(old_out: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_i w_i KL(pi_old || pi_theta) at the samples' states: [(T,)]."""
    w = y[..., out.shape[-1] // 2 + 1]
    return (w * kl(old_out, out)).sum(-1)


def kl_metric(dist: torch.Tensor, y: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """The Hessian of mean_T sum_i w_i KL(pi_old || pi) in the policy's output space [mu, log sigma] at
    pi = pi_old (diagonal): w_i / T times 1 / sigma^2 for mu and 2 for log sigma; same shape as dist."""
    mean, log_std = dist.chunk(2, dim=-1)
    w = y[..., dist.shape[-1] // 2 + 1].unsqueeze(-1) / n_tasks
    return torch.cat([torch.exp(-2 * log_std) * w, 2 * w.expand_as(log_std)], -1)


INNER_LOSSES = {"reinforce": reinforce, "lvc": lvc}
for _name, _fn in INNER_LOSSES.items():
    register_loss(_name, _fn)
