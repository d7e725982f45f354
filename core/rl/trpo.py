"""Trust-region policy optimisation's step (Schulman et al. 2015, appendix C), on a dict of tensors.

    maximise  g^T d   subject to  1/2 d^T F d <= delta

with g the gradient of the objective and F the Hessian of the mean KL at the current parameters (the
Fisher matrix): d = sqrt(2 delta / s^T F s) s for s ~ F^{-1} g by conjugate gradient (Fisher-vector
products by double backward, never forming F), then a backtracking line search (ratio 0.8, 15 tries) that
accepts the first fraction of d that lowers the loss and keeps the KL <= delta. In MAML-TRPO the
objective and the KL are functions of the meta-parameters through the inner policy-gradient step, so
their derivatives go through it. F v is computed as a Gauss-Newton product J^T M J v in the policy's
output space (exact at the current parameters; no third-order derivatives through the inner step:
`gauss_newton_fvp`, checked against the double-backward Hessian `hessian_fvp` in the tests).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model import Params


def conjugate_gradient(Av: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive definite A given by its products."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        Ap = Av(p)
        step = rr / (p @ Ap)
        x = x + step * p
        r = r - step * Ap
        new_rr = r @ r
        if new_rr < tol:
            break
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


def hessian_fvp(kl_fn: Callable[[Params], torch.Tensor], damping: float):
    """Fisher-vector products as Hessian-vector products of the mean KL by double backward (through
    an inner update: third-order derivatives). The reference `gauss_newton_fvp` is checked against."""

    def make(leaves: Params):
        kl_grad = flat(torch.autograd.grad(kl_fn(leaves), list(leaves.values()), create_graph=True, allow_unused=True,
                                           materialize_grads=True))

        def fvp(v: torch.Tensor) -> torch.Tensor:
            hv = torch.autograd.grad(kl_grad @ v, list(leaves.values()), retain_graph=True, allow_unused=True,
                                     materialize_grads=True)
            return flat(hv).detach() + damping * v

        return fvp

    return make


def gauss_newton_fvp(out: torch.Tensor, leaves: Params, metric: torch.Tensor, damping: float):
    """F v = J^T M J v for the policy output out(theta) with Jacobian J and M the Hessian of the mean KL
    in output space at the current policy (diagonal for Gaussians: `metric`, core.rl.pg.kl_metric).
    Exact: the KL's gradient in output space is 0 at the current policy, so the KL's Hessian in theta
    has no other term - and it needs no third-order derivatives through an inner update (J v by the
    double-backward trick: the gradient of J^T u with respect to u)."""
    names = list(leaves.values())
    u = torch.zeros_like(out, requires_grad=True)
    jt_u = flat(torch.autograd.grad(out, names, grad_outputs=u, create_graph=True, allow_unused=True,
                                    materialize_grads=True))

    def fvp(v: torch.Tensor) -> torch.Tensor:
        jv = torch.autograd.grad(jt_u, u, grad_outputs=v, retain_graph=True)[0]
        jt = torch.autograd.grad(out, names, grad_outputs=metric * jv.detach(), retain_graph=True, allow_unused=True,
                                 materialize_grads=True)
        return flat(jt).detach() + damping * v

    return fvp


def trpo_step(params: Params, out_fn: Callable[[Params], torch.Tensor], loss_of: Callable[[torch.Tensor], torch.Tensor],
              kl_of: Callable[[torch.Tensor], torch.Tensor], metric: torch.Tensor, *, max_kl: float,
              damping: float = 1e-5, cg_iters: int = 10, ls_steps: int = 15, backtrack: float = 0.8) -> tuple[Params, dict]:
    """One TRPO step from `params` (not modified): (new parameters, info). The policy's output is
    out_fn(params) (e.g. through an inner update); `loss_of(out)` is minus the surrogate objective,
    `kl_of(out)` the mean KL from the current policy, `metric` the KL's Hessian in output space
    (gauss_newton_fvp). A step the line search cannot accept leaves the parameters as they are."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    out = out_fn(leaves)
    loss = loss_of(out)
    g = flat(torch.autograd.grad(loss, list(leaves.values()), retain_graph=True, allow_unused=True,
                                 materialize_grads=True)).detach()
    fvp = gauss_newton_fvp(out, leaves, metric, damping)
    s = conjugate_gradient(fvp, -g, cg_iters)
    shs = s @ fvp(s)
    loss = float(loss.detach())
    info = {"loss_before": loss, "loss_after": loss, "kl": 0.0, "step_fraction": 0.0, "expected_improvement": 0.0}
    if not (torch.isfinite(shs) and shs > 0):
        return {k: v.detach() for k, v in params.items()}, info
    full = torch.sqrt(2 * max_kl / shs) * s
    info["expected_improvement"] = float(-(g @ full))
    old = flat(v.detach() for v in params.values())
    with torch.no_grad():
        for k in range(ls_steps):
            frac = backtrack**k
            candidate = unflat(old + frac * full, params)
            new_out = out_fn(candidate)
            new_loss, new_kl = float(loss_of(new_out)), float(kl_of(new_out))
            if new_loss < loss and new_kl <= max_kl:
                info.update(loss_after=new_loss, kl=new_kl, step_fraction=frac)
                return candidate, info
    return {k: v.detach() for k, v in params.items()}, info
