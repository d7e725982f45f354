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


# ------------------------------------------------------------------------------------------ the trials row builder


def built(status="completed", **kw):
    from metasweep.analysis.store import trial_row as build

    values = dict(experiment="e", stage="test", trial_id="t1", attempt=0, variant="maml", status=status,
                  task_family="sine", train_shots=10, seed=0, learner_kind="gradient", inner_loop=True,
                  hparams={"alpha": 0.01, "beta": 0.001, "inner_steps": 1, "meta_batch": 25}, hp_source="tuned",
                  hp_source_trial="tune-x", variant_switches={"transform": False}, config={"alpha": 0.01},
                  meta_steps=10, wall_seconds=1.5, final_val_loss=0.5, device="cpu", spec_hash="h")
    return build(**{**values, **kw})


def test_one_builder_gives_every_status_the_same_columns():
    """Rows of one trial differ only in what it measured, however it ended (issue 11 case 12)."""
    from metasweep.analysis.store import STATUSES

    filled = {s: {k for k, v in built(s).items() if v is not None} for s in STATUSES}
    assert len({frozenset(f) for f in filled.values()}) == 1, filled
    row = built("running")
    assert list(row) == SCHEMAS["trials"].names
    assert row["package_version"] and row["git_sha"] and row["node"] and row["variant_switches"]
    assert (row["alpha"], row["beta"], row["temperature"], row["mask_eval"]) == (0.01, 0.001, None, None)
    assert row["learner_kind"] == "gradient" and row["inner_loop"] is True and row["hp_source"] == "tuned"
    with pytest.raises(ValueError, match=r"status must be one of running, completed, .* \(got 'finished'\)"):
        built("finished")
    with pytest.raises(ValueError, match=r"hp_source must be one of tuned, fallback, defaults, grid, given"):
        built(hp_source="optuna")


def test_hyper_parameter_columns_hold_only_what_the_learner_read():
    """A Prototypical Network reads no alpha: alpha is NULL, its own hyper-parameters are in hparams."""
    import json

    row = built(learner_kind="metric", inner_loop=False,
                hparams={"beta": 0.001, "meta_batch": 4, "distance": "euclidean", "embedding_dim": 64})
    assert row["alpha"] is None and row["temperature"] is None and row["inner_steps"] is None
    assert (row["beta"], row["meta_batch"]) == (0.001, 4) and row["inner_loop"] is False
    assert json.loads(row["hparams"]) == {"beta": 0.001, "meta_batch": 4, "distance": "euclidean", "embedding_dim": 64}
    # non-finite values: a NULL summary, valid JSON for an errored trial's alpha
    row = built("errored", hparams={"alpha": float("inf")}, final_val_loss=float("nan"), error="ValueError: alpha")
    assert row["final_val_loss"] is None and row["alpha"] == float("inf") and json.loads(row["hparams"]) == {"alpha": "inf"}
    with pytest.raises(ValueError, match="hyper-parameter inner_steps must be a number"):
        built(hparams={"inner_steps": "many"})


def test_built_rows_round_trip_through_the_files(tmp_path):
    import json

    from metasweep.analysis.schema import SCHEMA_VERSION, VERSION_KEY

    write_trial(str(tmp_path), built(), *rows(2, 1.0))
    got = read_dataset(str(tmp_path))["trials"].to_pylist()[0]
    want = built()
    for k in ("hparams", "hp_source", "hp_source_trial", "learner_kind", "inner_loop", "alpha", "variant_switches"):
        assert got[k] == want[k], k
    assert json.loads(got["hparams"])["meta_batch"] == 25
    meta = pq.read_schema(tmp_path / "trials" / "t1__a0.parquet").metadata
    assert meta[VERSION_KEY] == str(SCHEMA_VERSION).encode()


def test_trials_files_older_than_the_learner_columns_read_them_as_null(tmp_path):
    old = SCHEMAS["trials"]
    for name in ("learner_kind", "inner_loop", "hparams", "hp_source", "hp_source_trial"):
        old = old.remove(old.get_field_index(name))
    (tmp_path / "trials").mkdir()
    row = {k: [v] for k, v in trial_row("t1", 0).items()}
    pq.write_table(pa.table({f.name: row.get(f.name, [None]) for f in old}, schema=old),
                   tmp_path / "trials" / "t1__a0.parquet")
    t = read_dataset(str(tmp_path))["trials"]
    assert t.num_rows == 1 and t["hparams"].to_pylist() == [None] and t["inner_loop"].to_pylist() == [None]


