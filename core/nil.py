"""Evaluation modes of the feature-reuse study (Raghu et al., "Rapid learning or feature reuse?").

NIL (No Inner Loop): no head at test time. Each query's penultimate features are compared with the
support set's by cosine similarity, and the similarities weight the support labels:
score_c(q) = sum over support examples s of class c of cos(f(q), f(s)); the prediction is the argmax.
The loss recorded for NIL rows is the cross-entropy of softmax(score) (a proper score, not a
quantity from the paper). It is an evaluation mode of any trained model: the variant switch
``eval_head=nil`` or ``evaluate(..., head="nil")``; after s > 0 inner steps the features are those
of the adapted body (for ANIL the same as s = 0, the body never moves).

Freezing: ``FrozenCells(model, cells)`` is the same network whose inner loop leaves a chosen block of
cells untouched (``adapted_names`` skips ``model.frozen_cells``); ``evaluate(..., frozen=(lo, hi))``
evaluates with cells lo..hi-1 frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def nil_scores(f_support: torch.Tensor, y_support: torch.Tensor, f_query: torch.Tensor, ways: int) -> torch.Tensor:
    """Class scores [(tasks,) Nq, ways] from features [(tasks,) N, F] and int labels [(tasks,) Ns]."""
    sim = F.normalize(f_query, dim=-1) @ F.normalize(f_support, dim=-1).transpose(-1, -2)  # [.., Nq, Ns]
    onehot = F.one_hot(y_support, ways).to(sim.dtype)  # [.., Ns, ways]
    return sim @ onehot


def nil_forward(model, params, x_support, y_support, x_query, ways: int) -> torch.Tensor:
    """NIL class scores of the query set: features before the head (cell n_cells - 1)."""
    upto = model.n_cells - 1
    return nil_scores(model.forward(params, x_support, upto=upto), y_support,
                      model.forward(params, x_query, upto=upto), ways)


@dataclass(frozen=True)
class FrozenCells:
    """`model` with the inner loop frozen for `frozen_cells` (names like "c0"): same parameters, same
    forward; only `adapted_names` (core.cells) reads `frozen_cells`."""

    model: object
    frozen_cells: tuple[str, ...] = ()

    @classmethod
    def block(cls, model, lo: int, hi: int) -> FrozenCells:
        """Freeze the contiguous block of cells lo .. hi - 1."""
        names = model.cell_names()
        if not (0 <= lo < hi <= len(names)):
            raise ValueError(f"frozen block [{lo}, {hi}) must lie within the {len(names)} cells")
        return cls(model, tuple(names[lo:hi]))

    @property
    def n_cells(self) -> int:
        return self.model.n_cells

    def cell_names(self) -> list[str]:
        return self.model.cell_names()

    def init(self, *args, **kwargs):
        return self.model.init(*args, **kwargs)

    def forward(self, params, x, upto=None):
        return self.model.forward(params, x, upto=upto)
