"""Killing the driver mid-sweep, then `metasweep resume`: every trial and row exactly once; a second
driver meanwhile is refused; resumed after a move (SIGKILL, during the tune stage) or with a foreign
file in the dataset (SIGINT, during the test stage: the tune and test stages run in one Tuner, whose
searcher holds the test bundles still to run - sweeps.pipeline).

After SIGKILL, Tune's saved state is one written seconds before the kill (Tune snapshots it every 10
s or more): the test puts back an older snapshot of the run, one that names a checkpoint of a
running trial that has since been followed by two more - the one Tune's `num_to_keep=2` used to have
deleted already, so the resumed trial failed with "does not exist on storage anymore" (sweeps.retention)."""

import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import cloudpickle
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from raynode import RayHead

from metasweep.analysis.store import read_dataset, read_raw, read_trials

SPEC = """
experiment: resume
variants: [maml, mt-net]
train_shots: [10]
budget: {meta_steps: 600, report_every: 100, meta_batch: 10}
eval: {shots: [5, 10], inner_steps: [1], tasks: 20, val_tasks: 10}
search: {trials_per_variant: 3}
test: {seeds: [0, 1]}
max_concurrent: 2
storage: res
"""


@pytest.fixture
def ray_head():
    head = RayHead(num_cpus=2)
    yield head
    head.stop()


def wait_until_quiet(exp, seconds: float = 3.0, limit: float = 120.0) -> None:
    """Until no file of the experiment changed for `seconds`."""
    def snapshot():
        return sorted((str(p), p.stat().st_mtime_ns) for p in exp.rglob("*") if p.is_file())

    last, since, deadline = snapshot(), time.time(), time.time() + limit
    while time.time() - since < seconds and time.time() < deadline:
        time.sleep(0.5)
        now = snapshot()
        if now != last:
            last, since = now, time.time()


