"""The function Ray Tune runs for one trial.

Calls the core through `sweeps.trial`, reports every K meta-steps with a checkpoint
(`ray.tune.report(metrics, checkpoint=tune.Checkpoint...)`), restarts exactly from
`tune.get_checkpoint()` after a lost node, and writes its Parquet rows itself (to the experiment's
storage, so nodes need no shared local disk). Rows of each report are committed as status
"running"; the final write replaces them, so a trial stopped early by ASHA keeps its curve. Every
trials row (running, final, errored) is built by `trial_row` from the same values, so they differ
only in what the trial measured.
"""

from __future__ import annotations

import math
import os
import tempfile

import torch
from ray import tune

from metasweep.analysis.store import write_trial

from .trial import TrialConfig, TrialResult, build_setup, curve_columns, failure, resolve_device, run_trial, trial_row
from .trial import now as utc_now

STATE_FILE = "state.pt"


def metrics_of(row: dict) -> dict:
    out = {k: row[k] for k in ("meta_step", "meta_train_loss", "val_loss") if row.get(k) is not None}
    if row.get("mask_fraction") is not None:
        out["mask_fraction"] = row["mask_fraction"]
    if not math.isfinite(out.get("val_loss", 0.0)):
        out["val_loss"] = float("inf")  # Optuna accepts inf (not NaN): a diverged trial ranks last
    return out


def node_name() -> str:
    """host/ray-node-id: several Ray nodes can share one host (tests, multi-GPU machines); the host
    alone outside Ray (never starts or joins one)."""
    import socket

    import ray

    if not ray.is_initialized():
        return socket.gethostname()
    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"


def row_of(cfg: TrialConfig, meta: dict, trial_id: str, attempt: int, started, *, status: str, **measured) -> dict:
    """The trials row of this trial with `status` and what it measured (meta_steps, wall_seconds,
    final_val_loss, error, device, ended_at): the running rows and the final row differ only in those."""
    return trial_row(cfg, experiment=meta["experiment"], stage=meta["stage"], trial_id=trial_id, attempt=attempt,
                     spec_hash=meta["spec_hash"], started=started, status=status, variant=meta["variant"],
                     node=node_name(), **measured)


def running_row(cfg: TrialConfig, meta: dict, trial_id: str, attempt: int, started, st, report: dict) -> dict:
    """The row written at each report (status running; kept as stopped_early if the scheduler stops
    the trial there): `row_of` with the training state's step and time and the report's val loss."""
    return row_of(cfg, meta, trial_id, attempt, started, status="running", meta_steps=st.step,
                  wall_seconds=st.extra.get("wall_seconds"), final_val_loss=report["val_loss"], ended_at=utc_now(),
                  device=resolve_device(cfg.device))


def final_row(cfg: TrialConfig, meta: dict, trial_id: str, attempt: int, started, result: TrialResult) -> dict:
    """The row of an ended trial (completed, diverged, errored): `row_of` with what it measured."""
    r = result.trial_row
    return row_of(cfg, meta, trial_id, attempt, started, status=result.status, device=r.get("device"),
                  error=r.get("error"), meta_steps=r.get("meta_steps") or 0, wall_seconds=r.get("wall_seconds"),
                  final_val_loss=r.get("final_val_loss"), selected_step=r.get("selected_step"), ended_at=r.get("ended_at"))


def trial_config_of(config: dict) -> tuple[dict, TrialConfig]:
    """(meta, TrialConfig) of Tune's config: a grid point (test / grid stages) or a tune trial whose
    hyper-parameters Optuna drew (define-by-run: at the top level of the config)."""
    if "point" in config:
        config = {**config["point"], **{k: v for k, v in config.items() if k != "point"}}
    cfg = TrialConfig.from_dict(dict(config["trial"]))
    for key, value in config.items():
        if key not in ("trial", "meta", "point", "trial_id"):
            cfg.set_hparam(key, value)
    return config["meta"], cfg


def metasweep_trainable(config: dict, results_uri: str) -> None:
    """One trial. `results_uri`: where the experiment is now (given by the driver each time it builds
    or restores the Tuner, never stored in Tune's state, so a moved experiment writes to its new place).
    A crash anywhere here (the trial's own code, writing its rows) is an errored row with its message,
    never an exception for Ray to retry; only a trial that cannot write even that row raises."""
    meta, cfg = trial_config_of(config)
    torch.set_num_threads(max(1, int(meta.get("cpus", 1))))
    trial_id = trial_id_of(config)
    started, attempt = utc_now(), 0
    try:
        state, attempt = restored_state(cfg)
        result = run_trial(cfg, trial_id=trial_id, experiment=meta["experiment"], stage=meta["stage"],
                           attempt=attempt, spec_hash=meta["spec_hash"], state=state,
                           on_report=reporter(results_uri, cfg, meta, trial_id, attempt, started))
        final = final_row(cfg, meta, trial_id, attempt, started, result)
        write_trial(results_uri, final, result.curves, result.eval_tasks, extra={"cka": result.cka})
    except Exception as e:  # not SystemExit: Tune stops a trial (ASHA) by exiting its thread at a report
        final = row_of(cfg, meta, trial_id, attempt, started, status="errored", error=failure("trial", e),
                       device=resolve_device(cfg.device))
        write_trial(results_uri, final, {}, {})
    tune.report(final_report(final))


def trial_id_of(config: dict, tune_trial_id: str | None = None) -> str:
    """A trial's id: the one its grid point carries (test and grid stages: sweeps.plan.fixed_trial_id,
    a function of its configuration), else `<stage>-<Tune's trial id>` (unbundled tune trials)."""
    point = config.get("point", config)
    if point.get("trial_id"):
        return point["trial_id"]
    return f"{point['meta']['stage']}-{tune_trial_id or tune.get_context().get_trial_id()}"


def restored_state(cfg: TrialConfig):
    """(training state, attempt) from Tune's checkpoint after a restart, else (None, 0)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, 0
    from metasweep.core.state import load_state

    with checkpoint.as_directory() as d:
        state = load_state(build_setup(cfg), os.path.join(d, STATE_FILE))
    return state, int(state.extra.get("attempt", 0)) + 1


def reporter(uri: str, cfg: TrialConfig, meta: dict, trial_id: str, attempt: int, started):
    """What the training loop calls at each report: the running row, a checkpoint, Tune's report."""
    def on_report(st, row):
        st.extra["attempt"] = attempt
        write_trial(uri, running_row(cfg, meta, trial_id, attempt, started, st, row), curve_columns(st.curves), {})
        with tempfile.TemporaryDirectory() as d:
            st.save(os.path.join(d, STATE_FILE))
            tune.report(metrics_of(row), checkpoint=tune.Checkpoint.from_directory(d))

    return on_report


def final_report(final: dict) -> dict:
    """The last result Tune (and Optuna) sees: the final validation loss; inf for a trial without one
    that did not complete (Optuna takes inf, not NaN: it ranks last)."""
    report = {"status": final["status"], "done_rows": True}
    if final["final_val_loss"] is not None:
        report["val_loss"] = final["final_val_loss"]
    elif final["status"] != "completed":
        report["val_loss"] = float("inf")
    return report
