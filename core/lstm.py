"""A functional LSTM (Hochreiter & Schmidhuber 1997) over a flat params dict, for torch.func.

One cell, parameters `{prefix}.W_ih` [4H, I], `{prefix}.W_hh` [4H, S], `{prefix}.b` [4H] (gates in
the order i, f, g, o as torch.nn.LSTMCell); the previous hidden state fed to the gates has size S,
usually S = H (Matching Networks' attention LSTM feeds [h, r], S = 2H):

    i, f, g, o = split(x W_ih^T + h W_hh^T + b)
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g),   h' = sigmoid(o) * tanh(c')

Inputs carry any leading dimensions ([..., I]); weights are shared across them, so the same code
runs per task (vmap, loop) or with a task dimension (batched).
"""

from __future__ import annotations

import math

import torch

from .model import Params


def lstm_init(prefix: str, input_size: int, hidden_size: int, generator: torch.Generator,
              state_size: int | None = None) -> Params:
    """U(-1/sqrt(H), 1/sqrt(H)) weights and biases (torch.nn.LSTMCell's init), float64."""
    s = state_size or hidden_size
    bound = 1.0 / math.sqrt(hidden_size)

    def uniform(*shape):
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    return {f"{prefix}.W_ih": uniform(4 * hidden_size, input_size), f"{prefix}.W_hh": uniform(4 * hidden_size, s),
            f"{prefix}.b": uniform(4 * hidden_size)}


def lstm_cell(p: Params, prefix: str, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One step: x [..., I], h [..., S], c [..., H] -> (h' [..., H], c' [..., H])."""
    gates = x @ p[f"{prefix}.W_ih"].transpose(-1, -2) + h @ p[f"{prefix}.W_hh"].transpose(-1, -2) + p[f"{prefix}.b"]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_sequence(p: Params, prefix: str, xs: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Hidden states [..., T, H] of an LSTM reading xs [..., T, I] from zero states, first to last
    (or last to first with `reverse`; output t is always the state after reading element t)."""
    hidden = p[f"{prefix}.W_hh"].shape[-1]
    h = xs.new_zeros(xs.shape[:-2] + (hidden,))
    c = h
    order = range(xs.shape[-2] - 1, -1, -1) if reverse else range(xs.shape[-2])
    out = [None] * xs.shape[-2]
    for t in order:
        h, c = lstm_cell(p, prefix, xs[..., t, :], h, c)
        out[t] = h
    return torch.stack(out, dim=-2)
