"""Everything static about one meta-training run: task family, model, variant, hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cells import DenseNet
from .hparams import HParams
from .losses import LOSSES
from .tasks import TaskFamily
from .variants import Variant


@dataclass(frozen=True)
class Setup:
    family: TaskFamily
    variant: Variant
    hp: HParams = field(default_factory=HParams)
    model: object = field(default_factory=DenseNet)
    train_shots: int = 10
    queries: int = 10
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    engine: str = "batched"  # how tasks of a meta-batch are processed together (see meta.ENGINES)

    def __post_init__(self) -> None:
        if self.engine not in ("batched", "vmap", "loop"):
            raise ValueError(f"engine must be batched, vmap or loop (got {self.engine!r})")
        if self.variant.eval_head == "nil" and self.family.loss != "cross_entropy":
            raise ValueError(f"variant {self.variant.name!r}: eval_head=nil needs a classification task")

    @property
    def loss_fn(self):
        return LOSSES[self.family.loss]
