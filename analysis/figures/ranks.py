"""Average rank of each row across settings (the ranking's, `compute_ranking`), with Friedman's p
and the Nemenyi critical difference."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..ranking import Ranking, compute_ranking
from .common import Context


def nemenyi_cd(k: int, n: int, level: float = 0.95) -> float:
    """Critical difference of average ranks (Demšar 2006): q_α·√(k(k+1)/(6N)), q_α from the
    studentized range with infinite degrees of freedom divided by √2."""
    from scipy.stats import studentized_range

    q = studentized_range.ppf(level, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def data(ctx: Context, metric: str) -> Ranking:
    r = compute_ranking(ctx.exp_uri, metric=metric, stage=ctx.stage)  # its fast path reads the eval files
    if not r.avg_rank:
        raise ValueError(f"ranks plot: no setting of stage {ctx.stage} has a finite {metric} for every variant, "
                         "so there is nothing to rank")
    return r


def draw(r: Ranking, ctx: Context) -> Figure:
    n_settings = sum(all((v, s) in r.cells and not r.cells[(v, s)].nonfinite_tasks for v in r.variants)
                     for s in r.settings)
    order = sorted(r.avg_rank, key=lambda v: (r.avg_rank[v], v))
    k = len(order)
    fig = Figure(figsize=(7.5, 1.2 + 0.42 * k + 0.6))
    ax = fig.add_subplot()
    y = np.arange(k)[::-1]
    ranks = np.array([r.avg_rank[v] for v in order])
    ax.barh(y, ranks, color=["tab:green" if math.isclose(x, ranks.min()) else "tab:blue" for x in ranks],
            height=0.62, label="average rank over settings")
    for yi, x in zip(y, ranks):
        ax.text(x + 0.04 * k, yi, f"{x:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, order)
    ax.set_xlim(0, k + 0.6)
    ax.set_xlabel(f"average rank over {n_settings} setting(s) (1 = best {r.metric})")
    ax.grid(alpha=0.3, axis="x")
    handles = [Patch(color="tab:green", label="best average rank"), Patch(color="tab:blue", label="other variants")]
    if k >= 2 and n_settings >= 1:
        cd, x0 = nemenyi_cd(k, n_settings), ranks.min()
        ax.errorbar([x0 + cd / 2], [y[0] + 0.55], xerr=[[cd / 2], [cd / 2]], color="tab:red", capsize=4, lw=2)
        ax.axvline(x0 + cd, color="tab:red", lw=1, ls="--")
        handles.append(Line2D([], [], color="tab:red", lw=2, marker="|", ms=8,
                              label=f"Nemenyi critical difference\nCD = {cd:.2f} (α = 0.05): bars ending\n"
                                    "right of the dashed line differ\nfrom the best"))
        ax.set_ylim(-0.6, k - 0.1 + 0.6)
        ax.set_xlim(0, max(k + 0.6, x0 + cd + 0.3))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    if r.friedman:
        fried = (f"Friedman χ² = {r.friedman['statistic']:.2f}, p = {r.friedman['pvalue']:.3g} "
                 f"({r.friedman['n_settings']} settings × {r.friedman['n_variants']} variants)")
    else:
        fried = "Friedman test not applicable (needs ≥ 3 variants and ≥ 2 settings)"
    ctx.set_title(ax, f"average rank ({r.metric} after {r.inner_steps} inner step(s))", fried)
    return fig


def figure(ctx: Context, metric: str) -> Figure:
    return draw(data(ctx, metric), ctx)
