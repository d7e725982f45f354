"""The results dataset: three Parquet tables under one storage path (see docs/RESULTS.md).

<storage>/<experiment>/{trials,curves,eval_tasks}/<trial_id>__a<attempt>.parquet

Each attempt of a trial writes its own files, eval_tasks and curves first and its `trials` row last:
the trials row is the commit marker. Readers keep, per trial, the latest attempt that has a trials
row, and drop the rows of every other attempt, so a trial restarted after a lost node never
duplicates or loses rows. Works on a local folder and on any pyarrow filesystem URI (s3://, gs://).
"""

from __future__ import annotations

import os
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "trials": pa.schema([
        ("experiment", pa.string()), ("stage", pa.string()), ("trial_id", pa.string()), ("attempt", pa.int32()),
        ("variant", pa.string()), ("variant_switches", pa.string()), ("task_family", pa.string()),
        ("task_options", pa.string()), ("train_shots", pa.int32()), ("seed", pa.int64()),
        ("alpha", pa.float64()), ("beta", pa.float64()), ("temperature", pa.float64()),
        ("inner_steps", pa.int32()), ("meta_batch", pa.int32()), ("mask_eval", pa.string()),
        ("config", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("meta_steps", pa.int64()), ("wall_seconds", pa.float64()), ("final_val_loss", pa.float64()),
        ("node", pa.string()), ("device", pa.string()), ("package_version", pa.string()),
        ("git_sha", pa.string()), ("spec_hash", pa.string()), ("started_at", TS), ("ended_at", TS),
    ]),
    "curves": pa.schema([
        ("trial_id", pa.string()), ("attempt", pa.int32()), ("meta_step", pa.int64()),
        ("wall_seconds", pa.float64()), ("meta_train_loss", pa.float64()), ("val_loss", pa.float64()),
        ("val_accuracy", pa.float64()), ("mask_fraction", pa.float64()),
        ("mask_fraction_per_cell", pa.list_(pa.float64())), ("alpha_mean", pa.float64()),
    ]),
    "eval_tasks": pa.schema([
        ("trial_id", pa.string()), ("attempt", pa.int32()), ("split", pa.string()), ("eval_seed", pa.int64()),
        ("task_index", pa.int32()), ("shots", pa.int32()), ("inner_steps", pa.int32()),
        ("mask_eval", pa.string()), ("loss", pa.float64()), ("accuracy", pa.float64()),
    ]),
    # the feature-reuse analysis (analysis/cka.py): CKA and SVCCA of each layer's activations before vs
    # after the inner loop, per evaluation task. Optional: written by `metasweep train --cka-tasks N` on
    # image tasks; not one of the three core TABLES (read it with read_raw(uri, "cka")).
    "cka": pa.schema([
        ("trial_id", pa.string()), ("attempt", pa.int32()), ("split", pa.string()), ("eval_seed", pa.int64()),
        ("task_index", pa.int32()), ("shots", pa.int32()), ("inner_steps", pa.int32()), ("layer", pa.int32()),
        ("cka", pa.float64()), ("cca", pa.float64()),
    ]),
}
# columns added to a table after files were first written with it: older files read them as null
LATER_COLUMNS = {"cka": ("cca",)}
TABLES = ("trials", "curves", "eval_tasks")
STATUSES = ("completed", "diverged", "errored", "stopped_early")


class StoreError(ValueError):
    """A dataset file that does not match the declared schema, named with file and column."""


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local folder or a pyarrow filesystem URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _file_name(trial_id: str, attempt: int) -> str:
    return f"{trial_id}__a{attempt}.parquet"


def attempt_path(root: str, table_name: str, trial_id: str, attempt: int) -> str:
    """Where one attempt of a trial keeps its rows of a table."""
    return f"{root}/{table_name}/{_file_name(trial_id, attempt)}"


def check_columns(path: str, schema: pa.Schema, table_name: str, columns=None) -> None:
    """Raise StoreError naming the file and the column if `columns` (default: all declared ones)
    are missing or mistyped in a file's schema. Dictionary-encoded strings count as strings."""
    expected = SCHEMAS[table_name]
    for name in columns or expected.names:
        if name not in schema.names:
            raise StoreError(f"{path}: column {name!r} is missing (table {table_name})")
        got, want = schema.field(name).type, expected.field(name).type
        if pa.types.is_dictionary(got):
            got = got.value_type
        if got != want and not pa.types.is_null(got):
            raise StoreError(f"{path}: column {name!r} has type {got}, expected {want}")


