"""The authors' few-shot CNN as cells (MAML / MT-net conv model).

Cell l < n_conv: 3x3 conv W (+ bias b), then T as a 1x1 conv with as many channels (T-net / MT-net,
T = I at init), batch norm, ReLU, then stride 2 (Omniglot: the conv itself has stride 2) or a 2x2
max-pool (MiniImagenet). The last cell is a dense head on the pooled (Omniglot: spatial mean) or
flattened (MiniImagenet) features, with its own T for transform variants.

Batch norm always uses the batch statistics of the examples it sees (one task's support or query
set; at training and at test, as in the authors' code), with meta-learned gamma/beta
(``c{l}.gamma``, ``c{l}.beta_bn``) that the inner loop never moves. It is written with mean/var ops:
``F.batch_norm`` under ``vmap(grad(...))`` gives wrong second-order meta-gradients in torch 2.14.

Parameter shapes: W [F, C, 3, 3], b [F], T [F, F], row mask zeta [F] (one per output channel),
full masks zeta_W / zeta_b like W / b. The forward pass takes unbatched weights with inputs
[N, C, H, W] (vmap / loop engines) or, in the batched engine, inputs [tasks, N, C, H, W] with
adapted weights [tasks, ...] (grouped convolutions: one conv call for all tasks).

Inner-loss convention: cross-entropy averaged over the task's examples (core.losses). The authors'
TF code sums the per-example losses scaled by 1/K, i.e. N times our mean for N ways: their alpha
equals ours divided by N (alpha_ours = alpha_TF * ways).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .model import Params
from .registry import register_model

BN_EPS = 1e-3  # tf.contrib.layers.batch_norm's default epsilon


def glorot(shape, fan_in: int, fan_out: int, generator: torch.Generator) -> torch.Tensor:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * limit


def batch_norm(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """h: [N, tasks, C, H, W]; statistics per task and channel over (N, H, W), biased variance.
    gamma, beta: [C], or [tasks, C] (per-task parameters: a bundle folded into the task dimension)."""
    mean = h.mean(dim=(0, 3, 4), keepdim=True)
    var = (h - mean).pow(2).mean(dim=(0, 3, 4), keepdim=True)
    shape = (1, *gamma.shape, 1, 1) if gamma.dim() == 2 else (-1, 1, 1)
    return (h - mean) * torch.rsqrt(var + BN_EPS) * gamma.view(shape) + beta.view(shape)


@dataclass(frozen=True)
class ConvNet:
    in_channels: int = 1
    image_size: int = 28
    filters: int = 64
    ways: int = 5
    n_conv: int = 4
    downsample: Literal["stride", "maxpool"] = "stride"
    readout: Literal["mean", "flatten"] = "mean"

    @classmethod
    def omniglot(cls, ways: int, image_size: int = 28) -> ConvNet:
        return cls(1, image_size, 64, ways, 4, "stride", "mean")

    @classmethod
    def miniimagenet(cls, ways: int, image_size: int = 84) -> ConvNet:
        return cls(3, image_size, 32, ways, 4, "maxpool", "flatten")

    @property
    def n_cells(self) -> int:
        return self.n_conv + 1

    def cell_names(self) -> list[str]:
        return [f"c{l}" for l in range(self.n_cells)]

    def spatial(self) -> int:
        s = self.image_size
        for _ in range(self.n_conv):
            s = (s + 1) // 2 if self.downsample == "stride" else s // 2
        return s

    def feature_dim(self) -> int:
        return self.filters if self.readout == "mean" else self.filters * self.spatial() ** 2

    def init(self, generator: torch.Generator, dtype=torch.float32, device="cpu") -> Params:
        """W: Glorot uniform (the authors' xavier initialiser), b = 0, gamma = 1, beta = 0. A learner
        adds its own meta-parameters (T as a 1x1 conv, zeta, alpha) on top (core.learners)."""
        p: Params = {}
        c_in, f = self.in_channels, self.filters
        for l in range(self.n_conv):
            c = f"c{l}"
            p[f"{c}.W"] = glorot((f, c_in, 3, 3), c_in * 9, f * 9, generator)
            p[f"{c}.b"] = torch.zeros(f, dtype=torch.float64)
            p[f"{c}.gamma"] = torch.ones(f, dtype=torch.float64)
            p[f"{c}.beta_bn"] = torch.zeros(f, dtype=torch.float64)
            c_in = f
        head = f"c{self.n_conv}"
        p[f"{head}.W"] = glorot((self.ways, self.feature_dim()), self.feature_dim(), self.ways, generator)
        p[f"{head}.b"] = torch.zeros(self.ways, dtype=torch.float64)
        return {k: v.to(dtype=dtype, device=device) for k, v in p.items()}

    def features(self, p: Params, x: torch.Tensor) -> torch.Tensor:
        """The pooled (Omniglot: spatial mean) or flattened (MiniImagenet) features the head reads:
        [(tasks,) N, feature_dim]."""
        return self.forward(p, x, upto=self.n_conv)

    def forward(self, p: Params, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Logits [N, ways] for x [N, C, H, W], or [tasks, N, ways] for x [tasks, N, C, H, W].
        `upto` stops before cell `upto`: the activations after cell upto - 1 ([(tasks,) N, F, H, W]
        for upto < n_conv; for upto = n_conv the pooled / flattened features [(tasks,) N, features]
        that the head reads)."""
        batched = x.dim() == 5
        h = x.transpose(0, 1) if batched else x.unsqueeze(1)  # [N, tasks, C, H, W]
        n, t = h.shape[0], h.shape[1]
        stop = self.n_cells if upto is None else upto
        for l in range(min(stop, self.n_conv)):
            h = self._conv_cell(p, f"c{l}", h, n, t)
        if stop < self.n_conv:
            return h.transpose(0, 1) if batched else h.squeeze(1)
        feats = h.mean(dim=(3, 4)) if self.readout == "mean" else h.flatten(2)  # [N, tasks, features]
        feats = feats.transpose(0, 1)  # [tasks, N, features]
        if stop == self.n_conv:  # the penultimate features (NIL, CKA)
            return feats if batched else feats.squeeze(0)
        head = f"c{self.n_conv}"
        out = feats @ p[f"{head}.W"].transpose(-1, -2) + p[f"{head}.b"].unsqueeze(-2)
        T = p.get(f"{head}.T")
        if T is not None:
            out = out @ T.transpose(-1, -2)
        return out if batched else out.squeeze(0)

    def _conv_cell(self, p: Params, c: str, h: torch.Tensor, n: int, t: int) -> torch.Tensor:
        W, b = p[f"{c}.W"], p[f"{c}.b"]
        c_in = h.shape[2]
        if W.dim() == 5:  # batched fast weights [tasks, F, C, 3, 3]: one grouped conv
            weight = W.reshape(t * W.shape[1], c_in, 3, 3)
            bias = b.reshape(-1)
        else:
            weight = W if t == 1 else W.repeat(t, 1, 1, 1)
            bias = b if t == 1 else b.repeat(t)
        stride = 2 if self.downsample == "stride" else 1
        y = F.conv2d(h.reshape(n, t * c_in, *h.shape[3:]), weight, bias, stride=stride, padding=1, groups=t)
        y = y.reshape(n, t, -1, *y.shape[2:])  # [N, tasks, F, H, W]
        T = p.get(f"{c}.T")
        if T is not None:  # a 1x1 conv: y_g = sum_f T[g, f] y_f (T [tasks, g, f]: one per task)
            y = torch.einsum("tgf,ntfhw->ntghw" if T.dim() == 3 else "gf,ntfhw->ntghw", T, y)
        y = F.relu(batch_norm(y, p[f"{c}.gamma"], p[f"{c}.beta_bn"]))
        if self.downsample == "maxpool":
            y = F.max_pool2d(y.flatten(1, 2), 2, 2)
            y = y.reshape(n, t, -1, *y.shape[2:])
        return y


register_model("conv4-omniglot", lambda family, hidden: ConvNet.omniglot(family.ways, family.input_shape[-1]))
register_model("conv4-miniimagenet", lambda family, hidden: ConvNet.miniimagenet(family.ways, family.input_shape[-1]))
