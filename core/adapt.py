"""The inner loop (task-specific learning) as one pure function for every variant.

MAML (eq. 1) and T-net (eq. 4) take theta~ = theta - alpha * grad L on the adapted parameters
(W, b); T, zeta and Meta-SGD's alpha are meta-parameters and never move here. MT-net (eq. 8)
multiplies the gradient by a binary mask M whose row j is on with probability sigmoid(zeta_j)
(eq. 9), relaxed with Gumbel-Softmax at temperature c during meta-training (eq. 10-11).

Randomness is passed in as tensors (`noise`), never drawn inside: the function is pure, so it maps
over tasks with `torch.func.vmap` and gives the same answer vmapped and looped.
"""

from __future__ import annotations

import torch
from torch.func import grad

from .cells import to_tasks
from .losses import PER_TASK, PER_TASK_GRAD
from .model import Params
from .variants import Variant


def adapted_names(model, variant: Variant, frozen: tuple[str, ...] = ()) -> list[str]:
    """The parameters the inner loop changes: W and b of every cell, or of the head only (ANIL),
    less the cells in `frozen` (names like "c0": the freezing study of Raghu et al.)."""
    cells = model.cell_names()
    if variant.inner_params == "head":
        cells = cells[-1:]
    return [f"{c}.{w}" for c in cells if c not in frozen for w in ("W", "b")]


def mask_logits_name(name: str, variant: Variant) -> str | None:
    """Which zeta gates the update of adapted parameter `name` (eq. 8-9); None if unmasked."""
    cell, kind = name.split(".")
    if variant.mask == "row":
        return f"{cell}.zeta"  # a row's bias follows its row (authors' code)
    if variant.mask == "full":
        return f"{cell}.zeta_{kind}"
    return None


def meta_only_names(params: Params) -> list[str]:
    """Parameters that never move in the inner loop: T, zeta, learned alpha, and the conv net's
    batch-norm gamma / beta (outer loop only)."""
    return [k for k in params if k.endswith((".T", ".gamma", ".beta_bn")) or ".zeta" in k or k.startswith("alpha.")]


def logistic_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """g1 - g2 for g1, g2 ~ Gumbel(0, 1): a Logistic(0, 1) sample."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return (torch.log(u) - torch.log1p(-u)).float()


def mask_noise(params: Params, model, variant: Variant, generator: torch.Generator, n_tasks: int,
               steps: int, frozen: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Noise for every mask logit, shape [n_tasks, draws, *zeta.shape]. Row masks are sampled once
    per task and reused at every inner step (draws = 1); full masks are resampled every step. With
    n_tasks = 1 the draws of the first s steps do not depend on `steps` (one stream, filled in order)."""
    if not variant.masked:
        return {}
    draws = 1 if variant.mask == "row" else steps
    names = sorted({mask_logits_name(n, variant) for n in adapted_names(model, variant, frozen)})
    sizes = [params[z].numel() for z in names]
    flat = logistic_noise((n_tasks, draws, sum(sizes)), generator)  # one draw for every zeta
    return {z: part.reshape(n_tasks, draws, *params[z].shape)
            for z, part in zip(names, flat.split(sizes, dim=-1))}


