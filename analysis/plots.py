"""Figures from a results dataset: `metasweep plot EXP --kind KIND -o fig.png`.

- curves: validation loss (solid) and meta-train loss (dashed) against meta-steps, one colour per
  variant (or configuration), mean over seeds with a min–max band over seeds;
- alpha: evaluation loss against the inner step size α on a log axis (MT-net §6.2), mean ± 95% CI
  over evaluation tasks; diverged or non-finite points are drawn as × at the top, never dropped;
- mask-fraction: fraction of weights updated per layer at each masked trial's last report, grouped
  by polynomial order (MT-net Fig. 4) or by variant;
- ranks: average rank per variant across settings (`compute_ranking`), Friedman p and the Nemenyi
  critical difference;
- cka: linear CKA and SVCCA between each layer's activations before and after the inner loop (table
  `cka`, analysis/cka.py), mean ± 95% CI over evaluation tasks and seeds, one line per variant.

Figures are drawn on a bare `matplotlib.figure.Figure` (Agg canvas): importing this module never
changes the pyplot backend of an interactive session.
"""

from __future__ import annotations

import json
import math
import os

import duckdb
import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import stats
from .query import connect
from .ranking import HP_COLUMNS, compute_ranking

__all__ = ["KINDS", "make_plot"]

KINDS = ("curves", "alpha", "mask-fraction", "ranks", "cka")
_TABLES_NEEDED = {"curves": ("trials", "curves"), "alpha": ("trials", "eval_tasks"),
                  "mask-fraction": ("trials", "curves"), "ranks": ("trials",),
                  "cka": ("trials",)}  # ranks reads its own rows; cka registers its optional table itself
DPI = 120
STAGE_ORDER = ("test", "grid", "single", "tune")
_REGRESSION = ("sine", "polynomial")


def make_plot(exp_uri: str, kind: str, output_png: str, stage: str | None = None, metric: str = "loss") -> str:
    """Draw one figure of `kind` (see KINDS) for a stage (default: test, else grid, single, tune)
    and write it as PNG. Raises ValueError naming what is missing when the data cannot make it."""
    if kind not in KINDS:
        raise ValueError(f"plot kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be loss or accuracy (got {metric!r})")
    con = connect(exp_uri, _TABLES_NEEDED[kind])  # only what the figure reads (eval_tasks can be 10M+ rows)
    ctx = _Context(con, exp_uri, _pick_stage(con, exp_uri, stage))
    fig = {"curves": _curves, "alpha": _alpha, "mask-fraction": _mask_fraction, "ranks": _ranks,
           "cka": _cka}[kind](ctx, metric)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(output_png))
    if not os.path.isdir(folder):
        raise ValueError(f"{output_png}: folder {folder} does not exist")
    fig.savefig(output_png, dpi=DPI, bbox_inches="tight")
    return output_png


# ------------------------------------------------------------------------------------------ data


def _pick_stage(con: duckdb.DuckDBPyConnection, exp_uri: str, stage: str | None) -> str:
    stages = [r[0] for r in con.execute("select distinct stage from trials order by stage").fetchall()]
    if not stages:
        raise ValueError(f"{exp_uri}: the dataset has no trials yet")
    if stage is None:
        return next((s for s in STAGE_ORDER if s in stages), stages[0])
    if stage not in stages:
        raise ValueError(f"{exp_uri}: no trials of stage {stage!r}; stages present: {', '.join(stages)}")
    return stage


