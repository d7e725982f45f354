"""Everything static about one meta-training run: task family, model, variant, hyper-parameters."""

from __future__ import annotations

from contextlib import contextmanager
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
    cuda_graphs: bool = True  # on CUDA, replay the meta-gradient from a captured CUDA graph (core/graphs.py)
    tf32: bool = False  # on CUDA, allow TF32 convolutions/matmuls (see math_mode)
    deterministic: bool = True  # on CUDA, deterministic cuDNN algorithms (exact resume; see math_mode)

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

    @contextmanager
    def math_mode(self):
        """Full float32 arithmetic on CUDA unless `tf32` is asked for. PyTorch's default lets cuDNN
        convolutions run in TF32 (10-bit mantissa); on an H100 that put the conv net's second-order
        meta-gradient 7-9 % (relative norm) away from float64, against 1e-5 for float32 - for no
        speed gain at these sizes (docs/BENCHMARKS.md).

        `deterministic`: cuDNN's fastest convolution-gradient algorithms accumulate with atomics, so
        two identical runs drift apart in the last bits (seen on an H100: the first conv layer's
        weights differed after 20 steps) and a resumed run would not continue exactly.

        The flags are process-wide, so they are set around each computation and restored after."""
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        old = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark
        cudnn.allow_tf32 = matmul.allow_tf32 = bool(self.tf32)
        if self.deterministic:
            cudnn.deterministic, cudnn.benchmark = True, False
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = old


def auto_engine(model, device: str) -> str:
    """The engine measured fastest for a model on a device (one switch, `engine: auto`).

    Dense nets: "batched" everywhere (bench/bench_core.py). The conv net on CPU: "loop" - per-task
    convolutions beat one grouped convolution and vmap at meta-batch 32 (bench/bench_conv.py on the
    2-core CI machine: loop 0.55, batched 0.42, vmap 0.41 meta-steps/s, Omniglot 5-way 1-shot, 15
    queries). On CUDA "batched": one grouped conv kernel per layer for all tasks (H100, Omniglot
    5-way 1-shot, 1 query, meta-batch 32, MAML: batched 27, vmap 21, loop 1.3 meta-steps/s; with the
    meta-gradient replayed from a CUDA graph, core/graphs.py, batched runs at 93)."""
    is_conv = hasattr(model, "filters")
    if is_conv and not str(device).startswith("cuda"):
        return "loop"
    return "batched"
