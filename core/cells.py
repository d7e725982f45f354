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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the written-out backpropagation is this class's forward pass's: a subclass with a forward pass
        # of its own (another activation, say) and no task_gradients of its own is left to autograd
        if "forward" in cls.__dict__ and "task_gradients" not in cls.__dict__:
            cls.task_gradients = None

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
        inputs = [x]  # each cell's input h
        h = x
        last = self.n_cells - 1
        for l in range(self.n_cells):
            c = f"c{l}"
            z = cell_output(h, p[f"{c}.W"], p[f"{c}.b"], p.get(f"{c}.T"))
            h = F.relu(z) if l != last else z
            inputs.append(h)
        lowest = min(int(n.split(".")[0][1:]) for n in names)
        d = loss_grad(h, y)  # d loss / d (cell output), [tasks, N, out]
        grads: Params = {}
        for l in range(last, lowest - 1, -1):
            c = f"c{l}"
            W, T, h = p[f"{c}.W"], p.get(f"{c}.T"), inputs[l]
            if T is not None:
                d = d @ T  # through h T^T: d (Wh + b)
            if f"{c}.W" in names:
                grads[f"{c}.W"] = d.transpose(-1, -2) @ h
            if f"{c}.b" in names:
                grads[f"{c}.b"] = d.sum(-2)
            if l > lowest:
                # through W h and the ReLU below: the op autograd's own ReLU backward is (differentiable
                # in the gradient, its derivative the same op): 0 where the ReLU's output is not > 0
                d = torch.ops.aten.threshold_backward(d @ W, h, 0.0)
        return {n: grads[n] for n in names}


def cell_output(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, T: torch.Tensor | None) -> torch.Tensor:
    """T (W h + b) for h [(tasks,) N, in], W [(tasks,) out, in], b [(tasks,) out], T [(tasks,) out, out]:
    one fused multiply-add (addmm when W is shared: every task's points in one product; baddbmm when
    every task has its own W). (Multiplying T into W first saves arithmetic where in < points, e.g. the
    sine net's first cell, but measured slower at the sine net's sizes: the extra products' dispatch
    costs more than the multiplications they save.)"""
    if W.dim() == 2:
        out = F.linear(h, W, b)
    elif h.dim() == 3:
        out = torch.baddbmm(b.unsqueeze(-2), h, W.transpose(-1, -2))
    else:
        out = h @ W.transpose(-1, -2) + b.unsqueeze(-2)
    if T is not None:
        out = out @ T.transpose(-1, -2)
    return out


def _dense_for(family, hidden: tuple[int, ...]) -> DenseNet:
    return DenseNet((*family.input_shape, *hidden, family.output_dim))


register_model("dense", _dense_for)
