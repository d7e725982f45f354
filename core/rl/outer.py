"""The outer loops of meta-RL as outer rules (core.meta.register_outer): "trpo" (MAML-TRPO, Finn et
al. 2017) and "promp" (ProMP, Rothfuss et al. 2019). A learner names one in its `outer` switch.

One meta-iteration, both rules (`collect`): draw meta_batch tasks; per inner step, sample `shots`
trajectories per task with the current policy and take one policy-gradient step on them (no graph);
then sample `queries` trajectories per task with the adapted policy. The meta-objective is then a
deterministic function of the meta-parameters theta given those trajectories: theta -> theta'(theta)
by the same inner steps on the fixed support trajectories (with a graph: second order unless the
learner is first order), and theta' -> the query objective.

- trpo: maximise the surrogate sum_T sum_i w_i A_i pi_theta'(a_i|s_i) / pi_old(a_i|s_i) on the query
  trajectories subject to mean_T KL(pi_old || pi_theta') <= max_kl (core.rl.trpo), as MAML's code.
  No optimiser state.
- promp: `ppo_epochs` Adam steps (step size beta) on PPO's clipped surrogate of the adapted policy
  minus inner_kl_coef * KL(pi_theta_old || pi_theta) on the pre-update trajectories (ProMP eq. 12,
  fixed KL coefficient), with the LVC inner loss (the learner's inner_loss switch).

The meta-training loss reported is minus the mean return of the query trajectories (the adapted
policy's return: the papers' learning curves).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..meta import OuterRule, register_outer
from ..model import Params
from .pg import clipped_surrogate, kl_metric, mean_kl, surrogate
from .sampling import Episodes, adapt_through, draw_noise, episodes, inner_step, rollout
from .trpo import trpo_step


class MetaBatch(NamedTuple):
    tasks: torch.Tensor  # [T, task_dim]
    support: list[Episodes]  # one per inner step
    query: Episodes  # sampled with the adapted policy
    noise: dict  # mask noise of the inner loop (masked variants), else {}


def collect(setup, params: Params, g: torch.Generator) -> MetaBatch:
    """Tasks, support trajectories per inner step, the (graph-free) adaptation, query trajectories;
    every random draw from `g`, in this order."""
    learner, hp, family = setup.learner, setup.hp, setup.family
    tasks = family.draw_tasks(g, hp.meta_batch).to(device=setup.device, dtype=setup.dtype)
    noise = learner.mask_noise(setup, params, g, hp.meta_batch, hp.inner_steps)
    fast, support = params, []
    for s in range(hp.inner_steps):
        eps, seeds = draw_noise(family, g, hp.meta_batch, setup.train_shots, setup.dtype)
        support.append(episodes(setup, *rollout(setup, fast, tasks, eps.to(setup.device), seeds)))
        with torch.no_grad():
            fast = inner_step(learner, setup, fast, support[-1], noise, s)
    eps, seeds = draw_noise(family, g, hp.meta_batch, setup.queries, setup.dtype)
    return MetaBatch(tasks, support, episodes(setup, *rollout(setup, fast, tasks, eps.to(setup.device), seeds)), noise)


def query_dist(setup, params: Params, mb: MetaBatch) -> torch.Tensor:
    """The adapted policy's output on the query states, through the inner steps: [T, n, 2 act_dim]."""
    fast = adapt_through(setup.learner, setup, params, mb.support, mb.noise)
    return setup.model.forward(fast, mb.query.x)


class NoOptimizer:
    """TRPO keeps no optimiser state: each step is a function of its meta-batch alone."""

    def __init__(self, setup=None, params=None):
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def trpo_update(setup, state) -> torch.Tensor:
    mb = collect(setup, state.params, state.generator)
    q = mb.query
    new, info = trpo_step(state.params, lambda p: query_dist(setup, p, mb), lambda out: -surrogate(out, q.y).mean(),
                          lambda out: mean_kl(q.dist, out, q.y).mean(), kl_metric(q.dist, q.y, q.x.shape[0]),
                          max_kl=setup.hp.get("max_kl"))
    with torch.no_grad():
        for k, p in state.params.items():
            p.copy_(new[k])
    state.runtime["trpo"] = info
    return -q.returns.mean()


def promp_update(setup, state) -> torch.Tensor:
    mb = collect(setup, state.params, state.generator)
    hp = setup.hp
    clip, eta, pre = hp.get("ppo_clip"), hp.get("inner_kl_coef"), mb.support[0]
    for _ in range(int(hp.get("ppo_epochs"))):
        leaves = {k: v.detach().requires_grad_(True) for k, v in state.params.items()}
        objective = clipped_surrogate(query_dist(setup, leaves, mb), mb.query.y, clip).mean()
        inner_kl = mean_kl(pre.dist, setup.model.forward(leaves, pre.x), pre.y).mean()
        grads = torch.autograd.grad(-objective + eta * inner_kl, list(leaves.values()), allow_unused=True,
                                    materialize_grads=True)
        for p, g in zip(state.params.values(), grads):
            p.grad = g
        state.optimizer.step()
    return -mb.query.returns.mean()


def _adam(setup, params: Params):
    return torch.optim.Adam(list(params.values()), lr=setup.hp.beta)


register_outer("trpo", OuterRule(trpo_update, NoOptimizer))
register_outer("promp", OuterRule(promp_update, _adam))

# what each rule reads and searches by default (core.learners.rl); core.hparams declares them
READS = {"trpo": ("max_kl",), "promp": ("beta", "ppo_clip", "ppo_epochs", "inner_kl_coef")}
SEARCHED = {"trpo": ("alpha", "max_kl"), "promp": ("alpha", "beta")}
