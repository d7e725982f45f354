"""The paper-style ranking of variants from a results dataset.

A *setting* is (train shots, evaluation shots) at one number of inner steps. Per (variant,
setting) the value of an evaluation task is its loss (or accuracy) averaged over the variant's
seeds; every variant meets the same tasks, so comparisons are paired on tasks. Cells show
mean +- 1.96 sd/sqrt(n) over tasks (papers' convention) and, with several seeds, a bootstrap
interval across seeds. The best variant of each setting is marked, and so is every variant not
significantly worse than it (Holm-corrected Wilcoxon on shared tasks). Diverged and errored
trials are counted and shown, never averaged in.

How it is computed (this runs on tens of millions of evaluation rows):

- trials come from the store (latest committed attempt of each trial); the evaluation rows of the
  stage's completed trials are read straight from their attempt's file
  (``eval_tasks/<trial_id>__a<attempt>.parquet``), only the columns needed, in parallel; a file
  whose row-group statistics do not show it holds that single attempt is filtered row by row.
  With ``con`` (a duckdb connection with the views trials/eval_tasks, e.g. from
  ``analysis.query.connect``) the same rows come from SQL instead;
- rows land in a dense [seed, shots, task] array of sums and counts, one ``np.bincount`` per trial
  (no sort, no Python loop over rows); duplicate rows of a (trial, task) are averaged, as ``avg()``
  would, and so are trials of one row label that share a seed (with a note);
- a task enters a cell when every seed of the cell evaluated it; the paired tests use the tasks
  every compared variant evaluated (a note says when that drops tasks);
- the seed-level bootstrap interval (``stats.bootstrap_seed_ci``, 1000 replicates) is exact when
  it costs at most ``EXACT_BOOT_DRAWS`` random draws (n_boot x tasks x seeds; 600 tasks x 16
  seeds). Above that, the task level of each replicate is drawn from its normal limit (mean of the
  seed's tasks, variance sd²/n): the seed level is resampled exactly as in ``bootstrap_seed_ci``
  (same generator, same draws), and with >= 625 tasks per seed the task-resampled mean is normal
  to well within the Monte-Carlo error of 1000 replicates.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import stats
from .store import StoreError, attempt_path, check_columns, exists, latest_attempts, read_raw, resolve


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


HP_COLUMNS = ("alpha", "beta", "temperature", "inner_steps", "meta_batch", "meta_steps")
N_BOOT = 1000
EXACT_BOOT_DRAWS = 10_000_000
_STAGE_ORDER = ("test", "grid", "single", "tune")
_TRIAL_COLUMNS = ("trial_id", "attempt", "stage", "variant", "status", "train_shots", "seed", "config",
                  "task_family", "task_options", *HP_COLUMNS)


# ------------------------------------------------------------------------------------------ trials


def _read_trials(exp_uri: str, con: duckdb.DuckDBPyConnection | None) -> list[dict]:
    if con is not None:
        cols = ", ".join(_TRIAL_COLUMNS)
        return [dict(zip(_TRIAL_COLUMNS, r)) for r in con.execute(f"select {cols} from trials").fetchall()]
    if not exists(exp_uri):
        raise StoreError(f"{exp_uri}: no results dataset here (expected folders trials/, curves/, eval_tasks/)")
    return latest_attempts(read_raw(exp_uri, "trials")).select(list(_TRIAL_COLUMNS)).to_pylist()


def _fmt_value(v, digits: int) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "none" if v is None else str(v)


def _label_trials(trials: list[dict]) -> None:
    """Row label of each trial (key "label"): the variant, plus the hyper-parameters and task options
    that vary among that variant's trials of the stage (a grid over alpha gives rows `maml alpha=0.01`,
    `maml alpha=0.1`; polynomial orders give `mt-net order=2`); seeds of one configuration share a row.
    Floats print with 3 significant digits, more where 3 would merge two different values."""
    option_keys = sorted({k for t in trials for k in _options(t)})
    names = (*HP_COLUMNS, "task", *option_keys)
    for t in trials:
        conf = json.loads(t["config"]) if t["config"] else {}
        opts = _options(t)
        # the configured budget, not the steps done (a diverged trial stops early)
        t["hp"] = (*(conf.get(h, t[h]) for h in HP_COLUMNS), t["task_family"],
                   *(_hashable(opts.get(k)) for k in option_keys))
    by_variant: dict[str, list[dict]] = {}
    for t in trials:
        by_variant.setdefault(t["variant"], []).append(t)
    for variant, ts in by_variant.items():
        parts: dict[str, list[str]] = {t["trial_id"]: [variant] for t in ts}
        for i, name in enumerate(names):
            values = {t["hp"][i] for t in ts}
            if len(values) < 2:
                continue
            digits = next((d for d in range(3, 18) if len({_fmt_value(v, d) for v in values}) == len(values)), 17) \
                if all(isinstance(v, float) for v in values) else 3
            for t in ts:
                parts[t["trial_id"]].append(f"{name}={_fmt_value(t['hp'][i], digits)}")
        for t in ts:
            t["label"] = " ".join(parts[t["trial_id"]])


def _options(t: dict) -> dict:
    try:
        opts = json.loads(t.get("task_options") or "{}")
    except ValueError:
        return {"options": t["task_options"]}
    return opts if isinstance(opts, dict) else {"options": opts}


def _hashable(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v, sort_keys=True)


# ------------------------------------------------------------------------------------------ eval rows

_INT_COLS = ("inner_steps", "shots", "task_index")


@dataclass
class _Part:
    """Evaluation rows as numpy arrays: one trial's file (`code` an int, the trial's index in the
    completed trials), or SQL rows of many trials (`code` an array). `split` holds indices into
    `split_names` (None: every row has split_names[0])."""

    code: int | np.ndarray
    inner_steps: np.ndarray
    shots: np.ndarray
    task_index: np.ndarray
    v: np.ndarray
    split_names: list[str]
    split: np.ndarray | None = None

    def keep(self, mask: np.ndarray) -> _Part:
        if mask.all():
            return self
        code = self.code if np.isscalar(self.code) else self.code[mask]
        split = None if self.split is None else self.split[mask]
        return _Part(code, self.inner_steps[mask], self.shots[mask], self.task_index[mask], self.v[mask],
                     self.split_names, split)

    def splits_present(self) -> set[str]:
        if not self.v.size:
            return set()
        if self.split is None:
            return {self.split_names[0]}
        return {self.split_names[i] for i in _small_unique(self.split)}

    def only_split(self, name: str) -> _Part:
        if name not in self.split_names:
            return self.keep(np.zeros(self.v.size, bool))
        if self.split is None:
            return self
        return self.keep(self.split == self.split_names.index(name))


def _small_unique(x: np.ndarray) -> np.ndarray:
    """Sorted unique values; a bincount for small non-negative ints (no sort of millions of rows)."""
    if not x.size:
        return x[:0]
    lo, hi = int(x.min()), int(x.max())
    if lo >= 0 and hi < 4 * x.size + 4096:
        return np.flatnonzero(np.bincount(x, minlength=hi + 1)).astype(x.dtype)
    return np.unique(x)


def _union(arrays: list[np.ndarray]) -> np.ndarray:
    return _small_unique(np.concatenate(arrays)).astype(np.int64) if arrays else np.empty(0, np.int64)


def _ints(col) -> np.ndarray:
    if col.null_count:
        col = pc.fill_null(col, -1)
    return np.ascontiguousarray(col.to_numpy(), dtype=np.int32)


def _floats(col) -> np.ndarray:
    """float64 values, null -> NaN (a missing value is never a number to average)."""
    if col.null_count:
        col = pc.fill_null(pc.cast(col, pa.float64()), float("nan"))
    return np.ascontiguousarray(col.to_numpy(), dtype=np.float64)


def _part(code, t: pa.Table, const_split: str | None, metric: str) -> _Part:
    arrays = [_ints(t[name]) for name in _INT_COLS]
    if const_split is not None:
        return _Part(code, *arrays, _floats(t[metric]), [const_split])
    col = t["split"].combine_chunks() if isinstance(t["split"], pa.ChunkedArray) else t["split"]
    if col.null_count or not pa.types.is_dictionary(col.type):
        col = pc.fill_null(pc.cast(col, pa.string()), "").dictionary_encode()
    names = col.dictionary.to_pylist()
    return _Part(code, *arrays, _floats(t[metric]), names, col.indices.to_numpy().astype(np.int64))


def _stat_constant(pf: pq.ParquetFile, name: str):
    """(True, value) when the file's row-group statistics show column `name` holds one value."""
    md = pf.metadata
    if md.num_row_groups == 0:
        return False, None
    j = next((i for i in range(md.num_columns) if md.row_group(0).column(i).path_in_schema == name), None)
    if j is None:
        return False, None
    values = set()
    for g in range(md.num_row_groups):
        s = md.row_group(g).column(j).statistics
        if s is None or not s.has_min_max or s.null_count or s.min != s.max:
            return False, None
        values.add(s.min)
    return (True, values.pop()) if len(values) == 1 else (False, None)


