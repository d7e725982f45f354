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
    engine: str = "batched"  # how tasks of a meta-batch are processed together (see meta.ENGINES), or "auto"

    def __post_init__(self) -> None:
        if self.engine == "auto":
            object.__setattr__(self, "engine", auto_engine(self.model, self.device))
        if self.engine not in ("batched", "vmap", "loop"):
            raise ValueError(f"engine must be batched, vmap, loop or auto (got {self.engine!r})")
        if self.variant.eval_head == "nil" and self.family.loss != "cross_entropy":
            raise ValueError(f"variant {self.variant.name!r}: eval_head=nil needs a classification task")

    @property
    def loss_fn(self):
        return LOSSES[self.family.loss]


def auto_engine(model, device: str) -> str:
    """The engine measured fastest for a model on a device (one switch, `engine: auto`).

    Dense nets: "batched" everywhere (bench/bench_core.py). The conv net on CPU: "loop" - per-task
    convolutions beat one grouped convolution and vmap at meta-batch 32 (bench/bench_conv.py on this
    2-core machine: loop 0.55, batched 0.42, vmap 0.41 meta-steps/s, Omniglot 5-way 1-shot, 15
    queries); on CUDA "batched" (one grouped conv kernel per layer for all tasks; not yet measured
    here - rerun bench/bench_conv.py --device cuda and change this rule if another engine wins)."""
    is_conv = hasattr(model, "filters")
    if is_conv and not str(device).startswith("cuda"):
        return "loop"
    return "batched"