class _Context:
    """The stage's trials with their row labels, registered as the duckdb table `plot_trials`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, exp_uri: str, stage: str):
        self.con, self.exp_uri, self.stage = con, exp_uri, stage
        names = con.execute("select distinct experiment from trials where stage = ?", [stage]).fetchall()
        self.experiment = names[0][0] if len(names) == 1 and names[0][0] else os.path.basename(
            os.path.normpath(exp_uri))
        cols = ["trial_id", "attempt", "variant", "seed", "status", "task_family", "task_options", "train_shots",
                "config", *HP_COLUMNS]
        rows = con.execute(f"select {', '.join(cols)} from trials where stage = ? order by trial_id",
                           [stage]).fetchall()
        self.trials = [dict(zip(cols, r)) for r in rows]
        for t in self.trials:
            conf = json.loads(t["config"]) if t["config"] else {}
            for h in HP_COLUMNS:  # the configured budget (a diverged trial stops before its meta_steps)
                if h == "meta_steps" or t[h] is None:
                    t[h] = conf.get(h, t[h])
            t["options"] = json.loads(t["task_options"]) if t["task_options"] else {}
        self.task_family = sorted({t["task_family"] for t in self.trials if t["task_family"]})
        self.title = f"experiment {self.experiment}, stage {stage}"

    def register_labels(self, exclude: tuple[str, ...] = (), variant_only: bool = False) -> list[str]:
        """Label each trial by its variant plus what varies among that variant's trials in the stage
        (hyper-parameters, train shots, task options) except `exclude`; seeds share a label. Registers
        table `plot_labels(trial_id, label)`, returns the labels in display order."""
        keys = [] if variant_only else [h for h in ("train_shots", *HP_COLUMNS) if h not in exclude]
        opt_keys = [] if variant_only else sorted({k for t in self.trials for k in t["options"]})

        def values(t):
            return [t[k] for k in keys] + [json.dumps(t["options"].get(k), sort_keys=True) for k in opt_keys]

        names = keys + opt_keys
        by_variant: dict[str, list[list]] = {}
        for t in self.trials:
            by_variant.setdefault(t["variant"], []).append(values(t))
        varying = {v: [i for i in range(len(names)) if len({repr(r[i]) for r in rs}) > 1]
                   for v, rs in by_variant.items()}
        labels = []
        for t in self.trials:
            vals = values(t)
            parts = [t["variant"]] + [f"{names[i]}={_fmt(vals[i])}" for i in varying[t["variant"]]]
            t["label"] = " ".join(parts)
            labels.append(t["label"])
        self.con.register("plot_labels", pa.table({"trial_id": [t["trial_id"] for t in self.trials],
                                                   "label": labels}))
        variants = _variant_order({t["variant"] for t in self.trials})
        return sorted(set(labels), key=lambda lab: (variants.index(lab.split(" ")[0]), lab))

    def colours(self, labels: list[str]) -> dict[str, tuple]:
        from matplotlib import colormaps

        cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
        return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}

    def loss_unit(self) -> str:
        fams = set(self.task_family)
        if fams and fams <= set(_REGRESSION):
            return "loss (MSE)"
        if fams and not fams & set(_REGRESSION):
            return "loss (cross-entropy)"
        return "loss"


def _variant_order(variants: set[str]) -> list[str]:
    return sorted(variants, key=lambda v: (v != "maml", v))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, str):
        try:
            return _fmt(json.loads(v))
        except ValueError:
            return v
    return str(v)


def _title(ax_or_fig, ctx: _Context, what: str, detail: str = "") -> None:
    text = f"{ctx.title}: {what}" + (f"\n{detail}" if detail else "")
    (ax_or_fig.suptitle if isinstance(ax_or_fig, Figure) else ax_or_fig.set_title)(text, fontsize=10)


# ------------------------------------------------------------------------------------------ curves


def _curves(ctx: _Context, metric: str) -> Figure:
    labels = ctx.register_labels()
    val_col = "val_loss" if metric == "loss" else "val_accuracy"
    train_col = "meta_train_loss" if metric == "loss" else None
    aggs = [f"avg(c.{val_col}) filter (where isfinite(c.{val_col})) as v_mean",
            f"min(c.{val_col}) filter (where isfinite(c.{val_col})) as v_min",
            f"max(c.{val_col}) filter (where isfinite(c.{val_col})) as v_max",
            f"count(*) filter (where isfinite(c.{val_col})) as n"]
    if train_col:
        aggs += [f"avg(c.{train_col}) filter (where isfinite(c.{train_col})) as t_mean",
                 f"min(c.{train_col}) filter (where isfinite(c.{train_col})) as t_min",
                 f"max(c.{train_col}) filter (where isfinite(c.{train_col})) as t_max"]
    rows = ctx.con.execute(
        f"""select l.label, c.meta_step, {', '.join(aggs)}
            from curves c join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
            where t.stage = ? group by all order by l.label, c.meta_step""", [ctx.stage]).fetchnumpy()
    rows = {k: np.ma.filled(v, np.nan) if np.ma.isMaskedArray(v) else v for k, v in rows.items()}
    if not len(rows["meta_step"]) or not np.isfinite(rows["v_mean"].astype(float)).any():
        what = "validation accuracy (classification tasks only)" if metric == "accuracy" else "validation loss"
        raise ValueError(f"curves plot: stage {ctx.stage} of {ctx.exp_uri} has no {what} in curves")
    seeds = _seed_counts(ctx)
    status = _status_counts(ctx)
    colours = ctx.colours(labels)
    fig = Figure(figsize=(8.5, 5.2))
    ax = fig.add_subplot()
    all_vals = []
    for lab in labels:
        sel = rows["label"] == lab
        if not sel.any():
            continue
        x = rows["meta_step"][sel]
        c = colours[lab]
        bad = {s: n for s, n in status[lab].items() if s != "completed"}
        suffix = f" ({', '.join(f'{n} {s}' for s, n in sorted(bad.items()))})" if bad else ""
        mark = "o" if len(x) <= 3 else None  # a curve cut short by divergence may be one point
        ax.plot(x, rows["v_mean"][sel], color=c, lw=1.8, marker=mark, ms=4,
                label=f"{lab}, {seeds[lab]} seed(s){suffix}")
        ax.fill_between(x, rows["v_min"][sel].astype(float), rows["v_max"][sel].astype(float), color=c,
                        alpha=0.18, lw=0)
        all_vals.append(rows["v_min"][sel])
        all_vals.append(rows["v_max"][sel])
        if train_col:
            ax.plot(x, rows["t_mean"][sel], color=c, lw=1.2, ls="--")
            ax.fill_between(x, rows["t_min"][sel].astype(float), rows["t_max"][sel].astype(float), color=c,
                            alpha=0.07, lw=0)
            all_vals.append(rows["t_min"][sel])
            all_vals.append(rows["t_max"][sel])
    _maybe_log_y(ax, np.concatenate(all_vals).astype(float))
    ax.set_xlabel("meta-step (outer iterations)")
    ax.set_ylabel(ctx.loss_unit() if metric == "loss" else "validation accuracy (fraction correct)")
    ax.grid(alpha=0.3)
    style = [Line2D([], [], color="0.25", lw=1.8, label="validation " + metric + " (mean over seeds)"),
             Patch(color="0.25", alpha=0.18, label="band: min–max over seeds")]
    if train_col:
        style.insert(1, Line2D([], [], color="0.25", lw=1.2, ls="--", label="meta-train loss (mean over seeds)"))
    first = ax.legend(handles=style, loc="upper right", fontsize=8, framealpha=0.9)
    ax.add_artist(first)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8,
              title="variant" + (" / configuration" if any("=" in lab for lab in labels) else ""))
    _title(ax, ctx, f"learning curves ({metric})", "mean over seeds; shaded band = min–max over seeds")
    return fig


def _seed_counts(ctx: _Context) -> dict[str, int]:
    out: dict[str, set] = {}
    for t in ctx.trials:
        out.setdefault(t["label"], set()).add(t["seed"])
    return {k: len(v) for k, v in out.items()}


def _status_counts(ctx: _Context) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t in ctx.trials:
        d = out.setdefault(t["label"], {})
        d[t["status"]] = d.get(t["status"], 0) + 1
    return out


def _maybe_log_y(ax, values: np.ndarray, ratio: float = 30.0) -> None:
    v = values[np.isfinite(values)]
    if v.size and v.min() > 0 and v.max() / v.min() > ratio:
        ax.set_yscale("log")


# ------------------------------------------------------------------------------------------ alpha


def _alpha(ctx: _Context, metric: str) -> Figure:
    if any(t["alpha"] is None for t in ctx.trials):
        raise ValueError(f"alpha plot: some trials of stage {ctx.stage} have no alpha")
    per_variant: dict[str, set] = {}
    for t in ctx.trials:
        per_variant.setdefault(t["variant"], set()).add(t["alpha"])
    if all(len(a) < 2 for a in per_variant.values()):
        raise ValueError(
            f"alpha plot: needs a sweep over alpha (a grid over alpha); stage {ctx.stage} of {ctx.exp_uri} has "
            "one alpha per variant: " + ", ".join(f"{v} α={_fmt(next(iter(a)))}" for v, a in sorted(
                per_variant.items(), key=lambda kv: _variant_order(set(per_variant)).index(kv[0]))))
    series = ctx.register_labels(exclude=("alpha",))
    by_series: dict[str, set] = {}
    for t in ctx.trials:
        by_series.setdefault(t["label"], set()).add(t["alpha"])
    mixed = all(len(a) < 2 for a in by_series.values())
    if mixed:  # alpha moves together with other hyper-parameters (an Optuna tune stage): one series per variant
        series = ctx.register_labels(variant_only=True)
        by_series = {}
        for t in ctx.trials:
            by_series.setdefault(t["label"], set()).add(t["alpha"])
    steps = sorted(r[0] for r in ctx.con.execute(
        "select distinct e.inner_steps from eval_tasks e join trials t using (trial_id, attempt) "
        "where t.stage = ?", [ctx.stage]).fetchall())
    if not steps:
        raise ValueError(f"alpha plot: stage {ctx.stage} of {ctx.exp_uri} has no evaluation rows (eval_tasks); "
                         "did every trial diverge or error?")
    positive = [s for s in steps if s > 0] or steps
    row_steps = sorted({positive[0], steps[-1]})
    shots = sorted(r[0] for r in ctx.con.execute(
        "select distinct e.shots from eval_tasks e join trials t using (trial_id, attempt) where t.stage = ?",
        [ctx.stage]).fetchall())
    data = ctx.con.execute(
        f"""select l.label, t.alpha, e.inner_steps, e.shots, t.seed, e.task_index, avg(e.{metric}) as v
            from eval_tasks e join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
            where t.stage = ? and t.status = 'completed'
            group by all order by l.label, t.alpha, e.inner_steps, e.shots, e.task_index, t.seed""",
        [ctx.stage]).fetchnumpy()
    data = {k: np.ma.filled(v, np.nan) if np.ma.isMaskedArray(v) else v for k, v in data.items()}
    if metric == "accuracy" and not np.isfinite(data["v"]).any():
        raise ValueError("alpha plot: this dataset has no accuracy (regression tasks): use --metric loss")
    # trials that produced no evaluation (diverged / errored) per (series, alpha)
    failed: dict[tuple[str, float], list[int]] = {}
    failed_status: dict[tuple[str, float], set[str]] = {}
    for t in ctx.trials:
        f = failed.setdefault((t["label"], t["alpha"]), [0, 0])
        f[1] += 1
        if t["status"] != "completed":
            f[0] += 1
            failed_status.setdefault((t["label"], t["alpha"]), set()).add(t["status"])
    colours = ctx.colours(series)
    nr, nc = len(row_steps), len(shots)
    fig = Figure(figsize=(min(4.2 * nc, 14) + 2.6, 3.6 * nr + 0.6))
    axes = fig.subplots(nr, nc, squeeze=False, sharex=True)
    alphas_all = sorted({t["alpha"] for t in ctx.trials})
    any_marked = False
    for i, st in enumerate(row_steps):
        for j, sh in enumerate(shots):
            ax = axes[i][j]
            finite_vals = []
            for s in series:
                pts, marks = [], []
                for a in sorted(by_series[s]):
                    sel = (data["label"] == s) & (data["alpha"] == a) & (data["inner_steps"] == st) & \
                          (data["shots"] == sh)
                    n_failed, n_trials = failed.get((s, a), (0, 0))
                    if sel.any():
                        per_task = _per_task_mean(data["task_index"][sel], data["v"][sel])
                        if np.isfinite(per_task).all():
                            m, ci = stats.mean_ci(per_task)
                            pts.append((a, m, 0.0 if math.isnan(ci) else ci))
                            finite_vals += [m - ci, m + ci]
                        else:
                            n_bad = int((~np.isfinite(per_task)).sum())
                            marks.append((a, f"non-finite on {n_bad}/{per_task.size} tasks"))
                            continue
                    if n_failed:
                        marks.append((a, f"{n_failed}/{n_trials} trials " + "/".join(sorted(failed_status[(s, a)]))))
                c = colours[s]
                if pts:
                    x, y, e = map(np.array, zip(*pts))
                    ax.errorbar(x, y, yerr=e, color=c, marker="o", ms=4, lw=1.5, capsize=3, label=s)
                y_mark = 0.95 - 0.08 * series.index(s)  # one row of marks per series: never on top of another
                for a, note in marks:
                    any_marked = True
                    ax.plot([a], [y_mark], marker="x", ms=9, mew=2.2, color=c, transform=ax.get_xaxis_transform(),
                            clip_on=False, ls="none")
                    ax.annotate(note, (a, y_mark), xycoords=ax.get_xaxis_transform(), xytext=(-8, 0),
                                textcoords="offset points", fontsize=7, color=c, ha="right", va="center")
            ax.set_xscale("log")
            vals = np.array(finite_vals)
            _maybe_log_y(ax, vals[vals > 0] if vals.size else vals)
            if vals.size:
                lo, hi = np.nanmin(vals), np.nanmax(vals)
                if ax.get_yscale() == "linear":
                    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
                    ax.set_ylim(lo - pad, hi + 0.25 * (hi - lo or abs(hi) or 1.0))  # room for × marks
                else:
                    ax.set_ylim(max(lo, 1e-12) / 1.3, hi * 2.5)
            if len(alphas_all) >= 2:
                ax.set_xlim(alphas_all[0] / 1.6, alphas_all[-1] * 1.6)
            ax.grid(alpha=0.3)
            ax.set_title(f"{sh}-shot, {st} inner step{'s' if st != 1 else ''}", fontsize=9)
            if i == nr - 1:
                ax.set_xlabel("inner step size α (log scale)")
            if j == 0:
                ylab = ctx.loss_unit() if metric == "loss" else "accuracy (fraction correct)"
                ax.set_ylabel(f"evaluation {ylab}")
    handles = [Line2D([], [], color=colours[s], marker="o", ms=4, lw=1.5, label=s) for s in series]
    handles.append(Line2D([], [], color="0.2", marker="o", ms=4, lw=0, label="mean ± 95% CI over eval tasks"))
    if any_marked:
        handles.append(Line2D([], [], color="0.2", marker="x", ms=8, mew=2, ls="none",
                              label="diverged / non-finite (not averaged in)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8, title="variant",
               title_fontsize=8)
    _title(fig, ctx, f"final {metric} vs inner step size α (MT-net §6.2)",
           "per-task values averaged over seeds; mean ± 1.96·sd/√n over evaluation tasks"
           + ("; other hyper-parameters vary between points too" if mixed else ""))
    return fig


def _per_task_mean(task_index: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mean over seeds for each task (rows of one cell); a NaN in any seed makes the task non-finite."""
    uniq, inv = np.unique(task_index, return_inverse=True)
    sums = np.bincount(inv, weights=v, minlength=uniq.size)
    return sums / np.bincount(inv, minlength=uniq.size)


