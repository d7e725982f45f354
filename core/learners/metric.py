"""Metric-based meta-learners: what Prototypical, Matching, Relation and Siamese networks share.

A metric learner has no inner loop (`inner_loop = False`): a task's support set and its queries are
embedded by a meta-learned network and each query is classified by comparing its embedding with the
support set's. `outputs` returns one entry (recorded at inner_steps = 0): class logits
[(tasks,) Nq, ways] whose cross-entropy is the loss in the evaluation rows. The meta-parameters are
trained by Adam with step beta on the learner's objective over training episodes (`query_loss`).

The embedding is the family's model (core.conv.ConvNet for images) without its head: `init` drops
the head cell's parameters (nothing reads them) and adds the learner's own. Each network is a
frozen dataclass of switches (`name` plus fields), registered under the learner kind "metric" with
a `network` switch naming the class (core.learners.__init__):

    make_metric_learner("protonet", network="prototypical", distance="cosine")

A switch the named network does not have is a ValueError naming the switches it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..hparams import hparam_def
from ..model import Params
from .base import LearnerBase
from .networks import NetworkTable, network_switches, onehot

NETWORKS = NetworkTable("{} network")  # network switch value -> class (filled by @metric_network)
metric_network = NETWORKS.register
metric_kind_switches = NETWORKS.kind_switches
make_metric_learner = NETWORKS.make
class_onehot = onehot  # [..., N] int labels -> [..., N, ways] one-hot


def check_int_switch(learner, switch: str, value, minimum: int, zero_means: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (value != 0 and value < minimum):
        raise ValueError(f"learner {learner.name!r}: {switch} must be 0 ({zero_means}) or an integer >= {minimum} "
                         f"(got {value!r})")


@dataclass(frozen=True)
class MetricLearner(LearnerBase):
    """Shared defaults: reads beta and the meta-batch (plus `own_hparams`), searches beta and the
    searchable own ones, needs a classification family, embeds with the model's features."""

    name: str
    kind = "metric"
    inner_loop = False
    network: ClassVar[str] = ""
    PRESETS: ClassVar[dict[str, dict]] = {}  # preset name -> switches (the papers' defaults)

    def own_hparams(self) -> tuple[str, ...]:
        """The learner's own hyper-parameters (core.hparams names) under its switches."""
        return ()

    def reads(self) -> tuple[str, ...]:
        return ("beta", "meta_batch") + self.own_hparams()

    def searched(self) -> tuple[str, ...]:
        """beta, and every own hyper-parameter that declares a default search range."""
        return ("beta",) + tuple(h for h in self.own_hparams() if hparam_def(h).search is not None)

    def switches(self) -> dict:
        return {"network": self.network, **{s: getattr(self, s) for s in network_switches(type(self))}}

    def check(self, setup) -> None:
        if setup.family.loss != "cross_entropy":
            raise ValueError(f"learner {self.name!r} ({self.network} network) classifies: task {setup.family.name} "
                             "is regression")

    def embedding_params(self, setup, generator: torch.Generator) -> Params:
        """The model's parameters without its head (drawn in float64 like every learner's init)."""
        head = setup.model.cell_names()[-1]
        p = setup.model.init(generator, dtype=torch.float64)
        return {k: v for k, v in p.items() if not k.startswith(f"{head}.")}

    def own_params(self, setup, generator: torch.Generator) -> Params:
        """The learner's own meta-parameters (float64), drawn after the embedding's."""
        return {}

    def init(self, setup, generator: torch.Generator) -> Params:
        p = self.embedding_params(setup, generator)
        p.update(self.own_params(setup, generator))
        return {k: t.to(dtype=setup.dtype, device=setup.device) for k, t in p.items()}

    def embed(self, setup, params: Params, x: torch.Tensor) -> torch.Tensor:
        """[(tasks,) N, *input_shape] -> the head's input features [(tasks,) N, D]."""
        return setup.model.features(params, x)

    def ways(self, setup) -> int:
        return setup.family.output_dim
