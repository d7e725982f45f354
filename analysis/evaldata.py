"""The data of a ranking: a stage's trials with their row labels (analysis.labels), and their
evaluation rows as one [seeds, tasks] matrix per (row, setting). Shared with the plots.

How it is read (this runs on tens of millions of evaluation rows):

- trials come from the store (latest committed attempt of each trial); the evaluation rows of the
  stage's completed trials are read straight from their attempt's file (the store's
  ``attempt_path``), only the columns needed, in parallel; a file whose row-group statistics do not
  show it holds that single attempt is filtered row by row. With ``con`` (a duckdb connection with
  the views trials/eval_tasks, e.g. from ``analysis.query.connect``) the same rows come from SQL;
- rows land in a dense [seed, shots, task] array of sums and counts, one ``np.bincount`` per trial
  (no sort, no Python loop over rows); duplicate rows of a (trial, task) are averaged, as ``avg()``
  would, and so are trials of one row that share a seed (with a note);
- a task enters a cell when every seed of the cell evaluated it (a note says when that drops tasks);
- a learner without an inner loop (trials' ``inner_loop`` false) has only ``inner_steps = 0`` rows:
  they stand for every number of inner steps, with a note.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import labels as lb
from .store import attempt_path, open_checked, read_trials, resolve

Setting = tuple[int, int]  # (train shots, evaluation shots)
_INT_COLS = ("inner_steps", "shots", "task_index")


@dataclass
class CellConfig:
    """The hyper-parameters one (row, train shots) cell of a test stage ran with, and their source."""

    row: str
    train_shots: int
    hparams: dict
    hp_source: str | None
    hp_source_trial: str | None
    n_trials: int


@dataclass
class EvalMatrices:
    """A stage's evaluation at one number of inner steps, ready to rank (all rows' tasks on one axis).

    values[(row, setting)]: [seeds, k] per-task values (duplicates averaged), every seed of the cell
    evaluated each of its k tasks; tasks[(row, setting)]: [k] positions of those tasks on the common
    task axis of length n_tasks (sorted). Non-finite values are kept (a diverged adaptation).
    """

    metric: str
    stage: str
    inner_steps: int
    rows: list[str]  # every row label of the stage (variant + grid point), with evaluation rows or not
    row_variant: dict[str, str]
    row_point: dict[str, dict]  # the values that name the row (`maml alpha=0.1` -> {"alpha": 0.1})
    row_config: dict[str, dict]  # every configuration value of the row (labels.configuration)
    settings: list[Setting]
    values: dict[tuple[str, Setting], np.ndarray]
    tasks: dict[tuple[str, Setting], np.ndarray]
    n_tasks: int
    status_counts: dict[str, dict[str, int]]  # row -> status -> trials
    configs: list[CellConfig] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ trials


def stage_trials(exp_uri: str, stage: str | None, con: duckdb.DuckDBPyConnection | None = None) -> tuple[str, list[dict]]:
    """(stage, its trials as dicts sorted by trial_id, each labelled by labels.label_trials): the
    stage asked for, or the default one (labels.choose_stage)."""
    if con is not None:
        cols = ", ".join(lb.TRIAL_COLUMNS)
        all_trials = [dict(zip(lb.TRIAL_COLUMNS, r)) for r in con.execute(f"select {cols} from trials").fetchall()]
    else:
        all_trials = read_trials(exp_uri).select(list(lb.TRIAL_COLUMNS)).to_pylist()
    stage = lb.choose_stage((t["stage"] for t in all_trials), stage, exp_uri)
    trials = sorted((t for t in all_trials if t["stage"] == stage), key=lambda t: t["trial_id"])
    lb.label_trials(trials)
    return stage, trials


def cell_configs(trials: list[dict]) -> tuple[list[CellConfig], list[str]]:
    """Per (row, train shots) cell whose hyper-parameters were chosen per cell, the configuration(s)
    its trials ran with; notes for cells that ran on defaults instead of tuned values and for cells
    whose trials disagree."""
    groups: dict[tuple, dict[tuple, list[dict]]] = {}
    for t in trials:
        if lb.per_cell_hparams(t):
            hp = lb.hparams_of(t)
            key = (tuple(sorted(hp.items())), t.get("hp_source"), t.get("hp_source_trial"))
            groups.setdefault((t["label"], t["train_shots"]), {}).setdefault(key, []).append(t)
    configs, notes = [], []
    for (row, shots), by_config in sorted(groups.items()):
        for (hp, source, source_trial), ts in by_config.items():
            configs.append(CellConfig(row, shots, dict(hp), source, source_trial, len(ts)))
        if len(by_config) > 1:
            notes.append(f"{lb.cell_text(row, shots)} ran with {len(by_config)} different configurations "
                         "(see the hyper-parameter table); their seeds are averaged together")
    untuned = [c for c in configs if untuned_note(c)]
    if untuned and len(untuned) == len(configs) and len({c.hp_source for c in untuned}) == 1:
        notes.append(f"every variant ran on the spec's defaults: {_WHY_UNTUNED[untuned[0].hp_source]}")
    else:
        notes += [untuned_note(c) for c in untuned]
    return configs, notes


_WHY_UNTUNED = {"fallback": "its tune stage had no finite result", "defaults": "there was no tune stage"}


def untuned_note(c: CellConfig) -> str:
    """`mt-net (train 10-shot) ran on the spec's defaults: ...` for a cell that was not tuned, else ""."""
    why = _WHY_UNTUNED.get(c.hp_source or "")
    return f"{lb.cell_text(c.row, c.train_shots)} ran on the spec's defaults: {why}" if why else ""


# ------------------------------------------------------------------------------------------ eval rows


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
        return {self.split_names[i] for i in small_unique(self.split)}

    def only_split(self, name: str) -> _Part:
        if name not in self.split_names:
            return self.keep(np.zeros(self.v.size, bool))
        if self.split is None:
            return self
        return self.keep(self.split == self.split_names.index(name))


def small_unique(x: np.ndarray) -> np.ndarray:
    """Sorted unique values; a bincount for small non-negative ints (no sort of millions of rows)."""
    if not x.size:
        return x[:0]
    lo, hi = int(x.min()), int(x.max())
    if lo >= 0 and hi < 4 * x.size + 4096:
        return np.flatnonzero(np.bincount(x, minlength=hi + 1)).astype(x.dtype)
    return np.unique(x)


def _union(arrays: list[np.ndarray]) -> np.ndarray:
    return small_unique(np.concatenate(arrays)).astype(np.int64) if arrays else np.empty(0, np.int64)


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


def _read_eval_file(fs, path: str, code: int, trial_id: str, attempt: int, metric: str) -> _Part:
    """One attempt's evaluation rows (needed columns only), schema-checked by the store."""
    pf = open_checked(fs, path, "eval_tasks", ("trial_id", "attempt", *_INT_COLS, "split", metric),
                      read_dictionary=["split"])
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
        from .store import StoreError

        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    return _part(code, t, split if is_split_const else None, metric)


