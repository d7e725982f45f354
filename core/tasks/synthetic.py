"""Random images with the shapes of a real dataset: the conv net's real cost and math without the data.

For benchmarks and device checks (bench/bench_conv.py, bench/conv_precision.py, tests/test_cuda.py),
never for results: uniform noise plus a per-class brightness offset, so that a net has something
to learn and the gradients are not degenerate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, FamilyBase


@dataclass(frozen=True)
class SyntheticImages(FamilyBase):
    ways: int = 5
    channels: int = 1  # Omniglot: 1 x 28 x 28; MiniImagenet: 3 x 84 x 84
    size: int = 28
    offset: float = 0.2  # brightness added per class index
    name = "synthetic-images"
    loss = "cross_entropy"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    @property
    def model(self) -> str:
        return "conv4-omniglot" if self.channels == 1 else "conv4-miniimagenet"

    @property
    def output_dim(self) -> int:
        return self.ways

    def _part(self, generator: torch.Generator, n_tasks: int, k: int):
        y = torch.arange(self.ways).repeat(k).expand(n_tasks, -1).contiguous()
        x = torch.rand(n_tasks, k * self.ways, *self.input_shape, generator=generator)
        return x + self.offset * y.view(n_tasks, -1, 1, 1, 1), y

    def sample(self, generator: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        support = self._part(generator, n_tasks, shots)
        return Batch(*support, *self._part(generator, n_tasks, queries))

    def eval_task(self, generator: torch.Generator, max_shots: int, queries: int, split: str = "test") -> Batch:
        query = self._part(generator, 1, queries)
        return Batch(*self._part(generator, 1, max_shots), *query)
