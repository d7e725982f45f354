"""Task families as seeded samplers.

A batch is plain tensors `(x_support, y_support, x_query, y_query)` with a leading task
dimension. Evaluation task i of a family is a pure function of (family config, split, eval_seed, i),
so every learner meets the same tasks, and the support sets for 5/10/20 shots are nested.
Families register their name in core.registry (the single list of names).
"""

from ..registry import register_family
from .base import Batch, TaskFamily, task_seed
from .images import DataError, MiniImagenet, Omniglot
from .regression import Polynomial, Sine

for _cls in (Sine, Polynomial, Omniglot, MiniImagenet):
    register_family(_cls)


def make_family(name: str, **options) -> TaskFamily:
    from ..registry import make_family as make

    return make(name, **options)


__all__ = ["Batch", "TaskFamily", "Sine", "Polynomial", "Omniglot", "MiniImagenet", "DataError", "make_family",
           "task_seed"]