def _parts_from_files(exp_uri: str, trials: list[dict], metric: str) -> list[_Part]:
    import pyarrow.fs as pafs

    fs, root = resolve(exp_uri)
    paths = [attempt_path(root, "eval_tasks", t["trial_id"], t["attempt"]) for t in trials]
    found = [info.type == pafs.FileType.File for info in fs.get_file_info(paths)] if paths else []
    jobs = [(i, p) for i, (p, ok) in enumerate(zip(paths, found)) if ok]

    def load(job):
        i, p = job
        return _read_eval_file(fs, p, i, trials[i]["trial_id"], int(trials[i]["attempt"]), metric)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as ex:
        return list(ex.map(load, jobs))


def _parts_from_con(con: duckdb.DuckDBPyConnection, trials: list[dict], metric: str) -> list[_Part]:
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


def _per_row(p: _Part, per_trial: np.ndarray) -> np.ndarray:
    """A per-trial array (indexed by `code`) spread over a part's rows."""
    return np.broadcast_to(per_trial[p.code], p.v.shape)


def _at_inner_steps(parts: list[_Part], done: list[dict], inner_steps: int | None,
                    where: str) -> tuple[list[_Part], int, list[str]]:
    """The rows at `inner_steps` (default: the smallest > 0 evaluated); a learner without an inner
    loop contributes its inner_steps = 0 rows at every number of steps (with a note)."""
    loops = np.array([lb.inner_loop(t) for t in done] or [True])
    steps_of = [p.inner_steps[_per_row(p, loops)] if loops.any() else p.inner_steps for p in parts]
    steps_avail = _union([small_unique(s) for s in steps_of]).tolist()
    if not steps_avail:
        raise ValueError(f"{where} has no completed trial with evaluation rows")
    if inner_steps is None:
        positive = [s for s in steps_avail if s > 0]
        inner_steps = positive[0] if positive else steps_avail[0]
    elif inner_steps not in steps_avail:
        raise ValueError(f"inner steps {inner_steps} were not evaluated; available: {steps_avail}")
    wanted = np.where(loops, inner_steps, 0)
    parts = [p.keep(p.inner_steps == _per_row(p, wanted)) for p in parts]
    no_loop = sorted({t["label"] for t, loop in zip(done, loops) if not loop}) if inner_steps else []
    notes = [f"{row}: no inner loop; its inner_steps = 0 rows stand for every number of inner steps"
             for row in no_loop]
    return parts, int(inner_steps), notes