def _read_eval_file(fs: pafs.FileSystem, path: str, code: int, trial_id: str, attempt: int, metric: str) -> _Part:
    """One attempt's evaluation rows (needed columns only), schema-checked like store.read_raw."""
    try:
        pf = pq.ParquetFile(fs.open_input_file(path), read_dictionary=["split"])
    except Exception as e:  # corrupt / truncated file
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    check_columns(path, pf.schema_arrow, "eval_tasks", ("trial_id", "attempt", *_INT_COLS, "split", metric))
    is_split_const, split = _stat_constant(pf, "split")
    columns = [*_INT_COLS, metric] + ([] if is_split_const else ["split"])
    own = _stat_constant(pf, "trial_id") == (True, trial_id) and _stat_constant(pf, "attempt") == (True, attempt)
    try:
        if own:  # the usual case: the file holds this attempt's rows only (store.write_trial)
            t = pf.read(columns=columns)
        else:
            t = pf.read(columns=["trial_id", "attempt", *columns])
            t = t.filter(pc.and_(pc.equal(t["trial_id"], trial_id), pc.equal(t["attempt"], attempt)))
    except Exception as e:
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    return _part(code, t, split if is_split_const else None, metric)


def _eval_parts_from_files(exp_uri: str, trials: list[dict], metric: str) -> list[_Part]:
    fs, root = resolve(exp_uri)
    paths = [attempt_path(root, "eval_tasks", t["trial_id"], t["attempt"]) for t in trials]
    found = [info.type == pafs.FileType.File for info in fs.get_file_info(paths)] if paths else []
    jobs = [(i, p) for i, (p, ok) in enumerate(zip(paths, found)) if ok]

    def load(job):
        i, p = job
        return _read_eval_file(fs, p, i, trials[i]["trial_id"], int(trials[i]["attempt"]), metric)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as ex:
        return list(ex.map(load, jobs))


