"""Returns, the linear feature baseline and generalised advantage estimation (rllab's conventions,
which MAML's RL code uses).

Shapes: rewards, mask, values [T, N, H] (tasks, trajectories, time); observations [T, N, H, obs_dim].

- discounted return R_t = sum_{l >= 0} gamma^l r_{t+l} (within the episode);
- the linear feature baseline (rllab's LinearFeatureBaseline), fitted per task by ridge regression of
  R_t on phi(s, t) = [s, s^2, t/100, (t/100)^2, (t/100)^3, 1] (s clipped to [-10, 10]), regulariser
  1e-5 (times 10 until the solution is finite);
- GAE (Schulman et al. 2016): A_t = sum_l (gamma lambda)^l delta_{t+l}, delta_t = r_t + gamma V(s_{t+1})
  - V(s_t), with V = 0 after the last step; lambda = 1 gives R_t - V(s_t);
- advantages normalised per task over its valid steps (rllab's center_adv).
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = r_t + gamma R_{t+1} inside each episode (0 after its end): [T, N, H]."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """phi(s, t) of rllab's LinearFeatureBaseline, zero on steps after the end: [T, N, H, 2 obs_dim + 4]."""
    o = obs.clamp(-10, 10)
    t = torch.arange(obs.shape[-2], dtype=obs.dtype, device=obs.device) / 100.0
    t = t.view(*([1] * (obs.dim() - 2)), -1, 1).expand(*obs.shape[:-1], 1)
    phi = torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], -1)
    return phi * mask.unsqueeze(-1)


def fit_linear_baseline(features: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        reg: float = 1e-5) -> torch.Tensor:
    """Per task, w = argmin sum_valid (phi w - R)^2 + reg |w|^2, i.e. (Phi^T Phi + reg I) w = Phi^T R;
    returns the fitted values phi w on every step (0 after the end): [T, N, H]. Solved in float64."""
    T, F = features.shape[0], features.shape[-1]
    phi = (features * mask.unsqueeze(-1)).reshape(T, -1, F).double()
    y = (targets * mask).reshape(T, -1, 1).double()
    gram, rhs = phi.transpose(1, 2) @ phi, phi.transpose(1, 2) @ y
    eye = torch.eye(F, dtype=torch.float64, device=phi.device)
    for _ in range(5):
        w = torch.linalg.solve(gram + reg * eye, rhs)
        if torch.isfinite(w).all():
            break
        reg *= 10
    return (features.reshape(T, -1, F).double() @ w).reshape(targets.shape).to(targets.dtype) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates A_t [T, N, H] (V after the last valid step = 0)."""
    next_values = torch.cat([values[..., 1:] * mask[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = (rewards + gamma * next_values - values) * mask
    return discounted_returns(deltas, mask, gamma * lam)


def normalize(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / (std + eps) over each task's valid steps; 0 after the end: [T, N, H]."""
    dims = tuple(range(1, adv.dim()))
    n = mask.sum(dims, keepdim=True).clamp_min(1)
    mean = (adv * mask).sum(dims, keepdim=True) / n
    var = (((adv - mean) * mask) ** 2).sum(dims, keepdim=True) / n
    return (adv - mean) / (var.sqrt() + eps) * mask


def advantages(rewards: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Normalised GAE advantages with a linear baseline fitted to these trajectories' own returns."""
    values = fit_linear_baseline(baseline_features(obs, mask), discounted_returns(rewards, mask, gamma), mask)
    return normalize(gae(rewards, values, mask, gamma, lam), mask)
