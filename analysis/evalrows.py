"""Evaluation rows of a stage's completed trials as numpy arrays (`Part`s), read straight from each
attempt's file (the store's ``attempt_path``, only the columns needed, in parallel; a file whose
row-group statistics do not show it holds that single attempt is filtered row by row), or from SQL
over a duckdb connection with the views trials/eval_tasks (``analysis.query.connect``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .store import StoreError, attempt_path, open_checked, resolve

_INT_COLS = ("inner_steps", "shots", "task_index")


@dataclass
class Part:
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

    def keep(self, mask: np.ndarray) -> Part:
        if mask.all():
            return self
        code = self.code if np.isscalar(self.code) else self.code[mask]
        split = None if self.split is None else self.split[mask]
        return Part(code, self.inner_steps[mask], self.shots[mask], self.task_index[mask], self.v[mask],
                     self.split_names, split)

    def splits_present(self) -> set[str]:
        if not self.v.size:
            return set()
        if self.split is None:
            return {self.split_names[0]}
        return {self.split_names[i] for i in small_unique(self.split)}

    def only_split(self, name: str) -> Part:
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


def union(arrays: list[np.ndarray]) -> np.ndarray:
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


def _part(code, t: pa.Table, const_split: str | None, metric: str) -> Part:
    arrays = [_ints(t[name]) for name in _INT_COLS]
    if const_split is not None:
        return Part(code, *arrays, _floats(t[metric]), [const_split])
    col = t["split"].combine_chunks() if isinstance(t["split"], pa.ChunkedArray) else t["split"]
    if col.null_count or not pa.types.is_dictionary(col.type):
        col = pc.fill_null(pc.cast(col, pa.string()), "").dictionary_encode()
    names = col.dictionary.to_pylist()
    return Part(code, *arrays, _floats(t[metric]), names, col.indices.to_numpy().astype(np.int64))


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


def _read_eval_file(fs, path: str, code: int, trial_id: str, attempt: int, metric: str) -> Part:
    """One attempt's evaluation rows (needed columns only), schema-checked by the store."""
    pf = open_checked(fs, path, "eval_tasks", ("trial_id", "attempt", *_INT_COLS, "split", metric),
                      read_dictionary=["split"])
    is_split_const, split = _stat_constant(pf, "split")
    present = metric in pf.schema_arrow.names  # a column of LATER_COLUMNS is missing from older files
    columns = [*_INT_COLS, *([metric] if present else [])] + ([] if is_split_const else ["split"])
    own = _stat_constant(pf, "trial_id") == (True, trial_id) and _stat_constant(pf, "attempt") == (True, attempt)
    try:
        if own:  # the usual case: the file holds this attempt's rows only (store.write_trial)
            t = pf.read(columns=columns)
        else:
            t = pf.read(columns=["trial_id", "attempt", *columns])
            t = t.filter(pc.and_(pc.equal(t["trial_id"], trial_id), pc.equal(t["attempt"], attempt)))
    except Exception as e:
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    if not present:
        t = t.append_column(metric, pa.nulls(t.num_rows, pa.float64()))
    return _part(code, t, split if is_split_const else None, metric)


def parts_from_files(exp_uri: str, trials: list[dict], metric: str) -> list[Part]:
    """One Part per completed trial with an evaluation file (`code` = its index in `trials`)."""
    fs, root = resolve(exp_uri)
    paths = [attempt_path(root, "eval_tasks", t["trial_id"], t["attempt"]) for t in trials]
    found = [info.type == pafs.FileType.File for info in fs.get_file_info(paths)] if paths else []
    jobs = [(i, p) for i, (p, ok) in enumerate(zip(paths, found)) if ok]

    def load(job):
        i, p = job
        return _read_eval_file(fs, p, i, trials[i]["trial_id"], int(trials[i]["attempt"]), metric)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as ex:
        return list(ex.map(load, jobs))


def parts_from_con(con: duckdb.DuckDBPyConnection, trials: list[dict], metric: str) -> list[Part]:
    codes = pa.table({"trial_id": pa.array([t["trial_id"] for t in trials], pa.string()),
                      "attempt": pa.array([t["attempt"] for t in trials], pa.int32()),
                      "code": pa.array(range(len(trials)), pa.int64())})
    con.register("_ranking_codes", codes)
    try:
        table = con.sql(f"""select c.code, e.inner_steps, e.shots, e.task_index, e.split, e."{metric}"
                            from eval_tasks e join _ranking_codes c using (trial_id, attempt)""").to_arrow_table()
    finally:
        con.unregister("_ranking_codes")
    return [_part(_ints(table["code"]), table, None, metric)] if table.num_rows else []
