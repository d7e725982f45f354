"""The tune stage's copy of each study in <experiment>/optuna.db (for optuna-dashboard) is written by a
background thread: Ray Tune's loop, which tells the study when a bundle ends and only then starts the next
one, never waits for sqlite. Every write is done when the stage's `running_study` ends."""

import sqlite3

import optuna

from metasweep.sweeps.searcher import EXPORTERS
from metasweep.sweeps.study import DB, running_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_with(n: int) -> optuna.Study:
    study = optuna.create_study()
    for i in range(n):
        t = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        study.tell(t, float(i))
    return study


def exported(exp, name: str) -> list[float]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / DB}")
    return [t.value for t in study.trials]


def test_the_loop_does_not_wait_for_a_locked_database_and_the_stage_end_waits_for_the_write(tmp_path):
    exp = tmp_path / "exp"
    with running_study(str(exp), "e.c"):
        EXPORTERS["e.c"](study_with(1))  # creates the file and its tables
    with running_study(str(exp), "e.c"):
        blocker = sqlite3.connect(exp / DB, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # as a reader holding the file would: the next write waits
        # a synchronous export would wait here for sqlite (and fail after its timeout); this returns
        EXPORTERS["e.c"](study_with(3))
        (count,) = blocker.execute("SELECT COUNT(*) FROM trials").fetchone()
        assert count == 1  # not written yet: the write waits in the background for the lock
        blocker.rollback()
        blocker.close()
    assert exported(exp, "e.c") == [0.0, 1.0, 2.0]  # written before running_study returned


def test_a_snapshot_is_taken_when_submitted_and_the_latest_one_is_written(tmp_path):
    exp = tmp_path / "exp"
    study = study_with(2)
    with running_study(str(exp), "e.c"):
        EXPORTERS["e.c"](study)
        t = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        study.tell(t, 7.0)  # told after the export was asked for: not in this copy
        study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})  # running: never exported
    assert exported(exp, "e.c") == [0.0, 1.0]
    with running_study(str(exp), "e.c"):
        EXPORTERS["e.c"](study)
    assert exported(exp, "e.c") == [0.0, 1.0, 7.0]  # the older copy replaced, not appended to


def test_two_studies_of_one_experiment_share_the_file(tmp_path):
    exp = tmp_path / "exp"
    with running_study(str(exp), "e.a"), running_study(str(exp), "e.b"):
        EXPORTERS["e.a"](study_with(2))
        EXPORTERS["e.b"](study_with(3))
    assert exported(exp, "e.a") == [0.0, 1.0] and exported(exp, "e.b") == [0.0, 1.0, 2.0]


def test_a_write_that_fails_is_reported_at_the_stage_end_and_the_sweep_goes_on(tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    exp = blocked / "exp"  # cannot be created
    with running_study(str(exp), "e.c"):
        EXPORTERS["e.c"](study_with(1))
    err = capsys.readouterr().err
    assert f"{exp}/{DB}: study e.c not written (NotADirectoryError" in err
    assert "e.c" not in EXPORTERS
    # the exporter keeps working for the next stage
    with running_study(str(tmp_path / "ok"), "e.c"):
        EXPORTERS["e.c"](study_with(2))
    assert exported(tmp_path / "ok", "e.c") == [0.0, 1.0]


def test_an_empty_study_is_written_empty(tmp_path):
    with running_study(str(tmp_path), "e.c"):
        EXPORTERS["e.c"](study_with(0))
    assert exported(tmp_path, "e.c") == []
