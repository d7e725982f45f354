"""What every task family provides, and how evaluation tasks are derived from seeds."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch


class Batch(NamedTuple):
    """Support and query sets of several tasks; dimension 0 indexes tasks."""

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor

    def to(self, device=None, dtype=None) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            # labels of classification tasks stay integer
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Batch(*(move(t) for t in self))

    def shots(self, k: int, ways: int = 1) -> Batch:
        """The same tasks with only the first k support points per class (support sets are nested).
        Classification supports are laid out shot-major (all classes' shot 0, then shot 1, ...), so
        that is the first k * ways; regression has ways = 1."""
        n = k * ways
        return Batch(self.x_support[:, :n], self.y_support[:, :n], self.x_query, self.y_query)

    def select(self, index) -> Batch:
        return Batch(*(t[index] for t in self))


SPLITS = {"train": 0, "val": 1, "test": 2}


def splits_sample(family) -> bool:
    """Whether `family.sample` is `finish(draw(...))`: the class that gives the family its `sample` also
    gives its `draw` and `finish` (a subclass that overrides only `sample` is sampled as it says)."""
    owner = next((c for c in type(family).__mro__ if "sample" in c.__dict__), None)
    return owner is not None and "draw" in owner.__dict__ and "finish" in owner.__dict__


def task_seed(family_key: str, split: str, eval_seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (family config, split, eval_seed, task index, stream);
    stream 0 draws the task's data, stream 1 the evaluation's mask noise."""
    digest = int.from_bytes(hashlib.sha256(family_key.encode()).digest()[:8], "little")
    ss = np.random.SeedSequence([digest, SPLITS[split], int(eval_seed), int(index), int(stream)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class TaskFamily(Protocol):
    name: str
    loss: str  # "mse" | "cross_entropy"
    input_shape: tuple[int, ...]
    output_dim: int

    def key(self) -> str: ...

    def sample(self, generator: torch.Generator, n_tasks: int, shots: int, queries: int) -> Batch: ...

    def eval_tasks(self, split: str, eval_seed: int, indices, max_shots: int, queries: int) -> Batch: ...

    def check_episode(self, split: str, shots: int, queries: int) -> None: ...


@dataclass(frozen=True)
class FamilyBase:
    """Shared helpers: a stable key of the config (for evaluation seeds) and eval-task assembly."""

    def key(self) -> str:
        return f"{self.name}:{sorted(asdict(self).items())}"

    def eval_tasks(self, split: str, eval_seed: int, indices, max_shots: int, queries: int) -> Batch:
        """Task i is drawn from its own generator: adding tasks or shots never changes task i. The
        task's parameters and its query set are drawn first, then its support points one stream on,
        so the query set does not depend on `max_shots` and the first k support points of a 20-shot
        task are the k-shot task."""
        parts = []
        for i in indices:
            g = torch.Generator().manual_seed(task_seed(self.key(), split, eval_seed, i))
            parts.append(self.eval_task(g, max_shots, queries, split))
        return Batch(*(torch.cat(ts) for ts in zip(*parts)))

    def draw(self, g: torch.Generator, n_tasks: int, shots: int, queries: int) -> tuple[torch.Tensor, ...]:
        """What `sample` takes from the generator, as tensors with the task dimension first, such that
        `finish(draw(...), shots)` is `sample(...)` and `finish` of several draws concatenated along
        dimension 0 is their samples concatenated (core.bundle draws each member's from its own generator
        and finishes them at once). By default the sample itself (a family whose arithmetic maps over
        tasks splits the two: core.tasks.regression)."""
        return tuple(self.sample(g, n_tasks, shots, queries))

    def finish(self, drawn: tuple[torch.Tensor, ...], shots: int) -> Batch:
        return Batch(*drawn)

    def check_episode(self, split: str, shots: int, queries: int) -> None:
        """Raise (naming the sizes and what to change) if tasks of `shots` support and `queries` query
        points (per class) cannot be drawn from `split`; generated families can draw any size."""
        return None

    def eval_task(self, g: torch.Generator, max_shots: int, queries: int, split: str = "test") -> Batch:
        """One evaluation task [1, ...]: a family draws its parameters, then the query set, then the
        support set (so that nothing but the support depends on max_shots)."""
        raise NotImplementedError(f"task family {self.name} must implement eval_task(g, max_shots, queries): its "
                                  "parameters, then the query set, then the support set (docs/EXTENDING.md)")
