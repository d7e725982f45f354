"""Fraction of weights updated per layer at each masked trial's last report, grouped by polynomial
order (MT-net Fig. 4) or by series; bar = mean over trials, whisker = min–max."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from .common import Context


@dataclass
class MaskData:
    groups: dict[str, np.ndarray]  # group -> [trials, layers + 1] (the last column: overall), display order
    by_order: bool  # polynomial tasks: groups are task orders
    excluded: int  # diverged / errored masked trials left out


def data(ctx: Context, metric: str) -> MaskData:
    ctx.series()
    rows = ctx.con.execute(
        """select t.trial_id, l.label, t.status, c.mask_fraction, c.mask_fraction_per_cell
           from curves c join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
           where t.stage = ? and c.mask_fraction_per_cell is not null and len(c.mask_fraction_per_cell) > 0
           qualify row_number() over (partition by c.trial_id order by c.meta_step desc) = 1
           order by t.trial_id""", [ctx.stage]).fetchall()
    if not rows:
        variants = sorted({t["variant"] for t in ctx.trials})
        raise ValueError(
            f"mask-fraction plot: stage {ctx.stage} of {ctx.exp_uri} has no masked variant (m-net, mt-net, ...): "
            f"curves.mask_fraction_per_cell is empty for its variants {', '.join(variants)}")
    trials = {t["trial_id"]: t for t in ctx.trials}
    by_order = all(trials[r[0]]["task_family"] == "polynomial" for r in rows)
    several_variants = len({trials[r[0]]["variant"] for r in rows}) > 1
    series_order = sorted({r[1] for r in rows})
    groups: dict[str, list[list[float]]] = {}
    key: dict[str, tuple] = {}
    excluded = 0
    for tid, label, status, overall, per_cell in rows:
        if status not in ("completed", "stopped_early"):
            excluded += 1
            continue
        if by_order:
            order = trials[tid]["configuration"].get("order")
            variant = trials[tid]["variant"]
            g = (f"{variant}, " if several_variants else "") + f"order {order}"
            key[g] = (variant, -1 if order is None else order)
        else:
            g, key[g] = label, (series_order.index(label),)
        cells = [float(x) if x is not None else float("nan") for x in per_cell]
        if overall is None or not math.isfinite(overall):
            overall = float(np.nanmean(cells))
        groups.setdefault(g, []).append([*cells, float(overall)])
    if not groups:
        raise ValueError(f"mask-fraction plot: every masked trial of stage {ctx.stage} diverged or errored")
    n_layers = max(len(r) - 1 for g in groups.values() for r in g)
    mats = {}
    for g in sorted(groups, key=lambda g: key[g]):
        mat = np.full((len(groups[g]), n_layers + 1), np.nan)
        for i, r in enumerate(groups[g]):
            mat[i, :len(r) - 1], mat[i, -1] = r[:-1], r[-1]
        mats[g] = mat
    return MaskData(mats, by_order, excluded)


def draw(d: MaskData, ctx: Context) -> Figure:
    from matplotlib import colormaps

    names = list(d.groups)
    n_layers = next(iter(d.groups.values())).shape[1] - 1
    xlabels = [f"layer {i + 1}" + (" (output)" if i == n_layers - 1 and n_layers > 1 else "")
               for i in range(n_layers)] + ["overall"]
    fig = Figure(figsize=(max(7.0, 1.3 * (n_layers + 1) * max(1, len(names)) ** 0.5 + 3), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    cmap = colormaps["viridis" if d.by_order else "tab10"]
    for k, g in enumerate(names):
        mat = d.groups[g]
        mean, lo, hi = np.nanmean(mat, axis=0), np.nanmin(mat, axis=0), np.nanmax(mat, axis=0)
        x = np.arange(n_layers + 1) + (k - (len(names) - 1) / 2) * width
        colour = cmap(0.15 + 0.7 * k / max(1, len(names) - 1)) if d.by_order else cmap(k % 10)
        ax.bar(x, mean, width * 0.92, color=colour, label=f"{g} ({len(mat)} trial(s))",
               yerr=np.vstack([mean - lo, hi - mean]), capsize=3, ecolor="0.3", error_kw={"lw": 1})
    ax.axvline(n_layers - 0.5, color="0.6", lw=0.8, ls=":")
    ax.set_xticks(np.arange(n_layers + 1), xlabels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of weights updated (0–1)")
    ax.set_xlabel("layer (T-cell)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              title="polynomial order" if d.by_order else "variant", title_fontsize=8)
    detail = "at each masked trial's last report; bar = mean over trials, whisker = min–max over trials"
    if d.excluded:
        detail += f"; {d.excluded} diverged/errored trial(s) left out"
    ctx.set_title(ax, "fraction of weights updated per layer" + (" by task order (MT-net Fig. 4)" if d.by_order else ""),
                  detail)
    return fig


def figure(ctx: Context, metric: str) -> Figure:
    return draw(data(ctx, metric), ctx)
