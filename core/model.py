"""The model protocol: what every network a learner computes with provides.

A model owns its weights and biases (and batch-norm gamma / beta) and says how to compute with them;
it knows nothing of learners. Parameters are one flat dict of tensors (`Params`), so that
`torch.func` can map a per-task function over tasks and a learner can add its own meta-parameters
to the same dict (e.g. T-net's ``c{l}.T``, which the dense and conv forward passes apply after a
cell's affine map when present).

Implementations: `core.cells.DenseNet` (the 1-40-40-1 regression net), `core.conv.ConvNet` (the
authors' few-shot CNN). A sequence model for black-box learners satisfies the same protocol.
Optional: `task_gradients(params, x, y, loss_grad, names)`, every task's inner gradient written out
(DenseNet's; core.adapt uses it in the batched engine, autograd otherwise).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

Params = dict[str, torch.Tensor]


@runtime_checkable
class Model(Protocol):
    n_cells: int

    def cell_names(self) -> list[str]:
        """Names of the cells in order, ``c0`` .. ``c{n_cells-1}``; the last is the head."""
        ...

    def init(self, generator: torch.Generator, dtype=torch.float32, device="cpu") -> Params:
        """Seeded initial parameters: ``{cell}.W``, ``{cell}.b`` (and batch norm's)."""
        ...

    def forward(self, params: Params, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Outputs for inputs x [(tasks,) N, *input_shape]; `upto` stops before cell `upto`."""
        ...

    def features(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The head's input [(tasks,) N, feature_dim]: what metric learners and NIL compare."""
        ...