# ------------------------------------------------------------------------------------------ masks


def _mask_fraction(ctx: _Context, metric: str) -> Figure:
    ctx.register_labels()
    rows = ctx.con.execute(
        """select t.trial_id, l.label, t.status, c.meta_step, c.mask_fraction, c.mask_fraction_per_cell
           from curves c join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
           where t.stage = ? and c.mask_fraction_per_cell is not null and len(c.mask_fraction_per_cell) > 0
           qualify row_number() over (partition by c.trial_id order by c.meta_step desc) = 1
           order by t.trial_id""", [ctx.stage]).fetchall()
    if not rows:
        masked = sorted({t["variant"] for t in ctx.trials if t["status"]})
        raise ValueError(
            f"mask-fraction plot: stage {ctx.stage} of {ctx.exp_uri} has no masked variant (m-net, mt-net, ...): "
            f"curves.mask_fraction_per_cell is empty for its variants {', '.join(masked)}")
    trials = {t["trial_id"]: t for t in ctx.trials}
    poly = all(trials[r[0]]["task_family"] == "polynomial" for r in rows)
    masked_labels = sorted({r[1] for r in rows})
    groups: dict[str, list[tuple[list[float], float]]] = {}
    order_key: dict[str, tuple] = {}
    excluded = 0
    for tid, label, status, _step, overall, per_cell in rows:
        if status not in ("completed", "stopped_early"):
            excluded += 1
            continue
        if poly:
            order = trials[tid]["options"].get("order")
            variant = trials[tid]["variant"]
            g = (f"{variant}, " if len({trials[r[0]]["variant"] for r in rows}) > 1 else "") + f"order {order}"
            order_key[g] = (variant, -1 if order is None else order)
        else:
            g = label
            order_key[g] = (masked_labels.index(label),)
        cells = [float(x) if x is not None else float("nan") for x in per_cell]
        if overall is None or not math.isfinite(overall):
            overall = float(np.nanmean(cells))
        groups.setdefault(g, []).append((cells, float(overall)))
    if not groups:
        raise ValueError(f"mask-fraction plot: every masked trial of stage {ctx.stage} diverged or errored")
    names = sorted(groups, key=lambda g: order_key[g])
    n_layers = max(len(c) for g in groups.values() for c, _ in g)
    xlabels = [f"layer {i + 1}" + (" (output)" if i == n_layers - 1 and n_layers > 1 else "")
               for i in range(n_layers)] + ["overall"]
    fig = Figure(figsize=(max(7.0, 1.3 * (n_layers + 1) * max(1, len(names)) ** 0.5 + 3), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    from matplotlib import colormaps

    cmap = colormaps["viridis" if poly else "tab10"]
    for k, g in enumerate(names):
        mat = np.full((len(groups[g]), n_layers + 1), np.nan)
        for i, (cells, overall) in enumerate(groups[g]):
            mat[i, :len(cells)] = cells
            mat[i, -1] = overall
        mean = np.nanmean(mat, axis=0)
        lo, hi = np.nanmin(mat, axis=0), np.nanmax(mat, axis=0)
        x = np.arange(n_layers + 1) + (k - (len(names) - 1) / 2) * width
        colour = cmap(0.15 + 0.7 * k / max(1, len(names) - 1)) if poly else cmap(k % 10)
        ax.bar(x, mean, width * 0.92, color=colour, label=f"{g} ({len(groups[g])} trial(s))",
               yerr=np.vstack([mean - lo, hi - mean]), capsize=3, ecolor="0.3", error_kw={"lw": 1})
    ax.axvline(n_layers - 0.5, color="0.6", lw=0.8, ls=":")
    ax.set_xticks(np.arange(n_layers + 1), xlabels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of weights updated (0–1)")
    ax.set_xlabel("layer (T-cell)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              title="polynomial order" if poly else "variant", title_fontsize=8)
    detail = "at each masked trial's last report; bar = mean over trials, whisker = min–max over trials"
    if excluded:
        detail += f"; {excluded} diverged/errored trial(s) left out"
    _title(ax, ctx, "fraction of weights updated per layer" + (" by task order (MT-net Fig. 4)" if poly else ""),
           detail)
    return fig


# ------------------------------------------------------------------------------------------ ranks


def _nemenyi_cd(k: int, n: int, level: float = 0.95) -> float:
    """Critical difference of average ranks (Demšar 2006): q_α·√(k(k+1)/(6N)), q_α from the
    studentized range with infinite degrees of freedom divided by √2."""
    from scipy.stats import studentized_range

    q = studentized_range.ppf(level, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def _ranks(ctx: _Context, metric: str) -> Figure:
    r = compute_ranking(ctx.exp_uri, metric=metric, stage=ctx.stage)  # its fast path reads the eval files
    if not r.avg_rank:
        raise ValueError(f"ranks plot: no setting of stage {ctx.stage} has a finite {metric} for every variant, "
                         "so there is nothing to rank")
    n_settings = sum(all((v, s) in r.cells and not r.cells[(v, s)].nonfinite_tasks for v in r.variants)
                     for s in r.settings)
    order = sorted(r.avg_rank, key=lambda v: (r.avg_rank[v], v))
    k = len(order)
    fig = Figure(figsize=(7.5, 1.2 + 0.42 * k + 0.6))
    ax = fig.add_subplot()
    y = np.arange(k)[::-1]
    ranks = np.array([r.avg_rank[v] for v in order])
    colours = ["tab:green" if math.isclose(x, ranks.min()) else "tab:blue" for x in ranks]
    ax.barh(y, ranks, color=colours, height=0.62, label="average rank over settings")
    for yi, x in zip(y, ranks):
        ax.text(x + 0.04 * k, yi, f"{x:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, order)
    ax.set_xlim(0, k + 0.6)
    ax.set_xlabel(f"average rank over {n_settings} setting(s) (1 = best {metric})")
    ax.grid(alpha=0.3, axis="x")
    handles = [Patch(color="tab:green", label="best average rank"), Patch(color="tab:blue", label="other variants")]
    if k >= 2 and n_settings >= 1:
        cd = _nemenyi_cd(k, n_settings)
        x0 = ranks.min()
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
    _title(ax, ctx, f"average rank ({metric} after {r.inner_steps} inner step(s))", fried)
    return fig


def _cka(ctx: _Context, metric: str) -> Figure:
    """CKA (left) and SVCCA (right, where the rows have it) before vs after the inner loop per layer:
    near 1 = the layer is reused as is (feature reuse), lower = the inner loop changes it (rapid
    learning)."""
    from .store import read_raw

    ctx.con.register("_cka_all", read_raw(ctx.exp_uri, "cka"))
    ctx.con.execute("create or replace view cka as select * from _cka_all semi join trials using (trial_id, attempt)")
    labels = ctx.register_labels()

    def per_layer(measure: str):
        return ctx.con.execute(
            f"""select l.label, k.layer, avg(k.{measure}) as m, stddev_pop(k.{measure}) as sd, count(*) as n
                from cka k join trials t using (trial_id, attempt) join plot_labels l using (trial_id)
                where t.stage = ? and isfinite(k.{measure}) group by all order by l.label, k.layer""",
            [ctx.stage]).fetchnumpy()

    panels = [("cka", "linear CKA", per_layer("cka")), ("cca", "SVCCA", per_layer("cca"))]
    panels = [p for p in panels if len(p[2]["layer"])]
    if not panels or panels[0][0] != "cka":
        raise ValueError(f"cka plot: stage {ctx.stage} of {ctx.exp_uri} has no rows in table cka "
                         "(write them with `metasweep train --cka-tasks N` on an image task)")
    colours = ctx.colours(labels)
    fig = Figure(figsize=(7.5 * len(panels), 4.8))
    n_layers = max(int(rows["layer"].max()) for _, _, rows in panels) + 1
    for i, (_, ylabel, rows) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for lab in labels:
            sel = rows["label"] == lab
            if not sel.any():
                continue
            x, m = rows["layer"][sel], rows["m"][sel].astype(float)
            ci = 1.96 * rows["sd"][sel].astype(float) / np.sqrt(rows["n"][sel].astype(float))
            ax.errorbar(x, m, yerr=ci, color=colours[lab], marker="o", ms=4, lw=1.6, capsize=3, label=lab)
        ax.set_xticks(range(n_layers))
        ax.set_xticklabels([f"conv {i + 1}" for i in range(n_layers - 1)] + ["head"])
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{ylabel}, before vs after the inner loop")
        ax.set_ylim(top=1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8, title="variant", title_fontsize=8)
        what = "CKA" if i == 0 else "SVCCA"
        _title(ax, ctx, f"representation change in the inner loop ({what})", "mean ± 95% CI over tasks and seeds")
    return fig
