"""Learner families behind one protocol (core.learners.base.Learner), registered by name.

Built in: the gradient-based family (every row of the variant table in core.variants: MAML,
FOMAML, Reptile, Meta-SGD, ANIL, T-net, M-net, M-net-full, MT-net, MT-net-full), with the NIL
cosine readout as its `eval_head: nil` switch; the metric-based family (kind "metric", switch
`network`): Prototypical, Matching, Relation and Siamese networks (core.learners.metric), with the
papers' settings as presets (each class's PRESETS); meta-RL (kind "rl", core.learners.rl): MAML-TRPO,
ANIL-TRPO, ProMP on the RL task families of core.rl.
"""

from __future__ import annotations

from dataclasses import fields

from ..registry import register_learner_kind, register_preset
from ..variants import PRESETS as VARIANT_TABLE
from ..variants import Variant
from .base import Learner, LearnerBase
from .gradient import GradientLearner
from .matching import MatchingNetwork
from .metric import MetricLearner, make_metric_learner, metric_kind_switches
from .protonet import PrototypicalNetwork
from .readout import CosineReadout
from .relation import RelationNetwork
from .rl import PRESETS as RL_PRESETS
from .rl import RL_SWITCHES, RLLearner, make_rl_learner
from .siamese import SiameseNetwork


def make_gradient_learner(name: str, **switches):
    """A gradient-based learner from variant switches (core.variants.Variant; VariantError on a
    combination that makes no sense); `eval_head: nil` reads it out with NIL's cosine readout."""
    variant = Variant(name, **switches)
    learner = GradientLearner(variant)
    return CosineReadout(learner) if variant.eval_head == "nil" else learner


register_learner_kind("gradient", make_gradient_learner,
                      switches=tuple(f.name for f in fields(Variant) if f.name != "name"),
                      doc="gradient-based meta-learners as rows of a table of switches (core.variants)")
for _v in VARIANT_TABLE.values():
    register_preset(_v.name, "gradient", **{k: x for k, x in _v.as_dict().items() if k != "name"})


METRIC_NETWORKS = (PrototypicalNetwork, MatchingNetwork, RelationNetwork, SiameseNetwork)
register_learner_kind("metric", make_metric_learner, switches=metric_kind_switches(METRIC_NETWORKS),
                      doc="metric-based meta-learners: Prototypical, Matching, Relation, Siamese networks "
                          "(switch `network`; core.learners.metric)")
for _cls in METRIC_NETWORKS:
    for _preset, _switches in _cls.PRESETS.items():
        register_preset(_preset, "metric", network=_cls.network, **_switches)

register_learner_kind("rl", make_rl_learner, switches=RL_SWITCHES,
                      doc="meta-RL: the gradient-based inner loop on a Gaussian policy (policy gradient), outer rule "
                          "TRPO or ProMP (switch `outer`; core.learners.rl, core.rl)")
for _preset, _switches in RL_PRESETS.items():
    register_preset(_preset, "rl", **_switches)

from . import blackbox  # noqa: E402,F401  (registers the black-box learners: mann, snail, metanet, meta-lstm, cnp)

__all__ = ["Learner", "LearnerBase", "GradientLearner", "CosineReadout", "make_gradient_learner", "MetricLearner",
           "PrototypicalNetwork", "MatchingNetwork", "RelationNetwork", "SiameseNetwork", "make_metric_learner",
           "RLLearner", "make_rl_learner"]
