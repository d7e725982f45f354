"""The Learner protocol: the one extension point every family of meta-learners implements.

A learner says (in the spirit of learn2learn's single `meta_learn` method, in the functorch style
of pure per-task functions that an engine maps over tasks):

- which hyper-parameters it reads (`reads`) and which a tune stage searches by default (`searched`);
- its meta-parameters' init (`init`: the model's parameters plus its own, e.g. T-net's T);
- the noise it needs (`noise`; none when deterministic), drawn outside so its functions stay pure;
- its query predictions after 0..k adaptation steps (`outputs`; one entry for a learner without an
  inner loop: `inner_loop = False`).

Engines (core.meta), evaluation (core.evaluate), the training loop, the search space and the trials
row read these attributes and methods, never a learner's name. Families:
gradient-based (core.learners.gradient: MAML, MT-net, ... as rows of a switch table), the cosine
readout NIL (core.learners.readout); metric-based and black-box families plug in the same way
(docs/EXTENDING.md).

Shapes. Unbatched (what `vmap` and the loop engine map): x_support [Ns, *input_shape], y_support
[Ns(, out)], x_query [Nq, *input_shape]; noise tensors without a task dimension. Batched
(`batched=True`): every input and noise tensor has a leading task dimension [tasks, ...] and so do
the outputs. Outputs are what the family's loss reads: regression predictions [.., Nq, out] or
classification logits [.., Nq, ways].
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..losses import LOSSES, PER_TASK
from ..model import Params


@runtime_checkable
class Learner(Protocol):
    name: str  # the preset (or spec) name
    kind: str  # the family in the registry: "gradient", "metric", "black-box", ...
    inner_loop: bool  # adapts by steps (outputs after 0..k steps) or not (one output, recorded at step 0)
    outer: str  # a rule of core.meta.OUTER_RULES: "gradient" (Adam on the meta-loss's gradient), "reptile" (SGD on
    #             theta - mean(theta~)), or one a learner's module registers (core.rl.outer: "trpo", "promp")

    def reads(self) -> tuple[str, ...]:
        """Hyper-parameters (core.hparams names) this learner uses; the others are NULL in its rows."""
        ...

    def searched(self) -> tuple[str, ...]:
        """The subset of `reads()` a tune stage searches by default."""
        ...

    def switches(self) -> dict:
        """The learner's configuration as plain data (recorded in the trials row)."""
        ...

    def make_model(self, family, hidden: tuple[int, ...]):
        """The network this learner computes with on `family` (core.registry.default_model by default)."""
        ...

    def check(self, setup) -> None:
        """Raise ValueError (naming what is allowed) if this learner cannot learn the setup's tasks."""
        ...

    def init(self, setup, generator: torch.Generator) -> Params:
        """Seeded meta-parameters: the model's, plus the learner's own; dtype/device of the setup."""
        ...

    def train_batch(self, setup, generator: torch.Generator):
        """A meta-training batch of hp.meta_batch tasks (core.tasks.Batch) drawn with `generator`."""
        ...

    def noise(self, setup, params: Params, generator: torch.Generator, n_tasks: int, steps: int) -> dict:
        """Random inputs for `n_tasks` tasks and up to `steps` adaptation steps, each [n_tasks, ...].
        Drawn in a fixed order so that the draws for the first s steps do not depend on `steps`."""
        ...

    def outputs(self, setup, params: Params, x_support, y_support, x_query, noise: dict, *, steps: int,
                every_step: bool, mask_mode: str = "sample", batched: bool = False) -> list[torch.Tensor]:
        """Query outputs after 0..steps adaptation steps (`every_step`), or only after `steps`; a
        learner without an inner loop returns one output either way."""
        ...

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool) -> torch.Tensor:
        """The meta-training objective of a task (scalar) or of each task ([tasks] when batched)."""
        ...

    def diagnostics(self, setup, params: Params) -> dict:
        """Learner-specific curve columns at a report (e.g. mask_fraction); {} for none."""
        ...

    # Optional: `task_metrics(setup, params, batch, noise, *, steps, mask_mode) -> {"loss": [tasks, steps + 1],
    # ...}` when a learner's per-task metrics do not come from `outputs` (core.learners.rl rolls its policy
    # out and reports "return"); `problem = "rl"` for a learner of reinforcement-learning families (default
    # "supervised"; core.setup refuses a family of the other kind before training).


class LearnerBase:
    """Defaults for the protocol's optional parts: no noise, the registry's default model, the
    meta-training objective = the family's loss of the output after `hp.inner_steps` steps (or the
    only output), no diagnostics."""

    inner_loop = False
    outer = "gradient"
    problem = "supervised"
    fold = False  # batched outputs/query_loss accept `task_params=True` (core.bundle's fold mode)

    def searched(self) -> tuple[str, ...]:
        return tuple(h for h in self.reads() if h in ("beta",))

    def make_model(self, family, hidden: tuple[int, ...]):
        from ..registry import default_model

        return default_model(family, hidden)

    def check(self, setup) -> None:
        return None

    def train_batch(self, setup, generator: torch.Generator):
        """hp.meta_batch tasks of `train_shots` support points (per class), or of a support size drawn
        from `train_shots_range` for this meta-batch (core.setup.draw_train_shots)."""
        from ..setup import draw_train_shots

        return setup.family.sample(generator, setup.hp.meta_batch, draw_train_shots(setup, generator), setup.queries)

    def noise(self, setup, params: Params, generator: torch.Generator, n_tasks: int, steps: int) -> dict:
        return {}

    def query_loss(self, setup, params: Params, batch, noise: dict, *, batched: bool,
                   task_params: bool = False) -> torch.Tensor:
        steps = setup.hp.inner_steps if self.inner_loop else 0
        extra = {"task_params": True} if task_params else {}
        out = self.outputs(setup, params, batch.x_support, batch.y_support, batch.x_query, noise, steps=steps,
                           every_step=False, batched=batched, **extra)[-1]
        loss = PER_TASK if batched else LOSSES
        return loss[setup.family.loss](out, batch.y_query)

    def diagnostics(self, setup, params: Params) -> dict:
        return {}
