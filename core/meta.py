"""One outer step over a batch of tasks (MAML eq. 2, Reptile), for any learner; the table of outer
rules (`learner.outer` names one: "gradient", "reptile", and rules other modules register, e.g.
core.rl.outer's TRPO and ProMP).

The meta-loss is the mean over the meta-batch of each task's objective (`learner.query_loss`: for
MAML, the query loss after the inner loop). Three engines compute the same math (tests check they
agree to 1e-6):
- "batched" (default): the task dimension is explicit - adapted weights are expanded to
  [tasks, ...] and one autograd call gives every task's inner gradient; fewest dispatches, fastest
  on CPU for the regression nets (bench/bench_core.py).
- "vmap": `torch.func.vmap` over a one-task function with `torch.func.grad` inside and outside.
- "loop": a Python loop over tasks of that same one-task function (the reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, vmap

from .losses import PER_TASK
from .model import Params
from .optim import step_optimizers
from .setup import ENGINES, Setup
from .tasks import Batch

__all__ = ["ENGINES", "meta_loss", "meta_gradient", "reptile_direction", "sample_noise", "outer_step", "OuterRule",
           "register_outer", "outer_rule"]


def task_objective(params: Params, xs, ys, xq, yq, noise, setup: Setup) -> torch.Tensor:
    """One task's meta-training objective (what vmap and the loop engine map over tasks)."""
    return setup.learner.query_loss(setup, params, Batch(xs, ys, xq, yq), noise, batched=False)


def batched_objective(params: Params, batch: Batch, noise: dict, setup: Setup) -> torch.Tensor:
    """Per-task objectives [tasks], with the task dimension explicit."""
    return setup.learner.query_loss(setup, params, batch, noise, batched=True)


def meta_loss(params: Params, batch: Batch, noise: dict, setup: Setup, engine: str | None = None):
    """Mean over tasks of each task's objective (for MAML: the post-adaptation query loss, eq. 2)."""
    engine = engine or setup.engine
    if engine == "batched":
        return batched_objective(params, batch, noise, setup).mean()
    if engine == "vmap":
        per_task = vmap(task_objective, in_dims=(None, 0, 0, 0, 0, 0, None))(params, *batch, noise, setup)
        return per_task.mean()
    losses = [
        task_objective(params, *batch.select(i), {k: v[i] for k, v in noise.items()}, setup)
        for i in range(batch.x_support.shape[0])
    ]
    return torch.stack(losses).mean()


def meta_gradient(params: Params, batch: Batch, noise: dict, setup: Setup, engine: str | None = None):
    """(gradient of the meta-loss w.r.t. every meta-parameter, meta-loss)."""
    with setup.math_mode():
        return _meta_gradient(params, batch, noise, setup, engine or setup.engine)


def _meta_gradient(params: Params, batch: Batch, noise: dict, setup: Setup, engine: str):
    if engine == "batched":
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = meta_loss(leaves, batch, noise, setup, engine)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)}, loss.detach()

    def f(p):
        loss = meta_loss(p, batch, noise, setup, engine)
        return loss, loss.detach()

    return grad(f, has_aux=True)(params)


def reptile_direction(params: Params, batch: Batch, noise: dict, setup: Setup):
    """theta - mean_tasks(theta~): with SGD at rate eps this is Reptile's theta + eps (theta~ - theta).
    For learners with `outer == "reptile"` (they provide `trajectory`, the fast parameters)."""
    with setup.math_mode():
        return _reptile_direction(params, batch, noise, setup)


def _reptile_direction(params: Params, batch: Batch, noise: dict, setup: Setup):
    learner = setup.learner
    names = learner.adapted_names(setup.model)

    def adapted(xs, ys, nz, batched):
        fast = learner.trajectory(setup, params, xs, ys, nz, steps=setup.hp.inner_steps, every_step=False,
                                  batched=batched)[-1]
        return {n: fast[n] for n in names}, fast

    with torch.no_grad():
        if setup.engine == "batched":
            fast, full = adapted(batch.x_support, batch.y_support, noise, True)
            losses = PER_TASK[setup.family.loss](setup.model.forward(full, batch.x_query), batch.y_query)
        else:
            def one(xs, ys, xq, yq, nz):
                sub, full = adapted(xs, ys, nz, False)
                return sub, setup.loss_fn(setup.model.forward(full, xq), yq)

            fast, losses = vmap(one)(*batch, noise)
    direction = {n: torch.zeros_like(p) for n, p in params.items()}
    for n, f in fast.items():
        direction[n] = params[n] - f.detach().mean(0)
    return direction, losses.mean()


