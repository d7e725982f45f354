"""Optimiser steps without the Python of `Optimizer.step`: on the small nets a meta-step takes about a
millisecond, and torch's `Optimizer.step` (hooks, state lookups, grouping) costs ~50 us of it per
optimiser - a few per cent of a trial's step, a fifth of a bundle's at meta-batch 4 (one optimiser
per member). Used by core.meta (a trial's outer step) and core.bundle (every member's)."""

from __future__ import annotations

import torch


def step_optimizers(optimizers: list) -> None:
    """Each optimiser's step (a trial's, or every member's of a bundle). Fused Adams whose state
    exists (after their first step) step by torch's functional fused Adam, those with the same
    settings (step size beta included) in one call over all their tensors - per tensor the kernel
    each would run alone, so the same values bit for bit (tests/test_bundles.py) - instead of one
    Python `Optimizer.step` each (~50 us an optimiser). Any other optimiser steps on its own."""
    from torch.optim.adam import adam

    groups: dict[tuple, list] = {}
    for opt in optimizers:
        matching_layouts(opt)
        key = _fused_adam_key(opt)
        if key is None:
            opt.step()
        else:
            groups.setdefault(key, []).append(opt)
    for (lr, (beta1, beta2), eps, weight_decay, _, _), opts in groups.items():  # one alone too: no Python step
        params = [p for opt in opts for p in opt.param_groups[0]["params"]]
        states = [opt.state[p] for opt in opts for p in opt.param_groups[0]["params"]]
        with torch.no_grad():
            adam(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                 [], [s["step"] for s in states], foreach=False, capturable=False, differentiable=False, fused=True,
                 grad_scale=None, found_inf=None, has_complex=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr,
                 weight_decay=weight_decay, eps=eps, maximize=False)


def matching_layouts(opt) -> None:
    """Give every gradient its parameter's memory layout. torch's fused Adam on the CPU reads a gradient
    as if laid out like its parameter: a transposed view (what `torch.autograd.grad` returns for a weight
    used as W^T in a batched product) steps each element by another's gradient, silently (torch 2.14; on
    CUDA the kernel refuses mismatched layouts instead, pytorch/pytorch#106951). Copies only such
    gradients; the values are unchanged."""
    for group in opt.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is not None and g.stride() != p.stride():
                p.grad = torch.empty_like(p).copy_(g)


def _fused_adam_key(opt) -> tuple | None:
    """What fused Adams must share to step together, or None for an optimiser that steps on its own
    (not a plain fused Adam of one parameter group, or its state not made yet)."""
    if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
        return None
    g = opt.param_groups[0]
    if not g.get("fused") or g["amsgrad"] or g["maximize"] or g.get("capturable") or g.get("differentiable") \
            or g.get("decoupled_weight_decay") or isinstance(g["lr"], torch.Tensor):
        return None
    ps = g["params"]
    if any(p.grad is None or p.is_complex() or not opt.state.get(p) for p in ps):
        return None
    return (g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"], ps[0].device, ps[0].dtype)
