"""The input embedding e(x) of a black-box learner: the model it computes with (core.model protocol).

A black-box learner reads a task's support set (inputs with their labels) as a sequence or a set;
its sequence network (memory, attention, encoder, ...) is sized by hyper-parameters the trial sets,
so its weights are the learner's own parameters (like T-net's T). The model is what turns one input
into a vector:

- "flat": e(x) = x flattened (MANN's raw inputs: sine's x, Omniglot's 784 pixels; a neural process's
  x on regression);
- "mlp": dense layers with a ReLU after each, sizes `hidden` (SNAIL's embedding on regression);
- "conv": the family's conv-4 net without its head (core.conv.ConvNet's shapes, init and parameter
  names ``c{l}.W/b/gamma/beta_bn``: SNAIL's, Meta Networks' and the neural process's embedding on
  images). Its batch norm normalises with the statistics of the task's **support set** (per task,
  per channel, over support examples and positions), applied to support and query alike: a
  query's embedding then depends on the support set and on itself only - not on the other queries
  nor on other tasks - which the causality of SNAIL and MANN needs (MAML's net uses each set's own
  statistics). Weights are shared by all tasks, so the tasks are folded into the convolution's
  batch (one conv call, no grouped convolution).

Shapes: `embed(p, x_support, x_query)` takes [..., Ns, *input_shape] and [..., Nq, *input_shape]
and returns [..., Ns, dim] and [..., Nq, dim]; `forward` / `features` embed one set (its own
statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ...conv import BN_EPS, ConvNet
from ...model import Params
from .nn import mlp_init


@dataclass(frozen=True)
class Embedding:
    kind: Literal["flat", "mlp", "conv"]
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...] = ()
    conv: ConvNet | None = None

    @property
    def dim(self) -> int:
        if self.kind == "conv":
            return self.conv.feature_dim()
        if self.kind == "mlp":
            return self.hidden[-1]
        return math.prod(self.input_shape)

    @property
    def n_cells(self) -> int:
        return {"flat": 0, "mlp": len(self.hidden), "conv": self.conv.n_conv if self.conv else 0}[self.kind]

    def cell_names(self) -> list[str]:
        return [f"c{l}" for l in range(self.n_cells)]

    def init(self, generator: torch.Generator, dtype=torch.float32, device="cpu") -> Params:
        """conv: ConvNet's init (Glorot W, b = 0, gamma = 1, beta = 0) without the head; mlp:
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) cells ``c{l}``; flat: nothing."""
        if self.kind == "conv":
            p = self.conv.init(generator, dtype=torch.float64)
            head = f"c{self.conv.n_conv}"
            p = {k: v for k, v in p.items() if not k.startswith(head + ".")}
        elif self.kind == "mlp":
            sizes = (math.prod(self.input_shape), *self.hidden)
            p = {k.replace("emb.l", "c"): v for k, v in mlp_init("emb", sizes, generator).items()}
        else:
            p = {}
        return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}

    def embed(self, p: Params, x_support: torch.Tensor, x_query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e(x_support) [..., Ns, dim], e(x_query) [..., Nq, dim]); conv batch norm uses support statistics."""
        nd = len(self.input_shape)
        if self.kind == "conv":
            return self._conv(p, x_support, x_query)
        es, eq = x_support.flatten(-nd), x_query.flatten(-nd)
        for l in range(self.n_cells if self.kind == "mlp" else 0):
            es = torch.relu(es @ p[f"c{l}.W"].transpose(-1, -2) + p[f"c{l}.b"])
            eq = torch.relu(eq @ p[f"c{l}.W"].transpose(-1, -2) + p[f"c{l}.b"])
        return es, eq

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        empty = x[(Ellipsis, slice(0, 0)) + (slice(None),) * len(self.input_shape)]
        return self.embed(p, x, empty)[0]

    def forward(self, p: Params, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The embedding (a black-box learner's model has no head of its own); `upto` is not supported."""
        if upto is not None:
            raise ValueError("a black-box learner's embedding has no intermediate cells to stop at")
        return self.features(p, x)

    def _conv(self, p: Params, xs: torch.Tensor, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.conv
        ns = xs.shape[-4]
        h = torch.cat([xs, xq], dim=-4)  # [..., N, C, H, W]
        lead, n = h.shape[:-4], h.shape[-4]
        stride = 2 if net.downsample == "stride" else 1
        for l in range(net.n_conv):
            c = f"c{l}"
            y = F.conv2d(h.reshape(-1, *h.shape[-3:]), p[f"{c}.W"], p[f"{c}.b"], stride=stride, padding=1)
            y = y.reshape(*lead, n, *y.shape[1:])
            y = torch.relu(support_batch_norm(y, ns, p[f"{c}.gamma"], p[f"{c}.beta_bn"]))
            if net.downsample == "maxpool":
                z = F.max_pool2d(y.reshape(-1, *y.shape[-3:]), 2, 2)
                y = z.reshape(*lead, n, *z.shape[1:])
            h = y
        feats = h.mean(dim=(-2, -1)) if net.readout == "mean" else h.flatten(-3)
        return feats[..., :ns, :], feats[..., ns:, :]


def support_batch_norm(y: torch.Tensor, ns: int, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """y [..., N, C, H, W] normalised per channel with the mean / biased variance of its first `ns`
    examples (the support set) over examples and positions; affine gamma, beta [C]."""
    s = y[..., :ns, :, :, :]
    mean = s.mean(dim=(-4, -2, -1), keepdim=True)
    var = (s - mean).pow(2).mean(dim=(-4, -2, -1), keepdim=True)
    return (y - mean) * torch.rsqrt(var + BN_EPS) * gamma.view(-1, 1, 1) + beta.view(-1, 1, 1)


def make_embedding(family, kind: str, hidden: tuple[int, ...] = (40, 40)) -> Embedding:
    """The embedding of `kind` for a task family: conv takes the family's conv-4 shapes
    (core.registry's model for the family, e.g. 64 filters / stride 2 on Omniglot)."""
    shape = tuple(family.input_shape)
    if kind == "conv":
        from ...registry import default_model

        net = default_model(family, tuple(hidden))
        if not isinstance(net, ConvNet):
            raise ValueError(f"task family {family.name} has no conv net to embed its inputs with")
        return Embedding("conv", shape, conv=net)
    if kind == "mlp":
        return Embedding("mlp", shape, hidden=tuple(hidden))
    return Embedding("flat", shape)
