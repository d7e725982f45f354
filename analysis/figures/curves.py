"""Learning curves: validation loss (solid) and meta-train loss (dashed) against meta-steps, one
colour per series (variant, grid point, train shots), mean over seeds with a min–max band."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..metrics import get_metric
from .common import Context, colours, filled, maybe_log_y


@dataclass
class CurvesData:
    series: list[str]  # display order
    rows: dict[str, np.ndarray]  # per (series, meta_step): label, meta_step, v_mean/v_min/v_max [, t_mean/t_min/t_max]
    seeds: dict[str, int]
    status: dict[str, dict[str, int]]
    metric: str
    with_train: bool  # meta-train curves too (loss; return of RL learners)


def data(ctx: Context, metric: str) -> CurvesData:
    """Per series and meta-step: the validation curve (and the meta-training one where the metric
    has it: loss, and return = -loss for RL learners; analysis.metrics)."""
    series = ctx.series()
    m = get_metric(metric)
    aggs = [_aggs(m.val_curve, "v")] + ([_aggs(m.train_curve, "t")] if m.train_curve else [])
    rows = filled(ctx.con.execute(
        f"""select l.label, c.meta_step, {', '.join(aggs)}, count(*) filter (where isfinite({m.val_curve})) as n
            from curves c join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
            where t.stage = ? group by all order by l.label, c.meta_step""", [ctx.stage]).fetchnumpy())
    if not len(rows["meta_step"]) or not np.isfinite(rows["v_mean"].astype(float)).any():
        raise ValueError(f"curves plot: stage {ctx.stage} of {ctx.exp_uri} has no validation {metric} in curves "
                         f"({m.absent})")
    seeds, status = ctx.counts()
    return CurvesData(series, rows, seeds, status, metric, m.train_curve is not None)


def _aggs(expr: str, prefix: str) -> str:
    finite = f"filter (where isfinite({expr}))"
    return (f"avg({expr}) {finite} as {prefix}_mean, min({expr}) {finite} as {prefix}_min, "
            f"max({expr}) {finite} as {prefix}_max")


def draw(d: CurvesData, ctx: Context) -> Figure:
    fig = Figure(figsize=(8.5, 5.2))
    ax = fig.add_subplot()
    colour = colours(d.series)
    all_vals = []
    for s in d.series:
        sel = d.rows["label"] == s
        if not sel.any():
            continue
        bad = {k: n for k, n in d.status[s].items() if k != "completed"}
        suffix = f" ({', '.join(f'{n} {k}' for k, n in sorted(bad.items()))})" if bad else ""
        x = d.rows["meta_step"][sel]
        mark = "o" if len(x) <= 3 else None  # a curve cut short by divergence may be one point
        for prefix, lw, ls, band, label in (("v", 1.8, "-", 0.18, f"{s}, {d.seeds[s]} seed(s){suffix}"),
                                             ("t", 1.2, "--", 0.07, None)):
            if prefix == "t" and not d.with_train:
                continue
            lo, hi = d.rows[f"{prefix}_min"][sel].astype(float), d.rows[f"{prefix}_max"][sel].astype(float)
            ax.plot(x, d.rows[f"{prefix}_mean"][sel], color=colour[s], lw=lw, ls=ls, label=label,
                    **({"marker": mark, "ms": 4} if prefix == "v" else {}))
            ax.fill_between(x, lo, hi, color=colour[s], alpha=band, lw=0)
            all_vals += [lo, hi]
    maybe_log_y(ax, np.concatenate(all_vals))
    ax.set_xlabel("meta-step (outer iterations)")
    ax.set_ylabel(ctx.loss_unit() if d.metric == "loss" else f"validation {get_metric(d.metric).axis}")
    ax.grid(alpha=0.3)
    style = [Line2D([], [], color="0.25", lw=1.8, label=f"validation {d.metric} (mean over seeds)"),
             Patch(color="0.25", alpha=0.18, label="band: min–max over seeds")]
    if d.with_train:
        style.insert(1, Line2D([], [], color="0.25", lw=1.2, ls="--", label=f"meta-train {d.metric} (mean over seeds)"))
    ax.add_artist(ax.legend(handles=style, loc="upper right", fontsize=8, framealpha=0.9))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8,
              title="variant" + (" / configuration" if any("=" in s or "(train" in s for s in d.series) else ""))
    ctx.set_title(ax, f"learning curves ({d.metric})", "mean over seeds; shaded band = min–max over seeds")
    return fig


def figure(ctx: Context, metric: str) -> Figure:
    return draw(data(ctx, metric), ctx)
