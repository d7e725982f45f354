"""One outer step over a batch of tasks (MAML eq. 2, Reptile), vmapped over tasks.

`task_objective` is the query loss of one task after the inner loop; the meta-loss is its mean
over the meta-batch, computed with `torch.func.vmap` (or a per-task loop of the very same function),
and differentiated with `torch.func.grad` (second order unless the variant is first order).
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from .adapt import adapt, mask_noise
from .cells import Params, adapted_names
from .setup import Setup
from .tasks import Batch


def task_objective(params: Params, xs, ys, xq, yq, noise, setup: Setup) -> torch.Tensor:
    hp = setup.hp
    fast = adapt(params, xs, ys, model=setup.model, variant=setup.variant, alpha=hp.alpha,
                 temperature=hp.temperature, steps=hp.inner_steps, loss_fn=setup.loss_fn, noise=noise)
    return setup.loss_fn(setup.model.forward(fast, xq), yq)


def meta_loss(params: Params, batch: Batch, noise: dict, setup: Setup, vectorize: bool | None = None):
    """Mean over tasks of the post-adaptation query loss (the MAML objective)."""
    vectorize = setup.vectorize if vectorize is None else vectorize
    if vectorize:
        per_task = vmap(task_objective, in_dims=(None, 0, 0, 0, 0, 0, None))(params, *batch, noise, setup)
        return per_task.mean()
    losses = [
        task_objective(params, *batch.select(i), {k: v[i] for k, v in noise.items()}, setup)
        for i in range(batch.x_support.shape[0])
    ]
    return torch.stack(losses).mean()


def meta_gradient(params: Params, batch: Batch, noise: dict, setup: Setup, vectorize: bool | None = None):
    """(gradient of the meta-loss w.r.t. every meta-parameter, meta-loss)."""

    def f(p):
        loss = meta_loss(p, batch, noise, setup, vectorize)
        return loss, loss.detach()

    return grad(f, has_aux=True)(params)


def reptile_direction(params: Params, batch: Batch, noise: dict, setup: Setup):
    """theta - mean_tasks(theta~): with SGD at rate eps this is Reptile's theta + eps (theta~ - theta)."""
    hp, variant = setup.hp, setup.variant

    def one(xs, ys, xq, yq, nz):
        fast = adapt(params, xs, ys, model=setup.model, variant=variant, alpha=hp.alpha,
                     temperature=hp.temperature, steps=hp.inner_steps, loss_fn=setup.loss_fn, noise=nz)
        names = adapted_names(setup.model, variant)
        return {n: fast[n] for n in names}, setup.loss_fn(setup.model.forward(fast, xq), yq)

    with torch.no_grad():
        fast, losses = vmap(one)(*batch, noise)
    direction = {n: torch.zeros_like(p) for n, p in params.items()}
    for n, f in fast.items():
        direction[n] = params[n] - f.mean(0)
    return direction, losses.mean()


def sample_noise(params: Params, setup: Setup, generator: torch.Generator, n_tasks: int, steps: int):
    noise = mask_noise(params, setup.model, setup.variant, generator, n_tasks, steps)
    return {k: v.to(device=setup.device, dtype=setup.dtype) for k, v in noise.items()}


def outer_step(setup: Setup, state) -> float:
    """One meta-iteration on a fresh meta-batch; updates `state` in place, returns the meta-loss."""
    hp = setup.hp
    batch = setup.family.sample(state.generator, hp.meta_batch, setup.train_shots, setup.queries)
    batch = batch.to(setup.device, setup.dtype)
    noise = sample_noise(state.params, setup, state.generator, hp.meta_batch, hp.inner_steps)
    if setup.variant.outer == "reptile":
        grads, loss = reptile_direction(state.params, batch, noise, setup)
    else:
        grads, loss = meta_gradient(state.params, batch, noise, setup)
    for name, p in state.params.items():
        p.grad = grads[name]
    state.optimizer.step()
    state.step += 1
    return float(loss)
