"""The paper-style ranking of variants from a results dataset.

A *setting* is (train shots, evaluation shots) at one number of inner steps. Per (variant,
setting) the value of an evaluation task is its loss (or accuracy) averaged over the variant's
seeds; every variant meets the same tasks, so comparisons are paired on tasks. Cells show
mean +- 1.96 sd/sqrt(n) over tasks (papers' convention) and, with several seeds, a bootstrap
interval across seeds. The best variant of each setting is marked, and so is every variant not
significantly worse than it (Holm-corrected Wilcoxon on shared tasks). Diverged and errored
trials are counted and shown, never averaged in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import duckdb
import numpy as np

from . import stats
from .store import read_dataset


@dataclass
class Cell:
    mean: float
    ci95: float
    n_tasks: int
    n_seeds: int
    seed_ci: tuple[float, float] | None = None
    best: bool = False
    tied_with_best: bool = False
    nonfinite_tasks: int = 0  # tasks whose adapted loss overflowed: the cell is shown, not ranked


@dataclass
class Ranking:
    metric: str
    stage: str
    inner_steps: int
    variants: list[str]
    settings: list[tuple[int, int]]  # (train_shots, eval shots)
    cells: dict[tuple[str, tuple[int, int]], Cell]
    avg_rank: dict[str, float]
    friedman: dict | None
    baseline: str | None
    paired: list[dict]  # per setting, each variant vs baseline
    status_counts: dict[str, dict[str, int]]  # variant -> status -> trials
    notes: list[str] = field(default_factory=list)

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "loss"


def _connect(exp_uri: str) -> duckdb.DuckDBPyConnection:
    ds = read_dataset(exp_uri)
    con = duckdb.connect()
    for name, table in ds.items():
        con.register(name, table)
    return con


HP_COLUMNS = ("alpha", "beta", "temperature", "inner_steps", "meta_batch", "meta_steps")


def _register_labels(con: duckdb.DuckDBPyConnection, stage: str) -> None:
    """Row label of each trial: the variant, plus the hyper-parameters that vary among that variant's
    trials of the stage (a grid over alpha gives rows `maml alpha=0.01`, `maml alpha=0.1`); seeds of
    one configuration share a row."""
    import pyarrow as pa

    import json

    trials = []
    options: dict[str, dict] = {}
    for tid, variant, cfg, task_options, *cols in con.execute(
            f"select trial_id, variant, config, task_options, {', '.join(HP_COLUMNS)} from trials where stage = ?",
            [stage]).fetchall():
        conf = json.loads(cfg) if cfg else {}
        options[tid] = json.loads(task_options) if task_options else {}
        # the configured budget, not the steps done (a diverged trial stops early)
        trials.append((tid, variant, *(conf.get(h, c) for h, c in zip(HP_COLUMNS, cols))))
    varying: dict[str, list[int]] = {}
    by_variant: dict[str, list[tuple]] = {}
    for t in trials:
        by_variant.setdefault(t[1], []).append(t[2:])
    for v, hps in by_variant.items():
        varying[v] = [i for i in range(len(HP_COLUMNS)) if len({h[i] for h in hps}) > 1]
    option_keys = {v: sorted(k for k in {k for t in trials if t[1] == v for k in options[t[0]]}
                             if len({json.dumps(options[t[0]].get(k)) for t in trials if t[1] == v}) > 1)
                   for v in by_variant}
    ids, labels = [], []
    for t in trials:
        parts = [t[1]] + [f"{k}={options[t[0]].get(k)}" for k in option_keys[t[1]]]
        parts += [f"{HP_COLUMNS[i]}={t[2 + i]:.3g}" for i in varying[t[1]]]
        ids.append(t[0])
        labels.append(" ".join(parts))
    con.register("labels", pa.table({"trial_id": ids, "label": labels}))


def compute_ranking(exp_uri: str, *, metric: str = "loss", stage: str | None = None, inner_steps: int | None = None,
                    baseline: str | None = "maml", con: duckdb.DuckDBPyConnection | None = None) -> Ranking:
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be loss or accuracy (got {metric!r})")
    con = con or _connect(exp_uri)
    stages = [r[0] for r in con.execute("select distinct stage from trials order by stage").fetchall()]
    if not stages:
        raise ValueError(f"{exp_uri}: the dataset has no trials yet")
    if stage is None:
        stage = next((s for s in ("test", "grid", "single", "tune") if s in stages), stages[0])
    if stage not in stages:
        raise ValueError(f"{exp_uri}: no trials of stage {stage!r}; stages present: {', '.join(stages)}")
    counts: dict[str, dict[str, int]] = {}
    _register_labels(con, stage)
    for v, s, n in con.execute("select l.label, t.status, count(*) from trials t join labels l using (trial_id) "
                               "where t.stage = ? group by all", [stage]).fetchall():
        counts.setdefault(v, {})[s] = n
    steps_avail = sorted(r[0] for r in con.execute(
        "select distinct e.inner_steps from eval_tasks e join trials t using (trial_id, attempt) "
        "where t.stage = ? and t.status = 'completed'", [stage]).fetchall())
    if not steps_avail:
        raise ValueError(f"{exp_uri}: stage {stage!r} has no completed trial with evaluation rows")
    if inner_steps is None:
        positive = [s for s in steps_avail if s > 0]
        inner_steps = positive[0] if positive else steps_avail[0]
    elif inner_steps not in steps_avail:
        raise ValueError(f"inner steps {inner_steps} were not evaluated; available: {steps_avail}")
    _register_labels(con, stage)
    rows = con.execute(
        f"""select l.label as variant, t.train_shots, e.shots, t.seed, e.task_index, avg(e.{metric}) as v
            from eval_tasks e join trials t using (trial_id, attempt) join labels l using (trial_id)
            where t.stage = ? and t.status = 'completed' and e.inner_steps = ?
            group by all order by l.label, t.train_shots, e.shots, t.seed, e.task_index""",
        [stage, inner_steps]).fetchnumpy()
    if metric == "accuracy" and np.isnan(rows["v"]).all():
        raise ValueError("this dataset has no accuracy (regression tasks): use --metric loss")
    variants = sorted(set(rows["variant"].tolist()), key=lambda v: (v != baseline, v))
    settings = sorted(set(zip(rows["train_shots"].tolist(), rows["shots"].tolist())))
    per_task: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
    cells: dict[tuple[str, tuple[int, int]], Cell] = {}
    notes = []
    for var in variants:
        for st in settings:
            sel = (rows["variant"] == var) & (rows["train_shots"] == st[0]) & (rows["shots"] == st[1])
            if not sel.any():
                continue
            seeds, tasks, vals = rows["seed"][sel], rows["task_index"][sel], rows["v"][sel]
            useeds = np.unique(seeds)
            by_seed = [vals[seeds == s] for s in useeds]
            n_tasks = min(len(b) for b in by_seed)
            mat = np.stack([b[:n_tasks] for b in by_seed])  # [seeds, tasks], tasks in index order
            task_mean = mat.mean(0)
            bad = int((~np.isfinite(task_mean)).sum())
            if bad:
                cells[(var, st)] = Cell(float("nan"), float("nan"), n_tasks, len(useeds), nonfinite_tasks=bad)
                notes.append(f"{var} at {st[1]}-shot: the adapted {metric} is not finite on {bad} of {n_tasks} "
                             f"tasks after {inner_steps} inner steps (shown, not ranked)")
                continue
            mean, ci = stats.mean_ci(task_mean)
            seed_ci = None
            if len(useeds) >= 2:
                _, lo, hi = stats.bootstrap_seed_ci(list(mat), n_boot=1000, rng=0)
                seed_ci = (lo, hi)
            per_task[(var, st)] = task_mean
            cells[(var, st)] = Cell(mean, ci, n_tasks, len(useeds), seed_ci)
    # best and ties per setting
    sign = 1 if metric == "loss" else -1
    score_rows = []
    paired = []
    for st in settings:
        present = [v for v in variants if (v, st) in cells and not cells[(v, st)].nonfinite_tasks]
        if not present:
            continue
        best = min(present, key=lambda v: sign * cells[(v, st)].mean)
        cells[(best, st)].best = True
        same_n = {v: per_task[(v, st)] for v in present}
        if len(present) >= 2 and len({len(a) for a in same_n.values()}) == 1:
            for v in stats.not_significantly_worse(same_n, best):
                if v != best:
                    cells[(v, st)].tied_with_best = True
            if baseline in same_n:
                for r in stats.compare_to_baseline(same_n, baseline):
                    paired.append({"setting": st, **r})
        if len(present) == len(variants):
            score_rows.append([cells[(v, st)].mean for v in variants])
    avg_rank: dict[str, float] = {}
    fried = None
    if score_rows:
        ranks = stats.average_ranks(np.array(score_rows), lower_is_better=metric == "loss")
        avg_rank = dict(zip(variants, ranks.tolist()))
        if len(variants) >= 3 and len(score_rows) >= 2:
            fried = stats.friedman(np.array(score_rows))
    if baseline not in variants:
        notes.append(f"baseline {baseline!r} is not in this stage; no paired tests against it")
        baseline = None
    for v, c in counts.items():
        bad = {s: n for s, n in c.items() if s != "completed"}
        if bad:
            notes.append(f"{v}: " + ", ".join(f"{n} {s}" for s, n in sorted(bad.items())) +
                         f" of {sum(c.values())} trials (not averaged in)")
    return Ranking(metric, stage, inner_steps, variants, settings, cells, avg_rank, fried, baseline, paired, counts,
                   notes)


# ------------------------------------------------------------------------------------------ formats


def _cell_text(c: Cell | None, fmt: str) -> str:
    if c is None:
        return "-"
    if c.nonfinite_tasks:
        return f"diverged ({c.nonfinite_tasks}/{c.n_tasks} tasks)"
    digits = 3 if abs(c.mean) < 100 else 1
    text = f"{c.mean:.{digits}f} ± {c.ci95:.{digits}f}"
    mark = "*" if c.best else ("†" if c.tied_with_best else "")
    if fmt == "markdown":
        return f"**{text}**" if c.best else (text + " †" if c.tied_with_best else text)
    if fmt == "latex":
        text = text.replace("±", r"$\pm$")
        return rf"\textbf{{{text}}}" if c.best else (text + r"$^\dagger$" if c.tied_with_best else text)
    return text + (f" {mark}" if mark else "")


def _setting_label(st: tuple[int, int], r: Ranking) -> str:
    train = {s[0] for s in r.settings}
    return f"{st[1]}-shot" if len(train) == 1 else f"train {st[0]} / eval {st[1]}-shot"


def table_rows(r: Ranking, fmt: str = "text") -> tuple[list[str], list[list[str]]]:
    header = ["variant"] + [_setting_label(s, r) for s in r.settings] + ["avg rank", "seeds"]
    body = []
    for v in r.variants:
        seeds = sorted({r.cells[(v, s)].n_seeds for s in r.settings if (v, s) in r.cells})
        total = sum(r.status_counts.get(v, {}).values())
        body.append([v] + [_cell_text(r.cells.get((v, s)), fmt) for s in r.settings]
                    + [f"{r.avg_rank[v]:.2f}" if v in r.avg_rank else "-",
                       f"{'/'.join(map(str, seeds)) or 0}/{total // max(1, len({s[0] for s in r.settings}))}"])
    return header, body


def paired_rows(r: Ranking) -> tuple[list[str], list[list[str]]]:
    header = ["setting", "variant", f"Δ vs {r.baseline}", "95% CI", "P(better)", "p (Wilcoxon)", "p (Holm)"]
    body = []
    for p in r.paired:
        better = p["prob_improvement"] if r.lower_is_better else 1 - p["prob_improvement"]
        body.append([_setting_label(p["setting"], r), p["variant"], f"{p['mean_diff']:+.3f}",
                     f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]", f"{better:.2f}", f"{p['p_wilcoxon']:.2g}",
                     f"{p['p_holm']:.2g}" + (" *" if p["p_holm"] < 0.05 else "")])
    return header, body


def caption(r: Ranking) -> str:
    direction = "lower is better" if r.lower_is_better else "higher is better"
    text = (f"{r.metric} after {r.inner_steps} inner step(s), stage {r.stage}; mean ± 95% CI over evaluation "
            f"tasks (per-task values averaged over seeds; {direction}). Best per column in bold (* in plain "
            f"text); † = not significantly worse than the best (Holm-corrected Wilcoxon "
            f"signed-rank on shared tasks, α = 0.05).")
    if r.friedman:
        text += (f" Friedman test over {r.friedman['n_settings']} settings: χ² = {r.friedman['statistic']:.2f}, "
                 f"p = {r.friedman['pvalue']:.3g}.")
    return text


def render(r: Ranking, fmt: str = "text") -> str:
    header, body = table_rows(r, fmt)
    pheader, pbody = paired_rows(r)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["variant", "train_shots", "eval_shots", "inner_steps", "mean", "ci95", "n_tasks", "n_seeds",
                    "seed_ci_low", "seed_ci_high", "best", "tied_with_best", "avg_rank"])
        for (v, st), c in sorted(r.cells.items()):
            w.writerow([v, st[0], st[1], r.inner_steps, c.mean, c.ci95, c.n_tasks, c.n_seeds,
                        c.seed_ci[0] if c.seed_ci else "", c.seed_ci[1] if c.seed_ci else "", c.best,
                        c.tied_with_best, r.avg_rank.get(v, "")])
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        lines += ["", caption(r)]
        if pbody:
            lines += ["", "| " + " | ".join(pheader) + " |", "|" + "---|" * len(pheader)]
            lines += ["| " + " | ".join(row) + " |" for row in pbody]
        lines += [f"- {n}" for n in r.notes]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        cols = "l" + "c" * (len(header) - 1)
        lines = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
                 " & ".join(header) + r" \\", r"\midrule"]
        lines += [" & ".join(row) + r" \\" for row in body]
        lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption(r)}}}".replace("α", r"$\alpha$")
                  .replace("χ²", r"$\chi^2$").replace("±", r"$\pm$").replace("†", r"$^\dagger$"), r"\end{table}"]
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"format must be text, markdown, latex or csv (got {fmt!r})")
    return None  # text is rendered with rich by print_ranking


def print_ranking(r: Ranking, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    header, body = table_rows(r, "text")
    t = Table(title=f"ranking: {r.metric} (stage {r.stage}, {r.inner_steps} inner step(s))", caption=caption(r))
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in body:
        t.add_row(*row)
    console.print(t)
    pheader, pbody = paired_rows(r)
    if pbody:
        pt = Table(title=f"paired tests against {r.baseline} on shared tasks (Δ < 0: lower {r.metric})")
        for i, h in enumerate(pheader):
            pt.add_column(h, justify="left" if i < 2 else "right")
        for row in pbody:
            pt.add_row(*row)
        console.print(pt)
    for n in r.notes:
        console.print(f"note: {n}")
