"""One outer step over a batch of tasks (MAML eq. 2, Reptile).

The meta-loss is the mean over the meta-batch of each task's query loss after the inner loop.
Three engines compute the same math (tests check they agree to 1e-6):
- "batched" (default): the task dimension is explicit - adapted weights are expanded to
  [tasks, ...] and one autograd call gives every task's inner gradient; fewest dispatches, fastest
  on CPU for the regression nets (bench/bench_core.py).
- "vmap": `torch.func.vmap` over a one-task function with `torch.func.grad` inside and outside.
- "loop": a Python loop over tasks of that same one-task function (the reference).
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from .adapt import adapt, mask_noise
from .cells import Params, adapted_names
from .losses import PER_TASK
from .setup import Setup
from .tasks import Batch


def task_objective(params: Params, xs, ys, xq, yq, noise, setup: Setup) -> torch.Tensor:
    hp = setup.hp
    fast = adapt(params, xs, ys, model=setup.model, variant=setup.variant, alpha=hp.alpha,
                 temperature=hp.temperature, steps=hp.inner_steps, loss_fn=setup.loss_fn, noise=noise)
    return setup.loss_fn(setup.model.forward(fast, xq), yq)


ENGINES = ("batched", "vmap", "loop")


def batched_objective(params: Params, batch: Batch, noise: dict, setup: Setup) -> torch.Tensor:
    """Per-task post-adaptation query losses [tasks], with the task dimension explicit."""
    hp = setup.hp
    fast = adapt(params, batch.x_support, batch.y_support, model=setup.model, variant=setup.variant,
                 alpha=hp.alpha, temperature=hp.temperature, steps=hp.inner_steps, loss_fn=setup.loss_fn,
                 noise=noise, batched=True)
    return PER_TASK[setup.loss_fn](setup.model.forward(fast, batch.x_query), batch.y_query)


def meta_loss(params: Params, batch: Batch, noise: dict, setup: Setup, engine: str | None = None):
    """Mean over tasks of the post-adaptation query loss (the MAML objective)."""
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
    """theta - mean_tasks(theta~): with SGD at rate eps this is Reptile's theta + eps (theta~ - theta)."""
    with setup.math_mode():
        return _reptile_direction(params, batch, noise, setup)


def _reptile_direction(params: Params, batch: Batch, noise: dict, setup: Setup):
    hp, variant = setup.hp, setup.variant

    def one(xs, ys, xq, yq, nz):
        fast = adapt(params, xs, ys, model=setup.model, variant=variant, alpha=hp.alpha,
                     temperature=hp.temperature, steps=hp.inner_steps, loss_fn=setup.loss_fn, noise=nz)
        names = adapted_names(setup.model, variant)
        return {n: fast[n] for n in names}, setup.loss_fn(setup.model.forward(fast, xq), yq)

    with torch.no_grad():
        if setup.engine == "batched":
            fast = adapt(params, batch.x_support, batch.y_support, model=setup.model, variant=variant, alpha=hp.alpha,
                         temperature=hp.temperature, steps=hp.inner_steps, loss_fn=setup.loss_fn, noise=noise,
                         batched=True)
            losses = PER_TASK[setup.loss_fn](setup.model.forward(fast, batch.x_query), batch.y_query)
            fast = {n: fast[n].detach() for n in adapted_names(setup.model, variant)}
        else:
            fast, losses = vmap(one)(*batch, noise)
    direction = {n: torch.zeros_like(p) for n, p in params.items()}
    for n, f in fast.items():
        direction[n] = params[n] - f.mean(0)
    return direction, losses.mean()


def sample_noise(params: Params, setup: Setup, generator: torch.Generator, n_tasks: int, steps: int):
    noise = mask_noise(params, setup.model, setup.variant, generator, n_tasks, steps)
    return {k: v.to(device=setup.device, dtype=setup.dtype) for k, v in noise.items()}


def graphs_apply(setup: Setup) -> bool:
    """CUDA graphs (core/graphs.py) for meta-gradients on CUDA; Reptile's no-grad direction stays eager."""
    return bool(setup.cuda_graphs) and str(setup.device).startswith("cuda") and setup.variant.outer != "reptile"


def outer_step(setup: Setup, state) -> torch.Tensor:
    """One meta-iteration on a fresh meta-batch; updates `state` in place, returns the meta-loss as a
    0-dim tensor on the device (reading it waits for the device: the caller chooses when)."""
    hp = setup.hp
    batch = setup.family.sample(state.generator, hp.meta_batch, setup.train_shots, setup.queries)
    batch = batch.to(setup.device, setup.dtype)
    noise = sample_noise(state.params, setup, state.generator, hp.meta_batch, hp.inner_steps)
    if setup.variant.outer == "reptile":
        grads, loss = reptile_direction(state.params, batch, noise, setup)
    elif graphs_apply(setup):
        from .graphs import graphed_meta_gradient

        grads, loss = graphed_meta_gradient(setup, state.params, batch, noise, state.runtime)
    else:
        grads, loss = meta_gradient(state.params, batch, noise, setup)
    for name, p in state.params.items():
        p.grad = grads[name]
    state.optimizer.step()
    state.step += 1
    return loss
