"""`metasweep status`: how far an experiment is, from its manifest and its dataset."""

from __future__ import annotations

import yaml
from rich.console import Console
from rich.table import Table

from metasweep.analysis.store import exists, read_trials

from .errors import UserError
from .experiment import located, read_manifest, read_text
from .lock import describe, holder, is_stale


def print_status(exp_uri: str, console: Console) -> None:
    """Stages done, then the trials' latest attempts counted by stage, variant, train shots and
    status. A damaged dataset file raises StoreError (naming it) before anything is printed."""
    exp_uri = located(exp_uri)
    text = read_text(exp_uri, "spec.yaml")
    if text is None:
        raise UserError(f"{exp_uri}: not an experiment folder (no spec.yaml)")
    spec = yaml.safe_load(text)
    manifest = read_manifest(exp_uri)
    trials = read_trials(exp_uri) if exists(exp_uri) else None
    console.print(f"experiment [bold]{spec.get('experiment')}[/] at {exp_uri}")
    done = sorted(k for k, v in manifest.get("cells", {}).items() if v == "done")
    console.print(f"stages done: {', '.join(done) or 'none'}")
    lease = holder(exp_uri)
    driven = lease is not None and not is_stale(lease)
    if lease is not None:
        console.print(f"driver: {describe(lease)} ({'running' if driven else 'stale: its driver is gone'})",
                      markup=False)
    if trials is None:
        console.print("no trial has written results yet")
        return
    table = Table(title="trials (latest attempt)")
    for c in ("stage", "variant", "train shots", "status", "trials", "restarted"):
        table.add_column(c)
    groups: dict[tuple, tuple[int, int]] = {}
    interrupted = 0
    for r in trials.select(["stage", "variant", "train_shots", "status", "attempt"]).to_pylist():
        status = r["status"]
        if status == "running" and not driven:  # no driver runs it: it stopped with its sweep
            status, interrupted = "interrupted", interrupted + 1
        key = (r["stage"], r["variant"], r["train_shots"], status)
        n, restarted = groups.get(key, (0, 0))
        groups[key] = (n + 1, restarted + (r["attempt"] > 0))
    for key, (n, restarted) in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        table.add_row(*(str(k) for k in key), str(n), str(restarted))
    console.print(table)
    if interrupted:
        console.print(f"{interrupted} trial(s) stopped unfinished with their sweep (no driver runs them); continue "
                      f"with: metasweep resume {exp_uri}", markup=False)
    rows = trials.select(["started_at", "ended_at"]).to_pylist()
    starts = [r["started_at"] for r in rows if r["started_at"] is not None]
    ends = [r["ended_at"] for r in rows if r["ended_at"] is not None]
    if starts and ends:
        span = (max(ends) - min(starts)).total_seconds()
        line = f"trials: first start {min(starts):%Y-%m-%d %H:%M} UTC, latest row {max(ends):%H:%M} ({span:.0f} s)"
        if manifest.get("wall_seconds"):  # each driver adds its run's time when it ends; a killed one cannot
            line += f"; drivers' time on record: {manifest['wall_seconds']:.0f} s (runs that ended; a killed driver records none)"
        console.print(line, markup=False)
