"""The tune and test stages in one Tuner (sweeps.pipeline) on a real local Ray write the dataset of the
two stages run one after the other: the same trial ids, rows and values (bit for bit, loop-mode
bundles), the same choice of each cell's configuration, the same manifest - and a second sweep of the
same spec runs nothing."""

import json
import re

import numpy as np
import pytest

from metasweep.analysis.store import read_dataset

SPEC = """
experiment: {name}
variants: [maml, mt-net]
budget: {{meta_steps: 20, report_every: 10, meta_batch: 4}}
eval: {{shots: [5], inner_steps: [1], tasks: 10, val_tasks: 5}}
search: {{trials_per_variant: 3}}
scheduler: {{type: none}}
test: {{seeds: [0, 1, 2]}}
bundle: {{size: 2, mode: loop}}
max_concurrent: 2
storage: {storage}
"""


def sorted_rows(ds, table, keys):
    return ds[table].sort_by([(k, "ascending") for k in keys])


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run_of(tmp_path, name: str):
    from metasweep.sweeps.experiment import experiment_uri
    from metasweep.sweeps.spec import load_spec
    from metasweep.sweeps.stages import Run

    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, storage=tmp_path / "res"))
    spec, _, h = load_spec(str(path))
    return Run(spec, experiment_uri(spec.storage, spec.experiment), h, {"cells": {}})


def test_tune_and_test_in_one_tuner_write_the_dataset_of_the_stages_one_after_the_other(ray_local, tmp_path,
                                                                                          capsys):
    from metasweep.sweeps.run import run_experiment

    separate, together = run_of(tmp_path, "separate"), run_of(tmp_path, "together")
    run_experiment(separate, "tune")
    run_experiment(separate, "test")
    separate_err = capsys.readouterr().err
    run_experiment(together, "all")
    err = capsys.readouterr().err
    # progress counts every member trial against the Tuner's total: 6 a stage, 12 in the one Tuner
    assert [int(k) for k in re.findall(r"\((\d+) of 6 ended\)", separate_err)] == [*range(1, 7)] * 2
    assert [int(k) for k in re.findall(r"\((\d+) of 12 ended\)", err)] == [*range(1, 13)]
    assert "test: 6 trials in 4 bundles, each cell's as soon as its tune cell has ended; tune and test in one " \
           "Tuner (Ray Tune's state: ray/stages-" in err
    assert "  [tune] tune-mt-net-k10-n0002 completed" in err and "  [test] test-maml-k10-s2-" in err
    queued = err.index("test: maml-k10's 3 trials queued in 2 bundles, its tune cell having ended (configuration: ")
    # said after the lines of the tune trials it chose among (Tune tells the searcher before the callbacks)
    assert all(err.index(f"] tune-maml-k10-n000{n} completed") < queued for n in range(3))
    assert "stages_tuner" not in separate.manifest and together.manifest["stages_tuner"]["done"] is True
    for key in ("cells", "inputs", "best", "bundle_sizes"):
        assert together.manifest[key] == separate.manifest[key], key
    best = together.manifest["best"]["maml-k10"]
    assert f"(configuration: {best['_trial_id']}, val_loss {best['_val_loss']:.4f})" in err[queued:].splitlines()[0]
    a, b = read_dataset(separate.exp_uri), read_dataset(together.exp_uri)
    ta, tb = (sorted_rows(d, "trials", ["trial_id"]).to_pylist() for d in (a, b))
    # each member's line shows the hyper-parameters its learner searches, as its row has them
    for t in tb:
        line = next(li for li in err.splitlines() if f"] {t['trial_id']} completed" in li)
        assert f"alpha={t['alpha']:.3g}, beta={t['beta']:.3g}" in line, line
        assert ("temperature=" in line) == (t["variant"] == "mt-net"), line
        assert t["temperature"] is None or f"temperature={t['temperature']:.3g}" in line, line
    assert [t["trial_id"] for t in ta] == [t["trial_id"] for t in tb] and len(ta) == 12
    assert sorted(t["stage"] for t in tb) == ["test"] * 6 + ["tune"] * 6
    for x, y in zip(ta, tb):
        assert x["status"] == y["status"] == "completed"
        for k in ("variant", "seed", "hparams", "final_val_loss", "hp_source", "hp_source_trial", "config"):
            assert x[k] == y[k], (x["trial_id"], k)
    ea, eb = (sorted_rows(d, "eval_tasks", ["trial_id", "shots", "inner_steps", "task_index"]) for d in (a, b))
    assert ea["trial_id"].to_pylist() == eb["trial_id"].to_pylist()
    np.testing.assert_array_equal(np.asarray(ea["loss"]), np.asarray(eb["loss"]))
    # a cell's test trials started once its tune trials had all ended
    for v in ("maml", "mt-net"):
        tuned = max(t["ended_at"] for t in tb if t["stage"] == "tune" and t["variant"] == v)
        assert all(t["started_at"] >= tuned for t in tb if t["stage"] == "test" and t["variant"] == v), v
    # every test trial took its cell's best tune configuration (lowest meta-validation loss)
    for t in (t for t in tb if t["stage"] == "test"):
        best = min((u for u in tb if u["stage"] == "tune" and u["variant"] == t["variant"]),
                   key=lambda u: u["final_val_loss"])
        assert t["hp_source_trial"] == best["trial_id"] and json.loads(t["hparams"]) == json.loads(best["hparams"])
    # a second sweep of the same spec: both stages are done
    before = read_dataset(together.exp_uri)["trials"].num_rows
    run_experiment(together, "all")
    assert read_dataset(together.exp_uri)["trials"].num_rows == before
    assert "Optuna over" not in capsys.readouterr().err



