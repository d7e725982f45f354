"""The Parquet store: schema checks, atomic files, latest committed attempt only."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metasweep.analysis.store import SCHEMAS, StoreError, read_dataset, write_trial


def trial_row(tid, attempt, status="completed"):
    now = dt.datetime.now(dt.timezone.utc)
    return {"experiment": "e", "stage": "test", "trial_id": tid, "attempt": attempt, "variant": "maml",
            "task_family": "sine", "train_shots": 10, "seed": 0, "alpha": 0.01, "beta": 0.001, "status": status,
            "meta_steps": 10, "started_at": now, "ended_at": now}


def rows(n, value):
    return ({"meta_step": list(range(n)), "val_loss": [value] * n},
            {"split": ["test"] * n, "eval_seed": [1] * n, "task_index": list(range(n)), "shots": [5] * n,
             "inner_steps": [1] * n, "loss": [value] * n})


def test_only_the_latest_committed_attempt_is_kept(tmp_path):
    uri = str(tmp_path)
    write_trial(uri, trial_row("t1", 0), *rows(3, 1.0))
    write_trial(uri, trial_row("t1", 1), *rows(4, 2.0))  # restarted attempt
    write_trial(uri, trial_row("t2", 0), *rows(2, 3.0))
    # an attempt that died before committing (no trials row): its rows must be ignored
    from metasweep.analysis.store import write_table
    write_table(uri, "eval_tasks", {**rows(5, 9.0)[1], "trial_id": ["t1"] * 5, "attempt": [2] * 5}, "t1", 2)
    ds = read_dataset(uri)
    assert sorted(ds["trials"].column("trial_id").to_pylist()) == ["t1", "t2"]
    t1 = ds["eval_tasks"].filter(pa.compute.equal(ds["eval_tasks"]["trial_id"], "t1"))
    assert t1.num_rows == 4 and set(t1.column("loss").to_pylist()) == {2.0}
    assert ds["curves"].num_rows == 4 + 2
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind


def test_missing_column_is_named_with_its_file(tmp_path):
    write_trial(str(tmp_path), trial_row("t1", 0), *rows(2, 1.0))
    bad = tmp_path / "eval_tasks" / "t9__a0.parquet"
    pq.write_table(pa.table({"trial_id": ["t9"], "attempt": pa.array([0], pa.int32())}), bad)
    with pytest.raises(StoreError, match=r"t9__a0.parquet: column 'split' is missing"):
        read_dataset(str(tmp_path))


def test_mistyped_column_is_named(tmp_path):
    write_trial(str(tmp_path), trial_row("t1", 0), *rows(2, 1.0))
    t = SCHEMAS["curves"].empty_table().to_pydict()
    t = pa.table({**{k: pa.array([], SCHEMAS["curves"].field(k).type) for k in t},
                  "val_loss": pa.array([], pa.string())})
    pq.write_table(t, tmp_path / "curves" / "t8__a0.parquet")
    with pytest.raises(StoreError, match=r"t8__a0.parquet: column 'val_loss' has type string, expected double"):
        read_dataset(str(tmp_path))


def test_corrupt_file_is_named(tmp_path):
    write_trial(str(tmp_path), trial_row("t1", 0), *rows(2, 1.0))
    (tmp_path / "trials" / "t7__a0.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StoreError, match=r"t7__a0.parquet: not a readable Parquet file"):
        read_dataset(str(tmp_path))


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no results dataset here"):
        read_dataset(str(tmp_path / "nope"))


def test_a_filesystem_uri_works_like_a_folder(tmp_path):
    uri = f"file://{tmp_path}/exp"
    write_trial(uri, trial_row("t1", 0), *rows(3, 1.0))
    ds = read_dataset(uri)
    assert ds["trials"].num_rows == 1 and ds["eval_tasks"].num_rows == 3
    assert (tmp_path / "exp" / "trials" / "t1__a0.parquet").exists()


def test_cka_files_written_before_the_cca_column_read_it_as_null(tmp_path):
    """`cca` joined the optional `cka` table later: an older file without it still reads (as null),
    while a missing original column is still an error naming the file."""
    from metasweep.analysis.store import read_raw

    old = SCHEMAS["cka"].remove(SCHEMAS["cka"].get_field_index("cca"))
    (tmp_path / "cka").mkdir()
    row = {"trial_id": ["t"], "attempt": [0], "split": ["test"], "eval_seed": [1], "task_index": [0], "shots": [1],
           "inner_steps": [1], "layer": [0], "cka": [0.9]}
    pq.write_table(pa.table(row, schema=old), tmp_path / "cka" / "t__a0.parquet")
    t = read_raw(str(tmp_path), "cka")
    assert t.num_rows == 1 and t["cka"].to_pylist() == [0.9] and t["cca"].to_pylist() == [None]
    del row["cka"]
    pq.write_table(pa.table(row, schema=old.remove(old.get_field_index("cka"))), tmp_path / "cka" / "u__a0.parquet")
    with pytest.raises(StoreError, match=r"u__a0.parquet: column 'cka' is missing"):
        read_raw(str(tmp_path), "cka")
