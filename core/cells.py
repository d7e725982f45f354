"""Functional models built of cells y = T(W x + b) (MT-net eq. 3).

Parameters live in one flat dict of tensors so that `torch.func` can map over tasks:
``c{l}.W``, ``c{l}.b`` (task-adapted), ``c{l}.T`` (transform, outer loop only),
``c{l}.zeta`` (row-mask logits, one per output unit) or ``c{l}.zeta_W``/``c{l}.zeta_b``
(full masks, one per weight), and ``alpha.c{l}.W``... (Meta-SGD's learned step sizes).

The forward pass broadcasts over an optional leading task dimension on parameters *and* inputs,
so the same function serves vmap (unbatched view) and explicitly batched fast weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .hparams import HParams
from .variants import Variant

Params = dict[str, torch.Tensor]


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

    @property
    def n_cells(self) -> int:
        return len(self.sizes) - 1

    def cell_names(self) -> list[str]:
        return [f"c{l}" for l in range(self.n_cells)]

    def init(self, variant: Variant, hp: HParams, generator: torch.Generator, dtype=torch.float32,
             device="cpu") -> Params:
        """W ~ truncated normal (sigma = 0.01), b = 0, T = I, zeta = zeta_init (paper section 6.1)."""
        p: Params = {}
        for l, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            c = f"c{l}"
            p[f"{c}.W"] = truncated_normal((n_out, n_in), self.init_std, generator)
            p[f"{c}.b"] = torch.zeros(n_out, dtype=torch.float64)
            if variant.transform:
                p[f"{c}.T"] = torch.eye(n_out, dtype=torch.float64)
            if variant.mask == "row":
                p[f"{c}.zeta"] = torch.full((n_out,), hp.zeta_init, dtype=torch.float64)
            elif variant.mask == "full":
                p[f"{c}.zeta_W"] = torch.full((n_out, n_in), hp.zeta_init, dtype=torch.float64)
                p[f"{c}.zeta_b"] = torch.full((n_out,), hp.zeta_init, dtype=torch.float64)
        for name in adapted_names(self, variant):
            if variant.learned_alpha:
                p[f"alpha.{name}"] = torch.full_like(p[name], hp.alpha)
        return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}

    def forward(self, p: Params, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """y_l = T_l (W_l h + b_l), ReLU between cells. `upto` stops before cell `upto` (features)."""
        h = x
        last = self.n_cells - 1
        for l in range(self.n_cells if upto is None else upto):
            c = f"c{l}"
            W, b = p[f"{c}.W"], p[f"{c}.b"]
            h = h @ W.transpose(-1, -2) + b.unsqueeze(-2)
            T = p.get(f"{c}.T")
            if T is not None:
                h = h @ T.transpose(-1, -2)
            if l != last:
                h = F.relu(h)
        return h


def adapted_names(model, variant: Variant) -> list[str]:
    """The parameters the inner loop changes: W and b of every cell, or of the head only (ANIL),
    less the cells a model marks as `frozen_cells` (the freezing study, core.nil.FrozenCells)."""
    cells = model.cell_names()
    if variant.inner_params == "head":
        cells = cells[-1:]
    frozen = getattr(model, "frozen_cells", ())
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
