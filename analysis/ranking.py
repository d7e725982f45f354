"""The paper-style ranking of a stage's rows: `compute_ranking(exp_uri)` = `rank(load_matrices(...))`.

Rows are the variants as the spec names them (plus the grid point in grid stages: `maml alpha=0.1`);
columns are the settings (train shots, evaluation shots) at one number of inner steps. Per (row,
setting) the value of an evaluation task is its loss (or accuracy, or return: analysis.metrics, which
also says which direction is better) averaged over the row's seeds;
every row meets the same tasks, so comparisons are paired on tasks. Cells show mean +- 1.96
sd/sqrt(n) over tasks (papers' convention) and, with several seeds, a bootstrap interval across
seeds. The best row of each setting is marked, and so is every row not significantly worse than it
(Holm-corrected Wilcoxon on shared tasks). Each row is compared with the baseline variant's row at
the same grid point. Diverged and errored trials are counted and shown, never averaged in.

`rank` is a pure function of the matrices (analysis.evaldata reads them; analysis.render prints).
The seed-level bootstrap interval (``stats.bootstrap_seed_ci``, 1000 replicates, seeds and one
common set of tasks per replicate) is exact when it costs at most ``EXACT_BOOT_DRAWS`` (n_boot x
seeds x tasks: 600 tasks x 16 seeds); above, the task level of each replicate is drawn from its
normal limit (same seed draws), well within the Monte-Carlo error of 1000 replicates for the
>= 625 tasks per seed it then has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np

from . import stats
from .evaldata import CellConfig, EvalMatrices, Setting, load_matrices, untuned_note
from .labels import row_sort_key, setting_text
from .metrics import get_metric

N_BOOT = 1000
EXACT_BOOT_DRAWS = 10_000_000


@dataclass
class Cell:
    mean: float
    ci95: float
    n_tasks: int
    n_seeds: int
    seed_ci: tuple[float, float] | None = None
    best: bool = False
    tied_with_best: bool = False
    nonfinite_tasks: int = 0  # tasks whose adapted loss overflowed: shown, no mean or test, ranked last


@dataclass
class Ranking:
    metric: str
    stage: str
    inner_steps: int
    variants: list[str]  # the rows: variants as the spec names them (+ grid point), in display order
    settings: list[Setting]  # (train_shots, eval shots)
    cells: dict[tuple[str, Setting], Cell]
    avg_rank: dict[str, float]
    friedman: dict | None
    baseline: str | None  # the baseline variant
    paired: list[dict]  # per setting, each row vs the baseline's row at its grid point
    status_counts: dict[str, dict[str, int]]  # row -> status -> trials
    notes: list[str] = field(default_factory=list)
    row_variant: dict[str, str] = field(default_factory=dict)
    configs: list[CellConfig] = field(default_factory=list)  # per-cell (tuned) hyper-parameters
    untuned: dict[tuple[str, int], str] = field(default_factory=dict)  # (row, train shots) -> note: ran untuned

    @property
    def lower_is_better(self) -> bool:
        return get_metric(self.metric).lower_is_better


def compute_ranking(exp_uri: str, *, metric: str = "loss", stage: str | None = None, inner_steps: int | None = None,
                    baseline: str | None = "maml", con: duckdb.DuckDBPyConnection | None = None) -> Ranking:
    """Rank a stage (default: test, else grid, single, tune) at `inner_steps` (default: the
    smallest > 0 evaluated). With `con` (analysis.query.connect) the rows come from SQL."""
    return rank(load_matrices(exp_uri, metric=metric, stage=stage, inner_steps=inner_steps, con=con), baseline)


def seed_interval(mat: np.ndarray, n_boot: int = N_BOOT, rng=0, exact_limit: int = EXACT_BOOT_DRAWS,
                  level: float = 0.95) -> tuple[float, float]:
    """Two-level (seeds, then one common set of tasks) percentile bootstrap interval of the mean;
    mat [seeds, tasks]. Exact up to `exact_limit` = n_boot x seeds x tasks, the task level from
    its normal limit above (stats.bootstrap_seed_ci)."""
    task_level = "exact" if n_boot * mat.size <= exact_limit else "normal"
    _, lo, hi = stats.bootstrap_seed_ci(mat, n_boot=n_boot, level=level, rng=rng, task_level=task_level)
    return lo, hi


def rank(m: EvalMatrices, baseline: str | None = "maml") -> Ranking:
    """The ranking of EvalMatrices (pure: arrays in, a Ranking out)."""
    rows = sorted({row for row, _ in m.values}, key=lambda r: row_sort_key(m.row_variant[r], m.row_point[r], baseline))
    cells, per_task, notes = _cells(m, rows)
    lower = get_metric(m.metric).lower_is_better
    base_of = baseline_rows(rows, m.row_variant, m.row_config, m.row_point, baseline)
    paired, score_rows = [], []
    for st in m.settings:
        present = [r for r in rows if (r, st) in cells and not cells[(r, st)].nonfinite_tasks]
        paired += _compare(st, present, cells, per_task, base_of, lower, notes, several_train(m.settings))
        if present and all((r, st) in cells for r in rows):
            # a cell whose adapted loss overflowed ranks last in its setting (ties share the rank)
            finite = [cells[(r, st)].mean for r in present]
            worst = (max(finite) + 1.0) if lower else (min(finite) - 1.0)
            score_rows.append([worst if cells[(r, st)].nonfinite_tasks else cells[(r, st)].mean for r in rows])
    avg_rank, fried = _average_ranks(rows, score_rows, lower)
    if not any(m.row_variant[r] == baseline for r in rows):
        notes.append(f"baseline {baseline!r} is not in this stage; no paired tests against it")
        baseline = None
    else:
        missing = [r for r in rows if m.row_variant[r] != baseline and base_of[r] is None]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            notes.append(f"no {baseline} row at the same grid point as {', '.join(missing[:5])}{more}: "
                         "no paired test for them")
    for row, c in m.status_counts.items():
        bad = {s: n for s, n in c.items() if s != "completed"}
        if bad:
            notes.append(f"{row}: " + ", ".join(f"{n} {s}" for s, n in sorted(bad.items())) +
                         f" of {sum(c.values())} trials (not averaged in)")
    untuned = {(c.row, c.train_shots): untuned_note(c) for c in m.configs if untuned_note(c)}
    return Ranking(m.metric, m.stage, m.inner_steps, rows, m.settings, cells, avg_rank, fried, baseline, paired,
                   m.status_counts, [*m.notes, *notes], dict(m.row_variant), m.configs, untuned)


def several_train(settings: list[Setting]) -> bool:
    return len({s[0] for s in settings}) > 1


def _cells(m: EvalMatrices, rows: list[str]) -> tuple[dict, dict, list[str]]:
    """Per (row, setting): its Cell, and (finite cells only) its per-task means on the common task
    axis ([n_tasks], NaN where not evaluated)."""
    cells, per_task, notes = {}, {}, []
    for row in rows:
        for st in m.settings:
            mat = m.values.get((row, st))
            if mat is None:
                continue
            n_seeds, n_tasks = mat.shape
            task_mean = mat.mean(axis=0)
            bad = int((~np.isfinite(task_mean)).sum())
            if bad:
                cells[(row, st)] = Cell(float("nan"), float("nan"), n_tasks, n_seeds, nonfinite_tasks=bad)
                notes.append(f"{row} at {st[1]}-shot: the adapted {m.metric} is not finite on {bad} of {n_tasks} "
                             f"tasks after {m.inner_steps} inner steps (no mean, no paired test; last in its setting "
                             "for the average rank)")
                continue
            mean, ci = stats.mean_ci(task_mean)
            cells[(row, st)] = Cell(mean, ci, n_tasks, n_seeds, seed_interval(mat) if n_seeds >= 2 else None)
            vec = np.full(m.n_tasks, np.nan)
            vec[m.tasks[(row, st)]] = task_mean
            per_task[(row, st)] = vec
    return cells, per_task, notes


def require_baseline(r: Ranking, baseline: str, where: str = "") -> None:
    """ValueError unless `baseline` is one of the ranking's variants: for a baseline the user named
    (the default, maml, is only compared with where present, with a note otherwise)."""
    variants = sorted(set(r.row_variant.values()))
    if baseline not in variants:
        raise ValueError(f"--baseline {baseline}: not a variant of stage {r.stage}{' of ' + where if where else ''} "
                         f"(its variants: {', '.join(variants)})")


def baseline_rows(rows: list[str], row_variant: dict[str, str], row_config: dict[str, dict],
                  row_point: dict[str, dict], baseline: str | None) -> dict[str, str | None]:
    """Each row's baseline row: the one row of the baseline variant at the same grid point - sharing
    the row's value of every dimension of the grid (a name whose value varies among some variant's
    rows: its `row_point`) that both have (a temperature that maml does not read is not compared).
    What is constant within each variant, such as a variant's own `budget:` or `defaults:`, does
    not part them. None for the baseline's own rows, and where no row or several rows match."""
    dims = {k for r in rows for k in row_point[r]}
    base = [r for r in rows if row_variant[r] == baseline]
    out: dict[str, str | None] = {}
    for r in rows:
        if row_variant[r] == baseline:
            out[r] = None
            continue
        mine = row_config[r]
        match = [b for b in base if all(mine[k] == row_config[b][k] for k in dims if k in mine and k in row_config[b])]
        out[r] = match[0] if len(match) == 1 else None
    return out


