"""`metasweep status`: how far an experiment is, from its manifest and its dataset."""

from __future__ import annotations

import os

import yaml
from rich.console import Console
from rich.table import Table

from metasweep.analysis.store import exists, read_raw

from .errors import UserError
from .experiment import read_manifest, read_text


def print_status(exp_uri: str) -> None:
    if "://" not in exp_uri:
        exp_uri = os.path.abspath(exp_uri)
    text = read_text(exp_uri, "spec.yaml")
    if text is None:
        raise UserError(f"{exp_uri}: not an experiment folder (no spec.yaml)")
    spec = yaml.safe_load(text)
    manifest = read_manifest(exp_uri)
    console = Console()
    console.print(f"experiment [bold]{spec.get('experiment')}[/] at {exp_uri}")
    done = sorted(k for k, v in manifest.get("cells", {}).items() if v == "done")
    console.print(f"stages done: {', '.join(done) or 'none'}")
    if not exists(exp_uri):
        console.print("no trial has written results yet")
        return
    trials = read_raw(exp_uri, "trials").to_pylist()
    latest = {}
    for r in trials:
        if r["trial_id"] not in latest or r["attempt"] > latest[r["trial_id"]]["attempt"]:
            latest[r["trial_id"]] = r
    table = Table(title="trials (latest attempt)")
    for c in ("stage", "variant", "train shots", "status", "trials", "restarted"):
        table.add_column(c)
    groups = {}
    for r in latest.values():
        key = (r["stage"], r["variant"], r["train_shots"], r["status"])
        n, restarted = groups.get(key, (0, 0))
        groups[key] = (n + 1, restarted + (r["attempt"] > 0))
    for (stage, variant, shots, status), (n, restarted) in sorted(groups.items()):
        table.add_row(stage, variant, str(shots), status, str(n), str(restarted))
    console.print(table)
    if manifest.get("wall_seconds"):
        console.print(f"wall time so far: {manifest['wall_seconds']:.0f} s")