def _eval_parts_from_con(con: duckdb.DuckDBPyConnection, trials: list[dict], metric: str) -> list[_Part]:
    codes = pa.table({"trial_id": pa.array([t["trial_id"] for t in trials], pa.string()),
                      "attempt": pa.array([t["attempt"] for t in trials], pa.int32()),
                      "code": pa.array(range(len(trials)), pa.int64())})
    con.register("_ranking_codes", codes)
    try:
        table = con.sql(f"""select c.code, e.inner_steps, e.shots, e.task_index, e.split, e.{metric}
                            from eval_tasks e join _ranking_codes c using (trial_id, attempt)""").to_arrow_table()
    finally:
        con.unregister("_ranking_codes")
    return [_part(_ints(table["code"]), table, None, metric)] if table.num_rows else []


# ------------------------------------------------------------------------------------------ statistics


def _seed_ci(mat: np.ndarray, n_boot: int = N_BOOT, rng=0, exact_limit: int = EXACT_BOOT_DRAWS,
             level: float = 0.95) -> tuple[float, float]:
    """Two-level (seeds, then tasks) percentile bootstrap interval of the mean over seeds of per-seed
    means; mat is [seeds, tasks]. Exact (stats.bootstrap_seed_ci) up to `exact_limit` draws; above,
    the same seed draws and each resampled seed's task mean drawn from N(mean, sd²/n) (module doc)."""
    n_seeds, n_tasks = mat.shape
    if n_boot * mat.size <= exact_limit:
        _, lo, hi = stats.bootstrap_seed_ci(list(mat), n_boot=n_boot, level=level, rng=rng)
        return lo, hi
    gen = np.random.default_rng(rng)
    picks = gen.integers(0, n_seeds, size=(n_boot, n_seeds))  # the seed level, drawn as in stats
    flat = (np.arange(n_boot)[:, None] * n_seeds + picks).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_seeds).reshape(n_boot, n_seeds).astype(float)
    means = mat.mean(axis=1)
    var_of_mean = mat.var(axis=1) / n_tasks  # variance of a with-replacement resample's mean
    sums = counts @ means + np.sqrt(counts @ var_of_mean) * gen.standard_normal(n_boot)
    a = 1.0 - level
    lo, hi = np.quantile(sums / n_seeds, [a / 2, 1 - a / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------ ranking


def compute_ranking(exp_uri: str, *, metric: str = "loss", stage: str | None = None, inner_steps: int | None = None,
                    baseline: str | None = "maml", con: duckdb.DuckDBPyConnection | None = None) -> Ranking:
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be loss or accuracy (got {metric!r})")
    all_trials = _read_trials(exp_uri, con)
    stages = sorted({t["stage"] for t in all_trials})
    if not stages:
        raise ValueError(f"{exp_uri}: the dataset has no trials yet")
    if stage is None:
        stage = next((s for s in _STAGE_ORDER if s in stages), stages[0])
    if stage not in stages:
        raise ValueError(f"{exp_uri}: no trials of stage {stage!r}; stages present: {', '.join(stages)}")
    trials = sorted((t for t in all_trials if t["stage"] == stage), key=lambda t: t["trial_id"])
    _label_trials(trials)
    counts: dict[str, dict[str, int]] = {}
    for t in trials:
        c = counts.setdefault(t["label"], {})
        c[t["status"]] = c.get(t["status"], 0) + 1
    done = [t for t in trials if t["status"] == "completed"]
    parts = (_eval_parts_from_files(exp_uri, done, metric) if con is None
             else _eval_parts_from_con(con, done, metric))
    steps_avail = _union([_small_unique(p.inner_steps) for p in parts]).tolist()
    if not steps_avail:
        raise ValueError(f"{exp_uri}: stage {stage!r} has no completed trial with evaluation rows")
    if inner_steps is None:
        positive = [s for s in steps_avail if s > 0]
        inner_steps = positive[0] if positive else steps_avail[0]
    elif inner_steps not in steps_avail:
        raise ValueError(f"inner steps {inner_steps} were not evaluated; available: {steps_avail}")
    parts = [p.keep(p.inner_steps == inner_steps) for p in parts]
    notes: list[str] = []
    splits = set().union(*(p.splits_present() for p in parts))
    if len(splits) > 1:  # one stage evaluates on one split; never average val and test rows together
        use = "test" if "test" in splits else min(splits)
        parts = [p.only_split(use) for p in parts]
        notes.append(f"evaluation rows of several splits ({', '.join(sorted(splits))}): the {use} rows are used")
    parts = [p for p in parts if p.v.size]
    if metric == "accuracy" and all(np.isnan(p.v).all() for p in parts):
        raise ValueError("this dataset has no accuracy (regression tasks): use --metric loss")

    # Trials -> (label, train shots) groups -> one slot per seed; several trials in one slot (the same
    # configuration run twice) are averaged per task, like one seed.
    slot_of: dict[tuple, int] = {}
    group_slots: dict[tuple, list[int]] = {}
    for t in sorted(done, key=lambda t: (t["label"], t["train_shots"], t["seed"])):
        key = (t["label"], t["train_shots"], t["seed"])
        if key not in slot_of:
            slot_of[key] = len(slot_of)
            group_slots.setdefault(key[:2], []).append(slot_of[key])
    trial_slot = np.array([slot_of[(t["label"], t["train_shots"], t["seed"])] for t in done] or [0], np.int64)
    shared_seed: dict[str, set] = {}
    for key, n in Counter((t["label"], t["train_shots"], t["seed"]) for t in done).items():
        if n > 1:
            shared_seed.setdefault(key[0], set()).add(key[2])
    for label, seeds in sorted(shared_seed.items()):
        notes.append(f"{label}: several trials share seed(s) {', '.join(map(str, sorted(seeds)))}; their "
                     "per-task values are averaged as one seed")

    # [slot, shots, task] sums and counts, one bincount per trial's rows (no sort, no per-row Python)
    shots_u = _union([_small_unique(p.shots) for p in parts])
    tasks_u = _union([_small_unique(p.task_index) for p in parts])
    n_slot, n_shot, n_task = len(slot_of), len(shots_u), len(tasks_u)
    dense_tasks = n_task == 0 or (tasks_u[0] == 0 and tasks_u[-1] == n_task - 1)
    block = n_shot * n_task
    sums = np.zeros((n_slot, block))
    cnt = np.zeros((n_slot, block), np.int64)
    for p in parts:
        local = np.searchsorted(shots_u, p.shots) * n_task
        local += p.task_index if dense_tasks else np.searchsorted(tasks_u, p.task_index)
        if np.isscalar(p.code):  # one trial: its rows fall in one slot's block
            s = trial_slot[p.code]
            sums[s] += np.bincount(local, weights=p.v, minlength=block)
            cnt[s] += np.bincount(local, minlength=block)
        else:
            flat = trial_slot[p.code] * block + local
            sums += np.bincount(flat, weights=p.v, minlength=n_slot * block).reshape(n_slot, block)
            cnt += np.bincount(flat, minlength=n_slot * block).reshape(n_slot, block)
    del parts
    sums = sums.reshape(n_slot, n_shot, n_task)
    cnt = cnt.reshape(n_slot, n_shot, n_task)
    has_rows = {g: cnt[slots].any(axis=(0, 2)) for g, slots in group_slots.items()}  # per shots
    variants = sorted({g[0] for g, h in has_rows.items() if h.any()}, key=lambda v: (v != baseline, v))
    settings = sorted({(g[1], int(shots_u[k])) for g, h in has_rows.items() for k in np.flatnonzero(h)})
    per_task: dict[tuple[str, tuple[int, int]], np.ndarray] = {}  # length n_task, NaN where not evaluated
    cells: dict[tuple[str, tuple[int, int]], Cell] = {}
    for var in variants:
        for st in settings:
            g = (var, st[0])
            if g not in group_slots:
                continue
            k = int(np.searchsorted(shots_u, st[1]))
            c = cnt[group_slots[g], k]
            seeds_in = c.any(axis=1)
            if not seeds_in.any():
                continue
            c = c[seeds_in]
            full = c.all(axis=0)
            partial = int((c.any(axis=0) & ~full).sum())
            if partial:
                notes.append(f"{var} at {st[1]}-shot: {partial} task(s) not evaluated for every seed are left out")
            mat = sums[group_slots[g], k][seeds_in][:, full] / c[:, full]  # [seeds, tasks], task-index order
            n_seeds, n_tasks = mat.shape
            if n_tasks == 0:
                continue
            task_mean = mat.mean(axis=0)
            bad = int((~np.isfinite(task_mean)).sum())
            if bad:
                cells[(var, st)] = Cell(float("nan"), float("nan"), n_tasks, n_seeds, nonfinite_tasks=bad)
                notes.append(f"{var} at {st[1]}-shot: the adapted {metric} is not finite on {bad} of {n_tasks} "
                             f"tasks after {inner_steps} inner steps (shown, not ranked)")
                continue
            mean, ci = stats.mean_ci(task_mean)
            seed_ci = _seed_ci(mat) if n_seeds >= 2 else None
            vec = np.full(n_task, np.nan)
            vec[full] = task_mean
            per_task[(var, st)] = vec
            cells[(var, st)] = Cell(mean, ci, n_tasks, n_seeds, seed_ci)
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
        if len(present) >= 2:
            masks = [~np.isnan(per_task[(v, st)]) for v in present]
            shared = np.logical_and.reduce(masks)
            n_shared = int(shared.sum())
            if any((m != shared).any() for m in masks):
                notes.append(f"{_setting_text(st, settings)}: variants were not all evaluated on the same tasks; "
                             f"the paired tests use the {n_shared} they share")
            if n_shared >= 2:
                same = {v: per_task[(v, st)][shared] for v in present}
                vs_best = stats.compare_to_baseline(same, best)  # = stats.not_significantly_worse's family
                for r in vs_best:
                    if r["p_holm"] >= 0.05:
                        cells[(r["variant"], st)].tied_with_best = True
                if baseline in same:
                    rows_b = vs_best if baseline == best else stats.compare_to_baseline(same, baseline)
                    paired += [{"setting": st, **r} for r in rows_b]
        if all((v, st) in cells for v in variants):
            # a cell whose adapted loss overflowed ranks last in its setting (ties share the rank)
            finite = [cells[(v, st)].mean for v in present]
            worst = (max(finite) + 1.0) if sign == 1 else (min(finite) - 1.0)
            score_rows.append([worst if cells[(v, st)].nonfinite_tasks else cells[(v, st)].mean
                               for v in variants])
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
    return Ranking(metric, stage, int(inner_steps), variants, settings, cells, avg_rank, fried, baseline, paired,
                   counts, notes)


def _setting_text(st: tuple[int, int], settings: list[tuple[int, int]]) -> str:
    return f"{st[1]}-shot" if len({s[0] for s in settings}) == 1 else f"train {st[0]} / eval {st[1]}-shot"


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


def _latex_escape(text: str) -> str:
    """Row labels carry hyper-parameter names such as meta_batch: escape LaTeX's specials."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}"}
    return "".join(special.get(ch, ch) for ch in text)


def _setting_label(st: tuple[int, int], r: Ranking) -> str:
    train = {s[0] for s in r.settings}
    return f"{st[1]}-shot" if len(train) == 1 else f"train {st[0]} / eval {st[1]}-shot"


def table_rows(r: Ranking, fmt: str = "text") -> tuple[list[str], list[list[str]]]:
    header = ["variant"] + [_setting_label(s, r) for s in r.settings] + ["avg rank", "seeds"]
    body = []
    for v in r.variants:
        seeds = sorted({r.cells[(v, s)].n_seeds for s in r.settings if (v, s) in r.cells})
        total = sum(r.status_counts.get(v, {}).values())
        body.append([_latex_escape(v) if fmt == "latex" else v] + [_cell_text(r.cells.get((v, s)), fmt) for s in r.settings]
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
