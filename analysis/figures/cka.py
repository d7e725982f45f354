"""CKA (left) and SVCCA (right, where the rows have it) before vs after the inner loop per layer
(table `cka`, analysis/cka.py): near 1 = the layer is reused as is (feature reuse), lower = the
inner loop changes it (rapid learning). Mean ± 95% CI over evaluation tasks and seeds, one line
per series."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .common import Context, colours

MEASURES = (("cka", "linear CKA", "CKA"), ("cca", "SVCCA", "SVCCA"))


def data(ctx: Context, metric: str) -> tuple[list[str], list[tuple[str, str, dict]]]:
    """(series, panels): a panel per measure with rows, as (ylabel, short name, per (series, layer):
    label, layer, m (mean), sd, n)."""
    series = ctx.series()
    panels = []
    for measure, ylabel, short in MEASURES:
        rows = ctx.con.execute(
            f"""select l.label, k.layer, avg(k.{measure}) as m, stddev_pop(k.{measure}) as sd, count(*) as n
                from cka k join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
                where t.stage = ? and isfinite(k.{measure}) group by all order by l.label, k.layer""",
            [ctx.stage]).fetchnumpy()
        if len(rows["layer"]):
            panels.append((ylabel, short, rows))
    if not panels or panels[0][1] != "CKA":
        raise ValueError(f"cka plot: stage {ctx.stage} of {ctx.exp_uri} has no rows in table cka "
                         "(write them with `metasweep train --cka-tasks N` on an image task)")
    return series, panels


def draw(d: tuple[list[str], list[tuple[str, str, dict]]], ctx: Context) -> Figure:
    series, panels = d
    colour = colours(series)
    fig = Figure(figsize=(7.5 * len(panels), 4.8))
    n_layers = max(int(rows["layer"].max()) for _, _, rows in panels) + 1
    for i, (ylabel, short, rows) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for s in series:
            sel = rows["label"] == s
            if not sel.any():
                continue
            m = rows["m"][sel].astype(float)
            ci = 1.96 * rows["sd"][sel].astype(float) / np.sqrt(rows["n"][sel].astype(float))
            ax.errorbar(rows["layer"][sel], m, yerr=ci, color=colour[s], marker="o", ms=4, lw=1.6, capsize=3, label=s)
        ax.set_xticks(range(n_layers))
        ax.set_xticklabels([f"conv {j + 1}" for j in range(n_layers - 1)] + ["head"])
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{ylabel}, before vs after the inner loop")
        ax.set_ylim(top=1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8, title="variant", title_fontsize=8)
        ctx.set_title(ax, f"representation change in the inner loop ({short})", "mean ± 95% CI over tasks and seeds")
    return fig


def figure(ctx: Context, metric: str) -> Figure:
    return draw(data(ctx, metric), ctx)