def task_factor(value, like: torch.Tensor):
    """A hyper-parameter as a factor of `like`: a number or 0-dim tensor as is; one value per task
    ([tasks], a bundle folded into the task dimension) viewed as [tasks, 1, ...]."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


def gumbel_mask(zeta: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:
    """Straight-through Gumbel-Softmax over [zeta, 0] (eq. 10-11): hard 0/1 in the forward pass,
    the gradient of the relaxed sigmoid((zeta + g1 - g2) / c) in the backward pass."""
    soft = torch.sigmoid((zeta + noise.to(zeta.dtype)) / task_factor(temperature, zeta))
    hard = (soft > 0.5).to(zeta.dtype)
    # exactly 0/1 in value; the sigmoid's gradient. (A custom autograd.Function doing the same in one
    # op each way measured slower here: its Python overhead costs more than the ops it saves.)
    return hard + (soft - soft.detach())


def gumbel_masks(zetas: list[torch.Tensor], noises: list[torch.Tensor], temperature, zeta_lead: int,
                 noise_lead: int) -> list[torch.Tensor]:
    """`gumbel_mask` of several logits (every cell's zeta) as one computation over their concatenation:
    the same values, a few ops instead of a few per cell. `zeta_lead` / `noise_lead`: how many leading
    (task) dimensions each tensor has before the logit's own shape."""
    if len(zetas) == 1:
        return [gumbel_mask(zetas[0], noises[0], temperature)]
    flat = gumbel_mask(torch.cat([z.flatten(zeta_lead) for z in zetas], dim=-1),
                       torch.cat([n.flatten(noise_lead) for n in noises], dim=-1), temperature)
    shapes = [z.shape[zeta_lead:] for z in zetas]
    pieces = flat.split([s.numel() for s in shapes], dim=-1)
    return [p.reshape(*p.shape[:-1], *s) for p, s in zip(pieces, shapes)]


def threshold_mask(zeta: torch.Tensor) -> torch.Tensor:
    """Deterministic evaluation mask: a row is on iff P(on) = sigmoid(zeta) >= 1/2."""
    return (zeta >= 0).to(zeta.dtype)


def written_out(model, loss_fn):
    """The model's written-out inner gradient (`task_gradients`, core.cells) for this loss, or None where
    autograd differentiates: a loss without a written-out gradient (core.losses.PER_TASK_GRAD), a model
    class without its own (a subclass with another forward pass, a wrapper delegating attributes)."""
    if loss_fn in PER_TASK_GRAD and getattr(type(model), "task_gradients", None) is not None:
        return model.task_gradients
    return None


def takes_groups(model, loss_fn) -> bool:
    """Whether the batched `adapt` (task_params) takes parameters [groups, ...], each group's shared by
    tasks / groups consecutive tasks (core.bundle's fold passes each member's once): the written-out
    gradient of a model whose products take groups (core.cells.affine). Elsewhere one set per task."""
    return written_out(model, loss_fn) is not None and getattr(type(model), "grouped", False)


def adapt(params: Params, x_support: torch.Tensor, y_support: torch.Tensor, *, model, variant: Variant,
          alpha: float, temperature: float, steps: int, loss_fn, noise: dict[str, torch.Tensor] | None = None,
          mask_mode: str = "sample", all_steps: bool = False, batched: bool = False, frozen: tuple[str, ...] = (),
          task_params: bool = False, x_query: torch.Tensor | None = None):
    """k inner steps on the support set; returns the fast parameters (or, with `all_steps`, the
    list after step 0..k; or, given `x_query`, the outputs for it after step k).

    Unbatched (one task; what `vmap` maps): gradients by `torch.func.grad`, `noise[z]` has shape
    [draws, *zeta.shape]. Batched (`batched=True`): inputs and noise carry a leading task dimension,
    the adapted parameters are expanded to [tasks, ...], and one `torch.autograd.grad` of the summed
    per-task losses gives every task's own gradient at once (tasks are independent) - the same math
    with far fewer dispatches; a model that writes its backpropagation out (`model.task_gradients`,
    the dense net, for losses in core.losses.PER_TASK_GRAD) gives those gradients without autograd's
    double-backward graph. Second order unless the variant is first order. `frozen` cells are
    left out of the inner loop (the freezing study). `task_params` (batched only): every parameter
    already has the task dimension, and alpha / temperature may be one value per task (a bundle of
    trials folded into the task dimension, core.bundle); where `takes_groups`, also as [groups, ...], each
    shared by tasks / groups consecutive tasks (a bundle member's).

    With `x_query` and a model that writes its backpropagation out, the last step is never formed: the
    model's `forward_updated` computes the query outputs from the step's factors (per-task kernels, one
    product of the shared weights over all points), the same values to float rounding with fewer
    products. Only where each cell's W and b move by one step size per row (no Meta-SGD alpha, no
    "-full" mask); otherwise the fast parameters are formed and `model.forward` is applied."""
    names = adapted_names(model, variant, frozen)
    first_order = variant.order == "first"
    closed_form = None
    if batched:
        outer = torch.is_grad_enabled() and any(params[n].requires_grad for n in params)
        closed_form = written_out(model, loss_fn)
    n_tasks = x_support.shape[0]

    def per_task(v: torch.Tensor) -> torch.Tensor:  # a parameter of a bundle member's group, one per task
        return to_tasks(v, n_tasks) if task_params and closed_form is not None else v
    if closed_form is not None:
        # backpropagation written out by the model (core.cells): the same values as the autograd form
        # below, and the meta-gradient needs no double-backward graph. The first step computes with the
        # shared parameters (one product over all tasks' points); the update gives each task its own
        fast = {n: params[n] for n in names}

        def inner_grad(sub: Params) -> Params:
            with torch.set_grad_enabled(outer and not first_order):
                return closed_form({**params, **sub}, x_support, y_support, PER_TASK_GRAD[loss_fn], names)
    elif batched:
        task_loss = PER_TASK[loss_fn]
        fast = {n: params[n] if task_params else params[n].expand(n_tasks, *params[n].shape) for n in names}
        if not outer:
            fast = {n: f.detach().clone().requires_grad_(True) for n, f in fast.items()}

        def inner_grad(sub: Params) -> Params:
            with torch.enable_grad():
                loss = task_loss(model.forward({**params, **sub}, x_support), y_support).sum()
                gs = torch.autograd.grad(loss, [sub[n] for n in names], create_graph=outer and not first_order)
            return dict(zip(names, gs))
    else:
        fast = {n: params[n] for n in names}

        def support_loss(sub: Params) -> torch.Tensor:
            return loss_fn(model.forward({**params, **sub}, x_support), y_support)

        def inner_grad(sub: Params) -> Params:
            g = grad(support_loss)(sub)
            return {n: v.detach() for n, v in g.items()} if first_order else g

    zetas = list(dict.fromkeys(z for n in names if (z := mask_logits_name(n, variant)) is not None))

    def masks_for(step: int) -> dict[str, torch.Tensor]:
        if not zetas:
            return {}
        if mask_mode == "threshold":
            by_zeta = {z: threshold_mask(per_task(params[z])) for z in zetas}
        else:
            draw = 0 if variant.mask == "row" else step
            by_zeta = dict(zip(zetas, gumbel_masks([per_task(params[z]) for z in zetas],
                                                   [noise[z][:, draw] if batched else noise[z][draw] for z in zetas],
                                                   temperature, int(task_params), int(batched))))
        out = {}  # a row mask is shared by W's row and its bias
        for n in names:
            z = mask_logits_name(n, variant)
            if z is None:
                continue
            m = by_zeta[z]
            # a row mask [(tasks,) out] broadcasts over the row: [(tasks,) out, 1, ...]
            trailing = params[n].dim() - (2 if task_params else 1)  # the parameter's dims after its rows
            out[n] = m.reshape(m.shape + (1,) * trailing) if variant.mask == "row" else m
        return out

    # alpha (or Meta-SGD's alpha tensor) per adapted parameter, as a factor of it
    rates = {n: per_task(params[f"alpha.{n}"]) if variant.learned_alpha else task_factor(alpha, fast[n]) for n in names}

    def step_sizes(masks: dict) -> dict:
        """alpha times the mask, eq. (8): W~ = W - alpha M * grad."""
        return {n: masks[n] * rates[n] if n in masks else rates[n] for n in names}

    row_masks = masks_for(0) if variant.mask != "full" else None  # row masks: once per task
    row_sizes = None
    factored = (x_query is not None and not all_steps and closed_form is not None and steps > 0
                and not variant.learned_alpha and variant.mask != "full"
                and getattr(type(model), "forward_updated", None) is not None
                and getattr(type(model), "backprop", None) is not None)
    trajectory = [fast]
    for step in range(steps):
        if factored and step == steps - 1:
            return _updated_outputs(model, {**params, **fast}, x_support, y_support, x_query, loss_fn, names, row_masks,
                                    rates, outer and not first_order)
        if row_masks is None:
            lrs = step_sizes(masks_for(step))
        else:
            if row_sizes is None:
                row_sizes = step_sizes(row_masks)
            lrs = row_sizes
        g = inner_grad(fast)
        new = {}
        for n in names:
            lr = lrs[n]  # one fused op (and one backward node) per parameter: fast - lr * g
            base = per_task(fast[n])
            new[n] = (torch.add(base, g[n], alpha=-lr) if isinstance(lr, (int, float)) else
                      torch.addcmul(base, lr, g[n], value=-1.0))
            if batched and not outer and closed_form is None:
                new[n] = new[n].detach().requires_grad_(True)  # evaluation: no graph across steps
        fast = new
        trajectory.append(fast)
    if all_steps:
        return [{**params, **f} for f in trajectory]
    if x_query is not None:
        return model.forward({**params, **fast}, x_query)
    return {**params, **fast}


def _updated_outputs(model, params: Params, x_support, y_support, x_query, loss_fn, names: list[str], masks: dict,
                     rates: dict, differentiable: bool) -> torch.Tensor:
    """adapt's last step, never formed: the model's outputs for x_query after one step from `params` of
    size alpha (`rates`: a number, or a tensor [tasks, 1, 1] / 0-dim) times a row mask (`masks`: [(tasks,)
    out, 1], W's and b's of a cell alike; absent where unmasked)."""
    cells = sorted({int(n.split(".")[0][1:]) for n in names})
    with torch.set_grad_enabled(differentiable):
        inputs, signals = model.backprop(params, x_support, y_support, PER_TASK_GRAD[loss_fn], cells[0])
    numbers, factors = {}, {}
    for l in cells:
        rate, mask = rates[f"c{l}.W"], masks.get(f"c{l}.W")
        mask = None if mask is None else mask.transpose(-1, -2)  # a factor of [tasks, Nq, out]
        if isinstance(rate, (int, float)):
            numbers[l] = rate  # folded into the kernel's product, no op of its own
            if mask is not None:
                factors[l] = mask
        else:
            numbers[l] = 1.0
            factors[l] = rate if mask is None else mask * rate
    return model.forward_updated(params, x_query, inputs, {l: signals[l] for l in cells}, numbers, factors)