def _one_split(parts: list[_Part]) -> tuple[list[_Part], list[str]]:
    """One stage evaluates on one split; never average val and test rows together."""
    splits = set().union(*(p.splits_present() for p in parts))
    if len(splits) <= 1:
        return parts, []
    use = "test" if "test" in splits else min(splits)
    return ([p.only_split(use) for p in parts],
            [f"evaluation rows of several splits ({', '.join(sorted(splits))}): the {use} rows are used"])


@dataclass
class _Dense:
    """Sums and counts of values on a [slot, shots, task] grid; a slot is one seed of one cell."""

    sums: np.ndarray
    counts: np.ndarray
    shots: np.ndarray  # [n_shot] the evaluated shot counts
    cell_slots: dict[tuple[str, int], list[int]]  # (row, train shots) -> its seeds' slots


def _dense(parts: list[_Part], done: list[dict]) -> tuple[_Dense, list[str]]:
    """Accumulate the rows: one slot per (row, train shots, seed); trials sharing a slot (the same
    configuration run twice) are averaged per task, like one seed (with a note)."""
    slot_of: dict[tuple, int] = {}
    cell_slots: dict[tuple[str, int], list[int]] = {}
    for key in sorted({(t["label"], t["train_shots"], t["seed"]) for t in done}):
        slot_of[key] = len(slot_of)
        cell_slots.setdefault(key[:2], []).append(slot_of[key])
    trial_slot = np.array([slot_of[(t["label"], t["train_shots"], t["seed"])] for t in done] or [0], np.int64)
    shared: dict[str, set] = {}
    for key, n in Counter((t["label"], t["train_shots"], t["seed"]) for t in done).items():
        if n > 1:
            shared.setdefault(key[0], set()).add(key[2])
    notes = [f"{row}: several trials share seed(s) {', '.join(map(str, sorted(seeds)))}; their per-task values "
             "are averaged as one seed" for row, seeds in sorted(shared.items())]
    shots_u = _union([small_unique(p.shots) for p in parts])
    tasks_u = _union([small_unique(p.task_index) for p in parts])
    n_slot, n_shot, n_task = len(slot_of), len(shots_u), len(tasks_u)
    dense_tasks = n_task == 0 or (tasks_u[0] == 0 and tasks_u[-1] == n_task - 1)
    block = n_shot * n_task
    sums = np.zeros((n_slot, block))
    counts = np.zeros((n_slot, block), np.int64)
    for p in parts:  # one bincount per trial's rows: no sort, no per-row Python
        local = np.searchsorted(shots_u, p.shots) * n_task
        local += p.task_index if dense_tasks else np.searchsorted(tasks_u, p.task_index)
        if np.isscalar(p.code):  # one trial: its rows fall in one slot's block
            s = trial_slot[p.code]
            sums[s] += np.bincount(local, weights=p.v, minlength=block)
            counts[s] += np.bincount(local, minlength=block)
        else:
            flat = trial_slot[p.code] * block + local
            sums += np.bincount(flat, weights=p.v, minlength=n_slot * block).reshape(n_slot, block)
            counts += np.bincount(flat, minlength=n_slot * block).reshape(n_slot, block)
    shape = (n_slot, n_shot, n_task)
    return _Dense(sums.reshape(shape), counts.reshape(shape), shots_u, cell_slots), notes


