"""A learner family in one file (the worked example of docs/EXTENDING.md): a soft nearest-neighbour
readout over the model's features, trained end to end (no inner loop). Query q's logit for class c
is log sum over support examples s of class c of exp(scale * cos(f(q), f(s))). It reads beta (the
outer step), the meta-batch and its own `nn_scale`; a tune stage searches beta and nn_scale."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metasweep.core.hparams import HParamDef, register_hparam
from metasweep.core.learners import LearnerBase
from metasweep.core.registry import register_learner_kind, register_preset

register_hparam(HParamDef("nn_scale", 10.0, low=0, search=(1.0, 30.0, True),
                          help="scale of the cosine similarities in the soft nearest-neighbour readout"))


@dataclass(frozen=True)
class SoftNearestNeighbour(LearnerBase):
    name: str
    similarity: str = "cosine"  # cosine | dot
    kind = "toy-metric"
    inner_loop = False

    def __post_init__(self) -> None:
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"learner {self.name!r}: similarity must be cosine or dot (got {self.similarity!r})")

    def reads(self) -> tuple[str, ...]:
        return ("beta", "meta_batch", "nn_scale")

    def searched(self) -> tuple[str, ...]:
        return ("beta", "nn_scale")

    def switches(self) -> dict:
        return {"similarity": self.similarity}

    def check(self, setup) -> None:
        if setup.family.loss != "cross_entropy":
            raise ValueError(f"learner {self.name!r} classifies: task {setup.family.name} is regression")

    def init(self, setup, generator):
        return setup.model.init(generator, dtype=setup.dtype, device=setup.device)

    def outputs(self, setup, params, x_support, y_support, x_query, noise, *, steps, every_step, mask_mode="sample",
                batched=False):
        fs, fq = setup.model.features(params, x_support), setup.model.features(params, x_query)
        if self.similarity == "cosine":
            fs, fq = F.normalize(fs, dim=-1), F.normalize(fq, dim=-1)
        sim = setup.hp.get("nn_scale") * (fq @ fs.transpose(-1, -2))  # [.., Nq, Ns]
        onehot = F.one_hot(y_support, setup.family.output_dim).to(sim.dtype)  # [.., Ns, ways]
        # log sum_s exp(sim) per class, stable: subtract the row max; classes absent get -inf
        top = sim.amax(-1, keepdim=True).detach()
        return [torch.log((torch.exp(sim - top) @ onehot).clamp_min(1e-30)) + top]


register_learner_kind("toy-metric", lambda name, **sw: SoftNearestNeighbour(name, **sw), switches=("similarity",))
register_preset("soft-nn", "toy-metric", similarity="cosine")
