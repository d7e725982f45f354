"""Regression families of MT-net section 6.1 and 6.3 (MSE loss)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Batch, FamilyBase


def _uniform(g: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return _scaled(torch.rand(shape, generator=g, dtype=torch.float64), low, high)


def _scaled(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return u * (high - low) + low  # _uniform's arithmetic on its draw


def _support_then_query(f, x: torch.Tensor, shots: int) -> Batch:
    """Meta-training tasks from their inputs x [tasks, shots + queries, 1] (one draw, support first)."""
    x, y = x.float(), f(x).float()
    return Batch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def _query_then_support(g, f, x_range, max_shots: int, queries: int) -> Batch:
    """An evaluation task: the query inputs first, so they never depend on max_shots; then the support
    inputs, filled in order (the first k are the same for any max_shots >= k)."""
    xq = _uniform(g, (1, queries, 1), *x_range)
    xs = _uniform(g, (1, max_shots, 1), *x_range)
    return Batch(xs.float(), f(xs).float(), xq.float(), f(xq).float())


class RegressionFamily(FamilyBase):
    """What the regression families share: scalar inputs and targets, MSE, the dense net. A meta-training
    batch is `finish(draw(...))`: `draw` takes the task parameters' and inputs' uniform draws from the
    generator (in that order), `finish` does the arithmetic, which maps over tasks (core.tasks.base)."""

    loss = "mse"
    model = "dense"
    input_shape = (1,)
    output_dim = 1

    def draw(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> tuple[torch.Tensor, ...]:
        return (*self._param_draws(g, n_tasks), torch.rand((n_tasks, shots + queries, 1), generator=g,
                                                           dtype=torch.float64))

    def finish(self, drawn: tuple[torch.Tensor, ...], shots: int) -> Batch:
        *params, x = drawn
        return _support_then_query(self._function(params), _scaled(x, *self.x_range), shots)

    def sample(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch:
        return self.finish(self.draw(g, n_tasks, shots, queries), shots)

    def _param_draws(self, g: torch.Generator, n_tasks: int) -> list[torch.Tensor]:
        """The uniform draws of n_tasks tasks' parameters [n_tasks, 1, k] (k per `_param_sizes`)."""
        return [torch.rand((n_tasks, 1, k), generator=g, dtype=torch.float64) for k in self._param_sizes()]

    def eval_task(self, g: torch.Generator, max_shots: int, queries: int, split: str = "test") -> Batch:
        return _query_then_support(g, self._function(self._param_draws(g, 1)), self.x_range, max_shots, queries)


@dataclass(frozen=True)
class Sine(RegressionFamily):
    """y = A sin(w x + b), A ~ U[0.1, 5], w ~ U[0.8, 1.2], b ~ U[0, pi], x ~ U[-5, 5] (section 6.1)."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    frequency: tuple[float, float] = (0.8, 1.2)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    name = "sine"

    def _param_sizes(self) -> tuple[int, ...]:
        return (1, 1, 1)  # A, w, b: one uniform draw each

    def _function(self, params):
        a, w, b = (_scaled(u, *r) for u, r in zip(params, (self.amplitude, self.frequency, self.phase)))
        return lambda x: a * torch.sin(w * x + b)


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

    def _param_sizes(self) -> tuple[int, ...]:
        return (self.order + 1,)  # the coefficients c_0..c_order: one draw

    def _function(self, params):
        powers = torch.arange(self.order + 1, dtype=torch.float64)
        c = _scaled(params[0], *self.coef_range) * self.coef_decay**powers
        return lambda x: (c * x**powers).sum(-1, keepdim=True)
