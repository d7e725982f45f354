"""Functional dense models built of cells y = T(W x + b) (MT-net eq. 3).

A model owns W and b (``c{l}.W``, ``c{l}.b``) and says how to compute with them; it knows nothing of
learners. Parameters live in one flat dict of tensors so that `torch.func` can map over tasks. A
learner may add parameters the forward pass reads: ``c{l}.T`` (T-net / MT-net's transform, applied
after the cell's affine map). Others (mask logits ``c{l}.zeta``, Meta-SGD's ``alpha.c{l}.W``) only
the learner reads (core.learners.gradient).

The forward pass broadcasts over an optional leading task dimension on parameters *and* inputs,
so the same function serves vmap (unbatched view) and explicitly batched fast weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import Params
from .registry import register_model


def truncated_normal(shape, std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) truncated at two standard deviations, as tf.truncated_normal (paper section 6.1)."""
    t = torch.empty(shape, dtype=torch.float64)
    torch.nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=generator)
    return t


@dataclass(frozen=True)
class DenseNet:
    """MLP of dense cells; ReLU after every T except the last cell's (paper section 6.1: 1-40-40-1)."""

    sizes: tuple[int, ...] = (1, 40, 40, 1)
    init_std: float = 1e-2
    grouped = True  # computes with parameters [groups, ...] shared by consecutive tasks (`affine`; core.bundle)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the written-out backpropagation (task_gradients, backprop, forward_updated) and the grouped
        # products are this class's forward pass's: a subclass with a forward pass of its own (another
        # activation, say) is left to autograd and to formed inner steps for what it does not write out
        # (nor a subclass with an inner gradient of its own: the unformed last step would use DenseNet's
        # gradient, and the grouped products may not suit its own; its `super().task_gradients` still works)
        if "forward" in cls.__dict__:
            unset = ("task_gradients", "backprop", "forward_updated")
        elif "task_gradients" in cls.__dict__:
            unset = ("forward_updated",)
        else:
            unset = ()
        for name in unset:
            if name not in cls.__dict__:
                setattr(cls, name, None)
        if unset and "grouped" not in cls.__dict__:
            cls.grouped = False

    @property
    def n_cells(self) -> int:
        return len(self.sizes) - 1

    def cell_names(self) -> list[str]:
        return [f"c{l}" for l in range(self.n_cells)]

    def init(self, generator: torch.Generator, dtype=torch.float32, device="cpu") -> Params:
        """W ~ truncated normal (sigma = 0.01), b = 0 (paper section 6.1). A learner adds its own
        meta-parameters (T, zeta, Meta-SGD's alpha) on top (core.learners)."""
        p: Params = {}
        for l, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            p[f"c{l}.W"] = truncated_normal((n_out, n_in), self.init_std, generator)
            p[f"c{l}.b"] = torch.zeros(n_out, dtype=torch.float64)
        return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the activations after the last hidden cell [(tasks,) N, hidden]."""
        return self.forward(p, x, upto=self.n_cells - 1)

    def forward(self, p: Params, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """y_l = T_l (W_l h + b_l), ReLU between cells. `upto` stops before cell `upto` (features)."""
        h = x
        last = self.n_cells - 1
        for l in range(self.n_cells if upto is None else upto):
            c = f"c{l}"
            h = cell_output(h, p[f"{c}.W"], p[f"{c}.b"], p.get(f"{c}.T"))
            if l != last:
                h = F.relu(h)
        return h

    def task_gradients(self, p: Params, x: torch.Tensor, y: torch.Tensor, loss_grad, names: list[str]) -> Params:
        """Every task's gradient of its own loss w.r.t. the parameters `names` (W and b of some cells),
        by backpropagation written out: shapes [tasks, *param.shape] for inputs x [tasks, N, in],
        targets y; `loss_grad(out, y)` is d loss_t / d out_t (core.losses.PER_TASK_GRAD).

        The same values as autograd of the summed per-task losses w.r.t. task-expanded parameters
        (tests/test_core_math.py), in ordinary differentiable ops: autograd of the result is MAML's
        second-order term without a double-backward graph, and a parameter every task shares (T, ANIL's
        body) is one matrix product over all tasks' points. ReLU' is 1 where the ReLU's output is > 0
        (torch's convention)."""
        if not names:
            return {}
        inputs, signals = self.backprop(p, x, y, loss_grad, min(int(n.split(".")[0][1:]) for n in names))
        grads: Params = {}
        for l, d in signals.items():
            if f"c{l}.W" in names:
                grads[f"c{l}.W"] = d.transpose(-1, -2) @ inputs[l]
            if f"c{l}.b" in names:
                grads[f"c{l}.b"] = d.sum(-2)
        return {n: grads[n] for n in names}

    def backprop(self, p: Params, x: torch.Tensor, y: torch.Tensor, loss_grad,
                 lowest: int = 0) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """The two factors of every task's gradient: each cell's input h_l [tasks, N, in_l] and its
        signal d_l = d loss_t / d (W_l h + b_l) [tasks, N, out_l] (after T), for cells `lowest`..last,
        so that grad W_l = d_l^T h_l and grad b_l = sum over points of d_l (task_gradients;
        forward_updated applies an update without forming it)."""
        inputs = [x]  # each cell's input h
        h = x
        last = self.n_cells - 1
        for l in range(self.n_cells):
            c = f"c{l}"
            z = cell_output(h, p[f"{c}.W"], p[f"{c}.b"], p.get(f"{c}.T"))
            h = F.relu(z) if l != last else z
            inputs.append(h)
        d = loss_grad(h, y)  # d loss / d (cell output), [tasks, N, out]
        signals: dict[int, torch.Tensor] = {}
        for l in range(last, lowest - 1, -1):
            c = f"c{l}"
            T = p.get(f"{c}.T")
            if T is not None:
                d = affine(d, T.transpose(-1, -2))  # d @ T, through h T^T: d (Wh + b)
            signals[l] = d
            if l > lowest:
                # through W h and the ReLU below: the op autograd's own ReLU backward is (differentiable
                # in the gradient, its derivative the same op): 0 where the ReLU's output is not > 0
                d = torch.ops.aten.threshold_backward(affine(d, p[f"{c}.W"].transpose(-1, -2)), inputs[l], 0.0)
        return inputs, signals

    def forward_updated(self, p: Params, x: torch.Tensor, inputs: list[torch.Tensor],
                        signals: dict[int, torch.Tensor], rates: dict[int, float],
                        factors: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs for x [tasks, Nq, in] of the net one gradient step on: cell l's W_l - s_l (d_l^T h_l)
        and b_l - s_l sum(d_l) for the factors of `backprop` (h_l [tasks, Ns, in], d_l [tasks, Ns, out]),
        a step size s_l = r_l f_l per cell: a number r_l (`rates`) times an optional tensor f_l
        (`factors`) broadcasting to [tasks, 1, out] (a row mask, MT-net eq. 8; per-task alpha), without
        forming the per-task weights:

            (W_l - s_l d_l^T h_l) x + b_l - s_l d_l^T 1 = (W_l x + b_l) - f_l * (r_l (h_l x + 1)) d_l,

        a [Nq, Ns] kernel per task instead of an [out, in] matrix (fewer products: Ns < in, and W_l x
        is one product over all tasks' points when W_l is shared); r_l scales the kernel's product
        (no op of its own). Cells without a signal keep W, b. The same values as `forward` on the
        updated parameters, to float rounding (tests/test_core_math.py)."""
        factors = factors or {}
        h = x
        last = self.n_cells - 1
        for l in range(self.n_cells):
            c = f"c{l}"
            z = affine(h, p[f"{c}.W"], p[f"{c}.b"])
            if l in signals:
                support, r, f = inputs[l], rates[l], factors.get(l)
                ones = torch.ones((), dtype=h.dtype, device=h.device).expand(h.shape[0], h.shape[-2], support.shape[-2])
                if f is None:
                    kernel = torch.baddbmm(ones, h, support.transpose(-1, -2))  # h x + 1: [tasks, Nq, Ns]
                    z = torch.baddbmm(z, kernel, signals[l], alpha=-r)
                else:
                    kernel = torch.baddbmm(ones, h, support.transpose(-1, -2), beta=r, alpha=r)  # r (h x + 1)
                    z = torch.addcmul(z, kernel @ signals[l], f, value=-1.0)
            T = p.get(f"{c}.T")
            if T is not None:
                z = affine(z, T)
            h = F.relu(z) if l != last else z
        return h


def cell_output(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, T: torch.Tensor | None) -> torch.Tensor:
    """T (W h + b) for h [(tasks,) N, in], W [(groups,) out, in], b [(groups,) out], T [(groups,) out, out]
    (`affine`: one fused multiply-add over every point of the tasks that share a W). (Multiplying T into
    W first saves arithmetic where in < points, e.g. the sine net's first cell, but measured slower at
    the sine net's sizes: the extra products' dispatch costs more than the multiplications they save.)"""
    out = affine(h, W, b)
    return out if T is None else affine(out, T)


def affine(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """h W^T (+ b) for points h [(tasks,) N, in] and W [(groups,) out, in], b [(groups,) out]: W shared by
    every task (2-D: addmm, one product over all points); or G groups of tasks / G consecutive tasks,
    each group sharing its W (core.bundle's fold: one product per member over its tasks' points; G =
    tasks: every task its own W, as after an inner step)."""
    if W.dim() == 2:
        return F.linear(h, W, b)
    if h.dim() != 3:  # an unbatched h against per-task W: broadcast
        out = h @ W.transpose(-1, -2)
        return out if b is None else out + b.unsqueeze(-2)
    tasks, groups = h.shape[0], W.shape[0]
    hg = h if groups == tasks else h.reshape(groups, -1, h.shape[-1])
    out = torch.bmm(hg, W.transpose(-1, -2)) if b is None else torch.baddbmm(b.unsqueeze(-2), hg, W.transpose(-1, -2))
    return out if groups == tasks else out.view(tasks, -1, out.shape[-1])


def to_tasks(v: torch.Tensor, tasks: int) -> torch.Tensor:
    """A parameter [groups, ...] of `affine`'s grouped layout as one per task [tasks, ...] (a copy when
    groups < tasks; as is when groups = tasks)."""
    groups = v.shape[0]
    if groups == tasks:
        return v
    return v.unsqueeze(1).expand(groups, tasks // groups, *v.shape[1:]).reshape(tasks, *v.shape[1:])


def _dense_for(family, hidden: tuple[int, ...]) -> DenseNet:
    return DenseNet((*family.input_shape, *hidden, family.output_dim))


register_model("dense", _dense_for)
