"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class k of a task has a prototype, the mean embedding of its support examples (eq. 1):

    c_k = 1/|S_k| * sum over (x_i, y_i) in S_k of f_phi(x_i)

and a query x is classified by a softmax over negative distances to the prototypes (eq. 2):

    p(y = k | x) = exp(-d(f_phi(x), c_k)) / sum_k' exp(-d(f_phi(x), c_k'))

with d the squared Euclidean distance (the paper's choice), or, as the switch `distance: cosine`,
logits s * cos(f_phi(x), c_k) with a scale s (the hyper-parameter `cosine_scale`; cosine
similarities alone lie in [-1, 1], too flat for a softmax). Training minimises the cross-entropy of
the query set of training episodes (the paper's J(phi)); evaluation rows record the same
cross-entropy on the evaluation tasks.

Switches: `distance` (euclidean | cosine); `train_ways` (0: the task's ways) - the paper trains with
more ways than it tests (60-way episodes on Omniglot, 30-way for MiniImagenet 1-shot and 20-way for
5-shot), the family must hold that many classes in its train split (checked before training);
`train_queries` (0: the task's queries; the paper: 5 per class on Omniglot, 15 on MiniImagenet).
Where ours differs from the paper: the embedding is the project's conv-4 (Omniglot: stride 2 and a
spatial mean, 64 features; MiniImagenet: 32 filters, 800 features; the paper's has 64 filters and
max-pools, 64 / 1600 features), batch norm uses each set's batch statistics, and Adam's step beta is
constant (the paper halves it every 2000 episodes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..hparams import HParamDef, register_hparam
from ..losses import LOSSES, PER_TASK
from ..model import Params
from .metric import MetricLearner, check_int_switch, class_onehot, metric_network

register_hparam(HParamDef("cosine_scale", 10.0, low=0, search=(1.0, 100.0, True),
                          help="scale s of Prototypical Networks' cosine logits s * cos(f(x), c_k) (distance: cosine)"))

DISTANCES = ("euclidean", "cosine")


def prototypes(f_support: torch.Tensor, y_support: torch.Tensor, ways: int) -> torch.Tensor:
    """Eq. (1): the mean support embedding per class. f_support [..., Ns, D], y_support [..., Ns]
    (int) -> [..., ways, D]."""
    onehot = class_onehot(y_support, ways, f_support.dtype)  # [..., Ns, ways]
    sums = onehot.transpose(-1, -2) @ f_support  # [..., ways, D]
    return sums / onehot.sum(-2).unsqueeze(-1)


def prototype_logits(f_support: torch.Tensor, y_support: torch.Tensor, f_query: torch.Tensor, ways: int,
                     distance: str = "euclidean", scale: float = 1.0) -> torch.Tensor:
    """Eq. (2)'s logits [..., Nq, ways] for query embeddings f_query [..., Nq, D]: -||f(x) - c_k||^2
    (euclidean) or scale * cos(f(x), c_k) (cosine)."""
    c = prototypes(f_support, y_support, ways)
    if distance == "cosine":
        return scale * (F.normalize(f_query, dim=-1) @ F.normalize(c, dim=-1).transpose(-1, -2))
    return -(f_query.unsqueeze(-2) - c.unsqueeze(-3)).pow(2).sum(-1)


def family_with_ways(family, ways: int):
    """`family` with `ways` classes per episode (image families share their decoded splits)."""
    if family.ways == ways:
        return family
    with_ways = getattr(family, "with_ways", None)
    return with_ways(ways) if with_ways is not None else replace(family, ways=ways)


@metric_network
@dataclass(frozen=True)
class PrototypicalNetwork(MetricLearner):
    distance: str = "euclidean"
    train_ways: int = 0  # ways of the training episodes; 0: the task's
    train_queries: int = 0  # queries per class in training episodes; 0: the task's
    network: ClassVar[str] = "prototypical"
    PRESETS: ClassVar[dict[str, dict]] = {
        "protonet": {"distance": "euclidean"},  # training ways / queries = the task's
        "protonet-60way": {"distance": "euclidean", "train_ways": 60, "train_queries": 5},  # Omniglot
        "protonet-30way": {"distance": "euclidean", "train_ways": 30, "train_queries": 15},  # MiniImagenet 1-shot
        "protonet-20way": {"distance": "euclidean", "train_ways": 20, "train_queries": 15},  # MiniImagenet 5-shot
    }

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"learner {self.name!r}: distance must be one of {', '.join(DISTANCES)} "
                             f"(got {self.distance!r})")
        check_int_switch(self, "train_ways", self.train_ways, 2, "the task's ways")
        check_int_switch(self, "train_queries", self.train_queries, 1, "the task's queries")

    def own_hparams(self) -> tuple[str, ...]:
        return ("cosine_scale",) if self.distance == "cosine" else ()

    def training_ways(self, setup) -> int:
        return self.train_ways or setup.family.output_dim

    def training_queries(self, setup) -> int:
        return self.train_queries or setup.queries

    def training_family(self, setup):
        return family_with_ways(setup.family, self.training_ways(setup)) if self.train_ways else setup.family

    def check(self, setup) -> None:
        """The training episodes (train_ways classes, train shots + train queries images each) must
        fit the family's train split."""
        super().check(setup)
        if not self.train_ways and not self.train_queries:
            return
        if self.train_ways and not hasattr(setup.family, "ways"):
            raise ValueError(f"learner {self.name!r}: train_ways needs a task family with a `ways` option "
                             f"({setup.family.name} has none); set train_ways: 0")
        try:
            from ..setup import max_train_shots

            self.training_family(setup).check_episode("train", max_train_shots(setup), self.training_queries(setup))
        except ValueError as e:
            from ..tasks.images import DataError

            raise DataError(f"learner {self.name!r}: training episodes of train_ways={self.training_ways(setup)}, "
                            f"train shots {setup.train_shots}, train_queries={self.training_queries(setup)} do not "
                            f"fit: {e}", option="train_ways" if getattr(e, "option", None) == "ways" else None) from None

    def train_batch(self, setup, generator: torch.Generator):
        from ..setup import draw_train_shots

        return self.training_family(setup).sample(generator, setup.hp.meta_batch, draw_train_shots(setup, generator),
                                                  self.training_queries(setup))

    def logits(self, setup, params: Params, x_support, y_support, x_query, ways: int) -> torch.Tensor:
        scale = setup.hp.get("cosine_scale") if self.distance == "cosine" else 1.0
        return prototype_logits(self.embed(setup, params, x_support), y_support, self.embed(setup, params, x_query),
                                ways, self.distance, scale)

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        return [self.logits(setup, params, x_support, y_support, x_query, self.ways(setup))]

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool) -> torch.Tensor:
        """Cross-entropy over the training episode's train_ways classes (the paper's J(phi))."""
        out = self.logits(setup, params, batch.x_support, batch.y_support, batch.x_query, self.training_ways(setup))
        return (PER_TASK if batched else LOSSES)["cross_entropy"](out, batch.y_query)
