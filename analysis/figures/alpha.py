"""Evaluation loss against the inner step size α on a log axis (MT-net §6.2): mean ± 95% CI over
evaluation tasks, one panel per (inner steps, shots); diverged or non-finite points are drawn as ×
at the top, never dropped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import stats
from ..labels import format_value
from ..metrics import get_metric
from .common import Context, colours, filled, maybe_log_y


@dataclass
class Panel:
    shots: int
    inner_steps: int
    points: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # series -> (α, mean, ci)
    marks: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # series -> (α, why no point)


@dataclass
class AlphaData:
    series: list[str]
    panels: list[list[Panel]]  # [inner-step rows][shot columns]
    alphas: list[float]
    mixed: bool  # α moves together with other hyper-parameters (a tune stage): one series per variant
    metric: str


def _series(ctx: Context) -> tuple[list[str], bool]:
    """Series without α (one per variant when α never varies alone), after checking there is a
    sweep over α to draw."""
    if any(t["hp"].get("alpha") is None for t in ctx.trials):
        raise ValueError(f"alpha plot: some trials of stage {ctx.stage} have no alpha")
    per_variant: dict[str, set] = {}
    for t in ctx.trials:
        per_variant.setdefault(t["variant"], set()).add(t["hp"]["alpha"])
    if all(len(a) < 2 for a in per_variant.values()):
        raise ValueError(
            f"alpha plot: needs a sweep over alpha (a grid over alpha); stage {ctx.stage} of {ctx.exp_uri} has "
            "one alpha per variant: " + ", ".join(f"{v} α={format_value(next(iter(a)))}"
                                                  for v, a in sorted(per_variant.items())))
    series = ctx.series(exclude=("alpha",))
    by_series: dict[str, set] = {}
    for t in ctx.trials:
        by_series.setdefault(t["series"], set()).add(t["hp"]["alpha"])
    mixed = all(len(a) < 2 for a in by_series.values())
    return (ctx.series(variant_only=True), True) if mixed else (series, False)


def _steps_and_shots(ctx: Context) -> tuple[list[int], list[int]]:
    def distinct(col: str) -> list[int]:
        return sorted(r[0] for r in ctx.con.execute(
            f"select distinct e.{col} from eval_tasks e join trials t using (trial_id, attempt) where t.stage = ?",
            [ctx.stage]).fetchall())

    steps = distinct("inner_steps")
    if not steps:
        raise ValueError(f"alpha plot: stage {ctx.stage} of {ctx.exp_uri} has no evaluation rows (eval_tasks); "
                         "did every trial diverge or error?")
    positive = [s for s in steps if s > 0] or steps
    return sorted({positive[0], steps[-1]}), distinct("shots")


def data(ctx: Context, metric: str) -> AlphaData:
    series, mixed = _series(ctx)
    row_steps, shots = _steps_and_shots(ctx)
    rows = filled(ctx.con.execute(
        f"""select l.label, t.alpha, e.inner_steps, e.shots, t.seed, e.task_index, avg(e."{metric}") as v
            from eval_tasks e join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
            where t.stage = ? and t.status = 'completed'
            group by all order by l.label, t.alpha, e.inner_steps, e.shots, e.task_index, t.seed""",
        [ctx.stage]).fetchnumpy())
    if metric != "loss" and not np.isfinite(rows["v"]).any():
        raise ValueError(f"alpha plot: this dataset has {get_metric(metric).absent}")
    failed: dict[tuple[str, float], list] = {}  # (series, α) -> [failed trials, trials, their statuses]
    for t in ctx.trials:
        f = failed.setdefault((t["series"], t["hp"]["alpha"]), [0, 0, set()])
        f[1] += 1
        if t["status"] != "completed":
            f[0] += 1
            f[2].add(t["status"])
    panels = [[_panel(rows, failed, series, sh, st) for sh in shots] for st in row_steps]
    return AlphaData(series, panels, sorted({t["hp"]["alpha"] for t in ctx.trials}), mixed, metric)


def _panel(rows: dict, failed: dict, series: list[str], shots: int, steps: int) -> Panel:
    """One panel's points (mean ± CI over tasks of per-task values averaged over seeds) and marks."""
    p = Panel(shots, steps)
    at = (rows["inner_steps"] == steps) & (rows["shots"] == shots)
    for s in series:
        for a in sorted({a for (s2, a) in failed if s2 == s}):
            n_failed, n_trials, statuses = failed[(s, a)]
            sel = at & (rows["label"] == s) & (rows["alpha"] == a)
            if sel.any():
                per_task = _per_task_mean(rows["task_index"][sel], rows["v"][sel])
                if not np.isfinite(per_task).all():
                    n_bad = int((~np.isfinite(per_task)).sum())
                    p.marks.setdefault(s, []).append((a, f"non-finite on {n_bad}/{per_task.size} tasks"))
                    continue
                m, ci = stats.mean_ci(per_task)
                p.points.setdefault(s, []).append((a, m, 0.0 if math.isnan(ci) else ci))
            if n_failed:
                p.marks.setdefault(s, []).append((a, f"{n_failed}/{n_trials} trials " + "/".join(sorted(statuses))))
    return p


