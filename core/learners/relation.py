"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

An embedding module f_phi gives feature maps; for K shots the maps of a class's support examples
are summed (section 3.2). Each (query i, class j) pair's maps are concatenated along the channels,
C(f(x_j), f(x_i)), and a relation module g_phi scores them (eq. 1-3):

    r_ij = g_phi(C(sum_k f_phi(x_jk), f_phi(x_i))),   trained by  sum_i sum_j (r_ij - 1(y_i == y_j))^2

The relation module (Fig. 2): two conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) on the
2F-channel maps, then a fully connected layer of 8 ReLU units and one sigmoid unit. Here it is a
core.conv.ConvNet (two max-pool cells whose dense head has the 8 hidden units) plus `rel.fc` (8 -> 1);
its parameters are prefixed `rel.`. Its batch norm, like every batch norm here, uses the batch
statistics of what it sees: the Nq * ways pairs of a task.

Our conv-4 downsamples by stride 2 on Omniglot and ends in a spatial mean; the relation module needs
maps, so the embedding is the first n_conv - 1 cells of the model (`model.forward(params, x,
upto=n_conv - 1)`): 4x4x64 maps on Omniglot 28x28 (the fourth stride-2 cell would leave 2x2), 10x10x32
on MiniImagenet 84x84. Sung et al. use four conv blocks (64 filters, no padding, two max-pools:
5x5x64 maps on Omniglot, 19x19x64 on MiniImagenet) and 64-filter relation blocks; ours use the
embedding's filter count. The training objective is the mean (not the sum) of the squared errors over
the task's Nq * ways pairs: the same minimiser; Adam's step absorbs the scale.

Outputs and evaluation loss: `outputs` returns the relation logits z_ij (r_ij = sigmoid(z_ij))
[(tasks,) Nq, ways]; the prediction is argmax_j r_ij = argmax_j z_ij, and the loss in evaluation
rows (and the validation loss a tune stage minimises) is the cross-entropy of softmax_j(z_ij) -
the relation logits read as class logits. The paper reports accuracy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..conv import ConvNet, glorot
from ..losses import mse_per_task
from ..model import Params
from .metric import MetricLearner, class_onehot, metric_network

RELATION_HIDDEN = 8  # units of the relation module's first fully connected layer (Sung et al.)


def embedding_cells(model) -> int:
    """The embedding is the model's first n_conv - 1 cells (their output is a spatial map)."""
    return model.n_conv - 1


def relation_module(model) -> ConvNet:
    """Two conv blocks (max-pool) on the concatenated maps, then a dense layer of 8 units."""
    maps = replace(model, n_conv=embedding_cells(model)).spatial()
    return ConvNet(in_channels=2 * model.filters, image_size=maps, filters=model.filters, ways=RELATION_HIDDEN,
                   n_conv=2, downsample="maxpool", readout="flatten")


def class_maps(maps_support: torch.Tensor, y_support: torch.Tensor, ways: int) -> torch.Tensor:
    """The sum of each class's support maps: [..., Ns, F, h, w] -> [..., ways, F, h, w]."""
    onehot = class_onehot(y_support, ways, maps_support.dtype)  # [..., Ns, ways]
    sums = onehot.transpose(-1, -2) @ maps_support.flatten(-3)  # [..., ways, F*h*w]
    return sums.unflatten(-1, maps_support.shape[-3:])


def relation_pairs(maps_support: torch.Tensor, y_support: torch.Tensor, maps_query: torch.Tensor,
                   ways: int) -> torch.Tensor:
    """C(sum_k f(x_jk), f(x_i)) for every query i and class j, query-major (pair i * ways + j):
    [..., Nq * ways, 2F, h, w]."""
    classes = class_maps(maps_support, y_support, ways).unsqueeze(-5)  # [..., 1, ways, F, h, w]
    queries = maps_query.unsqueeze(-4)  # [..., Nq, 1, F, h, w]
    classes, queries = torch.broadcast_tensors(classes, queries)
    return torch.cat([classes, queries], dim=-3).flatten(-5, -4)


def relation_logits(p: Params, module: ConvNet, pairs: torch.Tensor, ways: int) -> torch.Tensor:
    """z [..., Nq, ways] with r = sigmoid(z) the relation scores of pairs [..., Nq * ways, 2F, h, w]."""
    rel = {k.removeprefix("rel."): v for k, v in p.items() if k.startswith("rel.")}
    hidden = F.relu(module.forward(rel, pairs))  # [..., P, 8]
    z = hidden @ p["rel.fc.W"].transpose(-1, -2) + p["rel.fc.b"]  # [..., P, 1]
    return z.squeeze(-1).unflatten(-1, (-1, ways))


def relation_objective(z: torch.Tensor, y_query: torch.Tensor, ways: int) -> torch.Tensor:
    """Eq. (3) as a mean: the squared error of r = sigmoid(z) [tasks, Nq, ways] against the one-hot
    labels y_query [tasks, Nq], per task [tasks]."""
    return mse_per_task(torch.sigmoid(z), class_onehot(y_query, ways, z.dtype))


@metric_network
@dataclass(frozen=True)
class RelationNetwork(MetricLearner):
    network: ClassVar[str] = "relation"
    PRESETS: ClassVar[dict[str, dict]] = {"relation": {}}

    def check(self, setup) -> None:
        super().check(setup)
        model = setup.model
        if not all(hasattr(model, a) for a in ("n_conv", "filters", "spatial")):
            raise ValueError(f"learner {self.name!r}: the relation module reads conv feature maps; "
                             f"{type(model).__name__} is not a conv net (core.conv.ConvNet)")
        if model.n_conv < 2 or replace(model, n_conv=embedding_cells(model)).spatial() < 4:
            raise ValueError(f"learner {self.name!r}: the relation module's two 2x2 max-pools need embedding maps "
                             f"of at least 4x4 (the first n_conv - 1 = {embedding_cells(model)} conv cells of a "
                             f"{model.image_size}x{model.image_size} input leave less)")

    def embedding_params(self, setup, generator: torch.Generator) -> Params:
        """The model's first n_conv - 1 cells (the others are never read)."""
        p = setup.model.init(generator, dtype=torch.float64)
        keep = tuple(f"c{l}." for l in range(embedding_cells(setup.model)))
        return {k: v for k, v in p.items() if k.startswith(keep)}

    def own_params(self, setup, generator: torch.Generator) -> Params:
        module = relation_module(setup.model)
        p = {f"rel.{k}": v for k, v in module.init(generator, dtype=torch.float64).items()}
        p["rel.fc.W"] = glorot((1, RELATION_HIDDEN), RELATION_HIDDEN, 1, generator)
        p["rel.fc.b"] = torch.zeros(1, dtype=torch.float64)
        return p

    def logits(self, setup, params: Params, x_support, y_support, x_query, ways: int) -> torch.Tensor:
        model, upto = setup.model, embedding_cells(setup.model)
        pairs = relation_pairs(model.forward(params, x_support, upto=upto), y_support,
                               model.forward(params, x_query, upto=upto), ways)
        return relation_logits(params, relation_module(model), pairs, ways)

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        return [self.logits(setup, params, x_support, y_support, x_query, self.ways(setup))]

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool) -> torch.Tensor:
        """The MSE of the relation scores against one-hot labels (eq. 3), per task when batched."""
        ways = self.ways(setup)
        z = self.logits(setup, params, batch.x_support, batch.y_support, batch.x_query, ways)
        loss = relation_objective(z if batched else z.unsqueeze(0), batch.y_query if batched else
                                  batch.y_query.unsqueeze(0), ways)
        return loss if batched else loss[0]