def _cell_matrices(d: _Dense) -> tuple[dict, dict, list[Setting], list[str]]:
    """values and tasks per (row, setting) (see EvalMatrices); a task enters a cell when every seed
    of the cell evaluated it."""
    values, tasks, notes = {}, {}, []
    for (row, train), slots in sorted(d.cell_slots.items()):
        for k, shots in enumerate(d.shots.tolist()):
            c = d.counts[slots, k]
            seeds_in = c.any(axis=1)
            if not seeds_in.any():
                continue
            c = c[seeds_in]
            full = c.all(axis=0)
            partial = int((c.any(axis=0) & ~full).sum())
            if partial:
                notes.append(f"{row} at {shots}-shot: {partial} task(s) not evaluated for every seed are left out")
            if full.any():
                values[(row, (train, shots))] = d.sums[slots, k][seeds_in][:, full] / c[:, full]
                tasks[(row, (train, shots))] = np.flatnonzero(full)
    settings = sorted({st for _, st in values})
    return values, tasks, settings, notes


def load_matrices(exp_uri: str, *, metric: str = "loss", stage: str | None = None, inner_steps: int | None = None,
                  con: duckdb.DuckDBPyConnection | None = None) -> EvalMatrices:
    """A stage's trials and evaluation rows at one number of inner steps, as EvalMatrices.
    ValueError naming what is missing (stage, inner steps, accuracy of a regression task)."""
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be loss or accuracy (got {metric!r})")
    stage, trials = stage_trials(exp_uri, stage, con)
    counts: dict[str, dict[str, int]] = {}
    for t in trials:
        c = counts.setdefault(t["label"], {})
        c[t["status"]] = c.get(t["status"], 0) + 1
    done = [t for t in trials if t["status"] == "completed"]
    parts = _parts_from_files(exp_uri, done, metric) if con is None else _parts_from_con(con, done, metric)
    parts, inner_steps, notes = _at_inner_steps(parts, done, inner_steps, f"{exp_uri}: stage {stage!r}")
    parts, split_notes = _one_split(parts)
    parts = [p for p in parts if p.v.size]
    if metric == "accuracy" and all(np.isnan(p.v).all() for p in parts):
        raise ValueError("this dataset has no accuracy (regression tasks): use --metric loss")
    dense, seed_notes = _dense(parts, done)
    del parts
    values, tasks, settings, cell_notes = _cell_matrices(dense)
    configs, config_notes = cell_configs(trials)
    rows = sorted({t["label"] for t in trials})
    first = {t["label"]: t for t in reversed(trials)}
    return EvalMatrices(
        metric, stage, inner_steps, rows, {r: first[r]["variant"] for r in rows}, {r: first[r]["point"] for r in rows},
        {r: first[r]["configuration"] for r in rows}, settings, values, tasks, dense.sums.shape[2],
        counts, configs, [*split_notes, *seed_notes, *cell_notes, *notes, *config_notes])