def sample_noise(params: Params, setup: Setup, generator: torch.Generator, n_tasks: int, steps: int):
    """The learner's noise for n_tasks tasks and up to `steps` steps, on the setup's device/dtype."""
    return setup.learner.noise(setup, params, generator, n_tasks, steps)


def graphs_apply(setup: Setup) -> bool:
    """CUDA graphs (core/graphs.py) for meta-gradients on CUDA; Reptile's no-grad direction stays eager,
    and so do meta-batches of varying shapes (`train_shots_range`: a graph is captured per shape)."""
    return (bool(setup.cuda_graphs) and str(setup.device).startswith("cuda") and setup.learner.outer != "reptile"
            and setup.train_shots_range is None)


def _gradient_update(setup: Setup, state) -> torch.Tensor:
    """MAML eq. (2) (Adam on the meta-gradient) and Reptile (SGD on theta - mean(theta~)): one
    meta-batch from the learner, its noise, the direction, one optimiser step."""
    hp = setup.hp
    batch = setup.learner.train_batch(setup, state.generator).to(setup.device, setup.dtype)
    noise = sample_noise(state.params, setup, state.generator, hp.meta_batch, hp.inner_steps)
    if setup.learner.outer == "reptile":
        grads, loss = reptile_direction(state.params, batch, noise, setup)
    elif graphs_apply(setup):
        from .graphs import graphed_meta_gradient

        grads, loss = graphed_meta_gradient(setup, state.params, batch, noise, state.runtime)
    else:
        grads, loss = meta_gradient(state.params, batch, noise, setup)
    for name, p in state.params.items():
        p.grad = grads[name]
    step_optimizers([state.optimizer])  # core.optim: the same step, without Optimizer.step's Python
    return loss


def _adam(setup: Setup, params: Params):
    # the fused kernel: one pass over every tensor (CPU and CUDA); 50 us against 135 us for the foreach
    # implementation on the sine net's 12 tensors, which matters when a step takes 1-2 ms (bundles step
    # one optimiser per member)
    return torch.optim.Adam(list(params.values()), lr=setup.hp.beta, fused=True)


def _sgd(setup: Setup, params: Params):
    return torch.optim.SGD(list(params.values()), lr=setup.hp.beta, foreach=True)


@dataclass(frozen=True)
class OuterRule:
    """How a learner's meta-parameters move each meta-iteration; `learner.outer` names one.

    update(setup, state): one meta-iteration on a fresh meta-batch drawn from state.generator; moves
    state.params (and the optimiser's state) in place and returns the meta-training loss, a 0-dim
    tensor. optimizer(setup, params): the optimiser whose state a checkpoint keeps (core.state).
    batched_gradient: the update is an optimiser step on the gradient (or Reptile direction) of
    `learner.query_loss`, which core.bundle's fold and vmap modes compute for many members at once."""

    update: Callable[[Setup, object], torch.Tensor]
    optimizer: Callable[[Setup, Params], object]
    batched_gradient: bool = False


OUTER_RULES: dict[str, OuterRule] = {}


def register_outer(name: str, rule: OuterRule) -> None:
    """Declare an outer rule (e.g. core.rl.outer's "trpo"); a name is declared once."""
    if OUTER_RULES.get(name, rule) != rule:
        raise ValueError(f"outer rule {name!r} is already registered differently")
    OUTER_RULES[name] = rule


def outer_rule(name: str) -> OuterRule:
    if name not in OUTER_RULES:
        raise ValueError(f"unknown outer rule {name!r}; rules: {', '.join(OUTER_RULES)}")
    return OUTER_RULES[name]


register_outer("gradient", OuterRule(_gradient_update, _adam, batched_gradient=True))
register_outer("reptile", OuterRule(_gradient_update, _sgd, batched_gradient=True))


def outer_step(setup: Setup, state) -> torch.Tensor:
    """One meta-iteration by the learner's outer rule (`learner.outer`); updates `state` in place,
    returns the meta-loss as a 0-dim tensor on the device (reading it waits for the device: the
    caller chooses when)."""
    loss = outer_rule(setup.learner.outer).update(setup, state)
    state.step += 1
    return loss