def write_table(uri: str, table_name: str, rows: dict | pa.Table, trial_id: str, attempt: int) -> str:
    """Write one trial attempt's rows atomically (temporary name + rename on local disks; a single
    PUT, which is atomic, on object stores). Rows must fit the declared schema."""
    schema = SCHEMAS[table_name]
    table = rows if isinstance(rows, pa.Table) else pa.table(
        {f.name: rows.get(f.name, [None] * _length(rows)) for f in schema}, schema=schema)
    table = table.select(schema.names).cast(schema)
    fs, root = resolve(uri)
    folder = f"{root}/{table_name}"
    fs.create_dir(folder, recursive=True)
    final = attempt_path(root, table_name, trial_id, attempt)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{folder}/.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, final)
    else:
        pq.write_table(table, final, filesystem=fs)
    return final


def _length(rows: dict) -> int:
    for v in rows.values():
        if v is not None:
            return len(v)
    return 0


def write_trial(uri: str, trial_row: dict, curves: dict, eval_tasks: dict, extra: dict | None = None) -> None:
    """All rows of one ended attempt; the trials row goes last (commit marker). `extra` holds the
    rows of optional tables (e.g. {"cka": columns}), written before the commit marker too."""
    tid, attempt = trial_row["trial_id"], int(trial_row["attempt"])
    for name, cols in (extra or {}).items():
        if _length(cols):
            n = _length(cols)
            write_table(uri, name, {**cols, "trial_id": [tid] * n, "attempt": [attempt] * n}, tid, attempt)
    n_curve = _length(curves)
    write_table(uri, "curves", {**curves, "trial_id": [tid] * n_curve, "attempt": [attempt] * n_curve}, tid, attempt)
    n_eval = _length(eval_tasks)
    write_table(uri, "eval_tasks", {**eval_tasks, "trial_id": [tid] * n_eval, "attempt": [attempt] * n_eval},
                tid, attempt)
    write_table(uri, "trials", {k: [v] for k, v in trial_row.items()}, tid, attempt)


def _read_checked(fs: pafs.FileSystem, path: str, table_name: str) -> pa.Table:
    expected = SCHEMAS[table_name]
    try:
        table = pq.read_table(path, filesystem=fs)
    except Exception as e:  # corrupt / truncated file
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    for name in LATER_COLUMNS.get(table_name, ()):
        if name not in table.schema.names:
            table = table.append_column(name, pa.nulls(table.num_rows, expected.field(name).type))
    check_columns(path, table.schema, table_name)
    return table.select(expected.names).cast(expected)


def read_raw(uri: str, table_name: str) -> pa.Table:
    """Every file of one table, schema-checked, all attempts."""
    fs, root = resolve(uri)
    folder = f"{root}/{table_name}"
    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.NotFound:
        return SCHEMAS[table_name].empty_table()
    files = sorted(
        f.path for f in fs.get_file_info(pafs.FileSelector(folder))
        if f.type == pafs.FileType.File and f.path.endswith(".parquet") and not f.base_name.startswith(".")
    )
    tables = [_read_checked(fs, p, table_name) for p in files]
    return pa.concat_tables(tables) if tables else SCHEMAS[table_name].empty_table()


def _attempt_key(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table["trial_id"], pc.cast(table["attempt"], pa.string()), "#")


def _keep_attempts(table: pa.Table, keep: pa.Table) -> pa.Table:
    """Rows of `table` whose (trial_id, attempt) is in `keep` (a filter: list columns can't be joined)."""
    if table.num_rows == 0:
        return table
    return table.filter(pc.is_in(_attempt_key(table), value_set=_attempt_key(keep)))


def latest_attempts(trials: pa.Table) -> pa.Table:
    """Per trial_id, the row of the highest attempt."""
    if trials.num_rows == 0:
        return trials
    best = trials.group_by("trial_id").aggregate([("attempt", "max")]).rename_columns(["trial_id", "attempt"])
    return _keep_attempts(trials, best)


def read_dataset(uri: str) -> dict[str, pa.Table]:
    """The three tables, keeping only each trial's latest committed attempt."""
    if not exists(uri):
        raise StoreError(f"{uri}: no results dataset here (expected folders trials/, curves/, eval_tasks/)")
    trials = latest_attempts(read_raw(uri, "trials")).sort_by([("trial_id", "ascending")])
    out = {"trials": trials}
    for name in ("curves", "eval_tasks"):
        out[name] = _keep_attempts(read_raw(uri, name), trials)
    return out


def exists(uri: str) -> bool:
    fs, root = resolve(uri)
    return fs.get_file_info(f"{root}/trials").type == pafs.FileType.Directory


def committed_trial_ids(uri: str) -> set[str]:
    t = read_raw(uri, "trials")
    return set(t.column("trial_id").to_pylist()) if t.num_rows else set()


def filter_status(trials: pa.Table, status: str) -> pa.Table:
    return trials.filter(pc.equal(trials["status"], status))