def wait_for(exp, driver, stage: str) -> None:
    """Until the sweep is well into `stage`: one of its trials is running past its second report (so a
    checkpoint of it is certainly saved)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        if (exp / "trials").exists() and len(list((exp / "trials").glob("*.parquet"))) >= 2:
            rows = read_trials(str(exp)).to_pylist()
            if any(r["stage"] == stage and r["status"] == "running" and r["meta_steps"] >= 200 for r in rows):
                return
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.1)
    pytest.fail(f"no {stage} trial got past its second report in time")


def named_checkpoints(state: bytes) -> list[str]:
    """The latest checkpoint of each trial that a Tune experiment state names (Tune keeps its
    checkpoint bookkeeping as a cloudpickle inside the JSON)."""
    names = []
    for _, meta in json.loads(state)["trial_data"]:
        meta = json.loads(meta) if isinstance(meta, str) else meta
        manager = meta.get("checkpoint_manager") or {}
        if manager.get("_type") == "CLOUDPICKLE_FALLBACK":
            latest = cloudpickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
            if latest is not None:
                names.append(latest.checkpoint.path)
    return names


class TuneStateHistory(threading.Thread):
    """Every version of Tune's saved state while the driver runs (polled): the experiment state with
    the searcher's and callbacks' files saved beside it."""

    def __init__(self, exp):
        super().__init__(daemon=True)
        self.exp, self.copies, self.stop = exp, [], threading.Event()
        self.start()

    def run(self):
        seen = {}
        while not self.stop.is_set():
            for f in (self.exp / "ray").glob("*/experiment_state-*.json") if (self.exp / "ray").exists() else []:
                try:
                    data = f.read_bytes()
                    names = named_checkpoints(data)
                    files = {g: g.read_bytes() for g in f.parent.iterdir() if g.suffix in (".json", ".pkl")}
                except (OSError, ValueError):
                    continue  # being written
                if seen.get(f) != data:
                    seen[f] = data
                    self.copies.append((files, names))
            time.sleep(0.05)

    def stale(self, driver, limit: float = 300.0):
        """(files, checkpoint): the newest snapshot naming a checkpoint of a trial that two newer
        checkpoints followed by now; waits for one."""
        deadline = time.time() + limit
        while time.time() < deadline:
            for files, names in reversed(list(self.copies)):
                for name in names:
                    trial_dir, index = os.path.split(name)
                    newer = [p for p in os.listdir(trial_dir) if p.startswith("checkpoint_") and p > index]
                    if len(newer) >= 2:
                        return files, name
            assert driver.poll() is None, "the sweep ended before a stale snapshot could be made"
            time.sleep(0.1)
        pytest.fail("no snapshot of Tune's state named a checkpoint that two newer ones followed")


def cli(*args):
    return [sys.executable, "-m", "metasweep.sweeps.cli", *args]


@pytest.mark.parametrize("how, stage", [("SIGKILL", "tune"), ("SIGINT", "test")])
def test_killed_driver_then_resume_gives_every_trial_and_row_exactly_once(tmp_path, ray_head, how, stage):
    (tmp_path / "spec.yaml").write_text(SPEC)
    exp = tmp_path / "res" / "resume"
    log = open(tmp_path / "driver.log", "w")
    history = TuneStateHistory(exp)
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Tune's snapshots once a second: several per trial
    driver = subprocess.Popen(cli("sweep", "spec.yaml", "--address", ray_head.address, "--no-rank"), cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_for(exp, driver, "tune")
        # a second driver on the same experiment (issue 11 case 8): refused at once, naming the holder
        second = subprocess.run(cli("sweep", "spec.yaml", "--address", ray_head.address, "--no-rank"), cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert f"is being run by another driver: host {socket.gethostname()}, pid {driver.pid}, since " in second.stderr
        if stage == "test":
            wait_for(exp, driver, "test")
        if how == "SIGKILL":
            stale_files, stale_checkpoint = history.stale(driver)
        if how == "SIGINT":  # Ctrl+C: Tune stops gracefully; the sweep must say it is unfinished
            os.kill(driver.pid, signal.SIGINT)
            assert driver.wait(120) == 130
            text = (tmp_path / "driver.log").read_text()
            assert "sweep interrupted" in text and f"Continue with: metasweep resume {exp}\n" in text
    finally:
        history.stop.set()
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and only what it started
        driver.wait(30)
        log.close()
    manifest = (exp / "manifest.json").read_text() if (exp / "manifest.json").exists() else ""
    assert '"test": "done"' not in manifest and '"tune-maml-k10": "done"' not in manifest  # stopped mid-way
    partial = read_raw(str(exp), "trials").num_rows
    assert partial >= 2
    if how == "SIGKILL":
        # moved before it is resumed (case 7): nothing stored depends on where it was
        wait_until_quiet(exp)  # the killed driver's trials stop with it (Ray ends its job's actors)
        # the state a crash can leave: a snapshot older than the last one (the same file, rewritten)
        assert os.path.isdir(stale_checkpoint), "Tune deleted a checkpoint its saved state may name"
        for f, data in stale_files.items():
            f.write_bytes(data)
        old, exp = exp, tmp_path / "moved" / "resume"
        exp.parent.mkdir()
        shutil.move(old, exp)
    else:
        # one stage of the Tuner both share cannot be resumed alone: exit 2 saying how to go on
        one = subprocess.run(cli("sweep", "spec.yaml", "--stage", "tune", "--address", ray_head.address),
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert one.returncode == 2 and "Traceback" not in one.stderr, one.stderr[-2000:]
        assert "its tune and test stages run together in one Tuner (ray/stages-" in one.stderr
        assert "Started a local Ray" not in one.stderr and "experiment resume" not in one.stderr  # before Ray
        plan = subprocess.run(cli("check", "spec.yaml", "--stage", "test"), cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert plan.returncode == 2 and "run together in one Tuner" in plan.stderr, plan.stderr[-2000:]
        # status: trials no driver runs any more are interrupted, with how to go on
        status = subprocess.run(cli("status", str(exp)), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and " running " not in status.stdout, status.stdout
        assert "interrupted" in status.stdout and f"continue with: metasweep resume {exp}" in status.stdout
        # a foreign file in the dataset (case 9): resume sets it aside, says so, and goes on
        pq.write_table(pa.table({"something": [1]}), exp / "trials" / "foreign.parquet")

    r = subprocess.run(cli("resume", str(exp), "--address", ray_head.address, "--no-rank"), cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"stages-[0-9a-f]{8}: resuming", r.stderr), r.stderr[-3000:]  # the one Tuner of both stages
    if how == "SIGKILL":
        assert not old.exists()  # resumed trials wrote to the new place only
        assert "breaking the stale lease of an earlier driver" in r.stderr  # its driver is gone
    else:
        # Ctrl+C saved the progress count with Tune's state: the resumed Tuner counts on to its total
        assert re.findall(r"\((\d+) of 10 ended\)", r.stderr)[-1] == "10", r.stderr[-3000:]
        assert (exp / "damaged" / "trials" / "foreign.parquet").exists()
        assert "set aside a file the dataset cannot read" in r.stderr and "foreign.parquet" in r.stderr

    # once the Tuner has ended, each Tune trial keeps only the checkpoint Tune's state names
    kept = collections.Counter(p.parent for p in (exp / "ray").glob("*/*/checkpoint_*"))
    assert kept and set(kept.values()) == {1}, kept

    ds = read_dataset(str(exp))
    trials = ds["trials"].to_pylist()
    per_cell = collections.Counter((t["stage"], t["variant"]) for t in trials)
    assert per_cell == {("tune", "maml"): 3, ("tune", "mt-net"): 3, ("test", "maml"): 2, ("test", "mt-net"): 2}
    assert all(t["status"] == "completed" for t in trials), [(t["trial_id"], t["error"]) for t in trials
                                                             if t["status"] != "completed"]
    assert sorted((t["variant"], t["seed"]) for t in trials if t["stage"] == "test") == \
        [("maml", 0), ("maml", 1), ("mt-net", 0), ("mt-net", 1)]
    # curves: exactly one row per report per trial, no duplicates after restarts
    steps = collections.Counter((c["trial_id"], c["meta_step"]) for c in ds["curves"].to_pylist())
    assert set(steps.values()) == {1}
    assert len(steps) == len(trials) * 6
    # eval rows: tasks x shots per trial, once
    keys = collections.Counter((e["trial_id"], e["task_index"], e["shots"]) for e in ds["eval_tasks"].to_pylist())
    assert set(keys.values()) == {1} and len(keys) == len(trials) * 20 * 2
    # Optuna continued its studies: each holds exactly the cell's trials, none started twice as new
    storage = optuna.storages.RDBStorage(f"sqlite:///{exp / 'optuna.db'}")
    for cell in ("maml-k10", "mt-net-k10"):
        study = optuna.load_study(study_name=f"resume.{cell}", storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 3, (cell, [t.state for t in study.trials])
    # resumed once more, it has nothing left to run: says so, starts no Ray, writes nothing
    files = sorted(str(p) for p in exp.rglob("*") if p.is_file())
    again = subprocess.run(cli("resume", str(exp), "--no-rank"), cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{exp}: every stage is done; nothing left to run" in again.stderr
    assert "Started a local Ray" not in again.stderr and sorted(str(p) for p in exp.rglob("*") if p.is_file()) == files
