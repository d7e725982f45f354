"""The function Ray Tune runs for one trial.

Calls the core through `sweeps.trial`, reports every K meta-steps with a checkpoint
(`ray.tune.report(metrics, checkpoint=tune.Checkpoint...)`), restarts exactly from
`tune.get_checkpoint()` after a lost node, and writes its Parquet rows itself (to the experiment's
storage, so nodes need no shared local disk). Rows of each report are committed as status
"running"; the final write replaces them, so a trial stopped early by ASHA keeps its curve.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import torch
from ray import tune

from metasweep.analysis.store import write_trial

from .trial import TrialConfig, build_setup, curve_columns, run_trial
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
    """host/ray-node-id: several Ray nodes can share one host (tests, multi-GPU machines)."""
    import socket

    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"


def metasweep_trainable(config: dict) -> None:
    if "point" in config:  # a grid point (test / grid stages)
        config = {**config["point"], **{k: v for k, v in config.items() if k != "point"}}
    meta = config["meta"]
    trial = dict(config["trial"])
    cfg = TrialConfig.from_dict(trial)
    for key, value in config.items():  # hyper-parameters chosen by Optuna (define-by-run space) are top level
        if key not in ("trial", "meta", "point"):
            cfg.set_hparam(key, value)
    torch.set_num_threads(max(1, int(meta.get("cpus", 1))))
    trial_id = f"{meta['stage']}-{tune.get_context().get_trial_id()}"
    uri = meta["results_uri"]

    state, attempt = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        from metasweep.core.state import load_state

        with checkpoint.as_directory() as d:
            state = load_state(build_setup(cfg), os.path.join(d, STATE_FILE))
        attempt = int(state.extra.get("attempt", 0)) + 1
    started = utc_now()
    config_json = json.dumps(cfg.to_dict(), sort_keys=True)

    def on_report(st, row):
        st.extra["attempt"] = attempt
        partial = {
            "experiment": meta["experiment"], "stage": meta["stage"], "trial_id": trial_id, "attempt": attempt,
            "variant": meta["variant"], "task_family": cfg.task,
            "task_options": json.dumps(cfg.task_options, sort_keys=True), "train_shots": cfg.train_shots, "seed": cfg.seed,
            "alpha": cfg.alpha, "beta": cfg.beta, "temperature": cfg.temperature, "inner_steps": cfg.inner_steps,
            "meta_batch": cfg.meta_batch, "status": "running", "meta_steps": st.step,
            "wall_seconds": st.extra.get("wall_seconds"), "final_val_loss": row["val_loss"],
            "spec_hash": meta["spec_hash"], "started_at": started, "ended_at": utc_now(),
            "config": config_json, "node": node_name(),
        }
        write_trial(uri, partial, curve_columns(st.curves), {})
        with tempfile.TemporaryDirectory() as d:
            st.save(os.path.join(d, STATE_FILE))
            tune.report(metrics_of(row), checkpoint=tune.Checkpoint.from_directory(d))

    result = run_trial(cfg, trial_id=trial_id, experiment=meta["experiment"], stage=meta["stage"],
                       attempt=attempt, spec_hash=meta["spec_hash"], state=state, on_report=on_report)
    result.trial_row["variant"] = meta["variant"]  # the spec's name (a preset, or a named override)
    result.trial_row["node"] = node_name()
    write_trial(uri, result.trial_row, result.curves, result.eval_tasks, extra={"cka": result.cka})
    final = {"status": result.status, "done_rows": True}
    if result.trial_row["final_val_loss"] is not None:
        final["val_loss"] = result.trial_row["final_val_loss"]
    elif result.status != "completed":
        final["val_loss"] = float("inf")
    tune.report(final)
