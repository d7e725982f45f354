"""Figures from a results dataset: `metasweep plot EXP --kind KIND -o fig.png`.

- curves: validation loss (solid) and meta-train loss (dashed) against meta-steps, one colour per
  series (figures/curves.py);
- alpha: evaluation loss against the inner step size α on a log axis (MT-net §6.2; figures/alpha.py);
- mask-fraction: fraction of weights updated per layer at each masked trial's last report, grouped
  by polynomial order (MT-net Fig. 4) or by variant (figures/masks.py);
- ranks: average rank per variant across settings (`compute_ranking`), Friedman p and the Nemenyi
  critical difference (figures/ranks.py);
- cka: linear CKA and SVCCA between each layer's activations before and after the inner loop (table
  `cka`, analysis/cka.py; figures/cka.py).

Every figure reads the stage `rank` would (test, else grid, single, tune) and names trials as `rank`
does (analysis.labels), adding the train shots when the stage has several.
"""

from __future__ import annotations

import os

from .figures import alpha, cka, curves, masks, ranks
from .figures.common import DPI, Context
from .metrics import get_metric
from .query import connect

__all__ = ["KINDS", "make_plot"]

FIGURES = {"curves": curves, "alpha": alpha, "mask-fraction": masks, "ranks": ranks, "cka": cka}
KINDS = tuple(FIGURES)
# only the tables a figure reads (eval_tasks can be 10M+ rows; ranks reads its own rows)
_TABLES_NEEDED = {"curves": ("trials", "curves"), "alpha": ("trials", "eval_tasks"),
                  "mask-fraction": ("trials", "curves"), "ranks": ("trials",), "cka": ("trials", "cka")}


def make_plot(exp_uri: str, kind: str, output_png: str, stage: str | None = None, metric: str = "loss") -> str:
    """Draw one figure of `kind` (see KINDS) for a stage (default: test, else grid, single, tune)
    and write it as PNG. Raises ValueError naming what is missing when the data cannot make it."""
    if kind not in KINDS:
        raise ValueError(f"plot kind must be one of {', '.join(KINDS)} (got {kind!r})")
    get_metric(metric)  # ValueError naming the known metrics
    ctx = Context(connect(exp_uri, _TABLES_NEEDED[kind]), exp_uri, stage)
    fig = FIGURES[kind].figure(ctx, metric)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(output_png))
    if not os.path.isdir(folder):
        raise ValueError(f"{output_png}: folder {folder} does not exist")
    fig.savefig(output_png, dpi=DPI, bbox_inches="tight")
    return output_png
