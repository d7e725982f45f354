"""The results dataset: three Parquet tables under one storage path (see docs/RESULTS.md). The one
owner of the dataset: its file naming, atomic writes, reading, the latest-attempt selection, the
marking of unfinished rows and the quarantine of abandoned or damaged files. The schema is in
`analysis.schema`, the builder of a trials row in `analysis.rows` (both re-exported here).

<storage>/<experiment>/{trials,curves,eval_tasks}/<trial_id>__a<attempt>.parquet

Each attempt of a trial writes its own files, eval_tasks and curves first and its `trials` row last:
the trials row is the commit marker. Readers keep, per trial, the latest attempt that has a trials
row, and drop the rows of every other attempt, so a trial restarted after a lost node never
duplicates or loses rows. Works on a local folder and on any pyarrow filesystem URI (s3://, gs://).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .rows import from_stored, git_sha, package_version, trial_row
from .schema import (
    HP_COLUMNS,
    HP_SOURCES,
    LATER_COLUMNS,
    SCHEMA_VERSION,
    SCHEMAS,
    STATUSES,
    TABLES,
    StoreError,
    check_columns,
    check_version,
    with_version,
)

__all__ = [
    "HP_COLUMNS", "HP_SOURCES", "LATER_COLUMNS", "SCHEMA_VERSION", "SCHEMAS", "STATUSES", "TABLES", "StoreError",
    "attempt_path", "check_columns", "exists", "git_sha", "latest_attempts", "mark_unfinished", "open_checked",
    "package_version", "quarantine_trials", "read_dataset", "read_raw", "read_text", "read_trials", "resolve",
    "set_aside", "trial_row", "write_table", "write_text", "write_trial",
]

ORPHANED = "orphaned"  # rows of an abandoned run of a stage (never read)
DAMAGED = "damaged"  # files set aside because they could not be read (never read)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local folder or a pyarrow filesystem URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, root = resolve(uri)
    return fs.get_file_info(f"{root}/trials").type == pafs.FileType.Directory


def _no_dataset(uri: str) -> StoreError:
    return StoreError(f"{uri}: no results dataset here (expected folders trials/, curves/, eval_tasks/)")


# ------------------------------------------------------------------------------------------ naming


def _file_name(trial_id: str, attempt: int) -> str:
    return f"{trial_id}__a{attempt}.parquet"


def _trial_of(file_name: str) -> str:
    return file_name.split("__a")[0]


def attempt_path(root: str, table_name: str, trial_id: str, attempt: int) -> str:
    """Where one attempt of a trial keeps its rows of a table."""
    return f"{root}/{table_name}/{_file_name(trial_id, attempt)}"


def _table_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """The Parquet files of a table's folder (temporary files of writes in progress excluded)."""
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    return sorted((f for f in fs.get_file_info(pafs.FileSelector(folder))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet") and not f.base_name.startswith(".")),
                  key=lambda f: f.path)


# ------------------------------------------------------------------------------------------ writing


def _atomic(fs: pafs.FileSystem, final: str, write: Callable[[str], None]) -> None:
    """Write a file so that no reader sees it half-written: a temporary name then a rename on local
    disks; a single PUT (atomic) on object stores."""
    if not isinstance(fs, pafs.LocalFileSystem):
        write(final)
        return
    tmp = f"{final.rsplit('/', 1)[0]}/.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        fs.move(tmp, final)
    except BaseException:
        if fs.get_file_info(tmp).type == pafs.FileType.File:
            fs.delete_file(tmp)
        raise


def write_text(uri: str, name: str, text: str) -> str:
    """Write a text file (spec.yaml, manifest.json) under the experiment, atomically."""
    fs, root = resolve(uri)
    fs.create_dir(root, recursive=True)
    path = f"{root}/{name}"

    def write(p: str) -> None:
        with fs.open_output_stream(p) as f:
            f.write(text.encode())

    _atomic(fs, path, write)
    return path


def read_text(uri: str, name: str) -> str | None:
    """A text file under the experiment, or None when it does not exist."""
    fs, root = resolve(uri)
    path = f"{root}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _length(rows: dict) -> int:
    for v in rows.values():
        if v is not None:
            return len(v)
    return 0


def write_table(uri: str, table_name: str, rows: dict | pa.Table, trial_id: str, attempt: int) -> str:
    """Write one trial attempt's rows atomically. Rows must fit the declared schema (missing
    columns are NULL); the file carries the schema version in its metadata."""
    schema = SCHEMAS[table_name]
    table = rows if isinstance(rows, pa.Table) else pa.table(
        {f.name: rows.get(f.name, [None] * _length(rows)) for f in schema}, schema=schema)
    table = table.select(schema.names).cast(schema).replace_schema_metadata(with_version(schema).metadata)
    fs, root = resolve(uri)
    fs.create_dir(f"{root}/{table_name}", recursive=True)
    final = attempt_path(root, table_name, trial_id, attempt)
    _atomic(fs, final, lambda p: pq.write_table(table, p, filesystem=fs))
    return final


def write_trial(uri: str, trial_row: dict, curves: dict, eval_tasks: dict, extra: dict | None = None) -> None:
    """All rows of one ended attempt; the trials row (one dict, see `analysis.rows.trial_row`) goes
    last (commit marker). `extra` holds the rows of optional tables (e.g. {"cka": columns}),
    written before the commit marker too."""
    tid, attempt = trial_row["trial_id"], int(trial_row["attempt"])
    for name, cols in [*(extra or {}).items(), ("curves", curves), ("eval_tasks", eval_tasks)]:
        n = _length(cols)
        if n or name in TABLES:
            write_table(uri, name, {**cols, "trial_id": [tid] * n, "attempt": [attempt] * n}, tid, attempt)
    write_table(uri, "trials", {k: [v] for k, v in trial_row.items()}, tid, attempt)


# ------------------------------------------------------------------------------------------ reading


def open_checked(fs: pafs.FileSystem, path: str, table_name: str, columns: Iterable[str] | None = None,
                 **kwargs) -> pq.ParquetFile:
    """A Parquet file of a table, its footer checked: readable, of a schema version this code
    reads, with `columns` (default: all declared ones) present and typed. StoreError otherwise."""
    try:
        pf = pq.ParquetFile(fs.open_input_file(path), **kwargs)
    except Exception as e:  # corrupt / truncated file
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    check_version(path, pf.schema_arrow.metadata)
    check_columns(path, pf.schema_arrow, table_name, tuple(columns) if columns is not None else None)
    return pf


def _read_checked(fs: pafs.FileSystem, path: str, table_name: str) -> pa.Table:
    expected = SCHEMAS[table_name]
    pf = open_checked(fs, path, table_name)
    try:
        table = pf.read()
    except Exception as e:  # a footer that reads, data pages that do not
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    for name in LATER_COLUMNS.get(table_name, ()):
        if name not in table.schema.names:
            table = table.append_column(name, pa.nulls(table.num_rows, expected.field(name).type))
    return table.select(expected.names).cast(expected).replace_schema_metadata(None)


def read_raw(uri: str, table_name: str) -> pa.Table:
    """Every file of one table, schema-checked, all attempts."""
    fs, root = resolve(uri)
    tables = [_read_checked(fs, f.path, table_name) for f in _table_files(fs, f"{root}/{table_name}")]
    return pa.concat_tables(tables) if tables else SCHEMAS[table_name].empty_table()


def _attempt_key(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table["trial_id"], pc.cast(table["attempt"], pa.string()), "#")


def _keep_attempts(table: pa.Table, keep: pa.Table) -> pa.Table:
    """Rows of `table` whose (trial_id, attempt) is in `keep` (a filter: list columns can't be joined)."""
    if table.num_rows == 0:
        return table
    return table.filter(pc.is_in(_attempt_key(table), value_set=_attempt_key(keep)))


def latest_attempts(trials: pa.Table) -> pa.Table:
    """Per trial_id, the row of the highest attempt (the one selection every reader uses)."""
    if trials.num_rows == 0:
        return trials
    best = trials.group_by("trial_id").aggregate([("attempt", "max")]).rename_columns(["trial_id", "attempt"])
    return _keep_attempts(trials, best)


def read_trials(uri: str) -> pa.Table:
    """The trials table: each trial's latest committed attempt, sorted by trial_id."""
    if not exists(uri):
        raise _no_dataset(uri)
    return latest_attempts(read_raw(uri, "trials")).sort_by([("trial_id", "ascending")])


def read_latest(uri: str, table_name: str, trials: pa.Table) -> pa.Table:
    """The rows of `table_name` that belong to the attempts in `trials` (from read_trials)."""
    return _keep_attempts(read_raw(uri, table_name), trials)


def read_dataset(uri: str) -> dict[str, pa.Table]:
    """The three tables, keeping only each trial's latest committed attempt."""
    trials = read_trials(uri)
    return {"trials": trials, **{name: read_latest(uri, name, trials) for name in ("curves", "eval_tasks")}}


# ------------------------------------------------------------------------------------------ maintenance


def mark_unfinished(uri: str, stage: str, status: str = "stopped_early", *, trial_ids: Iterable[str] | None = None,
                    error: str | None = None) -> list[str]:
    """After a stage ends: every trial of `stage` (of `trial_ids` only, when given) whose latest row is
    still `running` (the scheduler, e.g. ASHA, stopped it after a report; or Ray gave up restarting
    it) gets `status` (and `error`), its row rebuilt by `trial_row` with every other value kept.
    Returns the trial ids marked."""
    if status == "running" or status not in STATUSES:
        raise ValueError(f"mark_unfinished: status must be one of {', '.join(STATUSES[1:])} (got {status!r})")
    if not exists(uri):
        return []
    trials = latest_attempts(read_raw(uri, "trials"))
    marked = []
    only = None if trial_ids is None else set(trial_ids)
    for r in trials.filter(pc.and_(pc.equal(trials["stage"], stage), pc.equal(trials["status"], "running"))).to_pylist():
        if only is not None and r["trial_id"] not in only:
            continue
        row = trial_row(**{**from_stored(r), "status": status, **({"error": error} if error else {})})
        write_table(uri, "trials", {k: [v] for k, v in row.items()}, r["trial_id"], r["attempt"])
        marked.append(r["trial_id"])
    return marked


def quarantine_trials(uri: str, trial_ids: Iterable[str]) -> int:
    """Move every file (all tables, all attempts) of these trials to `orphaned/<table>/`: kept on
    disk, never read. For a stage cell restarted from scratch, so it does not count twice. Returns
    the number of files moved."""
    ids = set(trial_ids)
    if not ids:
        return 0
    fs, root = resolve(uri)
    moved = 0
    for table in SCHEMAS:  # the core tables and the optional ones (cka)
        for info in _table_files(fs, f"{root}/{table}"):
            if _trial_of(info.base_name) in ids:
                fs.create_dir(f"{root}/{ORPHANED}/{table}", recursive=True)
                fs.move(info.path, f"{root}/{ORPHANED}/{table}/{info.base_name}")
                moved += 1
    return moved


def set_aside(uri: str, path: str) -> str:
    """Move one damaged file of the dataset (a path inside `uri`, as a StoreError names it) to
    `damaged/<table>/`, where no reader looks. Returns its new path."""
    fs, root = resolve(uri)
    rel = path[len(root):].lstrip("/") if path.startswith(root + "/") else None
    if rel is None or rel.count("/") != 1 or rel.split("/")[0] not in SCHEMAS:
        raise ValueError(f"{path}: not a file of a table of the dataset at {uri}")
    table, name = rel.split("/")
    fs.create_dir(f"{root}/{DAMAGED}/{table}", recursive=True)
    target = f"{root}/{DAMAGED}/{table}/{name}"
    fs.move(path, target)
    return target
