"""The declared schema of the results dataset (docs/RESULTS.md): tables, columns, statuses, version.

Declared once here and checked on every read: a file with a missing or mistyped column, a corrupt
file, or a file written by a newer schema is a `StoreError` naming the file (and the column).
"""

from __future__ import annotations

import pyarrow as pa

# Written into every file's Parquet key-value metadata under VERSION_KEY; a file without it was
# written before the key existed (version 1). A reader refuses files of a newer version.
SCHEMA_VERSION = 2
VERSION_KEY = b"metasweep.schema_version"
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
        # schema version 2: what the learner is and where its hyper-parameters came from
        ("learner_kind", pa.string()), ("inner_loop", pa.bool_()), ("hparams", pa.string()),
        ("hp_source", pa.string()), ("hp_source_trial", pa.string()),
        ("selected_step", pa.int64()),  # the meta-step of the iterate evaluated (eval.select); null in older files
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
        ("return", pa.float64()),  # reinforcement learning (analysis.metrics); NaN elsewhere, null in older files
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
LATER_COLUMNS = {
    "trials": ("learner_kind", "inner_loop", "hparams", "hp_source", "hp_source_trial", "selected_step"),
    "cka": ("cca",),
    "eval_tasks": ("return",),
}
TABLES = ("trials", "curves", "eval_tasks")
# a trial's status: `running` while it trains (its row is rewritten at every report), then one of the others
STATUSES = ("running", "completed", "diverged", "errored", "stopped_early")
# where a trial's hyper-parameters came from (column hp_source)
HP_SOURCES = {
    "tuned": "the best trial of its cell's tune stage",
    "fallback": "the spec's defaults, because its cell's tune stage had no finite result",
    "defaults": "the spec's defaults (no tune stage)",
    "grid": "a point of the spec's grid",
    "given": "given by hand (metasweep train)",
}
# hyper-parameters that have their own column in trials (NULL where the learner does not read them)
HP_COLUMNS = ("alpha", "beta", "temperature", "inner_steps", "meta_batch", "mask_eval")


class StoreError(ValueError):
    """A dataset file that does not match the declared schema, named with file and column."""


def check_columns(path: str, schema: pa.Schema, table_name: str, columns=None) -> None:
    """Raise StoreError naming the file and the column if `columns` (default: all declared ones)
    are missing or mistyped in a file's schema. Dictionary-encoded strings count as strings; a
    column of LATER_COLUMNS may be missing (older files read it as null)."""
    expected = SCHEMAS[table_name]
    later = LATER_COLUMNS.get(table_name, ())
    for name in columns or expected.names:
        if name not in schema.names:
            if name in later:
                continue
            raise StoreError(f"{path}: column {name!r} is missing (table {table_name})")
        got, want = schema.field(name).type, expected.field(name).type
        if pa.types.is_dictionary(got):
            got = got.value_type
        if got != want and not pa.types.is_null(got):
            raise StoreError(f"{path}: column {name!r} has type {got}, expected {want}")


def check_version(path: str, metadata: dict | None) -> int:
    """The schema version a file was written with (1 when it carries none); StoreError for a file
    written by a newer metasweep or with an unreadable version."""
    raw = (metadata or {}).get(VERSION_KEY)
    if raw is None:
        return 1
    try:
        version = int(raw)
    except ValueError:
        raise StoreError(f"{path}: unreadable schema version {raw!r} in its metadata") from None
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: written with schema version {version}, newer than this metasweep reads "
                         f"({SCHEMA_VERSION}); upgrade metasweep to read it")
    return version


def with_version(schema: pa.Schema) -> pa.Schema:
    """`schema` with this version in its metadata (what every written file carries)."""
    return schema.with_metadata({**(schema.metadata or {}), VERSION_KEY: str(SCHEMA_VERSION).encode()})