@pytest.mark.timeout(300)  # what it guards against is a sweep that never ends
def test_a_cell_whose_test_bundles_cannot_be_made_fails_the_sweep_and_a_resume_tests_it(ray_local, tmp_path,
                                                                                        capsys, monkeypatch):
    """The driver makes a cell's test bundles inside Ray Tune's loop (the searcher's on_trial_complete):
    Tune logged and swallowed an exception there, and the search waited for that cell's bundles for ever.
    Now it is said at once, the other cells are tested, the sweep fails at the end naming the cell, and
    the next run tests it. Here the driver is also stopped before the Tuner ends: the Tuner's saved
    searcher counts the cell as fed, so the next driver must learn from the manifest that it is not
    tested, or it would expect its bundles for ever ("trials unfinished" at every resume)."""
    import os
    import signal

    from metasweep.sweeps import pipeline
    from metasweep.sweeps.experiment import read_manifest
    from metasweep.sweeps.run import run_experiment
    from metasweep.sweeps.session import Interrupted
    from metasweep.sweeps.stages import Run, StageFailed

    made = pipeline.test_points

    def failing_then_stopped(run, sizes, cell_name):
        if cell_name == "maml-k10":  # the first cell to end: mt-net's tune bundles still to run
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own stop signal (what our Ctrl+C handler sends)
            raise OSError("the trials table could not be read")
        return made(run, sizes, cell_name)

    monkeypatch.setattr(pipeline, "test_points", failing_then_stopped)
    first = run_of(tmp_path, "stopped")
    with pytest.raises(Interrupted):
        run_experiment(first, "all")
    assert "test: maml-k10 not tested: its test bundles could not be made (OSError: the trials table could not " \
           "be read); said at the end" in capsys.readouterr().err
    assert read_manifest(first.exp_uri)["stages_tuner"]["unqueued"] == {
        "maml-k10": "OSError: the trials table could not be read"}
    monkeypatch.setattr(pipeline, "test_points", made)

    def again():  # a new driver: the manifest as the last one left it
        return Run(first.spec, first.exp_uri, first.spec_hash, read_manifest(first.exp_uri))

    with pytest.raises(StageFailed, match=r"test-maml-k10: not tested, its test bundles could not be made "
                                          r"\(OSError: the trials table could not be read\); its tune rows are kept "
                                          r"and `metasweep resume .*stopped` tests it"):
        run_experiment(again(), "all")  # the Tuner restored: mt-net tuned and tested, maml not
    assert read_manifest(first.exp_uri)["inputs"]["test"].keys() == {"mt-net-k10"}
    rows = read_dataset(first.exp_uri)["trials"].to_pylist()
    assert sorted((t["stage"], t["variant"]) for t in rows if t["status"] == "completed") == \
        [("test", "mt-net")] * 3 + [("tune", "maml")] * 3 + [("tune", "mt-net")] * 3
    run_experiment(again(), "all")  # and the next one tests maml-k10
    rows = read_dataset(first.exp_uri)["trials"].to_pylist()
    tests = [t for t in rows if t["stage"] == "test" and t["variant"] == "maml"]
    best = min((t for t in rows if t["stage"] == "tune" and t["variant"] == "maml"), key=lambda t: t["final_val_loss"])
    assert sorted(t["seed"] for t in tests) == [0, 1, 2] and {t["hp_source_trial"] for t in tests} == {best["trial_id"]}
    assert {t["status"] for t in rows} == {"completed"} and len(rows) == 12
    capsys.readouterr()
