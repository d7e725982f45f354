"""NIL (No Inner Loop; Raghu et al., "Rapid learning or feature reuse?"): a cosine readout that
evaluates gradient-trained parameters without their head.

Each query's features (the head's input, `model.features`) are compared with the support set's by
cosine similarity, and the similarities weight the support labels:
score_c(q) = sum over support examples s of class c of cos(f(q), f(s)); the prediction is the argmax
(core.nil.nil_scores). The loss recorded for NIL rows is the cross-entropy of softmax(score) (a
proper score, not a quantity from the paper). Training is the base learner's (e.g. MAML's): NIL
changes only what is read out. After s > 0 inner steps the features are those of the base learner's
adapted body (for ANIL the same as at s = 0: its body never moves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import Params
from ..nil import nil_scores


@dataclass(frozen=True)
class CosineReadout:
    base: object  # a learner with `trajectory` (core.learners.gradient.GradientLearner)
    kind = "gradient"

    def __post_init__(self) -> None:
        if not hasattr(self.base, "trajectory"):
            raise ValueError(f"learner {self.base.name!r}: a cosine readout needs a learner with an inner loop of "
                             "parameters (a gradient-based one)")

    def __getattr__(self, attr):
        """Everything but the readout is the base learner's: its name, hyper-parameters, init, noise,
        training batches and objective (NIL is trained as its base)."""
        if attr == "base":  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def switches(self) -> dict:
        return {**self.base.switches(), "eval_head": "nil"}

    def check(self, setup) -> None:
        if setup.family.loss != "cross_entropy":
            raise ValueError(f"variant {self.name!r}: eval_head=nil (the NIL readout) needs a classification task "
                             f"(task {setup.family.name} is regression)")
        self.base.check(setup)

    def with_frozen(self, cells):
        return CosineReadout(self.base.with_frozen(cells))

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False,
                task_params: bool = False) -> list[torch.Tensor]:
        model, ways = setup.model, setup.family.output_dim
        fast = self.base.trajectory(setup, params, x_support, y_support, noise, steps=steps, every_step=every_step,
                                    mask_mode=mask_mode, batched=batched, task_params=task_params)
        return [nil_scores(model.features(f, x_support), y_support, model.features(f, x_query), ways) for f in fast]
