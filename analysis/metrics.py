"""The evaluation metrics the analysis knows: the one owner of their column, direction and wording.

Every per-task evaluation row holds `loss` (lower is better), `accuracy` (classification; higher is
better) and `return` (reinforcement learning: the mean undiscounted return of the adapted policy;
higher is better; null in files written before it existed). RL learners minimise loss = -return, so
their learning curves (curves.meta_train_loss, curves.val_loss) are the negated returns: the return
curves below are those columns negated. The ranking's sort order, "best", the direction of P(better)
and the plots' axes all read `direction`-aware fields from here, never a metric's name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # the eval_tasks column and the CLI's --metric value
    higher_is_better: bool
    axis: str  # axis label (plots)
    val_curve: str  # SQL expression over curves `c` giving the validation value
    train_curve: str | None  # SQL expression over curves `c` giving the meta-training value, None: not recorded
    absent: str  # why a dataset may have none of it (all NaN)

    @property
    def lower_is_better(self) -> bool:
        return not self.higher_is_better

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def better(self, a: float, b: float) -> bool:
        """a strictly better than b."""
        return a > b if self.higher_is_better else a < b


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("loss", False, "loss", "c.val_loss", "c.meta_train_loss", "no finite loss"),
    Metric("accuracy", True, "accuracy (fraction correct)", "c.val_accuracy", None,
           "no accuracy (regression or RL tasks): use --metric loss, or return for RL"),
    Metric("return", True, "average return (sum of rewards per trajectory)", "-c.val_loss", "-c.meta_train_loss",
           "no return (not reinforcement-learning tasks): use --metric loss or accuracy"),
)}


def get_metric(name: str) -> Metric:
    """The metric by name; ValueError listing the known ones."""
    if name not in METRICS:
        raise ValueError(f"metric must be {', '.join(METRICS)} (got {name!r})")
    return METRICS[name]


def column(name: str) -> str:
    """The metric's eval_tasks column, quoted for SQL (`return` is a keyword)."""
    return f'"{get_metric(name).name}"'
