"""Functional building blocks of the black-box learners, on flat params dicts (torch.func-ready).

Every function takes inputs with any leading dimensions ([..., features]) and weights without them,
so one code path serves one task (vmap, loop engines) and a task dimension (batched engine).

- `linear_init` / `linear`: y = x W^T + b, W [out, in], U(-1/sqrt(in), 1/sqrt(in)) init (the
  default of torch.nn.Linear);
- `mlp_init` / `mlp`: dense layers with ReLU between them (and after the last with `final_relu`);
- `preprocess`: the gradient / loss preprocessing of Andrychowicz et al. (2016, appendix A) that Ravi &
  Larochelle and Munkhdalai & Yu feed their meta-learners:
      x -> (log|x| / p, sign x)   if |x| >= e^-p
           (-1, e^p x)            otherwise,            p = 10;
- `cosine`: cosine similarity with a small epsilon inside the norms (differentiable at 0).
"""

from __future__ import annotations

import math

import torch

from ...model import Params


def uniform(shape, bound: float, generator: torch.Generator, low: float | None = None) -> torch.Tensor:
    """U(-bound, bound) (or U(low, bound)) in float64 from `generator`."""
    low = -bound if low is None else low
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (bound - low) + low


def linear_init(prefix: str, n_in: int, n_out: int, generator: torch.Generator, bias: bool = True) -> Params:
    """`{prefix}.W` [n_out, n_in] and `{prefix}.b` [n_out], U(-1/sqrt(n_in), 1/sqrt(n_in))."""
    bound = 1.0 / math.sqrt(n_in)
    p = {f"{prefix}.W": uniform((n_out, n_in), bound, generator)}
    if bias:
        p[f"{prefix}.b"] = uniform((n_out,), bound, generator)
    return p


def linear(p: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """x [..., in] -> [..., out]."""
    y = x @ p[f"{prefix}.W"].transpose(-1, -2)
    b = p.get(f"{prefix}.b")
    return y if b is None else y + b


def mlp_init(prefix: str, sizes: tuple[int, ...], generator: torch.Generator) -> Params:
    """Layers `{prefix}.l0` .. `{prefix}.l{n-2}` mapping sizes[i] -> sizes[i + 1]."""
    p: Params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        p.update(linear_init(f"{prefix}.l{i}", n_in, n_out, generator))
    return p


def mlp_layers(p: Params, prefix: str) -> int:
    n = 0
    while f"{prefix}.l{n}.W" in p:
        n += 1
    return n


def mlp(p: Params, prefix: str, x: torch.Tensor, final_relu: bool = False) -> torch.Tensor:
    """ReLU between the layers of `{prefix}` (and after the last with `final_relu`)."""
    n = mlp_layers(p, prefix)
    for i in range(n):
        x = linear(p, f"{prefix}.l{i}", x)
        if i < n - 1 or final_relu:
            x = torch.relu(x)
    return x


PREPROCESS_P = 10.0


def preprocess(x: torch.Tensor, p: float = PREPROCESS_P) -> torch.Tensor:
    """[..., ] -> [..., 2]: (log|x| / p, sign x) where |x| >= e^-p, else (-1, e^p x) (Andrychowicz et
    al. 2016). Continuous in the second coordinate's scale; finite gradients everywhere (the log reads
    |x| clamped at e^-p, so its branch is flat where it is not selected)."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, -torch.ones_like(x))
    second = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity along the last dimension (broadcasting), a . b / (|a| |b|), norms
    sqrt(|.|^2 + eps)."""
    na = torch.sqrt((a * a).sum(-1) + eps)
    nb = torch.sqrt((b * b).sum(-1) + eps)
    return (a * b).sum(-1) / (na * nb)
