"""A task family in one file (the worked example of docs/EXTENDING.md): 2..4-way classification of
tiny 1x8x8 images where class c is a bright quadrant (which quadrant is drawn per task), plus its
small conv model. Import it as a plugin (spec `plugins: [toyfamily]`, or METASWEEP_PLUGINS)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metasweep.core.conv import ConvNet
from metasweep.core.registry import register_family, register_model
from metasweep.core.tasks.base import Batch, FamilyBase


@register_family
@dataclass(frozen=True)
class Quadrants(FamilyBase):
    ways: int = 2
    noise: float = 0.3
    name = "quadrants"
    loss = "cross_entropy"
    model = "tiny-conv"
    input_shape = (1, 8, 8)

    def __post_init__(self) -> None:
        if not 2 <= self.ways <= 4:
            raise ValueError(f"quadrants: ways must be 2, 3 or 4 (got {self.ways!r})")

    @property
    def output_dim(self) -> int:
        return self.ways

    def _quadrants(self, g, n_tasks):
        return torch.rand(n_tasks, 4, generator=g).argsort(1)[:, : self.ways]  # [tasks, ways]

    def _part(self, g, quad, k):
        n_tasks = quad.shape[0]
        y = torch.arange(self.ways).repeat(k).expand(n_tasks, -1).contiguous()  # shot-major labels
        x = self.noise * torch.randn(n_tasks, k * self.ways, 1, 8, 8, generator=g)
        q = quad.gather(1, y)  # the quadrant of each example's class
        rows, cols = torch.div(q, 2, rounding_mode="floor"), q % 2
        mask = torch.zeros(n_tasks, k * self.ways, 2, 2)
        mask[torch.arange(n_tasks)[:, None], torch.arange(k * self.ways)[None], rows, cols] = 1.0
        x += mask.repeat_interleave(4, -1).repeat_interleave(4, -2).unsqueeze(2)
        return x, y

    def sample(self, g, n_tasks, shots, queries):
        quad = self._quadrants(g, n_tasks)
        support = self._part(g, quad, shots)
        return Batch(*support, *self._part(g, quad, queries))

    def eval_task(self, g, max_shots, queries, split="test"):
        quad = self._quadrants(g, 1)
        query = self._part(g, quad, queries)  # the query first: it never depends on max_shots
        return Batch(*self._part(g, quad, max_shots), *query)


register_model("tiny-conv", lambda family, hidden: ConvNet(1, 8, 4, family.ways, 2, "stride", "mean"))
