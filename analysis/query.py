"""SQL over a results dataset (duckdb): `metasweep query EXP "select ..."` and `connect(EXP)`.

The three tables of `read_dataset` (each trial's latest committed attempt only, see store.py) are
registered as the views `trials`, `curves` and `eval_tasks`, and the optional feature-reuse table as
`cka` (empty when no trial wrote it), so everything the ranking prints can be recomputed by hand:

    >>> from metasweep.analysis.query import connect
    >>> con = connect("results/quickstart")
    >>> con.sql("select variant, avg(loss) from eval_tasks join trials using (trial_id, attempt) "
    ...         "where stage = 'test' and inner_steps = 1 group by variant").show()
"""

from __future__ import annotations

import math
import sys

import duckdb
import pyarrow as pa

from .store import TABLES, read_dataset, read_latest, read_trials

__all__ = ["MAX_PRINTED_ROWS", "connect", "query_table", "run_query"]

MAX_PRINTED_ROWS = 100
OPTIONAL = ("cka",)  # tables only some trials write (see store.SCHEMAS)


def connect(exp_uri: str, tables: tuple[str, ...] = TABLES) -> duckdb.DuckDBPyConnection:
    """An in-memory duckdb connection with the views trials, curves and eval_tasks (or only `tables`;
    trials is always there).

    Rows of abandoned or superseded attempts are already dropped. Raises StoreError (a ValueError)
    when there is no dataset at `exp_uri` or a file does not match the schema.
    """
    unknown = set(tables) - set(TABLES) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"unknown table(s) {sorted(unknown)}; the tables are {', '.join(TABLES + OPTIONAL)}")
    con = duckdb.connect()
    if set(tables) >= set(TABLES):
        ds = read_dataset(exp_uri)
        for name in TABLES:
            con.register(name, ds[name])  # a view over the Arrow table (no copy)
        tables = TABLES + OPTIONAL
    else:
        trials = read_trials(exp_uri)
        con.register("trials", trials)
        ds = {"trials": trials}
    for name in tables:
        if name not in ds:  # the same rows as read_dataset keeps: each trial's latest committed attempt
            con.register(name, read_latest(exp_uri, name, ds["trials"]))
    return con


def _sql_error(e: duckdb.Error) -> ValueError:
    msg = str(e).strip()
    if isinstance(e, duckdb.CatalogException):
        msg += f"\n(the views are: {', '.join(TABLES + OPTIONAL)})"
    return ValueError(msg)


def query_table(exp_uri: str, sql: str, con: duckdb.DuckDBPyConnection | None = None) -> pa.Table | None:
    """The result of `sql` as an Arrow table (None for a statement without a result, e.g. SET).
    SQL errors become ValueError carrying duckdb's message."""
    con = con or connect(exp_uri)
    try:
        rel = con.sql(sql)
        return None if rel is None else rel.to_arrow_table()
    except duckdb.Error as e:
        raise _sql_error(e) from None


def run_query(exp_uri: str, sql: str, output: str | None = None, console=None) -> None:
    """Run `sql` over the experiment's views; print the result as a table on `console` (a rich
    Console; required without `output`), or write it to `output` (.csv or .parquet, by the suffix)."""
    if output is not None and not output.lower().endswith((".csv", ".parquet")):
        raise ValueError(f"output {output}: must end in .csv or .parquet")
    table = query_table(exp_uri, sql)
    if output is None:
        _print_table(table, console)
        return
    if table is None:
        raise ValueError(f"the statement returned no result to write to {output}")
    if output.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, output)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(_csv_ready(table), output)
    print(f"wrote {table.num_rows} row(s), {table.num_columns} column(s) to {output}", file=sys.stderr)


def _csv_ready(table: pa.Table) -> pa.Table:
    """CSV has no nested types: list/struct/map columns are written as their text form ([0.5, 0.7])."""
    cols = []
    for col in table.columns:
        t = col.type
        if pa.types.is_nested(t):
            cols.append(pa.array([None if v is None else _text(v) for v in col.to_pylist()], pa.string()))
        else:
            cols.append(col)
    return pa.table(cols, names=table.column_names)


def _text(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_text(x)}" for k, x in v.items()) + "}"
    return str(v)


def _print_table(table: pa.Table | None, console) -> None:
    from rich.table import Table
    from rich.text import Text

    if table is None:
        console.print("ok (no result rows)")
        return
    n = table.num_rows
    shown = table.slice(0, MAX_PRINTED_ROWS)
    cols = [[_text(v) for v in c.to_pylist()] for c in shown.columns]
    t = Table(caption=f"{n} row(s)" + (f", first {MAX_PRINTED_ROWS} shown: use -o FILE.csv or .parquet for all"
                                       if n > MAX_PRINTED_ROWS else ""))
    for name, field in zip(table.column_names, table.schema):
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or \
            pa.types.is_decimal(field.type)
        t.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for i in range(shown.num_rows):
        t.add_row(*(Text(c[i]) for c in cols))
    console.print(t)
