"""What the black-box (model-based) learners share: switches, hyper-parameters, labels as inputs,
episode shuffling, and the network registry behind the learner kind "black-box".

A black-box learner adapts with a network instead of a gradient step (CS330's "black-box
adaptation"): the support set - inputs with their labels - is read as a sequence or a set, and
the prediction for a query comes out of the network's state. Most have no inner loop
(`inner_loop = False`: one output per task, recorded at inner_steps = 0); the LSTM meta-learner has
one (its predictions after each of its own steps). Every learner is a frozen dataclass of switches
(`name` plus fields), registered with its `network` name (`@blackbox_network`); a preset is a
network with switches (core.learners.blackbox.__init__).

Labels as inputs (`label_features`): classification labels are one-hot vectors [..., N, ways]
(a comparison with arange, so it maps under vmap); regression targets become [..., N, 2] = (y, 1),
whose second coordinate says "a label is present", so that "no label" (zeros: the query of SNAIL,
MANN's first step) differs from the label y = 0.

Episode shuffling (`shuffle_episode`, the `shuffle` switch of MANN and SNAIL): each meta-training
episode's support set is put in a random order and its class labels through a random permutation,
drawn from the trial's generator in `train_batch` (Santoro et al.: labels shuffled every episode,
so a class's label must be bound from the episode itself). Evaluation tasks are never shuffled:
every learner meets the same tensors (the family's shot-major order, its labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import vmap

from ...hparams import hparam_def
from ...model import Params
from ...tasks import Batch
from ..base import LearnerBase
from ..networks import NetworkTable, network_switches, onehot

NETWORKS = NetworkTable()  # network switch value -> learner class (filled by @blackbox_network)
blackbox_network = NETWORKS.register
kind_switches = NETWORKS.kind_switches
make_blackbox_learner = NETWORKS.make
LOSS_WORDS = {"mse": "regression", "cross_entropy": "classification"}


def check_choice(learner, switch: str, allowed: tuple) -> None:
    value = getattr(learner, switch)
    if value not in allowed:
        raise ValueError(f"learner {learner.name!r} ({learner.network}): {switch} must be "
                         f"{' or '.join(map(str, allowed))} (got {value!r})")


def label_dim(family) -> int:
    return family.output_dim if family.loss == "cross_entropy" else 2


def label_features(y: torch.Tensor, family, dtype: torch.dtype) -> torch.Tensor:
    """Labels as network inputs: one-hot [..., N, ways] (classification) or (y, 1) [..., N, 2]."""
    if family.loss == "cross_entropy":
        return onehot(y, family.output_dim, dtype)
    return torch.cat([y.to(dtype), torch.ones_like(y, dtype=dtype)], dim=-1)


def shuffle_episode(batch: Batch, generator: torch.Generator, family) -> Batch:
    """Every task's support set in a random order and, for classification, its labels (support and
    query alike) through a random permutation of 0..ways-1; drawn from `generator` (keys [tasks, Ns],
    then [tasks, ways])."""
    n_tasks, ns = batch.y_support.shape[:2]
    order = torch.rand(n_tasks, ns, generator=generator).argsort(1)
    rows = torch.arange(n_tasks).unsqueeze(1)
    xs, ys = batch.x_support[rows, order], batch.y_support[rows, order]
    yq = batch.y_query
    if family.loss == "cross_entropy":
        perm = torch.rand(n_tasks, family.output_dim, generator=generator).argsort(1)
        ys, yq = perm.gather(1, ys), perm.gather(1, yq)
    return Batch(xs, ys, batch.x_query, yq)


def per_task(fn, batched: bool, *args, chunk_size: int | None = None):
    """fn(*args) for one task, or mapped over the leading task dimension of every argument with
    torch.func.vmap (`batched`): one code path for the engines (what the batched engine computes is
    the vmapped one-task function; tests check all engines agree)."""
    return vmap(fn, chunk_size=chunk_size)(*args) if batched else fn(*args)


@dataclass(frozen=True)
class BlackBoxLearner(LearnerBase):
    """Shared defaults: reads beta, the meta-batch and `own_hparams`; searches beta and the own
    floats with a declared range; learns the families in `losses`; the model is an `Embedding`
    (core.learners.blackbox.embedding) and the learner adds its own parameters (`init_own`)."""

    name: str
    kind = "black-box"
    inner_loop = False
    network: ClassVar[str] = ""
    own_hparams: ClassVar[tuple[str, ...]] = ()
    losses: ClassVar[tuple[str, ...]] = ("mse", "cross_entropy")

    def reads(self) -> tuple[str, ...]:
        return ("beta", "meta_batch") + self.own_hparams

    def searched(self) -> tuple[str, ...]:
        own = tuple(h for h in self.own_hparams if hparam_def(h).kind == "float" and hparam_def(h).search)
        return ("beta",) + own

    def switches(self) -> dict:
        return {"network": self.network, **{s: getattr(self, s) for s in network_switches(type(self))}}

    def check(self, setup) -> None:
        if setup.family.loss not in self.losses:
            allowed = " and ".join(LOSS_WORDS[x] for x in self.losses)
            raise ValueError(f"learner {self.name!r} ({self.network}) learns {allowed} tasks only: task "
                             f"{setup.family.name} is {LOSS_WORDS.get(setup.family.loss, setup.family.loss)}")

    def init(self, setup, generator: torch.Generator) -> Params:
        """The embedding's parameters, then the learner's own (`init_own`), in float64 then cast."""
        p = setup.model.init(generator, dtype=torch.float64)
        p.update(self.init_own(setup, generator))
        return {k: v.to(dtype=setup.dtype, device=setup.device) for k, v in p.items()}

    def init_own(self, setup, generator: torch.Generator) -> Params:
        raise NotImplementedError

    def train_batch(self, setup, generator: torch.Generator):
        batch = super().train_batch(setup, generator)
        return shuffle_episode(batch, generator, setup.family) if getattr(self, "shuffle", False) else batch

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        """One output (no inner loop): the query predictions of `predict`."""
        return [self.predict(setup, params, x_support, y_support, x_query, noise, batched=batched)]

    def predict(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, batched: bool):
        raise NotImplementedError