def test_a_file_of_a_newer_schema_version_is_refused_by_name(tmp_path):
    from metasweep.analysis.schema import SCHEMA_VERSION, VERSION_KEY

    write_trial(str(tmp_path), built(), *rows(2, 1.0))
    path = tmp_path / "trials" / "t1__a0.parquet"
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({VERSION_KEY: str(SCHEMA_VERSION + 1).encode()}), path)
    with pytest.raises(StoreError, match=rf"t1__a0.parquet: written with schema version {SCHEMA_VERSION + 1}, newer"):
        read_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------------ maintenance


def test_mark_unfinished_marks_the_latest_running_row_of_the_stage_only(tmp_path):
    from metasweep.analysis.store import mark_unfinished, read_raw

    uri = str(tmp_path)
    write_trial(uri, built("completed", trial_id="a", attempt=0), *rows(2, 1.0))
    write_trial(uri, built("running", trial_id="a", attempt=1, meta_steps=5), *rows(1, 1.0))  # restarted, stopped
    write_trial(uri, built("running", trial_id="b"), *rows(1, 1.0))
    write_trial(uri, built("running", trial_id="c", stage="tune"), *rows(1, 1.0))
    write_trial(uri, built("diverged", trial_id="d"), *rows(1, 1.0))
    assert sorted(mark_unfinished(uri, "test")) == ["a", "b"]
    status = {(r["trial_id"], r["attempt"]): r for r in read_raw(uri, "trials").to_pylist()}
    assert {k: r["status"] for k, r in status.items()} == {
        ("a", 0): "completed", ("a", 1): "stopped_early", ("b", 0): "stopped_early", ("c", 0): "running",
        ("d", 0): "diverged"}
    before, after = built("running", trial_id="a", attempt=1, meta_steps=5), status[("a", 1)]
    assert {k: v for k, v in after.items() if k not in ("status", "started_at", "ended_at")} == \
        {k: v for k, v in before.items() if k not in ("status", "started_at", "ended_at")}
    assert mark_unfinished(uri, "test") == []
    with pytest.raises(ValueError, match="status must be one of completed"):
        mark_unfinished(uri, "tune", "running")


def test_quarantine_moves_every_file_of_the_trials_and_readers_forget_them(tmp_path):
    from metasweep.analysis.store import quarantine_trials, read_raw

    uri = str(tmp_path)
    write_trial(uri, built(trial_id="a"), *rows(2, 1.0), extra={"cka": {"layer": [0], "cka": [0.9]}})
    write_trial(uri, built(trial_id="a", attempt=1), *rows(2, 1.0))
    write_trial(uri, built(trial_id="ab"), *rows(2, 1.0))  # a prefix of another id is not that trial
    assert quarantine_trials(uri, ["a"]) == 2 * 3 + 1
    assert read_dataset(uri)["trials"]["trial_id"].to_pylist() == ["ab"]
    assert read_raw(uri, "cka").num_rows == 0
    assert sorted(p.name for p in (tmp_path / "orphaned" / "trials").iterdir()) == ["a__a0.parquet", "a__a1.parquet"]
    assert quarantine_trials(uri, []) == 0


def test_set_aside_moves_one_damaged_file_out_of_the_readers_way(tmp_path):
    from metasweep.analysis.store import set_aside

    uri = str(tmp_path)
    write_trial(uri, built(trial_id="a"), *rows(2, 1.0))
    bad = tmp_path / "trials" / "b__a0.parquet"
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(StoreError) as e:
        read_dataset(uri)
    path = str(e.value).split(": not a readable")[0]
    assert set_aside(uri, path) == str(tmp_path / "damaged" / "trials" / "b__a0.parquet")
    assert read_dataset(uri)["trials"].num_rows == 1
    with pytest.raises(ValueError, match="not a file of a table of the dataset"):
        set_aside(uri, str(tmp_path / "spec.yaml"))


def test_text_files_are_written_atomically(tmp_path):
    from metasweep.analysis.store import read_text, write_text

    assert read_text(str(tmp_path / "exp"), "spec.yaml") is None
    write_text(str(tmp_path / "exp"), "spec.yaml", "experiment: x\n")
    write_text(str(tmp_path / "exp"), "spec.yaml", "experiment: y\n")
    assert read_text(str(tmp_path / "exp"), "spec.yaml") == "experiment: y\n"
    assert [p.name for p in (tmp_path / "exp").iterdir()] == ["spec.yaml"]  # no temporary file left
