"""The function Ray Tune runs for a bundle of trials (one Tune trial, several metasweep trials).

Like `metasweep_trainable` for one trial: it reports every K meta-steps with one checkpoint holding
every member's exact state (and status), restarts exactly from `tune.get_checkpoint()` after a lost
node, and writes each member's Parquet rows itself under the member's own trial id - a member's rows
are those it would have written as a trial of its own (sweeps/bundle_trial.py).

config: {"meta": {...as metasweep_trainable's...}, "members": [{"trial": TrialConfig dict,
"trial_id": str, "variant": spec name}, ...]}; `results_uri` as for metasweep_trainable (where the
experiment is now, never stored in Tune's state).
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import ray
import torch
from ray import tune

from metasweep.analysis.store import write_trial
from metasweep.core.state import load_state

from .bundle_trial import run_bundle
from .trainable import final_row, row_of
from .trial import TrialConfig, build_setup, curve_columns, failure, resolve_device
from .trial import now as utc_now

STATUS_FILE = "members.json"


def members_of(config: dict) -> list[dict]:
    """The members of a bundle's Tune config: listed (test / grid stages: "members"), or drawn by the
    tune stage's BundleSearch ("hps" and the Optuna trial "numbers" on the cell's base "trial")."""
    if "members" in config:
        return config["members"]
    from .bundle_search import member_id

    meta, out = config["meta"], []
    for hps, number in zip(config["hps"], config["numbers"]):
        cfg = TrialConfig.from_dict(dict(config["trial"]))
        for k, v in hps.items():
            cfg.set_hparam(k, v)
        out.append({"trial": cfg.to_dict(), "trial_id": member_id(meta["stage"], meta["cell"], number),
                    "variant": meta["variant"]})
    return out


def _rungs(name: str | None):
    """The cell's rung actor (a bundled tune stage with a scheduler), or None."""
    return ray.get_actor(name) if name else None


def _member_file(i: int) -> str:
    return f"member{i}.pt"


def _restore(cfgs: list[TrialConfig]):
    """(states, statuses, attempts) from the bundle's last checkpoint, or fresh (None, None, zeros)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, None, [0] * len(cfgs)
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, STATUS_FILE)) as f:
            saved = json.load(f)
        states = [load_state(build_setup(c), os.path.join(d, _member_file(i))) if saved["statuses"][i] else None
                  for i, c in enumerate(cfgs)]
    return states, [s or "running" for s in saved["statuses"]], [a + 1 for a in saved["attempts"]]


def metasweep_bundle_trainable(config: dict, results_uri: str) -> None:
    if "bundle" in config:  # a grid point of fixed bundles (test / grid stages)
        config = {**config["bundle"], **{k: v for k, v in config.items() if k != "bundle"}}
    meta, specs = config["meta"], members_of(config)
    cfgs = [TrialConfig.from_dict(m["trial"]) for m in specs]
    ids = [m["trial_id"] for m in specs]
    torch.set_num_threads(max(1, int(meta.get("cpus", 1))))
    uri = results_uri
    states, statuses, attempts = _restore(cfgs)
    started = utc_now()
    live: dict[int, object] = {}  # member index -> Member (known from its first report)

    def member_meta(i: int) -> dict:
        return {**meta, "variant": specs[i]["variant"]}

    rungs = _rungs(meta.get("rungs"))

    crashed: dict[int, str] = {}  # members whose own rows could not be written: stopped, then errored

    def on_report(i, member, row):
        live[i] = member
        st = member.state
        st.extra["attempt"] = attempts[i]
        running = row_of(cfgs[i], member_meta(i), ids[i], attempts[i], started, status="running",
                         meta_steps=st.step, wall_seconds=st.extra.get("wall_seconds"),
                         final_val_loss=row["val_loss"], ended_at=utc_now(), device=resolve_device(cfgs[i].device))
        try:
            write_trial(uri, running, curve_columns(st.curves), {})
        except Exception as e:  # this member's rows only: its siblings go on
            crashed[i] = failure("trial", e)
            return True
        # ASHA's rungs for members (sweeps.bundle_search.Rungs): True stops this member here
        return rungs is not None and ray.get(rungs.decide.remote(ids[i], len(st.curves), row["val_loss"]))

    def after_reports(step):
        with tempfile.TemporaryDirectory() as d:
            for i, m in live.items():
                m.state.save(os.path.join(d, _member_file(i)))
            with open(os.path.join(d, STATUS_FILE), "w") as f:
                json.dump({"statuses": [live[i].status if i in live else None for i in range(len(cfgs))],
                           "attempts": attempts}, f)
            vals = {ids[i]: m.state.curves[-1]["val_loss"] for i, m in live.items()}
            finite = [v for v in vals.values() if math.isfinite(v)]
            tune.report({"meta_step": step, "val_loss": min(finite) if finite else float("inf"), "members": vals},
                        checkpoint=tune.Checkpoint.from_directory(d))

    try:
        results = run_bundle(cfgs, trial_ids=ids, experiment=meta["experiment"], stage=meta["stage"],
                             attempts=attempts, spec_hash=meta["spec_hash"], states=states, statuses=statuses,
                             mode=meta.get("bundle_mode", "auto"), on_report=on_report, after_reports=after_reports)
    except Exception as e:  # the bundle's own code (not a member's training, which run_bundle records)
        results, crashed = [None] * len(cfgs), dict.fromkeys(range(len(cfgs)), failure("trial", e))
    final = {}
    for i, r in enumerate(results):
        row = None
        if i not in crashed:
            row = final_row(cfgs[i], member_meta(i), ids[i], attempts[i], started, r)
            try:
                write_trial(uri, row, r.curves, r.eval_tasks, extra={"cka": r.cka})
            except Exception as e:
                crashed[i] = failure("trial", e)
        if i in crashed:  # an errored row in its place (if even that cannot be written, Ray retries the bundle)
            row = row_of(cfgs[i], member_meta(i), ids[i], attempts[i], started, status="errored", error=crashed[i],
                         device=resolve_device(cfgs[i].device))
            write_trial(uri, row, {}, {})
        final[ids[i]] = {"status": row["status"], "val_loss": row["final_val_loss"]}
    done = [m["val_loss"] for m in final.values() if m["status"] == "completed" and m["val_loss"] is not None]
    tune.report({"done_rows": True, "members": final, "val_loss": min(done) if done else float("inf")})