def _compare(st: Setting, present: list[str], cells: dict, per_task: dict, base_of: dict, lower: bool,
             notes: list[str], several: bool) -> list[dict]:
    """Mark the best row of a setting and the rows tied with it; return each row's paired test
    against its baseline row (Holm over the setting's comparisons). Tests use the tasks every
    present row evaluated."""
    if not present:
        return []
    best = min(present, key=lambda r: cells[(r, st)].mean if lower else -cells[(r, st)].mean)
    cells[(best, st)].best = True
    if len(present) < 2:
        return []
    masks = [~np.isnan(per_task[(r, st)]) for r in present]
    shared = np.logical_and.reduce(masks)
    n_shared = int(shared.sum())
    if any((mask != shared).any() for mask in masks):
        notes.append(f"{setting_text(*st, several)}: variants were not all evaluated on the same tasks; "
                     f"the paired tests use the {n_shared} they share")
    if n_shared < 2:
        return []
    same = {r: per_task[(r, st)][shared] for r in present}
    for t in stats.compare_to_baseline(same, best):  # = stats.not_significantly_worse's family
        if t["p_holm"] >= 0.05:
            cells[(t["variant"], st)].tied_with_best = True
    pairs = [(r, base_of[r]) for r in present if base_of.get(r) in same]
    tests = [{"setting": st, "variant": r, "baseline": b, **stats.paired_test(same[r], same[b])} for r, b in pairs]
    holm = stats.holm([t["p_wilcoxon"] for t in tests])
    return [{**t, "p_holm": float(p)} for t, p in zip(tests, holm)]


def _average_ranks(rows: list[str], score_rows: list[list[float]], lower: bool) -> tuple[dict, dict | None]:
    """Average rank of each row over the settings where every row has a cell; Friedman's test with
    >= 3 rows and >= 2 settings. score_rows: [settings, rows]."""
    if not score_rows:
        return {}, None
    scores = np.array(score_rows)
    avg = dict(zip(rows, stats.average_ranks(scores, lower_is_better=lower).tolist()))
    fried = stats.friedman(scores) if len(rows) >= 3 and len(score_rows) >= 2 else None
    return avg, fried
