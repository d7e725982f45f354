"""What every figure shares: the stage's trials with their labels (analysis.labels, the same as
`rank`), colours, units and titles. Figures are drawn on a bare `matplotlib.figure.Figure` (Agg
canvas): importing them never changes the pyplot backend of an interactive session."""

from __future__ import annotations

import os

import duckdb
import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure

from .. import labels as lb

DPI = 120
BASELINE = "maml"  # listed first
_REGRESSION = ("sine", "polynomial")


class Context:
    """The stage's trials (dicts of labels.TRIAL_COLUMNS plus "alpha" from the hyper-parameters the
    learner read) and the duckdb connection the figures query; `series` registers their labels."""

    def __init__(self, con: duckdb.DuckDBPyConnection, exp_uri: str, stage: str | None = None):
        stages = [r[0] for r in con.execute("select distinct stage from trials").fetchall()]
        self.con, self.exp_uri, self.stage = con, exp_uri, lb.choose_stage(stages, stage, exp_uri)
        names = con.execute("select distinct experiment from trials where stage = ?", [self.stage]).fetchall()
        self.experiment = names[0][0] if len(names) == 1 and names[0][0] else os.path.basename(
            os.path.normpath(exp_uri))
        rows = con.execute(f"select {', '.join(lb.TRIAL_COLUMNS)} from trials where stage = ? order by trial_id",
                           [self.stage]).fetchall()
        self.trials = [dict(zip(lb.TRIAL_COLUMNS, r)) for r in rows]
        for t in self.trials:
            t["hp"] = lb.hparams_of(t)
        self.task_family = sorted({t["task_family"] for t in self.trials if t["task_family"]})
        self.title = f"experiment {self.experiment}, stage {self.stage}"

    def series(self, exclude: tuple[str, ...] = (), variant_only: bool = False) -> list[str]:
        """Label each trial (t["series"]): its row label as `rank` names it (labels.label_trials,
        without `exclude`), with the train shots when the stage has several. Registers the duckdb
        table `plot_labels(trial_id, label)`; returns the series in display order."""
        lb.label_trials(self.trials, exclude, variant_only)
        several = len({t["train_shots"] for t in self.trials}) > 1
        order: dict[str, tuple] = {}
        for t in self.trials:
            t["series"] = lb.cell_text(t["label"], t["train_shots"]) if several else t["label"]
            order[t["series"]] = (lb.row_sort_key(t["variant"], t["point"], BASELINE), t["train_shots"])
        self.con.register("plot_labels", pa.table({"trial_id": [t["trial_id"] for t in self.trials],
                                                   "label": [t["series"] for t in self.trials]}))
        return sorted(order, key=lambda s: order[s])

    def counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """Per series: its number of seeds, and its trials by status."""
        seeds: dict[str, set] = {}
        status: dict[str, dict[str, int]] = {}
        for t in self.trials:
            seeds.setdefault(t["series"], set()).add(t["seed"])
            d = status.setdefault(t["series"], {})
            d[t["status"]] = d.get(t["status"], 0) + 1
        return {k: len(v) for k, v in seeds.items()}, status

    def loss_unit(self) -> str:
        fams = set(self.task_family)
        if fams and fams <= set(_REGRESSION):
            return "loss (MSE)"
        if fams and not fams & set(_REGRESSION):
            return "loss (cross-entropy)"
        return "loss"

    def set_title(self, ax_or_fig, what: str, detail: str = "") -> None:
        text = f"{self.title}: {what}" + (f"\n{detail}" if detail else "")
        (ax_or_fig.suptitle if isinstance(ax_or_fig, Figure) else ax_or_fig.set_title)(text, fontsize=10)


def colours(series: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(series) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(series)}


def maybe_log_y(ax, values: np.ndarray, ratio: float = 30.0) -> None:
    v = values[np.isfinite(values)]
    if v.size and v.min() > 0 and v.max() / v.min() > ratio:
        ax.set_yscale("log")


def filled(columns: dict) -> dict:
    """duckdb's fetchnumpy columns with masked (NULL) entries as NaN."""
    return {k: np.ma.filled(v, np.nan) if np.ma.isMaskedArray(v) else v for k, v in columns.items()}
