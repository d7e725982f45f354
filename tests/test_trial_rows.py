"""Rows of one trial agree however it ended (issue 11 case 12): the Ray trainable's running rows,
its final row and an errored trial's row all come from the store's one builder, with the same
columns filled, the hyper-parameters the learner read and nothing else."""

import pytest

from metasweep.analysis.store import SCHEMAS
from metasweep.sweeps.trainable import final_row, running_row
from metasweep.sweeps.trial import TrialConfig, run_trial
from metasweep.sweeps.trial import now as utc_now

META = {"experiment": "e", "stage": "tune", "variant": "maml", "results_uri": "unused", "spec_hash": "h", "cpus": 1}
SMALL = dict(meta_steps=4, report_every=2, val_tasks=2, eval_tasks=3, eval_shots=(5,), eval_steps=(1,), meta_batch=2)


def rows_of(cfg: TrialConfig, meta: dict = META) -> tuple[list[dict], dict]:
    """(running rows written at the reports, final row) as the trainable builds them."""
    started, running = utc_now(), []

    def on_report(st, report):
        running.append(running_row(cfg, meta, "tune-x", 0, started, st, report))

    result = run_trial(cfg, trial_id="tune-x", stage=meta["stage"], on_report=on_report)
    return running, final_row(cfg, meta, "tune-x", 0, started, result)


def filled(row: dict) -> set[str]:
    return {k for k, v in row.items() if v is not None}


def test_a_stopped_trials_running_row_has_the_final_rows_columns():
    """An ASHA-stopped trial keeps its last running row: it must say what the final row would."""
    running, final = rows_of(TrialConfig(variant="maml", **SMALL))
    assert [r["status"] for r in running] == ["running", "running"] and final["status"] == "completed"
    assert [r["meta_steps"] for r in running] == [2, 4]
    for r in (*running, final):
        assert list(r) == SCHEMAS["trials"].names
        assert filled(r) - {"selected_step"} == filled(final) - {"error", "selected_step"}
        assert r["temperature"] is None and r["mask_eval"] is None  # maml reads neither
        assert r["device"] == "cpu" and r["git_sha"] and r["variant_switches"] and r["package_version"]
        assert (r["learner_kind"], r["inner_loop"], r["hp_source"]) == ("gradient", True, "given")
    # the iterate evaluated: only once there is one (eval.select; the last here)
    assert [r["selected_step"] for r in running] == [None, None] and final["selected_step"] == 4
    volatile = ("status", "wall_seconds", "ended_at", "final_val_loss", "selected_step")
    assert {k: v for k, v in running[-1].items() if k not in volatile} == \
        {k: v for k, v in final.items() if k not in volatile}


@pytest.mark.parametrize("variant", ["mt-net", "t-net"])
def test_the_temperature_is_recorded_only_where_a_mask_reads_it(variant):
    running, final = rows_of(TrialConfig(variant=variant, **SMALL), {**META, "variant": variant})
    masked = variant == "mt-net"
    for r in (*running, final):
        assert (r["temperature"] is not None) == masked and (r["mask_eval"] is not None) == masked
        assert ('"temperature"' in r["hparams"]) == masked


def test_an_errored_trial_gets_the_same_row_as_the_others():
    """A configuration the core refuses (alpha < 0) is an errored result whose row has every column
    a completed trial's row has, plus the error."""
    _, ok = rows_of(TrialConfig(variant="maml", **SMALL))
    running, bad = rows_of(TrialConfig(variant="maml", **{**SMALL, "alpha": -1.0}))
    assert running == [] and bad["status"] == "errored" and "alpha must be a positive" in bad["error"]
    # no validation, no evaluated iterate: it never trained
    assert filled(bad) == (filled(ok) | {"error"}) - {"final_val_loss", "selected_step"}
    assert bad["alpha"] == -1.0 and bad["variant_switches"] == ok["variant_switches"] and bad["device"] == "cpu"
