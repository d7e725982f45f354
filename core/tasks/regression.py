"""Regression families of MT-net section 6.1 and 6.3 (MSE loss)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Batch, FamilyBase


def _uniform(g: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low


def _support_then_query(g, f, x_range, n_tasks: int, shots: int, queries: int) -> Batch:
    """Meta-training tasks: shots + queries inputs in one draw, support first."""
    x = _uniform(g, (n_tasks, shots + queries, 1), *x_range)
    x, y = x.float(), f(x).float()
    return Batch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def _query_then_support(g, f, x_range, max_shots: int, queries: int) -> Batch:
    """An evaluation task: the query inputs first, so they never depend on max_shots; then the support
    inputs, filled in order (the first k are the same for any max_shots >= k)."""
    xq = _uniform(g, (1, queries, 1), *x_range)
    xs = _uniform(g, (1, max_shots, 1), *x_range)
    return Batch(xs.float(), f(xs).float(), xq.float(), f(xq).float())


class RegressionFamily(FamilyBase):
    """What the regression families share: scalar inputs and targets, MSE, the dense net."""

    loss = "mse"
    model = "dense"
    input_shape = (1,)
    output_dim = 1


@dataclass(frozen=True)
class Sine(RegressionFamily):
    """y = A sin(w x + b), A ~ U[0.1, 5], w ~ U[0.8, 1.2], b ~ U[0, pi], x ~ U[-5, 5] (section 6.1)."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    frequency: tuple[float, float] = (0.8, 1.2)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    name = "sine"

    def _draw(self, g: torch.Generator, n_tasks: int):
        a = _uniform(g, (n_tasks, 1, 1), *self.amplitude)
        w = _uniform(g, (n_tasks, 1, 1), *self.frequency)
        b = _uniform(g, (n_tasks, 1, 1), *self.phase)
        return lambda x: a * torch.sin(w * x + b)

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        return _support_then_query(g, self._draw(g, n_tasks), self.x_range, n_tasks, shots, queries)

    def eval_task(self, g: torch.Generator, max_shots: int, queries: int, split: str = "test") -> Batch:
        return _query_then_support(g, self._draw(g, 1), self.x_range, max_shots, queries)


@dataclass(frozen=True)
class Polynomial(RegressionFamily):
    """y = sum_i c_i x^i for i <= order (section 6.3): c_i ~ U[-1, 1] * coef_decay**i.

    The paper states c_i ~ U[-1, 1] (coef_decay=1); the authors' code divides c_i by 2^i
    (coef_decay=0.5). The paper is silent on x; the authors' code draws x ~ U[-2, 2].
    """

    order: int = 2
    coef_range: tuple[float, float] = (-1.0, 1.0)
    coef_decay: float = 1.0
    x_range: tuple[float, float] = (-2.0, 2.0)
    name = "polynomial"

    def __post_init__(self) -> None:
        if int(self.order) != self.order or self.order < 0:
            raise ValueError(f"polynomial order must be an integer >= 0 (got {self.order!r})")

    def _draw(self, g: torch.Generator, n_tasks: int):
        powers = torch.arange(self.order + 1, dtype=torch.float64)
        c = _uniform(g, (n_tasks, 1, self.order + 1), *self.coef_range) * self.coef_decay**powers
        return lambda x: (c * x**powers).sum(-1, keepdim=True)

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        return _support_then_query(g, self._draw(g, n_tasks), self.x_range, n_tasks, shots, queries)

    def eval_task(self, g: torch.Generator, max_shots: int, queries: int, split: str = "test") -> Batch:
        return _query_then_support(g, self._draw(g, 1), self.x_range, max_shots, queries)
