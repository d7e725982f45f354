"""A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster): trials spread over the
worker nodes; a worker killed mid-sweep loses no trial and no row (restarted from checkpoints)."""

import collections
import threading
import time

import pytest
from ray.cluster_utils import Cluster

from metasweep.analysis.store import read_dataset, read_raw
from metasweep.sweeps.run import sweep

SPEC = """
experiment: multinode
mode: grid
variants: [maml, mt-net]
budget: {meta_steps: 1200, report_every: 100, meta_batch: 10}
eval: {shots: [5], inner_steps: [1], tasks: 20, val_tasks: 10}
grid: {alpha: [0.01]}
test: {seeds: [0, 1, 2]}
max_concurrent: 2
max_failures: 3
storage: res
"""


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # trials run on workers only
    workers = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def test_worker_killed_mid_sweep_loses_no_trial_and_no_row(tmp_path, cluster):
    c, workers = cluster
    victim = workers[0]
    (tmp_path / "spec.yaml").write_text(SPEC)
    exp = tmp_path / "res" / "multinode"
    killed = {}

    def kill_worker_once_it_trains():
        deadline = time.time() + 300
        while time.time() < deadline:
            if (exp / "trials").exists():
                rows = read_raw(str(exp), "trials").to_pylist()
                # at its second report (step 200) a trial has certainly saved its step-100 checkpoint
                # (a row is written just before the report that carries its checkpoint)
                # (rows of every report stay in the raw table: skip trials that have since ended, and
                # take the least advanced one, so that it is still training when the node goes)
                ended = {r["trial_id"] for r in rows if r["status"] != "running"}
                on_victim = sorted((r for r in rows if r["status"] == "running" and r["node"]
                                    and r["node"].endswith(victim.node_id[:12]) and r["meta_steps"] >= 200
                                    and r["trial_id"] not in ended), key=lambda r: r["meta_steps"])
                if on_victim:
                    killed["trial"] = on_victim[0]["trial_id"]
                    c.remove_node(victim, allow_graceful=False)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_worker_once_it_trains, daemon=True)
    killer.start()
    sweep(str(tmp_path / "spec.yaml"), address=c.address, storage=str(tmp_path / "res"))
    killer.join(5)
    assert killed, "the worker was never seen training"

    ds = read_dataset(str(exp))
    trials = ds["trials"].to_pylist()
    assert sorted((t["variant"], t["seed"]) for t in trials) == sorted(
        (v, s) for v in ("maml", "mt-net") for s in (0, 1, 2))
    assert {t["status"] for t in trials} == {"completed"}
    # the trials on the removed node were restarted (a new attempt) from their checkpoints, on the
    # surviving node (which trials: read off the rows, as the node may take a moment to go)
    raw = read_raw(str(exp), "trials").to_pylist()
    restarted = [t for t in trials if t["attempt"] >= 1]
    assert restarted, "no trial was restarted after its node was removed"
    for t in restarted:
        first = [r for r in raw if r["trial_id"] == t["trial_id"] and r["attempt"] == 0]
        assert first and first[0]["status"] == "running" and first[0]["node"].endswith(victim.node_id[:12])
        assert not t["node"].endswith(victim.node_id[:12])
        assert [r["meta_step"] for r in ds["curves"].to_pylist() if r["trial_id"] == t["trial_id"]] == \
            list(range(100, 1201, 100))
    nodes = {t["node"].split("/")[1] for t in read_raw(str(exp), "trials").to_pylist()}
    assert len(nodes) >= 2  # trials ran on both workers
    steps = collections.Counter((r["trial_id"], r["meta_step"]) for r in ds["curves"].to_pylist())
    assert set(steps.values()) == {1} and len(steps) == 6 * 12
    keys = collections.Counter((e["trial_id"], e["task_index"]) for e in ds["eval_tasks"].to_pylist())
    assert set(keys.values()) == {1} and len(keys) == 6 * 20
