"""The one builder of a `trials` row, for every status (running, completed, diverged, errored,
stopped_early): every writer (the Ray trainable's reports and final row, `metasweep train`, the
driver marking stopped trials) calls `trial_row`, so the rows of one trial never disagree by how
it ended.

The columns alpha, beta, temperature, inner_steps, meta_batch and mask_eval are filled from
`hparams`, the hyper-parameters the learner actually read: a learner that does not read one (a
Prototypical Network reads no alpha, an unmasked variant no temperature) leaves it NULL. The whole
dict, learner-specific entries included, is the JSON column `hparams`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import socket
import subprocess
from collections.abc import Mapping

from .schema import HP_COLUMNS, HP_SOURCES, SCHEMAS, STATUSES

__all__ = ["trial_row", "from_stored", "package_version", "git_sha", "now"]

_INT_HPARAMS = ("inner_steps", "meta_batch")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("metasweep")
    except Exception:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The short commit of the checkout this code runs from ("unknown" outside git)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


_this_package_version, _this_git_sha = package_version, git_sha  # trial_row's arguments shadow the names


def trial_row(*, experiment: str, stage: str, trial_id: str, attempt: int, variant: str, status: str,
              task_family: str, train_shots: int, seed: int, learner_kind: str, inner_loop: bool,
              hparams: Mapping, hp_source: str | None, hp_source_trial: str | None = None,
              task_options: Mapping | None = None, variant_switches: Mapping | None = None,
              config: Mapping | None = None, error: str | None = None, meta_steps: int = 0,
              wall_seconds: float | None = None, final_val_loss: float | None = None, node: str | None = None,
              device: str | None = None, spec_hash: str = "", started_at: dt.datetime | None = None,
              ended_at: dt.datetime | None = None, package_version: str | None = None,
              git_sha: str | None = None, selected_step: int | None = None) -> dict:
    """One row of `trials` (a dict over every declared column) from plain values.

    hparams: {name: value} of every hyper-parameter the learner read (JSON scalars).
    hp_source: one of HP_SOURCES ("tuned", "fallback", "defaults", "grid", "given"), or None for
    a trial whose configuration was drawn by a search (tune stage).
    package_version, git_sha: default to this process's (pass the stored ones to rewrite a row);
    node defaults to this host, ended_at to now. A non-finite final_val_loss is stored as NULL.
    selected_step: the meta-step of the iterate its eval_tasks rows evaluate (the spec's
    eval.select; None while running or where nothing was evaluated); final_val_loss is that
    iterate's validation loss.
    Raises ValueError naming the field for a status, source or hyper-parameter it cannot store.
    """
    if status not in STATUSES:
        raise ValueError(f"trials row {trial_id}: status must be one of {', '.join(STATUSES)} (got {status!r})")
    if hp_source is not None and hp_source not in HP_SOURCES:
        raise ValueError(f"trials row {trial_id}: hp_source must be one of {', '.join(HP_SOURCES)} "
                         f"or None (got {hp_source!r})")
    if not isinstance(learner_kind, str) or not learner_kind:
        raise ValueError(f"trials row {trial_id}: learner_kind must be a non-empty string (got {learner_kind!r})")
    row = {
        "experiment": experiment, "stage": stage, "trial_id": trial_id, "attempt": int(attempt), "variant": variant,
        "variant_switches": _json(variant_switches) if variant_switches is not None else None,
        "task_family": task_family, "task_options": _json(task_options or {}), "train_shots": int(train_shots),
        "seed": int(seed), **_hp_columns(hparams, trial_id), "config": _json(config) if config is not None else None,
        "status": status, "error": error or None, "meta_steps": int(meta_steps), "wall_seconds": wall_seconds,
        "final_val_loss": final_val_loss if final_val_loss is not None and math.isfinite(final_val_loss) else None,
        "node": node or socket.gethostname(), "device": device,
        "package_version": package_version or _this_package_version(),
        "git_sha": git_sha or _this_git_sha(), "spec_hash": spec_hash,
        "started_at": started_at or now(), "ended_at": ended_at or now(),
        "learner_kind": learner_kind, "inner_loop": bool(inner_loop), "hparams": _json(hparams),
        "hp_source": hp_source, "hp_source_trial": hp_source_trial,
        "selected_step": None if selected_step is None else int(selected_step),
    }
    return row


def _hp_columns(hparams: Mapping, trial_id: str) -> dict:
    out = {}
    for name in HP_COLUMNS:
        value = hparams.get(name)
        try:
            if value is None:
                out[name] = None
            elif name in _INT_HPARAMS:
                out[name] = int(value)
            else:
                out[name] = str(value) if name == "mask_eval" else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"trials row {trial_id}: hyper-parameter {name} must be a number (got {value!r})") from None
    return out


def _json(value: Mapping) -> str:
    """Sorted JSON; non-finite floats (an errored trial's alpha = inf) as the strings "inf"/"nan",
    since JSON has no token for them."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(dict(value)), sort_keys=True, default=str)


def from_stored(row: Mapping) -> dict:
    """The keyword arguments of `trial_row` that rebuild a stored row (e.g. to mark it with another
    status). Rows written before schema version 2 get their hparams from the hyper-parameter
    columns, learner_kind "gradient" and inner_loop true: every learner of those versions was one."""
    kwargs = {k: row.get(k) for k in SCHEMAS["trials"].names if k not in HP_COLUMNS}
    for name in ("task_options", "variant_switches", "config"):
        kwargs[name] = _loads(row.get(name), name)
    stored_hp = _loads(row.get("hparams"), "hparams")
    kwargs["hparams"] = stored_hp if stored_hp is not None else {k: row[k] for k in HP_COLUMNS if row.get(k) is not None}
    kwargs["learner_kind"] = row.get("learner_kind") or "gradient"
    kwargs["inner_loop"] = True if row.get("inner_loop") is None else row["inner_loop"]
    return kwargs


def _loads(text: str | None, name: str):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {name: text}
