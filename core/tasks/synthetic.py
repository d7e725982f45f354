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
    def output_dim(self) -> int:
        return self.ways

    def sample(self, generator: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        def part(k):
            y = torch.arange(self.ways).repeat(k).expand(n_tasks, -1).contiguous()
            x = torch.rand(n_tasks, k * self.ways, *self.input_shape, generator=generator)
            return x + self.offset * y.view(n_tasks, -1, 1, 1, 1), y

        return Batch(*part(shots), *part(queries))
