"""Task families as seeded samplers.

A batch is plain tensors `(x_support, y_support, x_query, y_query)` with a leading task
dimension. Evaluation task i of a family is a pure function of (family config, split, eval_seed, i),
so every variant meets the same tasks, and the support sets for 5/10/20 shots are nested.
"""

from .base import Batch, TaskFamily, task_seed
from .images import DataError, MiniImagenet, Omniglot
from .regression import Polynomial, Sine

FAMILIES = {"sine": Sine, "polynomial": Polynomial, "omniglot": Omniglot, "miniimagenet": MiniImagenet}
IMAGE_FAMILIES = ("omniglot", "miniimagenet")


def make_family(name: str, **options) -> TaskFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; available: {', '.join(FAMILIES)}")
    return FAMILIES[name](**options)


__all__ = ["Batch", "TaskFamily", "Sine", "Polynomial", "Omniglot", "MiniImagenet", "DataError", "FAMILIES",
           "IMAGE_FAMILIES", "make_family", "task_seed"]
