"""The training state of one trial: everything needed to continue exactly where it stopped.

Parameters, optimiser moments, the RNG that draws tasks and mask noise, the step counter, the
learning-curve rows so far and the iterate kept for evaluation when it is not the last
(core.train.SELECTIONS). `save` then `load` then training on gives, on CPU, bit-for-bit the
parameters of an uninterrupted run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch

from .meta import outer_rule
from .model import Params
from .setup import Setup


def make_optimizer(setup: Setup, params: Params):
    """The optimiser of the learner's outer rule (core.meta.OUTER_RULES): Adam with step size beta
    (eq. 2); Reptile's outer update is plain SGD at rate epsilon = beta; TRPO keeps no state."""
    return outer_rule(setup.learner.outer).optimizer(setup, params)


@dataclass
class TrainState:
    params: Params
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    seed: int = 0
    curves: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # e.g. attempt counter, wall time so far
    best: dict | None = None  # the iterate kept for evaluation (core.train.SELECTIONS): {step, value, params}
    runtime: dict = field(default_factory=dict, repr=False, compare=False)  # caches, never saved (CUDA graph)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "step": self.step,
                "seed": self.seed,
                "curves": self.curves,
                "extra": self.extra,
                "best": None if self.best is None else
                {**self.best, "params": {k: v.detach().cpu() for k, v in self.best["params"].items()}},
            },
            buf,
        )
        return buf.getvalue()

    def save(self, path) -> None:
        """Write the checkpoint file (Ray Tune's trainable saves into a fresh folder it then commits,
        so this needs no atomic rename of its own)."""
        with open(path, "wb") as f:
            f.write(self.to_bytes())


def init_state(setup: Setup, seed: int) -> TrainState:
    """Seeded initial state: the same seed gives the same init, tasks and noise."""
    generator = torch.Generator().manual_seed(int(seed))
    params = setup.learner.init(setup, generator)
    return TrainState(params, make_optimizer(setup, params), generator, 0, int(seed))


def state_from_bytes(setup: Setup, data: bytes) -> TrainState:
    blob = torch.load(io.BytesIO(data), weights_only=False)
    params = {k: v.to(device=setup.device, dtype=setup.dtype) for k, v in blob["params"].items()}
    optimizer = make_optimizer(setup, params)
    optimizer.load_state_dict(blob["optimizer"])
    generator = torch.Generator()
    generator.set_state(blob["generator"])
    best = blob.get("best")  # absent in checkpoints written before selection existed
    if best is not None:
        best = {**best, "params": {k: v.to(device=setup.device, dtype=setup.dtype) for k, v in best["params"].items()}}
    return TrainState(params, optimizer, generator, blob["step"], blob["seed"], blob["curves"], blob["extra"], best=best)


def load_state(setup: Setup, path) -> TrainState:
    with open(path, "rb") as f:
        return state_from_bytes(setup, f.read())
