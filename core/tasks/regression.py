"""Regression families of MT-net section 6.1 and 6.3 (MSE loss)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Batch, FamilyBase


def _uniform(g: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low


@dataclass(frozen=True)
class Sine(FamilyBase):
    """y = A sin(w x + b), A ~ U[0.1, 5], w ~ U[0.8, 1.2], b ~ U[0, pi], x ~ U[-5, 5] (section 6.1)."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    frequency: tuple[float, float] = (0.8, 1.2)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    name = "sine"
    loss = "mse"
    input_shape = (1,)
    output_dim = 1

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        a = _uniform(g, (n_tasks, 1, 1), *self.amplitude)
        w = _uniform(g, (n_tasks, 1, 1), *self.frequency)
        b = _uniform(g, (n_tasks, 1, 1), *self.phase)
        x = _uniform(g, (n_tasks, shots + queries, 1), *self.x_range)
        y = a * torch.sin(w * x + b)
        x, y = x.float(), y.float()
        return Batch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


@dataclass(frozen=True)
class Polynomial(FamilyBase):
    """y = sum_i c_i x^i for i <= order (section 6.3): c_i ~ U[-1, 1] * coef_decay**i.

    The paper states c_i ~ U[-1, 1] (coef_decay=1); the authors' code divides c_i by 2^i
    (coef_decay=0.5). The paper is silent on x; the authors' code draws x ~ U[-2, 2].
    """

    order: int = 2
    coef_range: tuple[float, float] = (-1.0, 1.0)
    coef_decay: float = 1.0
    x_range: tuple[float, float] = (-2.0, 2.0)
    name = "polynomial"
    loss = "mse"
    input_shape = (1,)
    output_dim = 1

    def __post_init__(self) -> None:
        if int(self.order) != self.order or self.order < 0:
            raise ValueError(f"polynomial order must be an integer >= 0 (got {self.order!r})")

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        powers = torch.arange(self.order + 1, dtype=torch.float64)
        c = _uniform(g, (n_tasks, 1, self.order + 1), *self.coef_range) * self.coef_decay**powers
        x = _uniform(g, (n_tasks, shots + queries, 1), *self.x_range)
        y = (c * x**powers).sum(-1, keepdim=True)
        x, y = x.float(), y.float()
        return Batch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
