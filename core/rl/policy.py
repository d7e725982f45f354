"""The Gaussian MLP policy of MAML's RL experiments (Finn et al. 2017, section 5.3), as a model of the
model protocol (core.model), and the distribution math the policy-gradient losses need.

pi_theta(a | s) = N(mu_theta(s), diag(sigma^2)): mu an MLP of dense cells (ReLU between cells; the
paper's two hidden layers of 100 units), log sigma one state-independent vector ``log_std``
(rllab's GaussianMLPPolicy with learn_std, init sigma = 1). `forward` returns the distribution's
parameters, ``[mu, log sigma]`` concatenated on the last dimension: [(tasks,) N, 2 * act_dim], so
that a loss of (output, target) - what core.adapt differentiates in the inner loop - sees the whole
distribution. ``log_std`` is an outer-loop parameter (not in core.adapt.adapted_names, like T and
zeta); W and b of the cells adapt (all cells, or the head for ANIL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cells import DenseNet
from ..model import Params
from ..registry import register_model


@dataclass(frozen=True)
class GaussianMLP:
    sizes: tuple[int, ...] = (2, 100, 100, 2)  # obs_dim, hidden..., act_dim
    init_log_std: float = 0.0  # sigma = 1 at init (rllab's init_std)

    @property
    def net(self) -> DenseNet:
        return DenseNet(self.sizes)

    @property
    def n_cells(self) -> int:
        return len(self.sizes) - 1

    @property
    def act_dim(self) -> int:
        return self.sizes[-1]

    def cell_names(self) -> list[str]:
        return self.net.cell_names()

    def init(self, generator: torch.Generator, dtype=torch.float32, device="cpu") -> Params:
        """W ~ Glorot-uniform (rllab's default init), b = 0, log sigma = init_log_std."""
        p: Params = {}
        for l, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            bound = math.sqrt(6.0 / (n_in + n_out))
            p[f"c{l}.W"] = (torch.rand((n_out, n_in), generator=generator, dtype=torch.float64) * 2 - 1) * bound
            p[f"c{l}.b"] = torch.zeros(n_out, dtype=torch.float64)
        p["log_std"] = torch.full((self.act_dim,), self.init_log_std, dtype=torch.float64)
        return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(p, x)

    def forward(self, p: Params, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """[mu, log sigma] for observations x [(tasks,) N, obs_dim]: [(tasks,) N, 2 * act_dim]."""
        if upto is not None:
            return self.net.forward(p, x, upto)
        mean = self.net.forward(p, x)
        log_std = p["log_std"]
        if log_std.dim() > 1:  # one per task: [tasks, act] -> [tasks, 1, act]
            log_std = log_std.unsqueeze(-2)
        return torch.cat([mean, log_std.expand_as(mean)], -1)


def split(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, log sigma) of a policy output [..., 2 * act_dim]."""
    return dist.chunk(2, dim=-1)


def log_prob(dist: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; mu, diag sigma^2) summed over action dimensions: [...]."""
    mean, log_std = split(dist)
    z = (actions - mean) * torch.exp(-log_std)
    return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * actions.shape[-1] * math.log(2 * math.pi)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two diagonal Gaussians given as policy outputs: [...]."""
    mp, lp = split(p)
    mq, lq = split(q)
    return (lq - lp + (torch.exp(2 * lp) + (mp - mq) ** 2) / (2 * torch.exp(2 * lq)) - 0.5).sum(-1)


def sample(dist: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """a = mu + sigma * eps for standard normal eps (drawn outside: the rollout is a function of it)."""
    mean, log_std = split(dist)
    return mean + torch.exp(log_std) * eps


def _policy_for(family, hidden: tuple[int, ...]) -> GaussianMLP:
    return GaussianMLP((family.obs_dim, *hidden, family.act_dim))


register_model("gaussian-mlp", _policy_for)
