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
    vectorize: bool = True  # vmap the meta-batch (False: a per-task loop of the same math)

    def __post_init__(self) -> None:
        if self.variant.eval_head == "nil" and self.family.loss != "cross_entropy":
            raise ValueError(f"variant {self.variant.name!r}: eval_head=nil needs a classification task")

    @property
    def loss_fn(self):
        return LOSSES[self.family.loss]