def _per_task_mean(task_index: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mean over seeds for each task (rows of one cell); a NaN in any seed makes the task non-finite."""
    uniq, inv = np.unique(task_index, return_inverse=True)
    return np.bincount(inv, weights=v, minlength=uniq.size) / np.bincount(inv, minlength=uniq.size)


def _draw_panel(ax, p: Panel, d: AlphaData, colour: dict) -> tuple[list[float], bool]:
    """Points with error bars and × marks (one row of marks per series); returns the drawn values."""
    finite_vals, marked = [], False
    for s in d.series:
        if p.points.get(s):
            x, y, e = map(np.array, zip(*p.points[s]))
            ax.errorbar(x, y, yerr=e, color=colour[s], marker="o", ms=4, lw=1.5, capsize=3, label=s)
            finite_vals += [*(y - e), *(y + e)]
        y_mark = 0.95 - 0.08 * d.series.index(s)  # never on top of another series' marks
        for a, note in p.marks.get(s, []):
            marked = True
            ax.plot([a], [y_mark], marker="x", ms=9, mew=2.2, color=colour[s], transform=ax.get_xaxis_transform(),
                    clip_on=False, ls="none")
            ax.annotate(note, (a, y_mark), xycoords=ax.get_xaxis_transform(), xytext=(-8, 0),
                        textcoords="offset points", fontsize=7, color=colour[s], ha="right", va="center")
    return finite_vals, marked


def _axes_limits(ax, vals: np.ndarray, alphas: list[float]) -> None:
    ax.set_xscale("log")
    maybe_log_y(ax, vals[vals > 0] if vals.size else vals)
    if vals.size:
        lo, hi = np.nanmin(vals), np.nanmax(vals)
        if ax.get_yscale() == "linear":
            span = hi - lo or abs(hi) or 1.0
            ax.set_ylim(lo - 0.08 * span, hi + 0.25 * span)  # room for × marks
        else:
            ax.set_ylim(max(lo, 1e-12) / 1.3, hi * 2.5)
    if len(alphas) >= 2:
        ax.set_xlim(alphas[0] / 1.6, alphas[-1] * 1.6)


def draw(d: AlphaData, ctx: Context) -> Figure:
    colour = colours(d.series)
    nr, nc = len(d.panels), len(d.panels[0])
    fig = Figure(figsize=(min(4.2 * nc, 14) + 2.6, 3.6 * nr + 0.6))
    axes = fig.subplots(nr, nc, squeeze=False, sharex=True)
    any_marked = False
    for i, row in enumerate(d.panels):
        for j, p in enumerate(row):
            ax = axes[i][j]
            vals, marked = _draw_panel(ax, p, d, colour)
            any_marked |= marked
            _axes_limits(ax, np.array(vals), d.alphas)
            ax.grid(alpha=0.3)
            ax.set_title(f"{p.shots}-shot, {p.inner_steps} inner step{'s' if p.inner_steps != 1 else ''}", fontsize=9)
            if i == nr - 1:
                ax.set_xlabel("inner step size α (log scale)")
            if j == 0:
                unit = ctx.loss_unit() if d.metric == "loss" else get_metric(d.metric).axis
                ax.set_ylabel(f"evaluation {unit}")
    handles = [Line2D([], [], color=colour[s], marker="o", ms=4, lw=1.5, label=s) for s in d.series]
    handles.append(Line2D([], [], color="0.2", marker="o", ms=4, lw=0, label="mean ± 95% CI over eval tasks"))
    if any_marked:
        handles.append(Line2D([], [], color="0.2", marker="x", ms=8, mew=2, ls="none",
                              label="diverged / non-finite (not averaged in)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8, title="variant",
               title_fontsize=8)
    ctx.set_title(fig, f"final {d.metric} vs inner step size α (MT-net §6.2)",
                  "per-task values averaged over seeds; mean ± 1.96·sd/√n over evaluation tasks"
                  + ("; other hyper-parameters vary between points too" if d.mixed else ""))
    return fig


def figure(ctx: Context, metric: str) -> Figure:
    return draw(data(ctx, metric), ctx)
